"""Annealing paths: Geometric, Dilation, schedules, λ-aware grid."""

import math

import pytest
import torch

import sbtm_flows as sf
from sbtm_flows.paths import SCHEDULES, make_schedule
from sbtm_flows.targets import autograd_laplacian, autograd_score

MIX = sf.GaussianMixture(torch.tensor([[-2.0, 0.0], [3.0, 1.0]], dtype=torch.float64), torch.tensor([1.0, 0.5]),
                         torch.tensor([0.3, 0.7]))
INIT = sf.Gaussian(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
X = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3


def test_geometric_score_is_the_interpolation_and_matches_log_prob():
    path = sf.Geometric(INIT, MIX, t_final=4.0)
    assert torch.allclose(path.score(X, 0.0), INIT.score(X))
    assert torch.allclose(path.score(X, 4.0), MIX.score(X))
    assert torch.allclose(path.score(X, 9.0), MIX.score(X))  # constant after t_final
    lam = 0.25
    assert torch.allclose(path.score(X, 1.0), (1 - lam) * INIT.score(X) + lam * MIX.score(X))
    assert torch.allclose(path.score(X, 1.0), autograd_score(lambda y: path.log_prob(y, 1.0), X), atol=1e-10)
    assert torch.allclose(path.laplacian(X, 1.0), autograd_laplacian(lambda y: path.score(y, 1.0), X), atol=1e-10)


def test_dilation_is_the_scaled_law():
    path = sf.Dilation(MIX, t_final=2.0, lam0=0.1)
    assert path.lam(0.0) == pytest.approx(0.1) and path.lam(2.0) == 1.0 and path.lam(1.0) == pytest.approx(0.55)
    t = 0.5
    lam = path.lam(t)
    assert torch.allclose(path.score(X, t), autograd_score(lambda y: path.log_prob(y, t), X), atol=1e-10)
    assert torch.allclose(path.laplacian(X, t), autograd_laplacian(lambda y: path.score(y, t), X), atol=1e-8)
    # π_t is the law of λY, Y ~ π: for a Gaussian π = N(m, C), π_t = N(λm, λ²C), normalised
    g = sf.Gaussian(torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([[2.0, 0.3], [0.3, 1.0]], dtype=torch.float64))
    gt = sf.Gaussian(lam * g.mean, lam**2 * g.cov)
    dil = sf.Dilation(g, t_final=2.0, lam0=0.1)
    assert torch.allclose(dil.log_prob(X, t), gt.log_prob(X), atol=1e-10)
    assert torch.allclose(dil.score(X, t), gt.score(X), atol=1e-10)
    assert torch.allclose(dil.laplacian(X, t), gt.laplacian(X), atol=1e-10)


@pytest.mark.parametrize("name", [*SCHEDULES, "exponential", lambda u: u**3])
def test_schedules_run_from_lam0_to_one_monotonically(name):
    lam = make_schedule(name, 5.0, 0.1)
    vals = [lam(t) for t in torch.linspace(0, 5, 51).tolist()]
    assert vals[0] == pytest.approx(0.1) and vals[-1] == pytest.approx(1.0)
    assert all(b >= a - 1e-12 for a, b in zip(vals, vals[1:]))


def test_bad_schedules_and_lam0_raise():
    with pytest.raises(ValueError, match="'nope'"):
        make_schedule("nope", 1.0)
    with pytest.raises(ValueError, match="sigma"):
        make_schedule(lambda u: u + 0.5, 1.0)
    with pytest.raises(ValueError, match="lam0"):
        sf.Dilation(MIX, t_final=1.0, lam0=0.0)
    with pytest.raises(ValueError, match="t_final"):
        sf.Geometric(INIT, MIX, t_final=-1.0)
    with pytest.raises(ValueError, match="dimension"):
        sf.Geometric(sf.Gaussian(torch.zeros(3), 1.0), MIX)


@pytest.mark.parametrize("schedule", ["linear", "exponential", "cosine"])
def test_dilation_grid_steps_shrink_like_lambda_squared(schedule):
    path = sf.Dilation(MIX, t_final=10.0, lam0=0.05, schedule=schedule, lam_ref=0.5)
    dt = 0.05
    grid = path.time_grid(0.0, 10.0, dt)
    assert grid[0] == 0.0 and grid[-1] == 10.0 and bool((grid[1:] > grid[:-1]).all())
    h = grid[1:] - grid[:-1]
    lam = torch.tensor([path.lam(t) for t in grid[:-1].tolist()], dtype=torch.float64)
    bound = dt * torch.clamp(lam / 0.5, max=1.0) ** 2
    assert bool((h <= bound * (1 + 1e-9)).all())
    assert float(h[0]) > 0.4 * float(bound[0])  # not wastefully small either
    assert float(h.max()) == pytest.approx(dt, rel=0.05)
    # a sub-interval gives a grid on that interval
    sub = path.time_grid(2.0, 3.0, dt)
    assert sub[0] == 2.0 and sub[-1] == 3.0


@pytest.mark.parametrize("method", ["ula", "sbtm"])
def test_dilation_default_settings_do_not_blow_up(method):
    # the 16-mode grid scaled by λ₀ = 0.1: score ~ 1/λ² at the start
    g = torch.tensor([-6.0, -2.0, 2.0, 6.0])
    target = sf.GaussianMixture(torch.cartesian_prod(g, g), 1.0)
    path = sf.Dilation(target, t_final=1.0)
    extra = {"init_steps": 200} if method == "sbtm" else {}
    res = sf.sample(path, method=method, init=sf.Gaussian(torch.zeros(2), torch.eye(2)), n=100, t_final=1.0, seed=0, **extra)
    assert bool(torch.isfinite(res.trajectory).all())
    # at λ(0.5) = 0.55 the particles sit inside the scaled grid [−6λ−3λ, 6λ+3λ]
    assert float(res.at(0.5).abs().max()) < 9 * path.lam(0.5) + 1.0


def test_user_path_with_time_dependent_score_runs_in_both_methods():
    class Moving:
        dim = 1

        def score(self, x, t):
            return -(x - t)

    for method in ("ula", "sbtm"):
        res = sf.sample(Moving(), method=method, init=sf.Gaussian(torch.zeros(1), 1.0), n=2000, t_final=3.0, seed=0,
                        **({"init_steps": 300} if method == "sbtm" else {}))
        # mean m' = t − m, m(0) = 0 ⇒ m(3) = 3 − 1 + e^{−3}
        assert float(res.particles.mean()) == pytest.approx(2 + math.exp(-3), abs=0.08)


def test_dilation_t_start_is_the_papers_parametrisation():
    # π(Tx/t) started at t_start: λ(0) = t_start/T, λ linear to 1 at T
    target = sf.Gaussian(torch.zeros(2), 1.0)
    path = sf.Dilation(target, t_final=20.0, t_start=2.0)
    assert path.lam(0.0) == pytest.approx(0.1) and path.lam(20.0) == pytest.approx(1.0)
    assert path.lam(10.0) == pytest.approx(0.1 + 0.9 * 0.5)
    with pytest.raises(ValueError, match="not both"):
        sf.Dilation(target, t_final=20.0, t_start=2.0, lam0=0.1)
    with pytest.raises(ValueError, match="t_start"):
        sf.Dilation(target, t_final=20.0, t_start=25.0)
