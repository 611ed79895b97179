"""Shared pieces of the Θ-dynamics tests (theta_flow "rmsprop", "diag" and "kfac")."""

from __future__ import annotations

import torch

import sbtm_flows as sf


def dense_preconditioned_curvature(net: torch.nn.Module, x: torch.Tensor, flow, y: torch.Tensor) -> tuple[float, float]:
    """(λ_max(R H R), λ_max(H)) by dense eigendecomposition, H = ∇²_Θ L the implicit loss's Hessian at the
    network's parameters on particles x ``(n, d)``, R = D^{1/2} for D = ``flow.preconditioner(y)`` a diagonal,
    or the dense matrix of the map it returns (q ↦ M^{1/2} q) applied to the identity's columns."""
    theta = sf.score.flatten_params(net)

    def loss(th):
        return sf.losses.implicit_score_matching(lambda z: torch.func.functional_call(net, sf.score.unflatten_params(net, th), (z,)), x)[0]

    H = torch.autograd.functional.hessian(loss, theta)
    pre = flow.preconditioner(y)
    root = torch.stack([pre(e) for e in torch.eye(theta.numel(), dtype=theta.dtype)], 1) if callable(pre) else torch.diag(pre.sqrt())
    return float(torch.linalg.eigvalsh(root @ H @ root).max()), float(torch.linalg.eigvalsh(H).max())
