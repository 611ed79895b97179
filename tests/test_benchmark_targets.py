"""The benchmark targets (issue 14): scores vs autograd, normalisation and log Z, exact samplers' laws."""

import math

import pytest
import torch

from sbtm_flows.experiments import TARGETS, make_target
from sbtm_flows.targets import (
    BENCHMARK_TARGETS,
    Funnel,
    ManyWell,
    ParticleDoubleWell,
    StudentTMixture,
    Target,
    autograd_laplacian,
    autograd_score,
    gmm25,
    gmm40,
    student_t_draws,
    student_t_mixture,
)

D64 = torch.float64


def gen(s=0):
    return torch.Generator().manual_seed(s)


def _points(tgt, n=64, seed=0):
    """Random f64 test points spread over the target's scale (means of mixtures included)."""
    x = torch.randn(n, tgt.dim, generator=gen(seed), dtype=D64)
    if hasattr(tgt, "means"):
        idx = torch.randint(0, tgt.means.shape[0], (n,), generator=gen(seed + 1))
        x = tgt.means[idx].to(D64) + 2 * x
    return 2 * x if isinstance(tgt, ParticleDoubleWell) else x


@pytest.mark.parametrize("name", list(BENCHMARK_TARGETS))
def test_score_is_autograd_of_log_prob(name):
    tgt = make_target(name).to(D64)
    x = _points(tgt)
    torch.testing.assert_close(tgt.score(x), autograd_score(tgt.log_prob, x), rtol=1e-9, atol=1e-9)
    assert tgt.log_prob(x).shape == (64,) and torch.isfinite(tgt.log_prob(x)).all()
    if type(tgt).laplacian is not Target.laplacian:  # an analytic Laplacian: against autograd of the score
        x = x[:16]
        torch.testing.assert_close(tgt.laplacian(x), autograd_laplacian(lambda y: autograd_score(tgt.log_prob, y), x), rtol=1e-6, atol=1e-6)


def test_registry_and_declared_facts():
    assert set(BENCHMARK_TARGETS) <= set(TARGETS)
    dims = {n: make_target(n).dim for n in BENCHMARK_TARGETS}
    assert dims == {"funnel": 10, "manywell": 32, "gmm40-2d": 2, "gmm40-50d": 50, "25gmm": 2, "mos-50d": 50, "dw4": 8}
    dw = make_target("dw4")
    assert dw.log_Z is None and not dw.has_sample
    with pytest.raises(NotImplementedError):
        dw.sample(3)
    for n in ("funnel", "gmm40-2d", "gmm40-50d", "25gmm", "mos-50d"):
        assert make_target(n).log_Z == 0.0 and make_target(n).has_sample


def test_funnel_log_prob_is_the_normalised_product_of_normals():
    tgt = Funnel().to(D64)
    x = torch.randn(50, 10, generator=gen(1), dtype=D64) * 2
    N = torch.distributions.Normal
    ref = N(0.0, 3.0).log_prob(x[:, 0]) + N(0.0, torch.exp(0.5 * x[:, :1])).log_prob(x[:, 1:]).sum(1)
    torch.testing.assert_close(tgt.log_prob(x), ref)


def test_funnel_exact_sampler_moments():
    n = 40_000
    x = Funnel().to(D64).sample(n, gen(2))
    v = x[:, 0]
    # x0 ~ N(0, 9): mean within 4 sd/√n, variance within 4·9·√(2/n)
    assert abs(float(v.mean())) < 4 * 3 / math.sqrt(n)
    assert abs(float(v.var()) - 9) < 4 * 9 * math.sqrt(2 / n)
    # standardised z = x_i e^{-x0/2} ~ N(0, 1) independent of x0 (the conditional law)
    z = x[:, 1:] * torch.exp(-0.5 * v)[:, None]
    assert float(z.mean(0).abs().max()) < 4.5 / math.sqrt(n)
    assert float((z.var(0) - 1).abs().max()) < 4.5 * math.sqrt(2 / n)
    # E[z² x0] = 0 with Var(z² x0) = E z⁴ · E x0² = 3·9
    assert float((z**2 * v[:, None]).mean(0).abs().max()) < 4.5 * math.sqrt(27 / n)
    # the same seed gives the same draws; bad dimensions are refused
    torch.testing.assert_close(Funnel().sample(5, gen(3)), Funnel().sample(5, gen(3)))
    with pytest.raises(ValueError, match="dim"):
        Funnel(dim=1)


def _well_quad(fn):
    from scipy import integrate

    return integrate.quad(lambda a: fn(a) * math.exp(-(a**4 - 6 * a**2 - 0.5 * a)), -10, 10, epsabs=0, epsrel=1e-13, limit=200)[0]


def test_manywell_log_z_against_adaptive_quadrature():
    z1 = _well_quad(lambda a: 1.0)
    tgt = ManyWell()
    assert tgt.log_Z1 == pytest.approx(math.log(z1), abs=1e-10)
    assert tgt.log_Z == pytest.approx(16 * (math.log(z1) + 0.5 * math.log(2 * math.pi)), abs=1e-8)
    # d = 2 version: log Z by importance sampling with a wide Gaussian proposal (independent check)
    small = ManyWell(dim=2).to(D64)
    q = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=D64), torch.diag(torch.tensor([4.0, 1.5], dtype=D64)))
    y = torch.randn(200_000, 2, generator=gen(11), dtype=D64) * torch.tensor([2.0, 1.5**0.5], dtype=D64)
    lw = small.log_prob(y) - q.log_prob(y)
    est = float(torch.logsumexp(lw, 0) - math.log(y.shape[0]))
    assert est == pytest.approx(small.log_Z, abs=0.02)
    with pytest.raises(ValueError, match="even"):
        ManyWell(dim=3)


def test_manywell_exact_sampler_moments():
    z1 = _well_quad(lambda a: 1.0)
    mean1 = _well_quad(lambda a: a) / z1
    m2 = _well_quad(lambda a: a * a) / z1
    p_plus = _well_quad(lambda a: float(a > 0)) / z1
    x = ManyWell().to(D64).sample(8000, gen(4))  # 128,000 draws of each coordinate kind
    a, b = x[:, 0::2].flatten(), x[:, 1::2].flatten()
    n = a.numel()
    sd1 = math.sqrt(m2 - mean1**2)
    assert float(a.mean()) == pytest.approx(mean1, abs=4 * sd1 / math.sqrt(n))
    assert float((a * a).mean()) == pytest.approx(m2, abs=0.02)
    assert float((a > 0).double().mean()) == pytest.approx(p_plus, abs=4 * math.sqrt(p_plus * (1 - p_plus) / n))
    assert abs(float(b.mean())) < 4 / math.sqrt(n) and float(b.var()) == pytest.approx(1.0, abs=4 * math.sqrt(2 / n))


def test_mixtures_match_torch_distributions():
    for tgt in (gmm40(2), gmm40(50), gmm25()):
        tgt = tgt.to(D64)
        k, d = tgt.means.shape
        comp = torch.distributions.Independent(torch.distributions.Normal(tgt.means, tgt.covs[:, 0, 0].sqrt()[:, None].expand(k, d)), 1)
        ref = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(probs=tgt.weights), comp)
        x = _points(tgt, seed=5)
        torch.testing.assert_close(tgt.log_prob(x), ref.log_prob(x))
    m = gmm40(2).means
    assert m.shape == (40, 2) and float(m.abs().max()) <= 40 and float(m.abs().max()) > 35
    torch.testing.assert_close(m, gmm40(2, seed=0).means)
    assert not torch.equal(m, gmm40(2, seed=1).means)
    g = gmm25()
    assert sorted(set(g.means[:, 0].tolist())) == [-10, -5, 0, 5, 10]
    assert float(g.covs[0, 0, 0]) == pytest.approx(0.3)


def test_student_t_mixture_matches_torch_and_its_sampler_has_the_t_law():
    tgt = student_t_mixture().to(D64)
    assert tgt.means.shape == (10, 50) and float(tgt.means.abs().max()) <= 10
    comp = torch.distributions.Independent(torch.distributions.StudentT(2.0, tgt.means, torch.ones_like(tgt.means)), 1)
    ref = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(probs=tgt.weights), comp)
    x = _points(tgt, seed=6)
    torch.testing.assert_close(tgt.log_prob(x), ref.log_prob(x))
    # t_2 CDF F(t) = ½ + t/(2√(2 + t²)); Kolmogorov–Smirnov bound at the 0.1 % level: 1.95/√n
    n = 100_000
    t = student_t_draws(n, 2.0, gen(7)).sort().values
    exact = 0.5 + t / (2 * torch.sqrt(2 + t * t))
    emp = torch.arange(1, n + 1, dtype=D64) / n
    assert float((emp - exact).abs().max()) < 1.95 / math.sqrt(n)
    # ν = 5: Var = ν/(ν − 2) = 5/3
    assert float(student_t_draws(n, 5.0, gen(8)).var()) == pytest.approx(5 / 3, rel=0.05)
    # mixture draws: each lands in its own component (components are ≳ 20 apart in d = 50)
    one = StudentTMixture(torch.tensor([[-20.0, 0.0], [20.0, 0.0]], dtype=D64))
    y = one.sample(20_000, gen(9))
    resp = one.responsibilities(y)
    assert float(resp.argmax(1).double().mean()) == pytest.approx(0.5, abs=4 * 0.5 / math.sqrt(20_000))
    y1 = y[y[:, 0] > 0]
    med = (y1 - one.means[1]).median(0).values
    assert float(med.abs().max()) < 0.05


def _dw_energy_by_hand(pos, a=0.9, b=-4.0, d0=4.0):
    e = 0.0
    for i in range(len(pos)):
        for j in range(i + 1, len(pos)):
            r = math.dist(pos[i], pos[j])
            e += a * (r - d0) ** 4 + b * (r - d0) ** 2
    return e


def test_dw4_energy_symmetries_and_centroid_factor():
    tgt = ParticleDoubleWell().to(D64)
    square = [(0.0, 0.0), (4.0, 0.0), (4.0, 4.0), (0.0, 4.0)]
    x = torch.tensor(square, dtype=D64).reshape(1, 8)
    expected = 2 * (0.9 * (4 * math.sqrt(2) - 4) ** 4 - 4 * (4 * math.sqrt(2) - 4) ** 2)
    assert float(tgt.energy(x)) == pytest.approx(expected, rel=1e-12)
    y = torch.randn(20, 8, generator=gen(10), dtype=D64) * 2
    assert tgt.energy(y).tolist() == pytest.approx([_dw_energy_by_hand(p) for p in y.reshape(20, 4, 2).tolist()], rel=1e-10)
    # rotation / permutation invariance of log π; translation only moves the centroid term
    c = y.reshape(20, 4, 2).mean(1, keepdim=True)
    centred = (y.reshape(20, 4, 2) - c).reshape(20, 8)
    th = 0.7
    rot = torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]], dtype=D64)
    rotated = (centred.reshape(20, 4, 2) @ rot.T).reshape(20, 8)
    permuted = centred.reshape(20, 4, 2)[:, [2, 0, 3, 1]].reshape(20, 8)
    torch.testing.assert_close(tgt.log_prob(rotated), tgt.log_prob(centred))
    torch.testing.assert_close(tgt.log_prob(permuted), tgt.log_prob(centred))
    shift = torch.tensor([1.0, -2.0], dtype=D64)
    moved = (centred.reshape(20, 4, 2) + shift).reshape(20, 8)
    torch.testing.assert_close(tgt.log_prob(moved) - tgt.log_prob(centred), torch.full((20,), -0.5 * 5 / 0.25, dtype=D64))
    assert tgt.pair_distances(x).shape == (1, 6)


def test_cli_samples_a_benchmark_target_by_name(tmp_path):
    import json

    from sbtm_flows.cli import main

    # dt = 0.002: at X₀ ~ N(0, I) the DW4 curvature is ≈ 725, so dt = 0.01 (dt·λ ≈ 7) is refused by the particle-block check
    argv = ["sample", "--target", "dw4", "--method", "ula", "--n", "20", "--t-final", "0.004", "--dt", "0.002",
            "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["target"] == "dw4" and len(summary["mean"]) == 8 and summary["n"] == 20
