"""Log-density along the flow (issue 6): per-particle log f_t, KL + log Z, log Z, ESS, importance.

Acceptance numbers (see the module-level constants) are asserted on the paper's 5.1 example,
a 2-D Gaussian and the 5.2 mixture with a deliberately unnormalised log_prob (known log Z).
"""

import math

import pytest
import torch

import sbtm_flows as sf
from sbtm_flows.logdensity import (
    density_diagnostics,
    effective_sample_size,
    initial_log_density,
    log_weights,
    log_z_estimate,
    normalised_weights,
)

D64 = torch.float64
LOG_Z = 3.0  # the constant added to the unnormalised log_prob: log Z = LOG_Z


def v51(t: float) -> float:
    """Variance of the exact 5.1 solution f_t = N(0, 1 − e^{−2(t+0.1)})."""
    return 1.0 - math.exp(-2.0 * (t + 0.1))


def log_n01(x: torch.Tensor, v) -> torch.Tensor:
    """log N(x; 0, v) for x ``(..., )``."""
    return -0.5 * x**2 / v - 0.5 * torch.log(2 * math.pi * torch.as_tensor(v, dtype=x.dtype))


def run51(**kw) -> sf.Result:
    """Paper 5.1: π = N(0,1), f_0 = N(0, 1 − e^{−0.2}), n = 1000, exact divergence, dt = 0.01, T = 2,
    rkc (the flow's default; heun2 crosses its stability limit at η = 5 near t = 0.6)."""
    args = dict(
        init=sf.Gaussian(torch.zeros(1), v51(0.0)), n=1000, divergence="exact", solver="rkc", dt=0.01,
        t_final=2.0, track_logdensity=True, seed=1, eta=5.0,
    )
    args.update(kw)
    return sf.sample(sf.Gaussian(torch.zeros(1), 1.0), **args)


@pytest.fixture(scope="module")
def res51() -> sf.Result:
    return run51()


def mae_vs_exact(res: sf.Result) -> float:
    x = res.particles.double()[:, 0]
    return float((res.log_density.double() - log_n01(x, v51(float(res.times[-1])))).abs().mean())


# ---- 5.1 -----------------------------------------------------------------------------
def test_51_log_density_matches_exact_solution(res51):
    # learned flow vs the exact N(0, v_T): < 0.05 (seed 1: 0.040; seeds 0-4 give 0.058, 0.040, 0.047, 0.028, 0.037)
    assert res51.log_density.shape == (1000,)
    assert res51.log_density_trajectory.shape == (len(res51.times), 1000)
    assert mae_vs_exact(res51) < 0.05


def test_51_log_density_is_the_density_of_the_flow_map(res51):
    # independent of how well s is learned: in 1-D the flow map is monotone, so the density of
    # the particles is f_0(X_0) / (dX_T/dX_0); finite differences over ±k neighbours give it
    traj = res51.trajectory.double()[..., 0]
    order = torch.argsort(traj[0])
    x0, xt = traj[0, order], traj[-1, order]
    ld0, ldt = res51.log_density_trajectory.double()[0, order], res51.log_density.double()[order]
    k = 10
    jac = (xt[2 * k :] - xt[: -2 * k]) / (x0[2 * k :] - x0[: -2 * k])
    fd = ld0[k:-k] - torch.log(jac)
    assert float((ldt[k:-k] - fd).abs().mean()) < 0.005


def test_51_kl_plus_logz_decreases_at_the_dissipation_rate(res51):
    d = res51.diagnostics
    for name in ("kl_plus_logz", "log_z", "ess", "kl"):
        assert d[name].shape == res51.times.shape
    # π normalised: kl = kl_plus_logz; at t = 0 it is a sample mean of the exact KL(f_0‖π)
    kl0 = 0.5 * (v51(0.0) - 1.0 - math.log(v51(0.0)))
    assert abs(float(d["kl"][0]) - kl0) < 0.03
    drop = float(d["kl_plus_logz"][0] - d["kl_plus_logz"][-1])
    assert drop == pytest.approx(float(d["kl_decrease"][-1]), rel=0.10)
    assert drop == pytest.approx(kl0, abs=0.03)
    assert float(d["kl"][-1]) < 0.01
    assert abs(float(d["log_z"][-1])) < 0.02 and float(d["ess"][-1]) > 0.95


def test_51_training_modes_and_adaptive_solver_agree(res51):
    steps = run51(training="steps", lr=3e-4, inner_steps=5, save_every=50, eta=None)  # eta is a flow option
    dopri = run51(solver="dopri5", rtol=1e-4, atol=1e-5, save_every=50)
    # same seed => same X_0 and Θ_0; dopri5 must track the same flow as heun2, particle by particle
    assert float((dopri.log_density - res51.log_density).abs().mean()) < 0.01
    for r in (steps, dopri):
        assert mae_vs_exact(r) < 0.06
        assert abs(float(r.diagnostics["log_z"][-1])) < 0.02
        assert float(r.diagnostics["ess"][-1]) > 0.95


# ---- known Z: 2-D Gaussian and the 5.2 mixture ------------------------------------------
def unnormalised(target: sf.Target) -> sf.Target:
    """π̃ = e^{LOG_Z}·π, an autograd target (score and Laplacian by autograd) with log Z = LOG_Z."""
    return sf.from_log_prob(lambda x: target.log_prob(x) + LOG_Z, target.dim)


def gauss2() -> sf.Gaussian:
    return sf.Gaussian(torch.tensor([1.0, -0.5]), torch.tensor([[1.5, 0.6], [0.6, 0.8]]))


def mixture52() -> sf.GaussianMixture:
    return sf.GaussianMixture(torch.tensor([[-2.0], [2.0]]), 1.0, torch.tensor([0.25, 0.75]))


@pytest.fixture(scope="module")
def res_gauss2() -> sf.Result:
    return sf.sample(unnormalised(gauss2()), n=1000, t_final=3.0, dt=0.02, save_every=25, track_logdensity=True, seed=0)


def test_gaussian_2d_log_z(res_gauss2):
    d = res_gauss2.diagnostics
    assert "kl" not in d  # from_log_prob without log_Z: KL itself is unknown
    assert abs(float(d["log_z"][-1]) - LOG_Z) < 0.05
    assert float(d["ess"][-1]) > 0.5
    assert float(d["ess"][-1]) > float(d["ess"][0])
    # Jensen on the same particles: −kl_plus_logz ≤ log_z
    assert (-d["kl_plus_logz"] <= d["log_z"] + 1e-9).all()


def test_importance_estimates_gaussian_moments(res_gauss2):
    g = gauss2()
    est = sf.importance(res_gauss2, lambda x: x)
    assert est.value.shape == (2,) and est.stderr.shape == (2,)
    assert est.log_z == pytest.approx(float(res_gauss2.diagnostics["log_z"][-1]))
    assert est.ess == pytest.approx(float(res_gauss2.diagnostics["ess"][-1]))
    assert float(est.weights.sum()) == pytest.approx(1.0)
    # n = 1000 draws of a law with std ≤ 1.3: 5 standard errors
    assert torch.allclose(est.value, g.mean.double(), atol=5 * 1.3 / math.sqrt(1000 * est.ess))
    second = sf.importance(res_gauss2, lambda x: (x - g.mean.to(x)).prod(-1))  # E(x1-m1)(x2-m2) = 0.6
    assert float(second.value) == pytest.approx(0.6, abs=0.15)
    # the same with an explicitly given target (log π̃ recomputed)
    again = sf.importance(res_gauss2, lambda x: x, target=unnormalised(g))
    torch.testing.assert_close(again.value, est.value, rtol=1e-5, atol=1e-6)


def test_mixture_52_log_z_quick():
    res = sf.sample(unnormalised(mixture52()), n=1000, t_final=5.0, dt=0.02, save_every=50, track_logdensity=True, seed=0)
    assert abs(float(res.diagnostics["log_z"][-1]) - LOG_Z) < 0.15
    assert float(res.diagnostics["ess"][-1]) > 0.5


@pytest.mark.slow
def test_mixture_52_log_z_paper_length():
    res = sf.sample(unnormalised(mixture52()), n=1000, t_final=30.0, dt=0.02, save_every=100, track_logdensity=True, seed=0)
    d = res.diagnostics
    assert abs(float(d["log_z"][-1]) - LOG_Z) < 0.1
    assert float(d["ess"][-1]) > 0.8
    est = sf.importance(res, lambda x: (x[:, 0] > 0).to(x.dtype))  # π(x > 0) ≈ 0.75 + ...
    exact = 0.25 * 0.5 * math.erfc(2 / math.sqrt(2)) + 0.75 * (1 - 0.5 * math.erfc(2 / math.sqrt(2)))
    assert float(est.value) == pytest.approx(exact, abs=4 * float(est.stderr) + 0.01)


# ---- helpers --------------------------------------------------------------------------
def test_log_weight_helpers():
    lw = torch.log(torch.tensor([1.0, 1.0, 2.0, 4.0], dtype=D64))
    assert log_z_estimate(lw) == pytest.approx(math.log(2.0))
    assert effective_sample_size(lw) == pytest.approx(64 / (4 * 22))
    assert effective_sample_size(torch.full((7,), -3.0)) == pytest.approx(1.0)
    assert effective_sample_size(torch.tensor([0.0, -1e4])) == pytest.approx(0.5)
    torch.testing.assert_close(normalised_weights(lw), torch.tensor([1, 1, 2, 4], dtype=D64) / 8)
    # f = π exactly (log π̃ = log π + c): kl_plus_logz = −c, log_z = c, ess = 1, kl = 0
    lp = torch.randn(50, dtype=D64)
    out = density_diagnostics(lp + 2.0, lp, log_Z=2.0)
    assert out["kl_plus_logz"] == pytest.approx(-2.0) and out["log_z"] == pytest.approx(2.0)
    assert out["ess"] == pytest.approx(1.0) and out["kl"] == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(log_weights(lp + 1, lp), torch.ones(50, dtype=D64))


def test_initial_log_density_subtracts_a_known_log_z():
    g = sf.Gaussian(torch.zeros(2, dtype=D64), 2.0)
    x = torch.randn(5, 2, dtype=D64)
    shifted = sf.from_log_prob(lambda y: g.log_prob(y) + 1.5, 2, log_Z=1.5)
    torch.testing.assert_close(initial_log_density(shifted, x), g.log_prob(x))


# ---- bad input and missing pieces -------------------------------------------------------
def test_tensor_init_with_track_logdensity_raises():
    with pytest.raises(ValueError, match="init was given as a tensor"):
        sf.sample(sf.Gaussian(torch.zeros(1), 1.0), init=torch.randn(20, 1), track_logdensity=True, t_final=0.1)


def test_init_without_log_prob_raises():
    init = sf.from_score(lambda x: -x, 1)
    init.sample = lambda n, generator=None: torch.randn(n, 1, generator=generator)
    with pytest.raises(ValueError, match="init.log_prob"):
        sf.sample(sf.Gaussian(torch.zeros(1), 1.0), init=init, n=20, track_logdensity=True, t_final=0.1)


def test_importance_needs_tracked_density_and_log_prob():
    tgt = sf.Gaussian(torch.zeros(1), 1.0)
    kw = dict(n=50, t_final=0.1, dt=0.02, eta=2.0, init_steps=50, seed=0)
    plain = sf.sample(tgt, **kw)
    with pytest.raises(ValueError, match="track_logdensity=True"):
        sf.importance(plain, lambda x: x)
    # a target known only by its score: log f_t is tracked, weights are not available
    res = sf.sample(sf.from_score(lambda x: -x, 1), track_logdensity=True, **kw)
    assert res.log_density.shape == (50,) and "log_z" not in res.diagnostics
    assert "no log_prob" in res.info["density_diagnostics"]
    with pytest.raises(ValueError, match="no log_prob"):
        sf.importance(res, lambda x: x)
    assert sf.importance(res, lambda x: x[:, 0], target=tgt).value.shape == ()
    with pytest.raises(ValueError, match="g must return"):
        sf.importance(res, lambda x: x[:3], target=tgt)


def test_result_save_load_keeps_log_target(tmp_path):
    res = sf.sample(sf.Gaussian(torch.zeros(1), 1.0), n=50, t_final=0.1, dt=0.02, eta=2.0, init_steps=50, track_logdensity=True, seed=0)
    assert res.log_target.shape == (50,)
    res.save(tmp_path / "r.pt")
    back = sf.load(tmp_path / "r.pt")
    assert sf.importance(back, lambda x: x[:, 0]).value == pytest.approx(float(sf.importance(res, lambda x: x[:, 0]).value))
