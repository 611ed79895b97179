r"""A diagonally preconditioned gradient flow of Θ: dΘ/dt = −η·D·∇_Θ L, D refreshed piecewise.

The plain flow dΘ/dt = −η∇_Θ L relaxes the Hessian's eigen-directions at rates η·λᵢ; sized so
that the fastest one is stable (η ∝ 1/λ_max), the directions of small curvature — features that
see few particles, e.g. the score between the modes of a mixture — relax λ_max/λᵢ times slower.
:class:`DiagGNFlow` rescales each parameter by the diagonal of the Gauss–Newton matrix of the
implicit loss L = mean(|s_Θ|² + 2∇·s_Θ):

    G = (2/n) Σᵢ Jᵢᵀ Jᵢ,   Jᵢ = ∂s_Θ(Xᵢ)/∂Θ ``(d, P)``   (the |s|² term's curvature; the
                                                         divergence term is linear in s),
    D = (diag G + δ)^{−p},   δ = ``delta``·mean(diag G),   p = ``power`` (1: Jacobi, ½: Adam-like),

computed exactly (``torch.func``: a vmap over particles of the per-particle Jacobian, in blocks
of ``chunk`` rows) at the training particles.  D is held constant between refreshes, every
``every`` integration steps (and at every output time): the Θ block's Jacobian is then
−η·D·∇²_Θ L, similar to the symmetric −η·D^{1/2}∇²_Θ L D^{1/2}, so ``rkc``'s power iteration
and the Lanczos monitor (which use :meth:`DiagGNFlow.preconditioner`) see a real spectrum, and
:class:`~sbtm_flows.tracking_eta.TrackingEta` sizes η on λ_max(D^{1/2}∇²_Θ L D^{1/2}).

D lives in the ODE state as A = log D with dA/dt = 0 (a perturbation of A is a relative change
of D, which finite differences resolve), so any torchdiffeq method integrates the flow, and
a checkpoint carries D: a run resumed at an output time recomputes the same D from the same
(X, Θ) and continues bitwise.  Its fixed points are those of ``"gd"`` (D > 0).

Measured (README "η and stiffness", §5.4): with ``eta="track"`` it moves mass between the modes
where the plain flow keeps them frozen (TV to annealed ULA's weights 0.074 against 0.283 at
n = 4000).  D goes stale between refreshes on a coarse grid: a parameter whose diagonal was tiny
has D ≈ 1/δ, and its curvature grows as particles enter its feature; on §5.4's quick schedule
(dt = 0.05) ``every=10`` stopped 2 of 3 seeds with rkc's ``SamplingError``, ``every=1`` ran all.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = ["DiagGNFlow", "check_preconditioner_options", "gauss_newton_diagonal", "jacobian_blocks"]


def jacobian_blocks(flow, x: Tensor, theta: Tensor, t: float | Tensor | None = None, chunk: int = 256) -> Iterator[Tensor]:
    r"""The per-particle Jacobians Jᵢ = ∂s_Θ(xᵢ)/∂Θ at particles ``x (n, d)`` and flat parameters
    Θ ``(P,)`` of ``flow`` (an :class:`~sbtm_flows.dynamics.SBTMFlow`), ``chunk`` particles at a
    time: yields blocks ``(b, d, P)`` (a ``torch.func`` vmap over the rows of ``jacrev``).

    Raises:
        ValueError: ``x`` not 2-D or empty, or ``chunk`` < 1.
    """
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"jacobian_blocks: x must be (n, d) with n >= 1, got shape {tuple(x.shape)}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"jacobian_blocks: chunk must be an integer >= 1, got {chunk!r}")
    th = theta.detach()

    def row(p: Tensor, xi: Tensor) -> Tensor:
        return flow.score_fn(p, t)(xi.unsqueeze(0))[0]

    per_row = torch.func.vmap(torch.func.jacrev(row), in_dims=(None, 0))
    for b in x.detach().split(chunk):
        yield per_row(th, b)


def gauss_newton_diagonal(flow, x: Tensor, theta: Tensor, t: float | Tensor | None = None, chunk: int = 256) -> Tensor:
    r"""diag G = (2/n) Σᵢ Σₖ (∂s_Θ(xᵢ)ₖ/∂Θ)² ``(P,)`` at particles ``x (n, d)`` and flat
    parameters Θ ``(P,)`` of ``flow`` (an :class:`~sbtm_flows.dynamics.SBTMFlow`), exactly from
    the per-particle Jacobians of :func:`jacobian_blocks` (``chunk`` particles at a time).

    Raises:
        ValueError: ``x`` not 2-D or empty, or ``chunk`` < 1.
    """
    total = torch.zeros_like(theta.detach())
    for jac in jacobian_blocks(flow, x, theta, t, chunk):
        total += jac.pow(2).sum(dim=(0, 1))
    comm, n = getattr(flow, "comm", None), x.shape[0]
    if comm is not None:  # under torch.distributed: the sum over every rank's rows
        total, n = comm.sum(total), comm.count(n)
    return 2.0 * total / n


def check_preconditioner_options(owner: str, delta: float, power: float = 1.0, **counts: int | None) -> None:
    """Validate the options shared by the refreshed Θ preconditioners (``"diag"``, ``"kfac"``,
    ``"gn"``): ``delta`` > 0 finite, ``power`` in (0, 1], and each of ``counts`` (``every``,
    ``chunk``, …) an integer ≥ 1 (``None`` allowed where the option is optional).

    Raises:
        ValueError: naming ``owner`` and the option."""
    if isinstance(power, bool) or not isinstance(power, (int, float)) or not 0 < power <= 1:
        raise ValueError(f"{owner}: power must be in (0, 1], got {power!r}")
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not (math.isfinite(delta) and delta > 0):
        raise ValueError(f"{owner}: delta must be a positive finite number, got {delta!r}")
    for key, val in counts.items():
        if val is not None and (isinstance(val, bool) or not isinstance(val, int) or val < 1):
            raise ValueError(f"{owner}: {key} must be an integer >= 1, got {val!r}")


class DiagGNFlow:
    r"""dΘ/dt = −η·D·∇_Θ L with D = (diag G + δ)^{−p} from the Gauss–Newton diagonal, held
    constant between refreshes (module docstring); the state's auxiliary block is log D.

    Args:
        power: p ∈ (0, 1]: 1 is Jacobi scaling (each parameter relaxes at the rate of its own
            curvature), ½ scales like Adam's 1/√(E g²).
        delta: δ relative to mean(diag G) (> 0): bounds D by (δ·mean diag G)^{−p}.
        every: integration steps between refreshes of D (a fixed-grid solver; an adaptive one
            refreshes at output times).
        chunk: rows per vmapped Jacobian block.
    """

    name = "diag"

    def __init__(self, power: float = 1.0, delta: float = 1e-3, every: int = 10, chunk: int = 256):
        check_preconditioner_options("DiagGNFlow", delta, power, every=every, chunk=chunk)
        self.power, self.delta, self.every, self.chunk = float(power), float(delta), every, chunk

    @property
    def refresh_every(self) -> int:
        """Integration steps between refreshes of D."""
        return self.every

    def aux_size(self, sizes: list[int]) -> int:
        """Length of A = log D: P, one per parameter."""
        return int(sum(sizes))

    def start(self, grad: Tensor) -> Tensor:
        """Not used: D needs the particles (:meth:`estimate`); raises."""
        raise RuntimeError("DiagGNFlow's auxiliary state comes from estimate(flow, x, theta, t), not from the gradient")

    def estimate(self, flow, x: Tensor, theta: Tensor, t: float | Tensor | None = None) -> Tensor:
        r"""A = log D = −p·log(diag G + δ·mean diag G) ``(P,)`` at the training particles
        ``x (n, d)`` and Θ ``(P,)``."""
        g = gauss_newton_diagonal(flow, x, theta, t, self.chunk)
        floor = self.delta * float(g.mean())
        if not (math.isfinite(floor) and floor > 0):  # a network with no output gradient at all
            floor = self.delta
        return (-self.power * torch.log(g + floor)).detach()

    def rates(self, grad: Tensor, aux: Tensor, eta: float) -> tuple[Tensor, Tensor]:
        """``(dΘ/dt (P,), dA/dt (P,))`` = ``(−η D g, 0)``."""
        return -eta * torch.exp(aux) * grad, torch.zeros_like(aux)

    def preconditioner(self, aux: Tensor) -> Tensor:
        """D = e^A ``(P,)``."""
        return torch.exp(aux)

    def config(self) -> dict:
        """JSON form (``result.config``, metrics)."""
        return {"name": self.name, "power": self.power, "delta": self.delta, "every": self.every}

    def __repr__(self) -> str:
        return f"DiagGNFlow(power={self.power}, delta={self.delta}, every={self.every})"
