"""Targets: analytic scores/Laplacians against autograd, normalisation, exact sampling, errors."""

import math

import pytest
import torch

import sbtm_flows as sf
from sbtm_flows.targets import autograd_laplacian, autograd_score

D64 = torch.float64


def _gauss2():
    cov = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=D64)
    return sf.Gaussian(torch.tensor([1.0, -0.5], dtype=D64), cov)


def _mix2():
    means = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, 3.0]], dtype=D64)
    covs = torch.stack([torch.eye(2, dtype=D64) * 0.5, torch.tensor([[1.0, 0.3], [0.3, 0.6]], dtype=D64), torch.eye(2, dtype=D64)])
    return sf.GaussianMixture(means, covs, torch.tensor([0.2, 0.5, 0.3], dtype=D64))


@pytest.mark.parametrize("make", [_gauss2, _mix2])
def test_score_and_laplacian_match_autograd(make):
    tgt = make()
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=D64) * 2
    torch.testing.assert_close(tgt.score(x), autograd_score(tgt.log_prob, x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(tgt.laplacian(x), autograd_laplacian(lambda y: autograd_score(tgt.log_prob, y), x), rtol=1e-8, atol=1e-8)


def test_gaussian_log_prob_is_normalised():
    tgt = _gauss2()
    ref = torch.distributions.MultivariateNormal(tgt.mean, tgt.cov)
    x = torch.randn(20, 2, dtype=D64)
    torch.testing.assert_close(tgt.log_prob(x), ref.log_prob(x))
    assert tgt.log_Z == 0.0


def test_mixture_log_prob_matches_torch_distributions():
    tgt = _mix2()
    comp = torch.distributions.MultivariateNormal(tgt.means, tgt.covs)
    ref = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(tgt.weights), comp)
    x = torch.randn(20, 2, dtype=D64) * 3
    torch.testing.assert_close(tgt.log_prob(x), ref.log_prob(x))


def test_mixture_sampling_moments():
    tgt = _mix2()
    x = tgt.sample(200_000, generator=torch.Generator().manual_seed(1))
    mean = (tgt.weights[:, None] * tgt.means).sum(0)
    # tolerance: 5 standard errors of the mean (component spread ~2)
    assert torch.allclose(x.mean(0), mean, atol=5 * 2.2 / math.sqrt(200_000))
    frac = (x[:, 1] > 2.0).double().mean()
    ref = torch.distributions.Normal(0.0, 1.0)
    # P(x_2 > 2) = Σ_k w_k (1 − Φ((2 − m_k2)/σ_k2))
    p = sum(float(w) * (1 - float(ref.cdf((2.0 - m[1]) / torch.sqrt(c[1, 1])))) for w, m, c in zip(tgt.weights, tgt.means, tgt.covs))
    assert abs(float(frac) - p) < 5 * math.sqrt(p * (1 - p) / 200_000)


def test_sample_is_seeded():
    tgt = _mix2()
    a = tgt.sample(10, generator=torch.Generator().manual_seed(3))
    b = tgt.sample(10, generator=torch.Generator().manual_seed(3))
    c = tgt.sample(10, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_from_log_prob_and_from_score():
    g = _gauss2()
    t1 = sf.from_log_prob(g.log_prob, 2)
    x = torch.randn(30, 2, dtype=D64)
    torch.testing.assert_close(t1.score(x), g.score(x))
    torch.testing.assert_close(t1.laplacian(x), g.laplacian(x))
    t2 = sf.from_score(g.score, 2)
    torch.testing.assert_close(t2.laplacian(x), g.laplacian(x))
    with pytest.raises(NotImplementedError, match="from_score"):
        t2.log_prob(x)


def test_hutchinson_laplacian_is_unbiased():
    g = _gauss2()
    t1 = sf.from_log_prob(g.log_prob, 2)
    x = torch.randn(5, 2, dtype=D64)
    probes = sf.losses.make_probes(4000, 5, 2, "gaussian", torch.Generator().manual_seed(0), D64)
    est = autograd_laplacian(t1.score, x, probes)
    # exact −tr C⁻¹; Gaussian-probe std of one sample vᵀAv is sqrt(2)|A|_F
    exact = g.laplacian(x)
    assert torch.allclose(est, exact, atol=5 * math.sqrt(2) * float(g.precisions[0].norm()) / math.sqrt(4000))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(means=torch.zeros(3)), "means must have shape"),
        (dict(means=torch.zeros(2, 2), weights=torch.tensor([1.0, -1.0])), "weights"),
        (dict(means=torch.zeros(2, 2), covs=torch.tensor([[[1.0, 2.0], [2.0, 1.0]]] * 2)), "positive definite"),
        (dict(means=torch.zeros(2, 2), covs=torch.ones(3)), "stds must have shape"),
    ],
)
def test_mixture_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sf.GaussianMixture(**kwargs)


def test_gaussian_bad_cov_shape():
    with pytest.raises(ValueError, match="cov must have shape"):
        sf.Gaussian(torch.zeros(2), torch.eye(3))
