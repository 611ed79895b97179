"""ULA / annealed ULA on torchsde (sbtm_flows.sde)."""

import math

import pytest
import torch
import torchsde
from resume_cases import interrupt_and_resume

import sbtm_flows as sf
from sbtm_flows.sde import SDE_SOLVERS, LangevinSDE, uniform_runs

TARGET = sf.Gaussian(torch.zeros(1), 1.0)
INIT = sf.Gaussian(torch.zeros(1), 1 - math.exp(-0.2))


def exact_var(t: float) -> float:
    """Paper (5.1): f_t = N(0, 1 − e^{−2(t+0.1)})."""
    return 1 - math.exp(-2 * (t + 0.1))


def test_ula_variance_matches_exact_ft_51():
    # acceptance: n = 10,000, dt = 0.01, variance within 3 % at t = 0.5, 1, 2
    res = sf.sample(TARGET, method="ula", init=INIT, n=10_000, t_final=2.0, dt=0.01, seed=0, save_every=50)
    assert res.method == "ula" and res.particles.shape == (10_000, 1)
    for t in (0.5, 1.0, 2.0):
        rel = float(res.at(t).var()) / exact_var(t) - 1
        assert abs(float(res.times[torch.argmin((res.times - t).abs())]) - t) < 1e-12
        assert abs(rel) < 0.03, (t, rel)


def test_euler_is_ula_stationary_variance():
    # Euler–Maruyama on the OU process dX = −X dt + √2 dW has stationary variance 2/(2 − dt)
    # (1.0526 at dt = 0.1), not the exact 1: this tells ULA from an exact solver.
    res = sf.sample(TARGET, method="ula", init=TARGET, n=40_000, t_final=10.0, dt=0.1, seed=1, save_every=100)
    assert float(res.particles.var()) == pytest.approx(2 / (2 - 0.1), rel=0.02)
    assert abs(float(res.particles.var()) - 1.0) > 0.025


@pytest.mark.parametrize("solver", sorted(SDE_SOLVERS))
def test_every_additive_noise_solver_runs(solver):
    res = sf.sample(TARGET, method="ula", init=INIT, n=4000, t_final=1.0, dt=0.02, seed=0, sde_solver=solver, save_every=50)
    assert float(res.particles.var()) == pytest.approx(exact_var(1.0), rel=0.06)
    assert res.info["sde_type"] in ("ito", "stratonovich")


@pytest.mark.parametrize("bad", ["adjoint_reversible_heun", "rk4", "dopri5"])
def test_rejects_solvers_outside_the_additive_table(bad):
    with pytest.raises(ValueError, match=r"valid.*euler.*milstein"):
        sf.sample(TARGET, method="ula", n=10, sde_solver=bad)


def test_same_seed_bitwise_same_particles_on_a_nonuniform_grid():
    path = sf.Dilation(sf.GaussianMixture(torch.tensor([[-2.0], [2.0]]), 1.0), t_final=1.0, lam0=0.2)
    kw = dict(method="ula", init=TARGET, n=300, t_final=1.0, dt=0.02, save_every=7)
    a, b, c = (sf.sample(path, seed=s, **kw) for s in (5, 5, 6))
    assert torch.equal(a.trajectory, b.trajectory)
    assert not torch.equal(a.particles, c.particles)
    assert len(uniform_runs(path.time_grid(0.0, 1.0, 0.02))) > 1  # several sdeint calls really happened


def test_lambda_aware_grid_is_used_by_the_sde():
    path = sf.Dilation(TARGET, t_final=2.0, lam0=0.1)
    res = sf.sample(path, method="ula", init=TARGET, n=50, t_final=2.0, dt=0.05, seed=0)
    grid = path.time_grid(0.0, 2.0, 0.05)
    assert res.info["n_steps"] == grid.numel() - 1 > 2.0 / 0.05
    # π_t = N(0, λ(t)²) here: the end variance is the target's
    assert res.times[-1] == 2.0


def test_no_fisher_information_for_ula():
    res = sf.sample(TARGET, method="ula", init=INIT, n=20, t_final=0.1, seed=0)
    assert res.diagnostics == {}
    assert "Fisher" in res.info["diagnostics"]
    with pytest.raises(ValueError, match="no score network"):
        res.score_model()


def test_nonfinite_score_raises_sampling_error_naming_t():
    bad = sf.from_score(lambda x: torch.where(x > 2.5, torch.nan, -x), 1)
    init = sf.Gaussian(torch.tensor([2.0]), 0.01)
    with pytest.raises(sf.SamplingError, match=r"NaN/inf at \d+ of 200 particles at t=") as err:
        sf.sample(bad, method="ula", init=init, n=200, t_final=5.0, dt=0.01, seed=0)
    assert err.value.t is not None and 0 < err.value.t < 5.0


def test_blow_up_raises_sampling_error():
    explode = sf.from_score(lambda x: x**3, 1)
    with pytest.raises(sf.SamplingError, match=r"t="):
        sf.sample(explode, method="ula", init=TARGET, n=100, t_final=5.0, dt=0.1, seed=0)


def test_langevin_sde_follows_torchsde_protocol():
    sde = LangevinSDE(TARGET)
    assert (sde.noise_type, sde.sde_type) == ("diagonal", "ito")
    x0 = INIT.sample(5000, torch.Generator().manual_seed(0)).float()
    bm = torchsde.BrownianInterval(0.0, 1.0, size=x0.shape, entropy=0)
    xs = torchsde.sdeint(sde, x0, torch.tensor([0.0, 1.0]), bm=bm, dt=0.01, method="euler")
    assert xs.shape == (2, 5000, 1)
    assert float(xs[-1].var()) == pytest.approx(exact_var(1.0), rel=0.06)
    with pytest.raises(ValueError, match="sde_type"):
        LangevinSDE(TARGET, sde_type="weird")


@pytest.mark.parametrize("path", ["constant", "dilation"])
def test_ula_checkpoint_resume_is_bitwise(tmp_path, path):
    # an interrupted run (max_nfe) resumed from its checkpoint ends bitwise where the
    # uninterrupted run ends: the Brownian increments after the checkpoint are the same
    if path == "constant":
        target, kw = TARGET, dict(init=INIT, n=300, t_final=0.6, dt=0.01, save_every=5, seed=4)
    else:
        target = sf.paths.Dilation(sf.Gaussian(torch.zeros(2), 1.0), t_final=1.0, lam0=0.2)
        kw = dict(init=sf.Gaussian(torch.zeros(2), 0.05), n=200, t_final=1.0, dt=0.02, save_every=7, seed=4)
    ck = tmp_path / "ck.pt"
    full, resumed, k_saved = interrupt_and_resume(target, ck, method="ula", **kw)
    assert 0 < k_saved < len(full.times) - 1
    assert torch.equal(resumed.trajectory, full.trajectory)
    assert torch.equal(resumed.times, full.times) and resumed.nfe == full.nfe
    with pytest.raises(ValueError, match="different arguments"):
        sf.sample(target, method="ula", checkpoint=ck, resume=True, **{**kw, "seed": 5})


def test_ula_max_nfe_names_the_limit():
    with pytest.raises(sf.SamplingError, match="max_nfe=7"):
        sf.sample(TARGET, method="ula", n=10, t_final=1.0, dt=0.01, max_nfe=7)
