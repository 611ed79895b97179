"""Benchmark metrics (issue 14): W2, Sinkhorn as ε → 0, MMD, noise floors, moments, modes, weights."""

import math

import pytest
import torch

from sbtm_flows import metrics as M
from sbtm_flows.targets import Gaussian, gmm25

D64 = torch.float64


def gen(s=0):
    return torch.Generator().manual_seed(s)


def test_w2_known_answers():
    x = torch.randn(400, 1, generator=gen(0), dtype=D64)
    y = 2 * torch.randn(300, 1, generator=gen(1), dtype=D64) + 1
    # 1-D: the monotone coupling is optimal; for equal sizes W2² = mean (x₍ᵢ₎ − y₍ᵢ₎)²
    x3 = x[:300]
    exact_1d = float(((x3.sort(0).values - y.sort(0).values) ** 2).mean().sqrt())
    assert M.wasserstein2(x3, y) == pytest.approx(exact_1d, rel=1e-9)
    # a translation costs exactly |v|, identical samples exactly 0
    z = torch.randn(300, 3, generator=gen(2), dtype=D64)
    v = torch.tensor([0.3, -0.4, 1.2], dtype=D64)
    assert M.wasserstein2(z, z + v) == pytest.approx(float(v.norm()), rel=1e-9)
    assert M.wasserstein2(z, z) == 0.0
    # two Gaussians: W2² = |m1 − m2|² + Σ(σ1 − σ2)² = 9 + 1 for N(0, I) vs N((3, 0), diag(4, 1))
    a = torch.randn(1500, 2, generator=gen(3), dtype=D64)
    b = torch.randn(1500, 2, generator=gen(4), dtype=D64) * torch.tensor([2.0, 1.0], dtype=D64) + torch.tensor([3.0, 0.0], dtype=D64)
    assert M.wasserstein2(a, b) ** 2 == pytest.approx(10.0, rel=0.03)
    with pytest.raises(ValueError, match="at most 5000 points.*subsample"):
        M.wasserstein2(torch.zeros(5001, 1), torch.zeros(3, 1))


def test_sinkhorn_tends_to_w2_squared_as_eps_goes_to_zero():
    # measured: relative errors 1.4 %, 0.7 %, 0.17 % at ε = 1, 0.3, 0.1 (n = 100, W2² ≈ 3.3)
    x = torch.randn(100, 2, generator=gen(5), dtype=D64)
    y = torch.randn(100, 2, generator=gen(6), dtype=D64) * 1.5 + 1.0
    w2sq = M.wasserstein2(x, y) ** 2
    errs = [abs(M.sinkhorn(x, y, reg=eps, max_iter=5000, tol=1e-10) - w2sq) for eps in (1.0, 0.3, 0.1)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.005 * w2sq
    assert M.sinkhorn(x, x, reg=0.1) == pytest.approx(0.0, abs=1e-6)


def test_mmd2_formula_bandwidth_and_noise_floor():
    from scipy.spatial.distance import pdist

    x = torch.randn(40, 3, generator=gen(7), dtype=D64)
    y = torch.randn(30, 3, generator=gen(8), dtype=D64) + 0.5
    h = 1.3
    k = lambda a, b: math.exp(-sum((ai - bi) ** 2 for ai, bi in zip(a, b)) / (2 * h * h))
    xl, yl = x.tolist(), y.tolist()
    kxx = sum(k(a, b) for i, a in enumerate(xl) for j, b in enumerate(xl) if i != j) / (40 * 39)
    kyy = sum(k(a, b) for i, a in enumerate(yl) for j, b in enumerate(yl) if i != j) / (30 * 29)
    kxy = sum(k(a, b) for a in xl for b in yl) / (40 * 30)
    assert M.mmd2(x, y, bandwidth=h) == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-10)
    assert M.median_bandwidth(x, y) == pytest.approx(float(torch.tensor(pdist(torch.cat([x, y]).numpy())).median()), rel=1e-12)
    # equal laws: the estimator is centred (mean over draws ≈ 0 within its standard error); a shift is far above it
    law = Gaussian(torch.zeros(2, dtype=D64), 1.0)
    mean, sd = M.noise_floor("mmd", law, 300, reps=12, seed=1)
    assert abs(mean) < 3 * sd / math.sqrt(12)
    same = M.mmd2(law.sample(300, gen(9)), law.sample(300, gen(10)))
    shifted = M.mmd2(law.sample(300, gen(9)), law.sample(300, gen(10)) + torch.tensor([0.5, 0.0], dtype=D64))
    assert abs(same) < 4 * sd and shifted > 10 * sd
    with pytest.raises(ValueError, match="at least 2"):
        M.mmd2(x[:1], y)


def test_energy_distance_noise_floor_is_e_abs_times_sum_of_inverse_sizes():
    # N(0, 1): E|X − X'| = 2/√π; floor = E|X − X'|(1/n + 1/m)
    n, m, reps = 40, 25, 400
    vals = torch.tensor([M.energy_distance(torch.randn(n, 1, generator=gen(2 * r)), torch.randn(m, 1, generator=gen(2 * r + 1)))
                         for r in range(reps)])
    expected = 2 / math.sqrt(math.pi) * (1 / n + 1 / m)
    assert float(vals.mean()) == pytest.approx(expected, abs=4 * float(vals.std()) / math.sqrt(reps))
    assert abs(float(vals.mean()) - expected / 2) > 8 * float(vals.std()) / math.sqrt(reps)  # not the old half


def test_mode_entropy_and_emc():
    assert M.mode_entropy(torch.full((25,), 1 / 25)) == pytest.approx(1.0, abs=1e-12)
    assert M.mode_entropy(torch.tensor([0.0, 1.0, 0.0])) == 0.0
    assert M.mode_entropy(torch.tensor([0.5, 0.5, 0.0, 0.0])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="probability vector"):
        M.mode_entropy(torch.tensor([0.5, 0.6]))
    g = gmm25().to(D64)
    x = g.sample(20_000, gen(11))
    assert M.entropic_mode_coverage(x, g) > 0.995
    assert M.component_weights(x, g).sum() == pytest.approx(1.0)
    one = g.means[7] + 0.3 * torch.randn(500, 2, generator=gen(12), dtype=D64)
    assert M.entropic_mode_coverage(one, g) == 0.0
    assert M.assign_modes(one, g).eq(7).all()
    # without responsibilities: nearest mean
    class Means:
        means = g.means

    assert M.assign_modes(one, Means()).eq(7).all()


def test_moment_errors_in_reference_sd_units():
    ref = torch.randn(5000, 3, generator=gen(13), dtype=D64) * torch.tensor([1.0, 2.0, 0.5], dtype=D64)
    mu, sd = ref.mean(0), ref.std(0)
    x = (ref - mu) * 1.2 + mu + 0.5 * sd  # mean shifted by 0.5 sd, sd scaled by 1.2
    err = M.moment_errors(x, ref)
    torch.testing.assert_close(err.mean, torch.full((3,), 0.5, dtype=D64))
    torch.testing.assert_close(err.sd, torch.full((3,), 0.2, dtype=D64))
    assert err.max_mean == pytest.approx(0.5) and err.max_sd == pytest.approx(0.2)
    by_pair = M.moment_errors(x, (mu, sd))
    torch.testing.assert_close(by_pair.mean, err.mean)
    with pytest.raises(ValueError, match="sd > 0"):
        M.moment_errors(x, (mu, torch.zeros(3)))


def test_importance_metrics():
    lw = torch.full((100,), 2.5, dtype=D64)
    out = M.importance_metrics(lw, log_Z=2.0)
    assert out["log_z"] == pytest.approx(2.5) and out["ess"] == pytest.approx(1.0) and out["delta_log_z"] == pytest.approx(0.5)
    one_hot = torch.full((100,), -float("inf"), dtype=D64)
    one_hot[3] = 0.0
    assert M.importance_metrics(one_hot)["ess"] == pytest.approx(0.01)
    assert "delta_log_z" not in M.importance_metrics(one_hot)


def test_new_metrics_plug_into_compare_laws():
    law = Gaussian(torch.zeros(2, dtype=D64), 1.0)
    x = law.sample(300, gen(14))
    same = M.compare_laws(x, law, metric="w2", floor_reps=3)
    far = M.compare_laws(x + torch.tensor([1.0, 0.0], dtype=D64), law, metric="w2", floor_reps=3)
    assert float(same.ratio[0]) < 1.5 and float(far.ratio[0]) > 2.0
