"""Shared pieces of the Θ-dynamics tests (theta_flow "rmsprop", "diag" and "gn")."""

from __future__ import annotations

import torch

import sbtm_flows as sf


def dense_preconditioned_curvature(net: torch.nn.Module, x: torch.Tensor, flow, y: torch.Tensor) -> tuple[float, float]:
    """(λ_max(M^{1/2} H M^{1/2}), λ_max(H)) by dense eigendecomposition, H = ∇²_Θ L the implicit loss's
    Hessian at the network's parameters on particles x ``(n, d)``, M = ``flow.preconditioner(y)``
    (a diagonal ``(P,)``, or a factor with ``dense()`` ``(P, P)``, whose symmetric root is taken by eigh)."""
    theta = sf.score.flatten_params(net)

    def loss(th):
        return sf.losses.implicit_score_matching(lambda z: torch.func.functional_call(net, sf.score.unflatten_params(net, th), (z,)), x)[0]

    H = torch.autograd.functional.hessian(loss, theta)
    m = flow.preconditioner(y)
    if isinstance(m, torch.Tensor):
        root = torch.diag(m.sqrt())
    else:
        evals, evecs = torch.linalg.eigh(m.dense())
        root = evecs @ torch.diag(evals.sqrt()) @ evecs.T
    return float(torch.linalg.eigvalsh(root @ H @ root).max()), float(torch.linalg.eigvalsh(H).max())


def small_flow(theta_flow, eta: float = 0.7, hidden: tuple[int, ...] = (5,)):
    """``(target, net, flow, x)``: a float64 2-D Gaussian target, a tanh ScoreMLP of ``hidden``
    (seed 0), the SBTMFlow with Θ dynamics ``theta_flow`` and η, and 7 particles ``x (7, 2)`` (seed 1)."""
    tgt = sf.Gaussian(torch.tensor([0.5, -1.0], dtype=torch.float64), torch.eye(2, dtype=torch.float64) * 0.7)
    net = sf.ScoreMLP(2, hidden, "tanh", generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    flow = sf.SBTMFlow(tgt, net, eta=eta, theta_flow=theta_flow)
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return tgt, net, flow, x


def dense_score_jacobian(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """J = ∂vec(s_Θ(x))/∂Θ ``(n·d, P)`` by ``torch.autograd.functional.jacobian`` (the dense reference)."""
    theta = sf.score.flatten_params(net)

    def s(th):
        return torch.func.functional_call(net, sf.score.unflatten_params(net, th), (x,)).reshape(-1)

    return torch.autograd.functional.jacobian(s, theta)
