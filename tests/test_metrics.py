"""Distances between particle clouds, compare_laws, mode statistics."""

import math

import pytest
import torch

import sbtm_flows as sf


def gen(s=0):
    return torch.Generator().manual_seed(s)


def _e_abs_normal(mu: float, sd: float) -> float:
    """E|Z| for Z ~ N(mu, sd²)."""
    return sd * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * sd**2)) + mu * math.erf(mu / (sd * math.sqrt(2)))


def test_energy_distance_exact_cases_and_population_value():
    x, y = torch.zeros(10, 1), torch.ones(7, 1)
    assert sf.metrics.energy_distance(x, y) == pytest.approx(2.0)
    z = torch.randn(50, 3, generator=gen())
    assert sf.metrics.energy_distance(z, z) == pytest.approx(0.0, abs=1e-12)
    # N(0,1) vs N(1,1): 2E|X−Y| − E|X−X'| − E|Y−Y'| with X−Y ~ N(−1, 2), X−X' ~ N(0, 2)
    a = torch.randn(4000, 1, generator=gen(1))
    b = torch.randn(4000, 1, generator=gen(2)) + 1.0
    exact = 2 * _e_abs_normal(1.0, math.sqrt(2)) - 2 * _e_abs_normal(0.0, math.sqrt(2))
    assert sf.metrics.energy_distance(a, b) == pytest.approx(exact, rel=0.05)


def test_sliced_wasserstein_of_a_translation():
    x = torch.randn(500, 2, generator=gen(3), dtype=torch.float64)
    v = torch.tensor([0.6, -0.8], dtype=torch.float64)  # |v| = 1
    # SW₂² = E_θ⟨θ, v⟩² = |v|²/d for a translation (each 1-D projection is a shift)
    sw = sf.metrics.sliced_wasserstein(x, x + v, n_projections=1500, generator=gen(4))
    assert sw == pytest.approx(1 / math.sqrt(2), rel=0.05)
    assert sf.metrics.sliced_wasserstein(x[:, :1], x[:, :1] + 0.5, n_projections=10) == pytest.approx(0.5, rel=1e-9)
    with pytest.raises(ValueError, match="n_projections"):
        sf.metrics.sliced_wasserstein(x, x, n_projections=0)


def test_sinkhorn_divergence_of_a_translation_is_the_squared_shift():
    # with squared-Euclidean cost, OT_ε(x, x + v) = OT_ε(x, x) + |v|², so S_ε = |v|² exactly
    x = torch.randn(300, 2, generator=gen(5), dtype=torch.float64)
    v = torch.tensor([0.3, 0.4], dtype=torch.float64)
    assert sf.metrics.sinkhorn(x, x + v, reg=0.5) == pytest.approx(0.25, rel=1e-3)
    assert sf.metrics.sinkhorn(x, x, reg=0.5) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="reg"):
        sf.metrics.sinkhorn(x, x, reg=0.0)


def test_dimension_mismatch_raises():
    with pytest.raises(ValueError, match="same d"):
        sf.metrics.energy_distance(torch.zeros(3, 2), torch.zeros(3, 1))


@pytest.mark.parametrize("metric", ["energy", "sliced_w2", "sinkhorn"])
def test_compare_laws_floor_separates_equal_from_different_laws(metric):
    law = sf.Gaussian(torch.zeros(2), 1.0)
    x = law.sample(400, gen(6))
    same = sf.compare_laws(x, law, metric=metric, floor_reps=8)
    shifted = sf.compare_laws(x + torch.tensor([1.0, 0.0]), law, metric=metric, floor_reps=8)
    assert same.floor_kind == "reference" and float(same.ratio[0]) < 2.0
    assert float(shifted.ratio[0]) > 4.0


def test_compare_laws_between_results_at_common_times_with_a_permutation_floor():
    target = sf.Gaussian(torch.zeros(1), 1.0)
    a = sf.sample(target, method="ula", init=target, n=500, t_final=1.0, dt=0.05, seed=0, save_every=5)
    b = sf.sample(target, method="ula", init=target, n=400, t_final=1.0, dt=0.05, seed=1, save_every=10)
    cmp = sf.compare_laws(a, b)
    assert cmp.times.tolist() == pytest.approx([0.0, 0.5, 1.0])
    assert cmp.floor_kind == "permutation"
    assert bool((cmp.ratio < 3).all())
    # an analytic law as b: the stationary N(0, 1) at every output time of a
    vs_exact = sf.compare_laws(a, target)
    assert len(vs_exact.times) == 5 and bool((vs_exact.ratio < 3).all())
    with pytest.raises(ValueError, match="no output time"):
        sf.compare_laws(a, b, times=[0.25])
    with pytest.raises(ValueError, match="unknown metric"):
        sf.compare_laws(a, b, metric="kl")


def test_compare_laws_with_a_time_dependent_reference():
    # paper 5.1: the reference is the exact f_t; a wrong-variance cloud is flagged
    f = lambda t: sf.Gaussian(torch.zeros(1), 1 - math.exp(-2 * (t + 0.1)))
    good = f(1.0).sample(2000, gen(7))
    cmp_good = sf.compare_laws(good, f(1.0), floor_reps=10)
    cmp_bad = sf.compare_laws(good * 1.2, f(1.0), floor_reps=10)
    assert float(cmp_good.ratio[0]) < 2.0 < 5.0 < float(cmp_bad.ratio[0])


def test_mode_weights_and_tv():
    means = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([means[0].expand(5, 2), means[1].expand(3, 2) + 0.1, means[2].expand(2, 2) - 0.1])
    assert sf.metrics.mode_weights(x, means).tolist() == pytest.approx([0.5, 0.3, 0.2])
    assert sf.metrics.tv_distance(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])) == 1.0
    mix = sf.GaussianMixture(means, 1.0, torch.tensor([0.2, 0.3, 0.5]))
    assert sf.metrics.mode_tv(x, mix) == pytest.approx(0.5 * (0.3 + 0.0 + 0.3))
    # exact draws: nearest-mean weights ≈ true weights (modes 10σ apart)
    assert sf.metrics.mode_tv(mix.sample(20_000, gen(8)), mix) < 0.015
    with pytest.raises(ValueError, match="same length"):
        sf.metrics.tv_distance(torch.ones(2) / 2, torch.ones(3) / 3)
