"""The 1-D Fokker–Planck reference solver against the exact solution of paper (5.1)."""

import math

import pytest
import torch

import sbtm_flows as sf

TARGET = sf.Gaussian(torch.zeros(1), 1.0)
INIT = sf.Gaussian(torch.zeros(1), 1 - math.exp(-0.2))


def exact_var(t):
    return 1 - math.exp(-2 * (t + 0.1))


@pytest.mark.parametrize(("dt", "tol"), [(1e-2, 6e-3), (1e-3, 6e-4)])
def test_variance_of_the_ou_flow_converges_first_order(dt, tol):
    # measured relative variance errors: 4.3e-3 / 2.5e-3 / 6e-4 (dt 1e-2), 10× smaller at dt 1e-3
    times = [0.0, 0.5, 1.0, 2.0]
    sol = sf.fokker_planck.fokker_planck_1d(TARGET, INIT.log_prob, 2.0, times=times, dt=dt, x_max=10.0, m=2000)
    for k, t in enumerate(times):
        assert sol.moment(0, k) == pytest.approx(1.0, abs=1e-10)  # mass is conserved exactly
        assert abs(sol.moment(2, k) / exact_var(t) - 1) < tol
        assert abs(sol.moment(1, k)) < 1e-10
    # the density itself: L1 distance to N(0, v(2)) on the grid
    exact = torch.exp(-sol.x**2 / (2 * exact_var(2.0))) / math.sqrt(2 * math.pi * exact_var(2.0))
    assert float((sol.density[-1] - exact).abs().sum() * sol.h) < 5 * tol


def test_target_is_stationary_and_annealed_mass_split():
    mix = sf.GaussianMixture(torch.tensor([[-2.0], [2.0]]), 1.0, torch.tensor([0.25, 0.75]))
    sol = sf.fokker_planck.fokker_planck_1d(mix, mix.log_prob, 1.0, dt=0.05, x_max=10.0, m=1000)
    torch.testing.assert_close(sol.density[-1], sol.density[0], atol=1e-12, rtol=1e-9)
    assert sol.prob(lambda x: x > 0) == pytest.approx(0.25 * 0.0228 + 0.75 * 0.9772, abs=1e-3)


def test_bad_input():
    with pytest.raises(ValueError, match="1-D"):
        sf.fokker_planck.fokker_planck_1d(sf.Gaussian(torch.zeros(2), 1.0), INIT.log_prob, 1.0)
    with pytest.raises(ValueError, match="x_max"):
        sf.fokker_planck.fokker_planck_1d(TARGET, sf.Gaussian(torch.zeros(1), 100.0).log_prob, 1.0, x_max=5.0)
    with pytest.raises(ValueError, match="log_prob"):
        sf.fokker_planck.fokker_planck_1d(sf.from_score(lambda x: -x, 1), INIT.log_prob, 1.0)
