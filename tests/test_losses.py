"""Divergence (exact and Hutchinson) and the implicit score-matching loss."""

import math

import pytest
import torch

import sbtm_flows as sf
from sbtm_flows.losses import divergence, explicit_score_matching, implicit_score_matching, make_probes

D64 = torch.float64


def _net(d, seed=0):
    return sf.ScoreMLP(d, (16, 16), "tanh", generator=torch.Generator().manual_seed(seed), dtype=D64)


@pytest.mark.parametrize("d", [1, 3])
def test_exact_divergence_matches_jacobian_trace(d, device):
    net = _net(d).to(device)
    x = torch.randn(7, d, dtype=D64).to(device)
    s, div = divergence(net, x, "exact")
    ref = torch.stack([torch.trace(torch.autograd.functional.jacobian(lambda z: net(z[None])[0], xi)) for xi in x])
    torch.testing.assert_close(div, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s, net(x))


def test_linear_field_divergence_is_trace():
    A = torch.tensor([[1.0, 2.0, 0.0], [0.5, -3.0, 1.0], [0.0, 0.0, 0.25]], dtype=D64)
    x = torch.randn(4, 3, dtype=D64)
    _, div = divergence(lambda z: z @ A.T, x, "exact")
    assert torch.allclose(div, torch.full((4,), float(torch.trace(A)), dtype=D64))
    # Rademacher probes: vᵀAv = tr A + Σ_{i≠j} A_ij v_i v_j; with m probes the error is O(1/√m)
    probes = make_probes(20000, 4, 3, "rademacher", torch.Generator().manual_seed(0), D64)
    _, hdiv = divergence(lambda z: z @ A.T, x, "hutchinson", probes)
    off = float(((A + A.T) ** 2).sum() - 4 * (torch.diagonal(A) ** 2).sum()) / 2
    assert torch.allclose(hdiv, div, atol=5 * math.sqrt(off / 20000))


def test_isM_loss_has_the_factor_two():
    # particles ~ N(0, σ²): at the true score s = −x/σ², L = E|s|² + 2E∇·s = 1/σ² − 2/σ² = −1/σ²
    sigma2 = 0.3
    x = torch.randn(200_000, 1, generator=torch.Generator().manual_seed(0), dtype=D64) * math.sqrt(sigma2)
    loss, _ = implicit_score_matching(lambda z: -z / sigma2, x)
    assert abs(float(loss.detach()) + 1 / sigma2) < 0.02 / sigma2


def test_implicit_and_explicit_losses_differ_by_a_constant():
    # L_explicit(s) − L_implicit(s) = E|∇log f|² for every s: compare two fields
    x = torch.randn(400_000, 2, generator=torch.Generator().manual_seed(1), dtype=D64)
    true = -x
    fields = [lambda z: -0.5 * z, lambda z: torch.tanh(z) + 0.3]
    gaps = [float(explicit_score_matching(f, x, true) - implicit_score_matching(f, x)[0]) for f in fields]
    assert abs(gaps[0] - gaps[1]) < 0.03
    assert abs(gaps[0] - 2.0) < 0.03  # E|x|² = d = 2


def test_divergence_is_differentiable_in_parameters():
    net = _net(2)
    x = torch.randn(5, 2, dtype=D64)
    loss, _ = implicit_score_matching(net, x)
    grads = torch.autograd.grad(loss, list(net.parameters()))
    # compare with a finite difference along one parameter entry
    p = next(net.parameters())
    eps = 1e-6
    with torch.no_grad():
        p[0, 0] += eps
        lp = float(implicit_score_matching(net, x)[0])
        p[0, 0] -= 2 * eps
        lm = float(implicit_score_matching(net, x)[0])
        p[0, 0] += eps
    assert abs((lp - lm) / (2 * eps) - float(grads[0][0, 0])) < 1e-6


def test_divergence_under_no_grad_returns_plain_tensors():
    net = _net(2)
    with torch.no_grad():
        s, div = divergence(net, torch.randn(3, 2, dtype=D64))
    assert not s.requires_grad and not div.requires_grad


def test_bad_divergence_arguments():
    net = _net(2)
    x = torch.randn(3, 2, dtype=D64)
    with pytest.raises(ValueError, match="needs probes"):
        divergence(net, x, "hutchinson")
    with pytest.raises(ValueError, match="probes must have shape"):
        divergence(net, x, "hutchinson", torch.ones(2, 4, 2, dtype=D64))
    with pytest.raises(ValueError, match="unknown divergence"):
        sf.losses.resolve_divergence("fast", 2)
    assert sf.losses.resolve_divergence("auto", 2) == "exact"
    assert sf.losses.resolve_divergence("auto", 100) == "hutchinson"
