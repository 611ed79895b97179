"""Held-out ("passive") particles: ``sample(..., holdout=m)``.

m extra particles from the initial law ride along in the ODE state, moved by the same
velocity ∇log π_t − s_Θ, with their log-density tracked, but excluded from the score-matching
loss.  Asserted here: they leave the training run bitwise unchanged (fixed-step solvers) or
within the tolerance (adaptive ones, whose error norm includes them); their log Z estimate is
calibrated where the training particles' is biased high; results, importance weights,
checkpoints and bad input.
"""

import pytest
import torch

import sbtm_flows as sf
from sbtm_flows.dynamics import SBTMFlow
from sbtm_flows.score import ScoreMLP

MEAN = torch.tensor([1.0, -0.5])
G2 = sf.Gaussian(MEAN, torch.tensor([[1.0, 0.3], [0.3, 0.5]]))
LOG_Z = 3.0
G2_UNNORMALISED = sf.from_log_prob(lambda x: G2.log_prob(x) + LOG_Z, 2)  # log Z = 3
SHORT = dict(n=100, t_final=0.3, dt=0.02, seed=3, track_logdensity=True)


def pair(m: int = 200, **kw) -> tuple[sf.Result, sf.Result]:
    """The same run without and with m held-out particles."""
    args = {**SHORT, **kw}
    return sf.sample(G2, **args), sf.sample(G2, holdout=m, **args)


def assert_training_run_equal(a: sf.Result, b: sf.Result) -> None:
    assert torch.equal(a.trajectory, b.trajectory)
    assert torch.equal(a.thetas, b.thetas)
    if a.log_density_trajectory is not None:
        assert torch.equal(a.log_density_trajectory, b.log_density_trajectory)
    assert a.nfe == b.nfe
    for name in sf.diagnostics.SCORE_DIAGNOSTICS:  # score diagnostics stay on the training particles
        assert torch.equal(a.diagnostics[name], b.diagnostics[name])


# ---- invariance of the training run ------------------------------------------------------
@pytest.mark.parametrize("training", ["flow", "steps"])
@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_heun2_training_run_is_bitwise_unchanged(training, divergence):
    # the training block is computed by the same calls on the same tensors, and a Runge–Kutta
    # update is elementwise, so appending held-out components cannot change a single bit;
    # held-out probes come from their own generator, so the training probe stream is unchanged
    a, b = pair(training=training, divergence=divergence, probes=2)
    assert_training_run_equal(a, b)
    for name in ("log_z", "ess", "kl_plus_logz"):  # the training-particle values keep their numbers
        assert torch.equal(a.diagnostics[name], b.diagnostics[name + "_train"])
        assert not torch.equal(a.diagnostics[name], b.diagnostics[name])
    assert b.holdout_particles.shape == (200, 2) and b.holdout_trajectory.shape == (len(b.times), 200, 2)
    assert b.holdout_log_density.shape == (200,) and b.holdout_log_density_trajectory.shape == (len(b.times), 200)
    assert torch.equal(b.holdout_particles, b.holdout_trajectory[-1])
    assert "held-out" in b.info["density_diagnostics"]
    assert a.holdout_particles is None and "log_z_train" not in a.diagnostics


@pytest.mark.parametrize("solver", ["euler", "rk4", "explicit_adams"])
def test_other_fixed_step_solvers_bitwise_float64(solver):
    assert_training_run_equal(*pair(solver=solver, dtype=torch.float64, t_final=0.1))


@pytest.mark.parametrize(("training", "dtype", "tol_x"), [("flow", torch.float64, 5e-5), ("flow", torch.float32, 1e-3)])
def test_dopri5_training_run_within_tolerance(training, dtype, tol_x):
    # the held-out block is in dopri5's error norm (so its ℓ̃ is integrated to rtol/atol too):
    # the accepted steps differ, so the training run moves by O(tolerance), not bitwise.
    # Measured (rtol 1e-5, atol 1e-6): |ΔX| 1.4e-6 / |ΔΘ| 7.2e-6 (f64)
    a, b = pair(solver="dopri5", training=training, dtype=dtype)
    assert float((a.trajectory - b.trajectory).abs().max()) < tol_x
    assert float((a.thetas - b.thetas).abs().max()) < 1e-4


# ---- calibration ---------------------------------------------------------------------------
def test_held_out_log_z_is_calibrated_where_training_particles_are_biased():
    # d = 5 version of benchmarks/logdensity_hutchinson.py (N(0.5·1, diag(0.5..2)), log Z = 0,
    # n = 200, m = 500, T = 2, dt = 0.05, eta = 2, exact divergence).  Seeds 0-9 measured:
    # held-out log Z error in [-0.064, +0.048] (sd 0.035), training-particle error +0.31..+0.91
    # and a training "KL" estimate < 0 (impossible: ℓ drifts low where s_Θ was trained);
    # held-out KL 0.26..0.35.
    d = 5
    g = sf.Gaussian(0.5 * torch.ones(d), torch.diag(torch.linspace(0.5, 2.0, d)))
    for seed in (0, 1):
        res = sf.sample(g, n=200, holdout=500, t_final=2.0, dt=0.05, eta=2.0, track_logdensity=True, seed=seed)
        diag = {k: float(v[-1]) for k, v in res.diagnostics.items()}
        assert abs(diag["log_z"]) < 0.15
        assert diag["log_z_train"] > 0.3
        assert 0.1 < diag["kl"] < 0.5 and diag["kl_train"] < 0.0
        assert diag["ess"] > 0.4


@pytest.mark.parametrize("training", ["flow", "steps"])
def test_known_log_z_2d_and_importance_uses_held_out(training):
    # 2-D Gaussian, log_prob + 3 (log Z = 3), n = 200, m = 500, T = 2: seeds 0-5 measured held-out
    # errors within ±0.023 (flow and steps), training-particle errors +0.02..+1.23
    flow_eta = {"eta": 2.0} if training == "flow" else {}  # the discrete training has no eta (refused)
    res = sf.sample(G2_UNNORMALISED, n=200, holdout=500, t_final=2.0, dt=0.05, track_logdensity=True,
                    seed=0, training=training, **flow_eta)
    log_z = float(res.diagnostics["log_z"][-1])
    assert abs(log_z - LOG_Z) < 0.08
    est = sf.importance(res, lambda x: x)
    assert est.log_z == pytest.approx(log_z, abs=1e-12) and est.weights.shape == (500,)
    assert ((est.value - MEAN.double()).abs() < 4 * est.stderr).all()
    train = sf.importance(res, lambda x: x, particles="train")
    assert train.log_z == pytest.approx(float(res.diagnostics["log_z_train"][-1]), abs=1e-12)
    assert train.weights.shape == (200,)
    explicit = sf.importance(res, lambda x: x[:, 0], target=G2_UNNORMALISED, particles="holdout")
    assert explicit.log_z == pytest.approx(log_z, abs=1e-5)


# ---- without log-density, generator, results ----------------------------------------------
def test_holdout_without_track_logdensity_gives_particles_only():
    a, b = pair(track_logdensity=False)
    assert_training_run_equal(a, b)
    assert b.holdout_particles.shape == (200, 2)
    assert b.holdout_log_density is None and b.holdout_log_target is None
    assert set(b.diagnostics) == set(a.diagnostics) | {"holdout_lost", "holdout_escaped"}
    assert not b.diagnostics["holdout_lost"].any() and not b.diagnostics["holdout_escaped"].any()
    with pytest.raises(ValueError, match="log-density"):
        sf.importance(b, lambda x: x)


def test_held_out_draws_are_reproducible_and_fresh():
    r1 = sf.sample(G2, holdout=50, **SHORT)
    r2 = sf.sample(G2, holdout=50, **SHORT)
    r3 = sf.sample(G2, holdout=50, **{**SHORT, "seed": 4})
    x0 = r1.holdout_trajectory[0]
    assert torch.equal(x0, r2.holdout_trajectory[0]) and not torch.equal(x0, r3.holdout_trajectory[0])
    assert torch.cdist(x0, r1.trajectory[0]).min() > 0  # not copies of training particles
    # they move with the flow: same velocity field as the training particles
    assert float((r1.holdout_particles - x0).abs().max()) > 0.01


def test_save_load_keeps_held_out(tmp_path):
    res = sf.sample(G2, holdout=30, **{**SHORT, "t_final": 0.06})
    res.save(tmp_path / "r.pt")
    back = sf.load(tmp_path / "r.pt")
    for name in ("holdout_particles", "holdout_trajectory", "holdout_log_density", "holdout_log_target"):
        assert torch.equal(getattr(back, name), getattr(res, name))


@pytest.mark.parametrize("training", ["flow", "steps"])
def test_checkpoint_resume_is_bitwise_with_holdout(tmp_path, training):
    kw = dict(n=60, holdout=40, t_final=0.3, dt=0.02, save_every=2, seed=3, training=training,
              track_logdensity=True, divergence="hutchinson")
    full = sf.sample(G2, **kw)
    ck = tmp_path / "ck.pt"
    with pytest.raises(sf.SamplingError, match="max_nfe"):
        sf.sample(G2, checkpoint=ck, checkpoint_every=2, max_nfe=15, **kw)
    resumed = sf.sample(G2, checkpoint=ck, checkpoint_every=2, resume=True, **kw)
    assert torch.equal(resumed.trajectory, full.trajectory)
    assert torch.equal(resumed.holdout_trajectory, full.holdout_trajectory)
    assert torch.equal(resumed.holdout_log_density_trajectory, full.holdout_log_density_trajectory)
    assert torch.equal(resumed.diagnostics["log_z"], full.diagnostics["log_z"])
    with pytest.raises(ValueError, match="holdout"):
        sf.sample(G2, checkpoint=ck, resume=True, **{**kw, "holdout": 10})


# ---- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [-1, 1.5, True, "3", None])
def test_bad_holdout_values(bad):
    with pytest.raises(ValueError, match="holdout must be a non-negative integer"):
        sf.sample(G2, holdout=bad, **SHORT)


def test_holdout_needs_an_initial_law():
    with pytest.raises(ValueError, match="holdout=5 draws fresh particles"):
        sf.sample(G2, init=torch.randn(20, 2), holdout=5, t_final=0.1)


def test_importance_particle_choice_errors():
    res = sf.sample(G2, **{**SHORT, "t_final": 0.04})
    with pytest.raises(ValueError, match="unknown particles 'both'"):
        sf.importance(res, lambda x: x, particles="both")
    with pytest.raises(ValueError, match="holdout=m"):
        sf.importance(res, lambda x: x, particles="holdout")
    assert sf.importance(res, lambda x: x).weights.shape == (100,)  # auto falls back to training


def test_dynamics_state_layout_and_errors():
    flow = SBTMFlow(G2, ScoreMLP(2, (8,)), holdout=3, track_logdensity=True)
    x0, xh = torch.randn(5, 2), torch.randn(3, 2)
    y = flow.initial_state(x0, log_density0=torch.zeros(5), holdout_x0=xh, holdout_log_density0=torch.ones(3))
    assert y.shape == (5 * 2 + flow.n_params + 5 + 3 * 2 + 3,)
    assert flow.n_particles(y) == 5 and torch.equal(flow.split(y)[0], x0)
    assert torch.equal(flow.log_density(y), torch.zeros(5))
    xh_, lh = flow.split_holdout(y)
    assert torch.equal(xh_, xh) and torch.equal(lh, torch.ones(3))
    assert flow(torch.tensor(0.0), y).shape == y.shape
    with pytest.raises(ValueError, match=r"holdout_x0 of shape \(3, 2\)"):
        flow.initial_state(x0, log_density0=torch.zeros(5))
    with pytest.raises(ValueError, match="holdout must be a non-negative integer"):
        SBTMFlow(G2, ScoreMLP(2, (8,)), holdout=-2)


class _NaNBeyond(sf.Path):
    """The score of N(0, 1), NaN at x > 3 (a target whose score fails far out)."""

    def __init__(self):
        super().__init__()
        self.target = sf.Gaussian(torch.zeros(1), 1.0)

    def score(self, x, t):
        return torch.where(x > 3.0, torch.full_like(x, float("nan")), -x)


@pytest.mark.parametrize("solver", ["heun2", "dopri5"])
def test_lost_held_out_particles_are_frozen_not_fatal(solver):
    # held-out particles beyond x = 3 meet a NaN score: they are frozen and counted, the run
    # (training particles, all < 3) goes on, and the density diagnostics use the others only
    path = _NaNBeyond()
    res = sf.sample(path, init=sf.Gaussian(torch.zeros(1), 1.0), n=100, t_final=0.2, dt=0.02, seed=0, holdout=3000,
                    track_logdensity=True, solver=solver, save_every=5, init_steps=300)
    assert float(res.trajectory[0].max()) < 3.0
    x0 = res.holdout_trajectory[0, :, 0]
    beyond = int((x0 > 3.0).sum())
    assert beyond >= 1
    lost = res.diagnostics["holdout_lost"]
    assert lost[0] == beyond and lost[-1] == beyond
    frozen = x0 > 3.0
    assert torch.equal(res.holdout_particles[frozen, 0], x0[frozen])  # they did not move
    assert torch.isfinite(res.diagnostics["log_z"]).all() and torch.isfinite(res.diagnostics["ess"]).all()
    # the others moved with the flow, as in a run without a failing region (f_0 = π, v ≈ 0)
    assert float(res.diagnostics["log_z"][-1]) == pytest.approx(0.0, abs=0.05)
    # the result carries the mask, and importance leaves the frozen particles out
    assert torch.equal(res.holdout_lost, frozen)
    est = sf.importance(res, lambda x: x[:, 0])
    assert float(est.weights[frozen].abs().sum()) == 0.0 and est.weights.shape == (3000,)
    assert est.log_z == pytest.approx(float(res.diagnostics["log_z"][-1]), abs=1e-9)
