"""Shared pieces of the Θ-dynamics tests (theta_flow "rmsprop" and "diag")."""

from __future__ import annotations

import torch

import sbtm_flows as sf


def dense_preconditioned_curvature(net: torch.nn.Module, x: torch.Tensor, flow, y: torch.Tensor) -> tuple[float, float]:
    """(λ_max(D^{1/2} H D^{1/2}), λ_max(H)) by dense eigendecomposition, H = ∇²_Θ L the implicit loss's
    Hessian at the network's parameters on particles x ``(n, d)``, D = ``flow.preconditioner(y)``."""
    theta = sf.score.flatten_params(net)

    def loss(th):
        return sf.losses.implicit_score_matching(lambda z: torch.func.functional_call(net, sf.score.unflatten_params(net, th), (z,)), x)[0]

    H = torch.autograd.functional.hessian(loss, theta)
    d = flow.preconditioner(y).sqrt()
    return float(torch.linalg.eigvalsh(d[:, None] * H * d[None, :]).max()), float(torch.linalg.eigvalsh(H).max())
