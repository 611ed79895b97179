r"""The network block of the coupled flow: how Θ moves given the loss gradient g = ∇_Θ L.

The coupled state is y = vec(X) ⊕ Θ ⊕ A [⊕ ℓ] [⊕ held-out], A the auxiliary state of the
Θ dynamics (empty for the plain gradient flow).  Three Θ dynamics (``theta_flow=`` of
:func:`sbtm_flows.sample`):

``"gd"`` — :class:`GradientFlow`, the plain gradient flow (no A)::

    dΘ/dt = −η g

``"rmsprop"`` — :class:`RMSpropFlow`, the continuous-time limit of RMSprop (Adam without
momentum) with a running second moment v of the gradient, one per parameter tensor (layer
weight or bias: ``per="tensor"``, the default) or one per parameter (``per="parameter"``)::

    dΘ_l/dt = −η g_l / √(v_l + ε²)
    dv_l/dt = (mean(g_l ⊙ g_l) − v_l) / τ,        v_l(t0) = mean(g_l(t0) ⊙ g_l(t0))

(l a tensor; per parameter, mean(g_l²) is g_l² itself).  η is then a speed — each tensor moves
at RMS rate about η while v_l tracks its mean g² — not a rate per unit of curvature; τ is the
memory of v (Adam's 1/(1 − β₂) steps); ε caps the preconditioner D = diag(1/√(v + ε²)) at 1/ε.
Starting v at g(t0)² removes Adam's bias correction (v(0) = 0 would divide by ε).  The state
holds A = w = log(v + ε²) rather than v::

    dw/dt = ((mean g_l² + ε²)·e^{−w} − 1) / τ,     dΘ_l/dt = −η g_l e^{−w_l/2}

(the same ODE in another coordinate): v spans orders of magnitude (g² ~ 10⁻¹⁰ … 10⁻²) and
would sit far below the state's scale, where ``rkc``'s finite-difference spectral estimate
(perturbations ~ √eps·‖y‖) and adaptive solvers' absolute tolerances cannot resolve it; w is
O(10) and a perturbation of w is a relative change of v.  The Θ block's Jacobian is
≈ −η·D·∇²_Θ L, so the stiffness an explicit solver sees is η·λ_max(D^{1/2} ∇²_Θ L D^{1/2}) ≤
η·λ_max(∇²_Θ L)/ε (:meth:`RMSpropFlow.preconditioner` returns D; the stiffness monitor uses it).

Per tensor vs per parameter (measured on §5.2, README "η and stiffness"): per parameter, a
parameter whose gradient crosses zero gets D ≈ 1/ε, and the coupling ∂(dw/dt)/∂Θ ~ 2g∇²L/(vτ)
is huge where v is small — the Jacobian is far from normal, ``rkc``'s power iteration reads its
norm (ρ ≈ 10⁶–10⁸) instead of its spectral radius and refuses the step; per tensor, v_l is a
mean over the tensor, the coupling is averaged away and the flow runs at the cost of the plain
one with a comparable network speed.

``"diag"`` — :class:`~sbtm_flows.diag_flow.DiagGNFlow`: dΘ/dt = −η D ∇_Θ L with D the inverse
Gauss–Newton diagonal, refreshed every few steps from the particles (A = log D, dA/dt = 0;
:mod:`sbtm_flows.diag_flow`); its default η is ``"track"``.

``"kfac"`` — :class:`~sbtm_flows.kfac_flow.KFACFlow`: dΘ/dt = −η M ∇_Θ L with M the damped
Kronecker-factored (K-FAC) inverse of each layer's Gauss–Newton block, refreshed like ``"diag"``
(A = the factors' eigendecompositions, dA/dt = 0; :mod:`sbtm_flows.kfac_flow`), every step by
default; default η a tracked η of ratio 10 (``training="auto"`` runs it on dilation paths).
Its :meth:`~sbtm_flows.kfac_flow.KFACFlow.preconditioner` is not a diagonal D but the map
q ↦ M^{1/2} q (the stiffness estimate accepts either).

``"gn"`` — :class:`~sbtm_flows.gn_flow.GNFlow`: dΘ/dt = −η (G + δI)⁻¹ ∇_Θ L with the dense
Gauss–Newton matrix G (natural gradient), its Cholesky factor refreshed like D and kept outside
the state (:mod:`sbtm_flows.gn_flow`); default η ``"track"``.

A preconditioned flow is still a gradient flow of L in the metric D⁻¹ (dL/dt = −η gᵀDg ≤ 0 at
fixed particles), so it has the same fixed points as ``"gd"``; what changes is how fast the
directions of small curvature relax, hence how far s_Θ lags the moving law f_t (README, η and
stiffness: eq. (4.1)'s two sides on §5.2).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

from .diag_flow import DiagGNFlow
from .gn_flow import GNFlow
from .kfac_flow import KFACFlow
from .tracking_eta import TrackingEta

__all__ = ["GradientFlow", "RMSpropFlow", "THETA_FLOWS", "DEFAULT_ETA", "resolve_theta_flow"]


class GradientFlow:
    """dΘ/dt = −η ∇_Θ L (no auxiliary state): the coupled flow of the paper's analysis."""

    name = "gd"
    #: Integration steps between refreshes of a piecewise-constant auxiliary state (``None``: none;
    #: :class:`~sbtm_flows.diag_flow.DiagGNFlow` has one).
    refresh_every: int | None = None

    def aux_size(self, sizes: list[int]) -> int:
        """Length of the auxiliary state for parameter tensors of ``sizes`` (numels): 0."""
        return 0

    def start(self, grad: Tensor) -> Tensor:
        """The auxiliary state at t0 from the gradient there, ``(P,) -> (0,)``."""
        return grad.new_zeros(0)

    def rates(self, grad: Tensor, aux: Tensor, eta: float) -> tuple[Tensor, Tensor]:
        """``(dΘ/dt (P,), dA/dt (0,))`` = ``(−η g, ∅)``."""
        return -eta * grad, aux.new_zeros(0)

    def preconditioner(self, aux: Tensor) -> Tensor | None:
        """D with dΘ/dt ≈ −η D g: ``None`` (the identity).  A Θ dynamics returns a diagonal D
        ``(P,)`` or, for a non-diagonal M (:class:`~sbtm_flows.kfac_flow.KFACFlow`), a callable
        q ↦ M^{1/2} q ``(P,) -> (P,)`` applying its symmetric square root, or for a factored
        M = C·Cᵀ (:class:`~sbtm_flows.gn_flow.GNFlow`) an object with ``root``/``root_t``."""
        return None

    def config(self) -> dict:
        """JSON form (``result.config``, metrics)."""
        return {"name": self.name}

    def __repr__(self) -> str:
        return "GradientFlow()"


class RMSpropFlow:
    r"""dΘ/dt = −η g/√(v + ε²), dv/dt = (g² − v)/τ, in the coordinate w = log(v + ε²)
    (module docstring).

    Args:
        tau: τ > 0, the time constant of the second-moment estimate v.
        eps: ε > 0: the preconditioner is at most 1/ε (and the stiffness at most
            η·λ_max(∇²_Θ L)/ε).
    """

    name = "rmsprop"
    #: the moments evolve in the ODE; nothing is refreshed between steps
    refresh_every: int | None = None

    def __init__(self, tau: float = 1.0, eps: float = 1e-4, per: str = "tensor"):
        for key, val in (("tau", tau), ("eps", eps)):
            if isinstance(val, bool) or not isinstance(val, (int, float)) or not (math.isfinite(val) and val > 0):
                raise ValueError(f"RMSpropFlow: {key} must be a positive finite number, got {val!r}")
        if per not in ("parameter", "tensor"):
            raise ValueError(f"RMSpropFlow: per must be 'parameter' or 'tensor', got {per!r}")
        self.tau, self.eps, self.per = float(tau), float(eps), per
        self.sizes: Tensor | None = None

    def aux_size(self, sizes: list[int]) -> int:
        """Length of w for parameter tensors of ``sizes``: P (``per="parameter"``) or their
        number (``per="tensor"``, one second moment per tensor)."""
        self.sizes = torch.as_tensor(list(sizes))
        return int(self.sizes.sum()) if self.per == "parameter" else len(sizes)

    def _moment(self, grad: Tensor) -> Tensor:
        """g² ``(P,)``, or its mean over each tensor ``(k,)``."""
        if self.per == "parameter":
            return grad * grad
        return torch.stack([u.pow(2).mean() for u in grad.split(self.sizes.tolist())])

    def _expand(self, d: Tensor) -> Tensor:
        return d if self.per == "parameter" else d.repeat_interleave(self.sizes.to(d.device))

    def start(self, grad: Tensor) -> Tensor:
        """w(t0) = log(g(t0)² + ε²), ``(P,) -> (P,)`` (or per tensor)."""
        return torch.log(self._moment(grad) + self.eps**2)

    def preconditioner(self, aux: Tensor) -> Tensor:
        """D = e^{−w/2} = 1/√(v + ε²) ``(P,)``."""
        return self._expand(torch.exp(-0.5 * aux))

    def rates(self, grad: Tensor, aux: Tensor, eta: float) -> tuple[Tensor, Tensor]:
        """``(dΘ/dt (P,), dw/dt)`` = ``(−η D g, ((g² + ε²)·e^{−w} − 1)/τ)``."""
        e = torch.exp(-aux)
        return -eta * self._expand(e.sqrt()) * grad, ((self._moment(grad) + self.eps**2) * e - 1.0) / self.tau

    def second_moment(self, aux: Tensor) -> Tensor:
        """v = e^w − ε² ``(P,)`` from the state's w."""
        return torch.exp(aux) - self.eps**2

    def config(self) -> dict:
        """JSON form (``result.config``, metrics)."""
        return {"name": self.name, "tau": self.tau, "eps": self.eps, "per": self.per}

    def __repr__(self) -> str:
        return f"RMSpropFlow(tau={self.tau}, eps={self.eps}, per={self.per!r})"


#: η when none is given: a rate per unit curvature for "gd", a speed (parameter units per unit
#: time, per tensor in RMS) for "rmsprop", the tracked η for the refreshed preconditioners — for
#: "kfac" with ratio 10, not 50: on a coarse grid (§5.4's quick schedule, dt = 0.05) λ_max of
#: M^½∇²_Θ L M^½ can triple within a step, and ratio 50 then overshoots (README, η and stiffness).
#: An EtaSchedule here is a template: each run gets a deep copy.
DEFAULT_ETA = {"gd": 5.0, "rmsprop": 3.0, "diag": "track", "kfac": TrackingEta(ratio=10.0), "gn": "track"}

#: name -> the Θ dynamics with its default parameters.
THETA_FLOWS = {"gd": GradientFlow, "rmsprop": RMSpropFlow, "diag": DiagGNFlow, "kfac": KFACFlow, "gn": GNFlow}


def resolve_theta_flow(spec) -> GradientFlow | RMSpropFlow | DiagGNFlow | KFACFlow | GNFlow:
    """``"gd"`` / ``"rmsprop"`` / ``"diag"`` / ``"kfac"`` / ``"gn"`` (default parameters) or an instance, as an
    instance.

    Raises:
        ValueError: any other value (names the valid ones)."""
    if isinstance(spec, (GradientFlow, RMSpropFlow, DiagGNFlow, KFACFlow, GNFlow)):
        return copy.copy(spec)  # (aux_size binds it to a network; GNFlow's factor to a run)
    if isinstance(spec, str) and spec in THETA_FLOWS:
        return THETA_FLOWS[spec]()
    raise ValueError(f"theta_flow must be one of {', '.join(repr(k) for k in THETA_FLOWS)} or a GradientFlow / "
                     f"RMSpropFlow / DiagGNFlow / KFACFlow / GNFlow instance, got {spec!r}")
