r"""Implicit score matching and the divergence of a vector field.

For a score model s: ℝᵈ → ℝᵈ and particles X¹…Xⁿ ~ f, Hyvärinen's identity gives

    L(s, f) = E_f |s − ∇log f|² = E_f (|s|² + 2 ∇·s) + const,

so the trainable loss is ``mean(|s(Xⁱ)|² + 2 ∇·s(Xⁱ))`` — mind the factor 2.

The divergence ∇·s(x) = tr ∂s/∂x is computed

* ``"exact"``: the d vector-Jacobian products e_kᵀ J in one batched reverse pass
  (``is_grads_batched``); because s acts row by row, one backward pass with a cotangent
  of shape (n, d) gives every particle's vᵀJ at once, so there is no loop over particles
  or dimensions;
* ``"hutchinson"``: E_v[vᵀ J v] with m probes v (Rademacher or Gaussian), also batched;
* ``"auto"``: exact for d ≤ ``AUTO_EXACT_MAX_DIM``, Hutchinson above.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = [
    "divergence",
    "implicit_score_matching",
    "explicit_score_matching",
    "make_probes",
    "resolve_divergence",
    "AUTO_EXACT_MAX_DIM",
]

AUTO_EXACT_MAX_DIM = 16
DIVERGENCES = ("exact", "hutchinson", "auto")
PROBE_DISTRIBUTIONS = ("rademacher", "gaussian")


def resolve_divergence(method: str, dim: int) -> str:
    """Map ``"auto"`` to ``"exact"`` (d ≤ 16) or ``"hutchinson"``; validate the name."""
    if method not in DIVERGENCES:
        raise ValueError(f"unknown divergence {method!r}; valid: {', '.join(DIVERGENCES)}")
    if method == "auto":
        return "exact" if dim <= AUTO_EXACT_MAX_DIM else "hutchinson"
    return method


def make_probes(
    m: int,
    n: int,
    d: int,
    distribution: str = "rademacher",
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Hutchinson probes ``(m, n, d)`` with E[v vᵀ] = I (drawn on the CPU, then moved)."""
    if m < 1:
        raise ValueError(f"the number of Hutchinson probes must be >= 1, got {m}")
    if distribution == "rademacher":
        v = torch.randint(0, 2, (m, n, d), generator=generator, dtype=torch.int64).to(torch.float64) * 2 - 1
    elif distribution == "gaussian":
        v = torch.randn(m, n, d, generator=generator, dtype=torch.float64)
    else:
        raise ValueError(f"unknown probe distribution {distribution!r}; valid: {', '.join(PROBE_DISTRIBUTIONS)}")
    return v.to(dtype=dtype, device=device)


def divergence(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    method: str = "exact",
    probes: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Value and divergence of a row-wise vector field, by reverse-mode autograd.

    Args:
        fn: ``(n, d) -> (n, d)``, row i depending on x[i] only (e.g. a score network).
        x: ``(n, d)`` points.  If ``x.requires_grad``, the result is differentiable in x too.
        method: ``"exact"`` (tr ∂s/∂x: the d vector-Jacobian products e_kᵀJ in one batched
            backward pass) or ``"hutchinson"`` (mean over probes of vᵀJv).
        probes: ``(m, n, d)`` Hutchinson probes (required for ``"hutchinson"``).

    Returns:
        ``(fn(x) (n, d), ∇·fn(x) (n,))``.  Under grad mode both carry a graph (so a loss
        built from them can be differentiated w.r.t. the parameters of ``fn``); under
        ``torch.no_grad()`` they are plain tensors.
    """
    n, d = x.shape
    if method == "exact":
        cot = None if d == 1 else torch.eye(d, dtype=x.dtype, device=x.device)[:, None, :].expand(d, n, d)
    elif method == "hutchinson":
        if probes is None:
            raise ValueError("divergence='hutchinson' needs probes of shape (m, n, d)")
        if probes.ndim != 3 or probes.shape[1:] != (n, d):
            raise ValueError(f"probes must have shape (m, {n}, {d}), got {tuple(probes.shape)}")
        cot = probes
    else:
        raise ValueError(f"unknown divergence method {method!r}; valid: exact, hutchinson")
    graph = torch.is_grad_enabled()
    with torch.enable_grad():
        xr = x if x.requires_grad else x.detach().requires_grad_(True)
        s = fn(xr)
        if cot is None:  # exact, d = 1
            (j,) = torch.autograd.grad(s.sum(), xr, create_graph=graph)
            div = j[:, 0]
        elif cot.shape[0] == 1:  # one probe
            (vj,) = torch.autograd.grad(s, xr, cot[0], create_graph=graph)
            div = (vj * cot[0]).sum(-1)
        else:
            (vj,) = torch.autograd.grad(s, xr, cot, create_graph=graph, is_grads_batched=True)
            div = torch.diagonal(vj, dim1=0, dim2=2).sum(-1) if method == "exact" else (vj * cot).sum(-1).mean(0)
    if not graph:
        s, div = s.detach(), div.detach()
    return s, div


def implicit_score_matching(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    method: str = "exact",
    probes: Tensor | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    r"""L = mean_i(|s(Xⁱ)|² + 2 ∇·s(Xⁱ)).  Returns ``(L, (s (n, d), ∇·s (n,)))``."""
    s, div = divergence(fn, x, method, probes)
    loss = ((s * s).sum(-1) + 2.0 * div).mean()
    return loss, (s, div)


def explicit_score_matching(fn: Callable[[Tensor], Tensor], x: Tensor, score: Tensor) -> Tensor:
    """mean_i |s(Xⁱ) − ∇log f(Xⁱ)|² for a known score ``(n, d)``."""
    r = fn(x) - score
    return (r * r).sum(-1).mean()
