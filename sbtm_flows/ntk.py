r"""Neural-tangent-kernel tools for the coupled SBTM dynamics (paper, Theorem 3.5).

Notation.  Particles X ``(n, d)``, network s_Θ: ℝᵈ → ℝᵈ with P parameters, and the map
Θ ↦ vec s_Θ(X) ∈ ℝ^{nd} with Jacobian J ``(n·d, P)``, rows ordered particle-major
(row i·d + α is ∂_Θ s^α(Xⁱ), the same order as vec(X) in the ODE state).  The empirical NTK
is the Gram matrix

    H = J Jᵀ ``(n·d, n·d)``,   H^{ij}_{αβ} = Σ_k ∂_{θ_k} s^α(Xⁱ) ∂_{θ_k} s^β(Xʲ),

symmetric positive semi-definite, of rank ≤ min(n·d, P).

**Which λ.**  The proof of Theorem 3.5 uses rᵀ H r ≥ λ |r|² for the residual r = s − ∇log f
``(n·d,)``; the best such λ is the smallest *eigenvalue* of H, λ_min(H) = σ_min(J)².  (The
theorem's statement writes ‖Hv‖² ≥ λ‖v‖², which would be λ_min(H)²; the proof needs the
quadratic form.)  Everything here returns and uses λ_min(H), the eigenvalue.

**The constant.**  With L^n = (1/n) Σᵢ |rᵢ|² (a mean), ∇_Θ L^n = (2/n) Jᵀ r, so under
dΘ/dt = −η ∇_Θ L^n

    ∂_τ L^n(s_τ, f_t) = −η |∇_Θ L^n|² = −(4η/n²) rᵀ H r ≤ −(4ηλ/n) L^n,

and dL^n/dt ≤ 0 as soon as η ≥ (n / 4λ) ∂_τ log L^n(s_t, f_τ)|_{τ=t}.  The paper drops
the factor 4 (its n/λ bound is 4× larger, hence also sufficient); :class:`EtaCondition`
reports both (``bound`` sharp, ``bound_paper`` as printed).

**Which loss.**  See :func:`eta_condition`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .dynamics import SBTMFlow, particle_rates
from .eta import EtaSchedule
from .losses import implicit_score_matching
from .paths import time_float as _tfloat
from .score import flatten_params, functional_score, unflatten_params
from .stiffness import stable_eta

__all__ = [
    "ntk_jacobian",
    "empirical_ntk",
    "ntk_matvec",
    "ntk_min_eigenvalue",
    "EtaCondition",
    "eta_condition",
    "loss_rates",
    "NTKEta",
    "NTK_DIAGNOSTICS",
]

#: Diagnostics added by ``sample(..., record_ntk_every=k)`` (NaN at the other output times).
NTK_DIAGNOSTICS = (
    "ntk_lambda_min",
    "ntk_eta_bound",
    "ntk_eta_bound_paper",
    "ntk_eta_exact",
    "ntk_eta",
    "ntk_loss",
    "ntk_loss_rate",
    "ntk_train_loss",
    "ntk_residual",
)

#: Above this many NTK entries the Jacobian is not materialised (``method="auto"``).
JACOBIAN_MAX_ENTRIES = 50_000_000
#: Above this n·d, ``ntk_min_eigenvalue(method="auto")`` uses Lanczos on the matvec.
DENSE_EIG_MAX = 4096

ReferenceScore = Callable[[Tensor, Tensor], Tensor]


# ----------------------------------------------------------------------------------------
# The kernel
# ----------------------------------------------------------------------------------------
def _model_theta(model_or_flow, theta: Tensor | None) -> tuple[torch.nn.Module, Tensor]:
    """``(module, flat Θ (P,))`` from an ``SBTMFlow`` or a module."""
    model = model_or_flow.model if isinstance(model_or_flow, SBTMFlow) else model_or_flow
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model_or_flow must be an SBTMFlow or a torch.nn.Module, got {type(model_or_flow).__name__}")
    th = flatten_params(model) if theta is None else theta.detach().reshape(-1)
    return model, th


def _check_x(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.ndim != 2:
        raise ValueError(f"x must be a tensor of particles (n, d), got {getattr(x, 'shape', type(x))}")


def _apply(model: torch.nn.Module, th: Tensor, x: Tensor, t) -> Tensor:
    """s_Θ(x) (at time t for a time-conditioned model) for a flat Θ."""
    return functional_score(model, unflatten_params(model, th), x, t)


def _outputs(model: torch.nn.Module, x: Tensor, t=None) -> Callable[[Tensor], Tensor]:
    """Θ ↦ vec s_Θ(X) ``(P,) -> (n·d,)``."""
    return lambda th: _apply(model, th, x, t).reshape(-1)


def ntk_jacobian(model_or_flow, x: Tensor, theta: Tensor | None = None, t: float | None = None) -> Tensor:
    r"""J = ∂ vec s_Θ(X) / ∂Θ ``(n·d, P)`` (particle-major rows), one reverse pass per
    output of one particle, vmapped over the n particles (``vmap(jacrev)``); ``t``: the time,
    for a time-conditioned model (e.g. :class:`~sbtm_flows.score.ScaledScore`)."""
    _check_x(x)
    model, th = _model_theta(model_or_flow, theta)
    th = th.to(x)

    def one(p: Tensor, xi: Tensor) -> Tensor:
        return _apply(model, p, xi[None], t)[0]

    jac = torch.func.vmap(torch.func.jacrev(one), in_dims=(None, 0))(th, x.detach())  # (n, d, P)
    return jac.reshape(-1, th.numel())


def ntk_matvec(model_or_flow, x: Tensor, theta: Tensor | None = None, t: float | None = None) -> Callable[[Tensor], Tensor]:
    r"""Matrix-free v ↦ H v = J (Jᵀ v) without forming H or J.

    Jᵀ v is one vector-Jacobian product (reverse mode) and J u one Jacobian-vector product
    (forward mode) of Θ ↦ vec s_Θ(X); memory O(n·d + P) per vector.  The returned function
    takes ``v (n·d,)`` or a block ``(n·d, k)`` (columns, vmapped) and returns the same shape.
    """
    _check_x(x)
    model, th = _model_theta(model_or_flow, theta)
    th = th.to(x)
    f = _outputs(model, x.detach(), t)
    _, vjp_fn = torch.func.vjp(f, th)

    def hv(v: Tensor) -> Tensor:
        (u,) = vjp_fn(v)
        return torch.func.jvp(f, (th,), (u,))[1]

    def matvec(v: Tensor) -> Tensor:
        v = v.to(th)
        if v.ndim == 1:
            return hv(v)
        return torch.func.vmap(hv, in_dims=1, out_dims=1)(v)

    return matvec


def empirical_ntk(model_or_flow, x: Tensor, theta: Tensor | None = None, method: str = "auto", block: int = 256,
                  t: float | None = None) -> Tensor:
    r"""The empirical NTK H ``(n·d, n·d)``, H^{ij}_{αβ} = Σ_k ∂_{θ_k}s^α(Xⁱ) ∂_{θ_k}s^β(Xʲ),
    index i·d + α.

    Args:
        model_or_flow: an :class:`~sbtm_flows.dynamics.SBTMFlow` (its network) or a module.
        x: particles ``(n, d)``.
        theta: flat parameters Θ ``(P,)``; default the module's own.
        t: the time, for a time-conditioned model (:class:`~sbtm_flows.score.ScaledScore`).
        method: ``"jacobian"`` — materialise J ``(n·d, P)`` with ``vmap(jacrev)`` and form
            J Jᵀ: cost ≈ n·d backward passes of one particle + (n·d)²·P flops, memory n·d·P;
            ``"matvec"`` — columns H e_j in blocks of ``block`` by the vjp/jvp products of
            :func:`ntk_matvec`: cost ≈ n·d forward+backward passes over *all* n particles
            (≈ 2n/(1 + n·d/c) times the Jacobian route, c ≈ 3 the cost of a pass, i.e. more
            flops whenever n·d ≳ 1), memory (n·d)·block + P;
            ``"auto"`` (default) — the Jacobian route, the cheaper one in flops for every
            n, d, unless J would exceed ``JACOBIAN_MAX_ENTRIES`` entries.

    Returns:
        H, symmetric positive semi-definite (up to rounding), dtype of ``x``.
    """
    _check_x(x)
    model, th = _model_theta(model_or_flow, theta)
    nd, p = x.numel(), th.numel()
    if method == "auto":
        method = "jacobian" if nd * p <= JACOBIAN_MAX_ENTRIES else "matvec"
    if method == "jacobian":
        jac = ntk_jacobian(model, x, th, t)
        return jac @ jac.T
    if method == "matvec":
        if int(block) < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        mv = ntk_matvec(model, x, th, t)
        eye = torch.eye(nd, dtype=x.dtype, device=x.device)
        cols = [mv(eye[:, i : i + block]) for i in range(0, nd, block)]
        h = torch.cat(cols, 1)
        return 0.5 * (h + h.T)
    raise ValueError(f"unknown method {method!r}; valid: auto, jacobian, matvec")


def ntk_min_eigenvalue(
    model_or_flow,
    x: Tensor,
    theta: Tensor | None = None,
    method: str = "auto",
    tol: float = 1e-6,
    maxiter: int | None = None,
    t: float | None = None,
) -> float:
    r"""λ_min(H), the smallest *eigenvalue* of the empirical NTK (= σ_min(J)², the best λ
    with vᵀHv ≥ λ|v|²; **not** its square — see the module docstring).

    Args:
        method: ``"dense"`` (``torch.linalg.eigvalsh`` of :func:`empirical_ntk` in float64),
            ``"lanczos"`` (``scipy.sparse.linalg.eigsh``, smallest algebraic eigenvalue, on
            the float64 matrix-free :func:`ntk_matvec`; never forms H; raises ValueError if
            it does not converge — slow when λ_min sits in a cluster near 0),
            ``"lobpcg"`` (``scipy.sparse.linalg.lobpcg``, block of 4, matrix-free; after
            ``maxiter`` (default 200) iterations it returns the smallest Ritz value, an
            *upper* bound on λ_min even if not converged), or ``"auto"`` (dense for
            n·d ≤ ``DENSE_EIG_MAX``, else lobpcg).  When n·d > P the rank bound gives λ_min = 0
            exactly and the Lanczos route returns 0.0 without iterating.
        tol, maxiter: passed to ``eigsh``.

    Returns:
        λ_min as a Python float (may be slightly negative from rounding when H is singular).
    """
    _check_x(x)
    model, th = _model_theta(model_or_flow, theta)
    nd, p = x.numel(), th.numel()
    if method == "auto":
        method = "dense" if nd <= DENSE_EIG_MAX else "lobpcg"
    if method == "dense":
        h = empirical_ntk(model, x.to(torch.float64), th.to(torch.float64), t=t)
        return float(torch.linalg.eigvalsh(h)[0])
    if method in ("lanczos", "lobpcg"):
        if nd > p:
            return 0.0
        import numpy as np
        from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

        mv = ntk_matvec(model, x.to(torch.float64), th.to(torch.float64), t)

        def apply(v):
            return mv(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).reshape(nd))).numpy()

        def apply_block(v):
            v = np.ascontiguousarray(v, dtype=np.float64).reshape(nd, -1)
            return mv(torch.from_numpy(v)).numpy()

        op = LinearOperator((nd, nd), matvec=apply, matmat=apply_block, dtype=np.float64)
        if method == "lobpcg":
            import warnings

            from scipy.sparse.linalg import lobpcg

            block = np.random.default_rng(0).standard_normal((nd, 4))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # non-convergence: the Ritz value is still an upper bound
                vals = lobpcg(op, block, largest=False, tol=tol, maxiter=maxiter or 200)[0]
            return float(np.min(vals))
        v0 = np.ones(nd) / math.sqrt(nd)
        try:
            return float(eigsh(op, k=1, which="SA", tol=tol, maxiter=maxiter, v0=v0, return_eigenvectors=False)[0])
        except ArpackNoConvergence as e:
            if len(e.eigenvalues) == 0:
                raise ValueError(f"Lanczos did not converge in maxiter={maxiter}; raise maxiter or tol={tol}") from e
            return float(e.eigenvalues[0])
    raise ValueError(f"unknown method {method!r}; valid: auto, dense, lanczos, lobpcg")


# ----------------------------------------------------------------------------------------
# The η condition of Theorem 3.5
# ----------------------------------------------------------------------------------------
@dataclass
class EtaCondition:
    """What :func:`eta_condition` returns (Python floats).

    Attributes:
        lambda_min: λ_min(H), smallest eigenvalue of the empirical NTK (NaN if not computed).
        loss: L^n, the loss in the bound (see ``kind``).
        loss_rate: ∂_τ L^n(s_t, f_τ)|_{τ=t}, its rate along the particle motion, Θ frozen.
        bound: (n / 4λ) · loss_rate / loss — the sharp form of Theorem 3.5's condition
            (η ≥ bound ⇒ dL^n/dt ≤ 0); ±inf when λ ≤ 0, NaN when loss ≤ 0.
        bound_paper: (n / λ) · loss_rate / loss, the theorem as printed (= 4·bound).
        eta_exact: the exact first-order threshold along the coupled flow,
            loss_rate / ⟨∇_Θ L^n, ∇_Θ L_train⟩ (0 when loss_rate ≤ 0, inf when the
            gradients do not align).  This is the theorem's bound with λ replaced by the
            Rayleigh quotient rᵀHr/|r|² ≥ λ_min, so eta_exact ≤ bound.
        eta: the η the flow uses now.
        train_loss: the implicit loss L_train = mean(|s|² + 2∇·s) the flow descends.
        grad_sq: |∇_Θ L^n|².
        kind: ``"reference"`` (explicit loss against ``reference_score``) or ``"implicit"``.
    """

    lambda_min: float
    loss: float
    loss_rate: float
    bound: float
    bound_paper: float
    eta_exact: float
    eta: float
    train_loss: float
    grad_sq: float
    kind: str

    def as_diagnostics(self) -> dict[str, float]:
        """The entries of ``NTK_DIAGNOSTICS``."""
        return {
            "ntk_lambda_min": self.lambda_min,
            "ntk_eta_bound": self.bound,
            "ntk_eta_bound_paper": self.bound_paper,
            "ntk_eta_exact": self.eta_exact,
            "ntk_eta": self.eta,
            "ntk_loss": self.loss,
            "ntk_loss_rate": self.loss_rate,
            "ntk_train_loss": self.train_loss,
            "ntk_residual": self.loss if self.kind == "reference" else float("nan"),
        }


def loss_rates(
    flow: SBTMFlow,
    x: Tensor,
    t: float | Tensor,
    theta: Tensor,
    reference_score: ReferenceScore | None = None,
    velocity: Tensor | None = None,
) -> dict[str, Tensor]:
    r"""The loss of the bound, its rate along the particles, and the Θ-gradients.

    With v = ∇log π_t(X) − s_Θ(X) ``(n, d)`` (the particle velocity, held fixed as the
    direction; or the given ``velocity (n, d)``, e.g. a known velocity field) and Θ frozen,
    ∂_τ is the exact directional derivative by reverse-mode autograd (double backward
    through the divergence):

    * ``reference_score`` g(x, t) given: L^n(X, t) = mean|s_Θ(X) − g(X, t)|² and
      ∂_τ L^n = ⟨∇_X L^n, v⟩ + ∂_t L^n (g must be built from torch ops on ``t``; a g that
      ignores t counts as time-independent);
    * otherwise L^n = L_train = mean(|s_Θ|² + 2∇·s_Θ)(X) and ∂_τ L^n = ⟨∇_X L_train, v⟩.

    Returns:
        dict of 0-d tensors ``loss``, ``loss_rate``, ``train_loss`` and ``(P,)`` tensors
        ``grad`` (∇_Θ L^n), ``train_grad`` (∇_Θ L_train), all detached.
    """
    probes = flow.probes_for(x)
    with torch.enable_grad():
        th = theta.detach().to(x).requires_grad_(True)
        xr = x.detach().requires_grad_(True)
        train, (s, _) = implicit_score_matching(flow.score_fn(th, t), xr, flow.divergence, probes)
        if velocity is None:
            v = particle_rates(flow.path, t, x.detach(), s.detach(), check_finite=False)[0]
        elif velocity.shape != x.shape:
            raise ValueError(f"velocity must have shape {tuple(x.shape)}, got {tuple(velocity.shape)}")
        else:
            v = velocity.detach().to(x)
        if reference_score is None:
            gx, gth = torch.autograd.grad(train, (xr, th))
            out = {"loss": train, "loss_rate": (gx * v).sum(), "grad": gth, "train_grad": gth}
        else:
            tt = torch.as_tensor(_tfloat(t), dtype=x.dtype, device=x.device).requires_grad_(True)
            g = reference_score(xr, tt)
            if not isinstance(g, Tensor) or g.shape != x.shape:
                raise ValueError(f"reference_score must return shape {tuple(x.shape)}, got {getattr(g, 'shape', type(g))}")
            loss = ((s - g) ** 2).sum(-1).mean()
            gx, gth, gt = torch.autograd.grad(loss, (xr, th, tt), retain_graph=True, allow_unused=True)
            (tgth,) = torch.autograd.grad(train, th)
            rate = (gx * v).sum() + (gt if gt is not None else 0.0)
            out = {"loss": loss, "loss_rate": rate, "grad": gth, "train_grad": tgth}
        out["train_loss"] = train
    return {k: val.detach() if isinstance(val, Tensor) else torch.as_tensor(val) for k, val in out.items()}


def _theorem_bound(n: int, lam: float, loss: float, rate: float, factor: float) -> float:
    """(n / (factor·λ)) · rate / loss with the degenerate cases spelled out."""
    if not loss > 0:
        return float("nan")
    if rate <= 0:
        return rate / loss * (n / (factor * lam)) if lam > 0 else 0.0
    return n * rate / (factor * lam * loss) if lam > 0 else math.inf


def _exact_threshold(rate: float, align: float) -> float:
    if rate <= 0:
        return 0.0
    return rate / align if align > 0 else math.inf


def eta_condition(
    flow: SBTMFlow,
    x: Tensor,
    t: float | Tensor,
    theta: Tensor | None = None,
    reference_score: ReferenceScore | None = None,
    lambda_min: float | None = None,
    eig_method: str = "auto",
    velocity: Tensor | None = None,
) -> EtaCondition:
    r"""Theorem 3.5's condition η(t) ≥ (n/λ) ∂_τ log L^n(s_t, f_τ)|_{τ=t} at one state.

    **The loss L^n.**  The theorem's L^n = mean|s − ∇log f_t|² needs the unknown score of
    the particles' law.  The implicit loss the flow trains, L_train = mean(|s|² + 2∇·s),
    equals L^n − mean|∇log f_t|² only up to a term that is Θ-independent but *τ-dependent*
    (the Fisher information of f_τ), so ∂_τ L_train ≠ ∂_τ L^n and L_train < 0 typically
    (log undefined).  Hence two well-defined choices:

    * ``reference_score=g`` (``(x (n, d), t 0-d tensor) -> (n, d)``, e.g. the analytic
      ∇log f_t of paper 5.1): L^n = mean|s_Θ(X) − g(X, t)|², exactly the theorem's
      quantity when g = ∇log f_t.  ``bound`` is then the theorem's condition; use this.
    * no reference: L^n := L_train, ∂_τ is its exact rate along the particle velocity.
      ``bound`` is NaN whenever L_train ≤ 0; ``eta_exact`` = ∂_τ L_train / |∇_Θ L_train|²
      is the exact condition for the *trained* loss to be non-increasing (it is not the
      theorem's loss: it omits −d/dτ of the Fisher information of f_τ).

    Args:
        flow: the :class:`~sbtm_flows.dynamics.SBTMFlow` (path, network, divergence, η).
        x: particles ``(n, d)``; t: time; theta: Θ ``(P,)`` (default: the network's own).
        lambda_min: reuse a λ_min(H) already computed; otherwise it is computed with
            :func:`ntk_min_eigenvalue` (``eig_method``).
        velocity: ``(n, d)`` direction of the particle motion; default the flow's
            ∇log π_t(X) − s_Θ(X).

    Returns:
        :class:`EtaCondition` (λ_min, the bound, its paper form, the exact threshold, the
        current η, the losses).
    """
    if not isinstance(flow, SBTMFlow):
        raise ValueError(f"flow must be an SBTMFlow, got {type(flow).__name__}")
    _check_x(x)
    _, th = _model_theta(flow, theta)
    th = th.to(x)
    n = x.shape[0]
    r = loss_rates(flow, x, t, th, reference_score, velocity)
    lam = float(lambda_min) if lambda_min is not None else ntk_min_eigenvalue(flow, x, th, method=eig_method, t=t)
    loss, rate = float(r["loss"]), float(r["loss_rate"])
    return EtaCondition(
        lambda_min=lam,
        loss=loss,
        loss_rate=rate,
        bound=_theorem_bound(n, lam, loss, rate, 4.0),
        bound_paper=_theorem_bound(n, lam, loss, rate, 1.0),
        eta_exact=_exact_threshold(rate, float(r["grad"] @ r["train_grad"])),
        eta=float(flow.eta_at(t, x, th)),
        train_loss=float(r["train_loss"]),
        grad_sq=float(r["grad"] @ r["grad"]),
        kind="implicit" if reference_score is None else "reference",
    )


# ----------------------------------------------------------------------------------------
# An η that follows the condition
# ----------------------------------------------------------------------------------------
class NTKEta(EtaSchedule):
    r"""η(t) = clip(safety × threshold(t, X, Θ), floor, ceiling), evaluated from the
    current state inside :meth:`SBTMFlow.forward`, so the right-hand side stays a
    deterministic function of (t, y) and any torchdiffeq solver (fixed or adaptive) works
    (a ``stateful`` :class:`~sbtm_flows.eta.EtaSchedule`, which ``wants_ceiling`` when built
    without one).

    Args:
        safety: factor > 0 on the threshold (≥ 1 keeps the loss non-increasing to first order).
        floor: smallest η (> 0): the threshold is ≤ 0 whenever the particle motion does not
            increase the loss, and the network should still train.
        ceiling: largest η; ``None`` lets :func:`~sbtm_flows.sampling.sample` set it to
            :func:`stability_ceiling` (0.8 · c / (λ_max(∇²_Θ L)·dt), c the solver's stability
            limit, 2 for adaptive ones), so the stiffness check can never refuse the run; with a
            fixed-step solver that ceiling then falls as the λ_max the stiffness monitor tracks
            grows (:meth:`observe_curvature`): λ_max grows along a run (§5.1 at η = "ntk", heun2:
            23 → 29 by t = 0.2, past the start's 0.8 margin).  Direct users of :class:`SBTMFlow`
            must set it.
        bound: ``"exact"`` (default) — the threshold is ``EtaCondition.eta_exact``, the
            theorem's bound with λ_min replaced by the NTK's Rayleigh quotient at the actual
            residual (no eigenproblem; one extra double-backward per RHS evaluation);
            ``"theorem"`` — ``EtaCondition.bound`` with λ_min(H) from a dense eigenproblem at
            every RHS evaluation (expensive, and +inf — i.e. η = ceiling — when H is singular,
            as it numerically is for n = 1000 particles in d = 1).
        reference_score: g(x, t) ≈ ∇log f_t for the explicit loss (see :func:`eta_condition`);
            ``None`` uses the trained implicit loss.
    """

    stateful = True

    def __init__(self, safety: float = 2.0, floor: float = 1.0, ceiling: float | None = None, bound: str = "exact",
                 reference_score: ReferenceScore | None = None):
        for name, val in (("safety", safety), ("floor", floor)):
            if not (isinstance(val, (int, float)) and math.isfinite(val) and val > 0):
                raise ValueError(f"{name} must be a positive finite number, got {val!r}")
        if ceiling is not None and not (isinstance(ceiling, (int, float)) and ceiling >= floor):
            raise ValueError(f"ceiling must be None or a number >= floor={floor}, got {ceiling!r}")
        if bound not in ("exact", "theorem"):
            raise ValueError(f"unknown bound {bound!r}; valid: exact, theorem")
        self.safety, self.floor, self.ceiling = float(safety), float(floor), ceiling
        self.bound, self.reference_score = bound, reference_score
        self.auto_ceiling = False  # True once the sampler has set the ceiling: it then follows λ_max

    def threshold(self, t: float | Tensor, x: Tensor, theta: Tensor, flow: SBTMFlow) -> float:
        """The unclipped threshold at the state (``eta_exact`` or the theorem's ``bound``)."""
        r = loss_rates(flow, x, t, theta, self.reference_score)
        rate = float(r["loss_rate"])
        if self.bound == "exact":
            return _exact_threshold(rate, float(r["grad"] @ r["train_grad"]))
        lam = ntk_min_eigenvalue(flow, x, theta, method="dense", t=t)
        return _theorem_bound(x.shape[0], lam, float(r["loss"]), rate, 4.0)

    def __call__(self, t: float | Tensor, x: Tensor | None = None, theta: Tensor | None = None,
                 flow: SBTMFlow | None = None) -> float:
        """η at (t, X, Θ); without a state (e.g. the pre-run stiffness check) the ceiling."""
        top = math.inf if self.ceiling is None else float(self.ceiling)
        if x is None or flow is None:
            if math.isinf(top):
                raise ValueError("NTKEta needs the state (t, x, theta, flow) or a finite ceiling")
            return top
        b = self.threshold(t, x, theta, flow)
        if math.isnan(b):
            b = math.inf
        return min(max(self.safety * b, self.floor), top)

    @property
    def wants_ceiling(self) -> bool:
        """True while no ceiling is set (``sample`` then sets the stability ceiling)."""
        return self.ceiling is None

    def set_ceiling(self, value: float) -> None:
        """η ≤ ``value`` from now on (the sampler's stability ceiling: it follows λ_max after this)."""
        self.ceiling = value
        self.auto_ceiling = True

    def observe_curvature(self, lam: float, limit: float, h: float) -> None:
        """A sampler-set ceiling falls to 0.8·c/(λ_max·h) when the λ_max the monitor now reads asks
        for less (the formula of :func:`~sbtm_flows.stiffness.stability_ceiling`; it never rises
        above the start's); a user's ceiling stays."""
        if self.auto_ceiling:
            self.ceiling = max(min(self.ceiling, stable_eta(lam, h, limit, 0.8)), self.floor)

    def state_dict(self) -> dict:
        """``{"ceiling": the ceiling in force, "auto_ceiling": whether it follows λ_max}``."""
        return {"ceiling": self.ceiling, "auto_ceiling": self.auto_ceiling}

    def load_state_dict(self, state: dict) -> None:
        """Inverse of :meth:`state_dict` (a missing or ``None`` ceiling leaves it as it is)."""
        if state.get("ceiling") is not None:
            self.ceiling = state["ceiling"]
        self.auto_ceiling = bool(state.get("auto_ceiling", self.auto_ceiling))

    def __repr__(self) -> str:
        return (f"NTKEta(safety={self.safety:g}, floor={self.floor:g}, ceiling={self.ceiling}, bound={self.bound!r}, "
                f"reference_score={'None' if self.reference_score is None else 'given'})")
