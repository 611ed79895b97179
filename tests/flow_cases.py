"""Shared pieces of the Θ-dynamics tests (theta_flow "rmsprop", "diag", "kfac" and "gn")."""

from __future__ import annotations

import torch

import sbtm_flows as sf


def dense_preconditioned_curvature(net: torch.nn.Module, x: torch.Tensor, flow, y: torch.Tensor) -> tuple[float, float]:
    """(λ_max(R H R), λ_max(H)) by dense eigendecomposition, H = ∇²_Θ L the implicit loss's Hessian at the
    network's parameters on particles x ``(n, d)``, R = D^{1/2} for D = ``flow.preconditioner(y)`` a diagonal,
    the dense matrix of the map it returns (q ↦ M^{1/2} q) applied to the identity's columns, or for a
    factor with ``dense()`` ``(P, P)`` (M = C·Cᵀ) the symmetric root of M by eigh."""
    theta = sf.score.flatten_params(net)

    def loss(th):
        return sf.losses.implicit_score_matching(lambda z: torch.func.functional_call(net, sf.score.unflatten_params(net, th), (z,)), x)[0]

    H = torch.autograd.functional.hessian(loss, theta)
    pre = flow.preconditioner(y)
    if callable(pre):
        root = torch.stack([pre(e) for e in torch.eye(theta.numel(), dtype=theta.dtype)], 1)
    elif isinstance(pre, torch.Tensor):
        root = torch.diag(pre.sqrt())
    else:
        evals, evecs = torch.linalg.eigh(pre.dense())
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


def refreshed_flow_runs(tmp_path, resumable, theta_flow: str, eta: float):
    """``(full, resumed, k, adaptive)`` for a Θ dynamics with a piecewise-refreshed state: an interrupted and
    resumed run with the instance ``resumable`` (1-D two-mode mixture, n = 60, to t = 0.2) and a dopri5 run
    of ``theta_flow`` (by name) at η from N(0, 1/4) toward N(0, 1) (n = 80, to t = 0.3)."""
    from resume_cases import interrupt_and_resume

    target = sf.GaussianMixture(torch.tensor([[-2.0], [2.0]]), 1.0, torch.tensor([0.25, 0.75]))
    kw = dict(method="sbtm", init=sf.Gaussian(torch.zeros(1), torch.eye(1)), n=60, t_final=0.2, dt=0.01, save_every=2,
              theta_flow=resumable)
    full, resumed, k = interrupt_and_resume(target, tmp_path / "ck.pt", checkpoint_every=1, **kw)
    adaptive = sf.sample(sf.Gaussian(torch.zeros(1), torch.eye(1)), method="sbtm", init=sf.Gaussian(torch.zeros(1), 0.25 * torch.eye(1)),
                         n=80, t_final=0.3, dt=0.05, solver="dopri5", theta_flow=theta_flow, eta=eta, save_every=2, seed=1, max_nfe=3000)
    return full, resumed, k, adaptive
