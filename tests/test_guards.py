"""A target that is NaN on part of the space stops the run (issue 12, item 4)."""

import math
import re

import pytest
import torch

import sbtm_flows as sf
from sbtm_flows.guards import check_target_finite


def _half_nan(x):
    # the case: log π defined by torch.where with NaN on a half-plane; autograd gives
    # score 0 there, so particles that drift in stay
    return torch.where(x[:, 0] < -1.0, -0.5 * (x**2).sum(-1), torch.full_like(x[:, 0], float("nan")))


TARGET = sf.from_log_prob(_half_nan, 2)
INIT = sf.Gaussian(torch.tensor([-3.5, 0.0]), 0.25 * torch.eye(2))


@pytest.mark.parametrize("method, kw", [("ula", {}), ("sbtm", dict(init_steps=50, eta=0.5)), ("sbtm", dict(init_steps=50, training="steps"))])
def test_a_target_nan_on_half_the_space_stops_the_run_naming_t_count_and_x(method, kw):
    with pytest.raises(sf.SamplingError) as e:
        sf.sample(TARGET, method=method, init=INIT, n=200, t_final=3.0, dt=0.02, seed=0, **kw)
    msg, t = str(e.value), e.value.t
    assert "log π is NaN/inf" in msg and t is not None and 0.0 < t < 3.0  # caught on the way, not at the start
    count, n = map(int, re.search(r"at (\d+) of (\d+) particles", msg).groups())
    assert 1 <= count <= n == 200
    x = [float(v) for v in re.search(r"x=\[([^\]]*)\]", msg).group(1).split(",")]
    assert x[0] >= -1.0  # the example lies where log π is NaN
    assert f"t={t:.6g}" in msg


def test_check_target_finite_counts_rows_and_checks_the_score_too():
    x = torch.tensor([[-2.0, 0.0], [0.0, 0.0], [3.0, 1.0]])
    with pytest.raises(sf.SamplingError, match="at 2 of 3 particles at t=0.5"):
        check_target_finite(sf.as_path(TARGET), x, 0.5)
    check_target_finite(sf.as_path(TARGET), x[:1], 0.5)
    inf_score = sf.from_score(lambda y: torch.where(y > 0, torch.inf, -y), 2)  # no log_prob: the score is checked
    with pytest.raises(sf.SamplingError, match="score ∇log π is NaN/inf at 1 of 3"):
        check_target_finite(sf.as_path(inf_score), x, 0.0, chunk=2)


def test_a_log_prob_returning_a_float_is_refused_clearly():
    float_target = sf.from_log_prob(lambda y: 0.0, 2)
    with pytest.raises(ValueError, match="one row per particle"):
        check_target_finite(sf.as_path(float_target), torch.zeros(4, 2), 0.0)


def test_escaping_held_out_particles_are_flagged_and_regular_ones_are_not():
    from sbtm_flows.guards import holdout_outliers

    g = torch.Generator().manual_seed(0)
    x, xh = torch.randn(1000, 2, generator=g), torch.randn(300, 2, generator=g)
    ell, ellh = -0.5 * (x**2).sum(-1), -0.5 * (xh**2).sum(-1)
    xh[7] = torch.tensor([0.3, 350.0])  # the banana escapee: x₂ ≈ 350 ...
    ellh[11] = 1400.0  # ... and a tracked log-density ≈ +1400 at an ordinary position
    ellh[12] = float("nan")
    ellh[13] = -1400.0  # a very low ℓ weighs nothing: kept
    out = holdout_outliers(x, xh, ell, ellh)
    assert out.nonzero().flatten().tolist() == [7, 11, 12]
    assert holdout_outliers(x, xh).nonzero().flatten().tolist() == [7]  # positions only


def test_a_run_with_held_out_particles_counts_escapes_without_false_alarms():
    res = sf.sample(sf.Gaussian(torch.zeros(2), torch.eye(2)), init=sf.Gaussian(torch.zeros(2), 0.5 * torch.eye(2)), n=300,
                    holdout=300, track_logdensity=True, t_final=0.2, dt=0.02, init_steps=200, seed=0)
    assert res.diagnostics["holdout_escaped"].shape == res.times.shape
    assert float(res.diagnostics["holdout_escaped"].sum()) == 0.0
    assert torch.isfinite(res.diagnostics["log_z"]).all()


def _repel_beyond(x):
    """log N(0, 1) for x ≤ 3, growing like 5x² beyond (score +10x: particles out there fly off)."""
    y = x[:, 0]
    return torch.where(y > 3.0, -4.5 + 5.0 * (y**2 - 9.0), -0.5 * y**2) - 0.5 * math.log(2 * math.pi)


def test_held_out_particles_that_escape_are_excluded_and_counted():
    res = sf.sample(sf.from_log_prob(_repel_beyond, 1), init=sf.Gaussian(torch.zeros(1), 1.0), n=100, t_final=0.4, dt=0.02, seed=0, holdout=3000,
                    track_logdensity=True, save_every=5, init_steps=300)
    assert float(res.trajectory[:, :, 0].max()) < 3.0  # the training particles stay inside
    x0 = res.holdout_trajectory[0, :, 0]
    out = x0 > 3.0
    assert int(out.sum()) >= 1 and float(res.holdout_particles[out].abs().min()) > 30  # they escaped
    assert res.diagnostics["holdout_escaped"][-1] == int(out.sum())
    # the others give log Z ≈ 0 (f_0 = π); kept, the escapees (log π̃ − ℓ ≈ +10⁴) would dominate it
    assert float(res.diagnostics["log_z"][-1]) == pytest.approx(0.0, abs=0.05)
    est = sf.importance(res, lambda x: x[:, 0])
    assert float(est.weights[out].abs().sum()) == 0.0


# ---- stiffness of the particle block --------------------------------------------------------
NARROW = sf.Gaussian(torch.zeros(2), 1e-6 * torch.eye(2))  # N(0, 1e-3²)
NARROW_MODE = sf.GaussianMixture(torch.tensor([[0.0, 0.0], [3.0, 3.0]]), torch.tensor([1e-3, 1.0]))  # 50 % of sd 1e-3


@pytest.mark.parametrize("target", [NARROW, NARROW_MODE], ids=["narrow", "narrow-mode"])
@pytest.mark.parametrize("method, kw", [("ula", {}), ("sbtm", dict(init_steps=20)), ("sbtm", dict(init_steps=20, training="steps"))])
def test_a_stiff_particle_block_is_refused_naming_x_and_the_stable_step(target, method, kw):
    init = sf.Gaussian(torch.full((2,), 3.0), torch.eye(2))
    with pytest.raises(sf.SamplingError) as e:
        sf.sample(target, method=method, init=init, n=100, t_final=0.5, dt=0.01, seed=0, **kw)
    msg = str(e.value)
    assert "particle block X is stiff" in msg, msg
    stable = float(re.search(r"use dt <= ([0-9.e+-]+)", msg).group(1))
    assert stable == pytest.approx(2.0 * 1e-6, rel=0.05)  # c/λ with λ = 1/σ² = 10⁶
    assert ("lowering eta does not help" in msg) == (method == "sbtm")


def test_particle_curvature_is_the_largest_hessian_eigenvalue():
    from sbtm_flows.guards import particle_curvature

    cov = torch.tensor([[2.0, 0.3], [0.3, 0.1]], dtype=torch.float64)
    target = sf.Gaussian(torch.zeros(2, dtype=torch.float64), cov)
    lam, _ = particle_curvature(sf.as_path(target), torch.randn(50, 2, dtype=torch.float64), 0.0, iters=50)
    assert lam.shape == (50,)
    assert float(lam.max()) == pytest.approx(float(torch.linalg.eigvalsh(torch.linalg.inv(cov)).max()), rel=1e-6)


def test_particle_curvature_counts_only_negative_eigenvalues():
    from sbtm_flows.guards import particle_curvature

    # two narrow modes (sd 0.5) at ±3 on the first axis, sd 0.25 on the second: at the midpoint
    # ∇²log π has a positive eigenvalue 9/0.25² − 1/0.25 = 140 (the saddle between the modes) and a
    # negative one −1/0.25² = −16; only the negative one limits an explicit step
    means = torch.tensor([[-3.0, 0.0], [3.0, 0.0]], dtype=torch.float64)
    sds = torch.tensor([[0.5, 0.25], [0.5, 0.25]], dtype=torch.float64)
    target = sf.from_log_prob(lambda x: torch.logsumexp(torch.stack([(-0.5 * ((x - m) / s) ** 2).sum(-1) for m, s in zip(means, sds)]), 0), dim=2)
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0]], dtype=torch.float64)
    lam, _ = particle_curvature(sf.as_path(target), x, 0.0, iters=60, generator=torch.Generator().manual_seed(0))
    assert lam.tolist() == pytest.approx([16.0, 16.0], rel=1e-4)


def test_a_fine_step_passes_and_the_record_survives_resume(tmp_path):
    kw = dict(method="ula", init=sf.Gaussian(torch.zeros(2), torch.eye(2)), n=50, t_final=0.2, dt=0.02, seed=0)
    target = sf.Gaussian(torch.zeros(2), 0.25 * torch.eye(2))  # λ = 4: dt·λ = 0.08
    full = sf.sample(target, **kw)
    rec = full.info["stiffness_x"]
    assert rec["max_dt_lambda"] == pytest.approx(0.08, rel=1e-4) and rec["solver_limit"] == 2.0
    with pytest.raises(sf.SamplingError, match="max_nfe"):
        sf.sample(target, checkpoint=tmp_path / "c.ckpt", checkpoint_every=2, max_nfe=5, **kw)
    resumed = sf.sample(target, checkpoint=tmp_path / "c.ckpt", resume=True, **kw)
    assert resumed.info["stiffness_x"] == rec and torch.equal(resumed.trajectory, full.trajectory)


def test_the_network_block_stiffness_record_survives_resume(tmp_path):
    kw = dict(init=sf.Gaussian(torch.zeros(2), 0.5 * torch.eye(2)), n=60, t_final=0.12, dt=0.02, init_steps=50, seed=0,
              training="flow", save_every=1)
    full = sf.sample(sf.Gaussian(torch.zeros(2), torch.eye(2)), **kw)
    assert full.info["stiffness"]["max_eta_lambda_dt"] > 0
    with pytest.raises(sf.SamplingError, match="max_nfe"):
        sf.sample(sf.Gaussian(torch.zeros(2), torch.eye(2)), checkpoint=tmp_path / "c.ckpt", checkpoint_every=1, max_nfe=8, **kw)
    resumed = sf.sample(sf.Gaussian(torch.zeros(2), torch.eye(2)), checkpoint=tmp_path / "c.ckpt", resume=True, **kw)
    assert torch.equal(resumed.trajectory, full.trajectory)
    assert resumed.info["stiffness"] == full.info["stiffness"]


def test_a_mild_excess_at_a_few_particles_warns_once_instead_of_refusing():
    # the curvature is 1/σ² = 4 in a small ball around 0 only, else 1 (a sharp spot the particles cross)
    def log_prob(x):
        r2 = (x**2).sum(-1)
        return torch.where(r2 < 0.04, -2.0 * r2, -0.5 * r2 - 0.06)

    kw = dict(method="ula", init=sf.Gaussian(torch.zeros(2), torch.eye(2)), n=400, t_final=1.2, dt=0.6, seed=0)
    with pytest.warns(RuntimeWarning, match="particle block X is stiff") as w:
        sf.sample(sf.from_log_prob(log_prob, 2), **kw)  # dt·λ = 2.4 at ~1 % of the particles
    assert sum("particle block" in str(r.message) for r in w) == 1


def test_ula_on_posteriordb_ark_at_the_default_step_is_refused():
    # once: mean 82, sd 514 of finite garbage; the posterior's curvature at the particles is ~10⁵
    ark = sf.posteriordb.load("arK")
    with pytest.raises(sf.SamplingError, match=r"particle block X is stiff for 'euler' at t=0: dt·\(−λ_min.*use dt <= "):
        sf.sample(ark, method="ula", n=100, t_final=1.0, seed=0)


def test_a_log_prob_returning_a_float_is_refused_by_sample():
    with pytest.raises(ValueError, match="log_prob must return a torch tensor of shape \\(10,\\).*got float"):
        sf.sample(sf.from_log_prob(lambda y: 0.0, 2), method="ula", n=10)


def test_the_stiffness_monitors_look_every_50_steps_between_far_apart_output_times(monkeypatch):
    from sbtm_flows.stiffness import StiffnessMonitor

    seen = []
    real = StiffnessMonitor.estimate

    def spy(self, y, iters=None, t=None):
        seen.append(round(float(t), 6))
        return real(self, y, iters, t)

    kw = dict(init=sf.Gaussian(torch.zeros(2), 0.5 * torch.eye(2)), n=40, t_final=2.0, dt=0.01, init_steps=20, seed=0,
              training="flow", save_every=200)
    monkeypatch.setattr(StiffnessMonitor, "estimate", spy)
    res = sf.sample(sf.Gaussian(torch.zeros(2), torch.eye(2)), **kw)
    assert seen == [0.0, 0.5, 1.0, 1.5]  # pre-run, then every 50 steps although the outputs are 200 steps apart
    monkeypatch.undo()
    off = sf.sample(sf.Gaussian(torch.zeros(2), torch.eye(2)), stiffness_check=False, **kw)
    assert torch.equal(res.trajectory, off.trajectory)  # integrating in pieces changes nothing
