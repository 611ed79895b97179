r"""The Gauss–Newton (natural-gradient) flow of Θ: dΘ/dt = −η·(G + δI)⁻¹·∇_Θ L, G dense.

The implicit loss L = mean(|s_Θ|² + 2∇·s_Θ) is quadratic in the network's output s (the
divergence term is linear in s), so its Gauss–Newton matrix is

    G = (2/n) Σᵢ Jᵢᵀ Jᵢ  ``(P, P)``,   Jᵢ = ∂s_Θ(Xᵢ)/∂Θ ``(d, P)``,

the metric that the loss puts on Θ through the function values at the particles.  :class:`GNFlow`
moves Θ along

    dΘ/dt = −η·M·∇_Θ L,    M = (G + δ·I)⁻¹,   δ = ``delta``·mean(diag G),

so that, to first order in the function space at the particles, s_Θ(Xᵢ) relaxes toward its
loss minimiser at rate ≈ η in *every* direction the particles see, whatever its particle mass:
the plain flow relaxes an eigen-direction of G at rate η·λᵢ, so features that few particles see
(the score between the modes of a mixture) lag λ_max/λᵢ times (README "η and stiffness").  The
Θ block's Jacobian is −η·M·∇²_Θ L; where ∇²_Θ L ≈ G its eigenvalues are ≈ −η·λᵢ/(λᵢ + δ) ∈
[−η, 0], so the block is stable by construction for η·h within the solver's limit (the rest of
∇²_Θ L, Σᵢ (2sᵢ·∇²_Θ sᵢ + 2∇²_Θ ∇·sᵢ), can move the spectrum: the Lanczos monitor and
:class:`~sbtm_flows.tracking_eta.TrackingEta` see it through :meth:`GNFlow.preconditioner`).

Computation (per refresh, at the training particles or a deterministic subsample of ``m`` of
them): the per-particle Jacobians by a ``torch.func`` vmap (:func:`~sbtm_flows.diag_flow.jacobian_blocks`,
``chunk`` particles at a time), G = (2/n)ΣJᵢᵀJᵢ accumulated in float64 (n·d·P² flops), the
Cholesky factor G + δI = L·Lᵀ and the explicit triangular inverse L⁻¹ (P³/3 flops each).  Then
M = C·Cᵀ with C = L⁻ᵀ (:class:`CholeskyFactor`), and each right-hand side applies M by two dense
mat-vecs (2P² flops).  The Θ block's eigenvalues are those of the symmetric Cᵀ·∇²_Θ L·C (similar
to M·∇²_Θ L), which is what :func:`~sbtm_flows.stiffness.hessian_max_eigenvalue` runs Lanczos on.

The factor is held constant between refreshes — every ``every`` integration steps and at every
output time, the protocol of :class:`~sbtm_flows.diag_flow.DiagGNFlow` — but, unlike D there, it
lives *outside* the ODE state (P² ≈ 2·10⁷ numbers for the default 2-64-64-2 network would make
every solver stage and checkpoint that large): the state's auxiliary block is empty and
:meth:`GNFlow.estimate` stores the factor on the Θ dynamics.  The right-hand side is then a
function of (t, y) between refreshes, so any torchdiffeq method runs it; a resumed run
recomputes the factor from the checkpoint's (X, Θ) at the output time it resumes from, where the
uninterrupted run refreshed it too, so resume stays bitwise.  Its fixed points are those of
``"gd"`` (M is positive definite).

Measured on §5.4's dilation path (README "η and stiffness", n = 1000): a negative result, kept
as the reference point.  At ``every=10`` rkc stops before t = 0.4 for δ from 10⁻³ to 1: G is far
from full rank (3717 of 4482 eigenvalues below 10⁻⁶·mean diag G at t = 0.2), M = 1/δ there, and
the particles' Jacobians rotate into that subspace within a few steps (ρ_Θ ×700 in 5 steps).
Refreshed every step (≈ 4 s each) it runs but ends wrong (loss +2·10⁶, TV to annealed ULA's mode
weights 0.40 at t = 0.2; diag 0.17): −λ_min/λ_max of M^{1/2}∇²_Θ L M^{1/2} is ≈ 0.2–1 (gd 4·10⁻⁴,
diag 0.02), so the directions in which the implicit loss over-fits finite particles grow about
as fast as the network relaxes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .diag_flow import check_preconditioner_options, jacobian_blocks
from .errors import SamplingError

__all__ = ["GNFlow", "CholeskyFactor", "gauss_newton_matrix", "subsample_rows"]


def subsample_rows(n: int, m: int | None) -> Tensor | None:
    """The deterministic subsample ⌊k·n/m⌋, k = 0 … m − 1 ``(m,)`` of n rows (evenly spread,
    no randomness: the same rows for the same n), or ``None`` (all rows) when m is None or ≥ n."""
    if m is None or m >= n:
        return None
    return torch.arange(m) * n // m


def gauss_newton_matrix(flow, x: Tensor, theta: Tensor, t: float | Tensor | None = None, chunk: int = 256) -> Tensor:
    r"""G = (2/n) Σᵢ Jᵢᵀ Jᵢ ``(P, P)`` (float64), Jᵢ = ∂s_Θ(xᵢ)/∂Θ ``(d, P)`` at particles
    ``x (n, d)`` and flat parameters Θ ``(P,)`` of ``flow`` (an :class:`~sbtm_flows.dynamics.SBTMFlow`):
    the Gauss–Newton matrix of the implicit loss, exactly (summed over the ranks under a ``comm``).

    Raises:
        ValueError: ``x`` not 2-D or empty, or ``chunk`` < 1.
    """
    p = theta.numel()
    total = torch.zeros(p, p, dtype=torch.float64, device=theta.device)
    for jac in jacobian_blocks(flow, x, theta, t, chunk):
        rows = jac.reshape(-1, p).double()
        total.addmm_(rows.T, rows)
    comm, n = getattr(flow, "comm", None), x.shape[0]
    if comm is not None:  # under torch.distributed: the sum over every rank's rows
        total, n = comm.sum(total), comm.count(n)
    return total.mul_(2.0 / n)


class CholeskyFactor:
    r"""M = C·Cᵀ with C = L⁻ᵀ, L the Cholesky factor of G + δI: the preconditioner of
    :class:`GNFlow` in the form the stiffness tools use (``root(q)`` = C·q, ``root_t(q)`` = Cᵀ·q,
    so Cᵀ·H·C is symmetric and similar to M·H).

    Args:
        inverse_lower: L⁻¹ ``(P, P)``, lower triangular (stored dense, in Θ's dtype).
    """

    def __init__(self, inverse_lower: Tensor):
        self.inverse_lower = inverse_lower

    def root(self, q: Tensor) -> Tensor:
        """C·q = L⁻ᵀ·q ``(P,) -> (P,)``."""
        return self.inverse_lower.T @ q

    def root_t(self, q: Tensor) -> Tensor:
        """Cᵀ·q = L⁻¹·q ``(P,) -> (P,)``."""
        return self.inverse_lower @ q

    def apply(self, q: Tensor) -> Tensor:
        """M·q = C·Cᵀ·q = (G + δI)⁻¹·q ``(P,) -> (P,)``."""
        return self.root(self.root_t(q))

    def dense(self) -> Tensor:
        """M ``(P, P)`` (for tests and diagnostics; P² memory)."""
        return self.inverse_lower.T @ self.inverse_lower


class GNFlow:
    r"""dΘ/dt = −η·(G + δ·mean(diag G)·I)⁻¹·∇_Θ L with the dense Gauss–Newton matrix G, the
    factor held constant between refreshes and kept outside the ODE state (module docstring).

    Args:
        delta: δ relative to mean(diag G) (> 0): M's largest eigenvalue is 1/(δ·mean diag G).
        every: integration steps between refreshes (a fixed-grid solver; an adaptive one
            refreshes at output times).
        m: G from a deterministic subsample of m training particles (:func:`subsample_rows`;
            ``None``: all of them).  With m·d < P, G has rank ≤ m·d and the directions it misses
            get the largest step 1/δ.
        chunk: particles per vmapped Jacobian block.
    """

    name = "gn"

    def __init__(self, delta: float = 1e-3, every: int = 10, m: int | None = None, chunk: int = 256):
        check_preconditioner_options("GNFlow", delta, every=every, chunk=chunk, m=m)
        self.delta, self.every, self.m, self.chunk = float(delta), every, m, chunk
        self.factor: CholeskyFactor | None = None

    @property
    def refresh_every(self) -> int:
        """Integration steps between refreshes of the factor."""
        return self.every

    def aux_size(self, sizes: list[int]) -> int:
        """Length of the state's auxiliary block: 0 (the factor lives on this object)."""
        return 0

    def start(self, grad: Tensor) -> Tensor:
        """Not used: the factor needs the particles (:meth:`estimate`); raises."""
        raise RuntimeError("GNFlow's preconditioner comes from estimate(flow, x, theta, t), not from the gradient")

    def estimate(self, flow, x: Tensor, theta: Tensor, t: float | Tensor | None = None) -> Tensor:
        r"""Refresh the factor of M = (G + δ·mean diag G·I)⁻¹ at the training particles ``x (n, d)``
        (or its subsample of m) and Θ ``(P,)``; returns the (empty) auxiliary state ``(0,)``.

        Raises:
            SamplingError: G + δI not numerically positive definite (raise ``delta``)."""
        idx = subsample_rows(x.shape[0], self.m)
        g = gauss_newton_matrix(flow, x if idx is None else x[idx.to(x.device)], theta, t, self.chunk)
        floor = self.delta * float(g.diagonal().mean())
        if not (math.isfinite(floor) and floor > 0):  # a network with no output gradient at all
            floor = self.delta
        g.diagonal().add_(floor)
        low, info = torch.linalg.cholesky_ex(g)
        if int(info) != 0:
            raise SamplingError(f"GNFlow: G + δ·I is not numerically positive definite (Cholesky failed at row {int(info)}, "
                                f"δ = {floor:.3g}); use a larger delta than {self.delta:g}", t=None if t is None else float(t))
        eye = torch.eye(low.shape[0], dtype=low.dtype, device=low.device)
        inv = torch.linalg.solve_triangular(low, eye, upper=False)
        self.factor = CholeskyFactor(inv.to(theta.dtype).contiguous())
        return theta.new_zeros(0)

    def _factor(self) -> CholeskyFactor:
        if self.factor is None:
            raise RuntimeError("GNFlow has no preconditioner yet: estimate(flow, x, theta, t) first "
                               "(SBTMFlow.initial_state and refresh_aux do)")
        return self.factor

    def rates(self, grad: Tensor, aux: Tensor, eta: float) -> tuple[Tensor, Tensor]:
        """``(dΘ/dt (P,), dA/dt (0,))`` = ``(−η·M·g, ∅)``."""
        return -eta * self._factor().apply(grad), aux.new_zeros(0)

    def preconditioner(self, aux: Tensor) -> CholeskyFactor:
        """M = C·Cᵀ as a :class:`CholeskyFactor` (``aux`` is empty and unused)."""
        return self._factor()

    def config(self) -> dict:
        """JSON form (``result.config``, metrics)."""
        return {"name": self.name, "delta": self.delta, "every": self.every, "m": self.m}

    def __repr__(self) -> str:
        return f"GNFlow(delta={self.delta}, every={self.every}, m={self.m})"
