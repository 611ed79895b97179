r"""Stiffness of the coupled flow, in one place.

The Θ-block of the coupled system's Jacobian is −η∇²_Θ L, so an explicit solver with real
stability interval [−c, 0] keeps the network modes stable at step h iff

    z = η · λ_max(∇²_Θ L) · h ≤ c,        the stable η being  η* = c / (λ_max · h)   (:func:`stable_eta`).

Here: the table of solver facts (:data:`SOLVER_FACTS`: fixed grid or adaptive, stability
interval), the λ_max estimate (:func:`hessian_max_eigenvalue`, Lanczos on Hessian-vector
products), the pre-run check (:func:`prerun_check`), the monitor that follows λ_max along a run
(:class:`StiffnessMonitor`), η = "auto" (:class:`AutoEta`) and the η ceiling of an NTK-driven η
(:func:`stability_ceiling`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .errors import SamplingError
from .eta import SampledEta

if TYPE_CHECKING:
    from .dynamics import SBTMFlow

__all__ = [
    "SolverFacts", "SOLVER_FACTS", "FIXED_GRID_SOLVERS", "ADAPTIVE_STABILITY", "eta_limit", "stable_eta",
    "hessian_max_eigenvalue", "prerun_check", "StiffnessMonitor", "AutoEta", "stability_ceiling",
]


@dataclass(frozen=True)
class SolverFacts:
    """What the stiffness machinery needs to know about a torchdiffeq method: whether it steps on
    a fixed grid (``dt``) or adapts its steps, and its real stability interval [−c, 0]
    (``stability`` = c; ``None`` when not tabulated, e.g. multistep and adaptive methods)."""

    fixed_grid: bool
    stability: float | None = None


#: The fixed-grid torchdiffeq methods with their real stability limits (Euler, the explicit
#: midpoint and Heun: 2; Heun3: 2.51; RK4: 2.78); every other torchdiffeq method is adaptive.
SOLVER_FACTS: dict[str, SolverFacts] = {
    "euler": SolverFacts(True, 2.0),
    "midpoint": SolverFacts(True, 2.0),
    "heun2": SolverFacts(True, 2.0),
    "heun3": SolverFacts(True, 2.51),
    "rk4": SolverFacts(True, 2.78),
    "explicit_adams": SolverFacts(True),
    "implicit_adams": SolverFacts(True),
    "fixed_adams": SolverFacts(True),
    # damped Runge–Kutta–Chebyshev (sbtm_flows.rkc): stable by construction, its stage count
    # follows the spectral radius, so no fixed limit (the flow's default)
    "rkc": SolverFacts(True),
}
FIXED_GRID_SOLVERS = frozenset(k for k, f in SOLVER_FACTS.items() if f.fixed_grid)
#: Typical real stability limit of the explicit Runge–Kutta pairs behind the adaptive methods
#: (≈ 2–3.3): the step they will be held to is about ADAPTIVE_STABILITY / (η·λ_max).
ADAPTIVE_STABILITY = 3.0


def eta_limit(solver: str) -> float:
    """c of ``solver`` for setting η (AutoEta, the NTK η ceiling): its tabulated stability limit,
    else 2 (Euler's, the most conservative of the table)."""
    facts = SOLVER_FACTS.get(solver)
    return facts.stability if facts is not None and facts.stability is not None else 2.0


def stable_eta(lam: float, h: float, c: float, safety: float = 1.0) -> float:
    """safety · c / (λ_max · h): the largest η with η·λ_max·h ≤ safety·c (∞ when λ_max ≤ 0)."""
    return safety * c / (lam * h) if lam > 0 else math.inf


def hessian_max_eigenvalue(
    flow: SBTMFlow,
    y: Tensor,
    iters: int = 30,
    generator: torch.Generator | None = None,
    v0: Tensor | None = None,
    return_vector: bool = False,
    t: float | Tensor | None = None,
):
    r"""Largest (algebraic) eigenvalue of ∇²_Θ L at state y by ``iters`` Lanczos steps on
    Hessian-vector products (double backward), started from ``v0`` (warm start) or a random
    vector.  Lanczos finds the extreme eigenvalues far faster than power iteration when the
    top of the spectrum is clustered (as it is for MLP losses).

    The Θ-block of the coupled system's Jacobian is −η∇²_Θ L, so a fixed-step solver with
    real stability interval [−c, 0] needs η·λ_max·dt ≤ c (c = 2 for Euler and Heun).  Only
    the positive end of the spectrum matters for that: a negative eigenvalue of ∇²_Θ L (the
    implicit score-matching loss is not convex, and is unbounded below in some directions) is a
    genuinely growing mode of the ODE itself, which every consistent solver follows.
    Returns max(λ_max, 0), or ``(λ_max, v)`` with its Ritz vector when ``return_vector``
    (``t``: the time, for a time-conditioned score model).

    With a preconditioned Θ flow (dΘ/dt ≈ −η·D·∇_Θ L, ``theta_flow="rmsprop"``) the Θ block's
    Jacobian is −η·D·∇²_Θ L, whose eigenvalues are those of D^{1/2} ∇²_Θ L D^{1/2}: that
    symmetric matrix is the one estimated (D from the state y; for a non-diagonal M, as
    ``theta_flow="kfac"``, M^{1/2} ∇²_Θ L M^{1/2}; for a factored M = C·Cᵀ, ``theta_flow="gn"``,
    Cᵀ ∇²_Θ L C).
    """
    x, theta = flow.split(y)
    hvp = _preconditioned(flow.hvp(flow.training_rows(x.detach())[0], theta, t), flow, y)
    q = torch.randn(theta.shape, generator=generator, dtype=torch.float64).to(theta) if v0 is None else v0.to(theta)
    q = q / q.norm()
    qs, alphas, betas = [], [], []
    q_prev, beta = torch.zeros_like(q), 0.0
    for _ in range(max(1, iters)):
        w = hvp(q)
        if not torch.isfinite(w).all():
            break
        alpha = float(w @ q)
        w = w - alpha * q - beta * q_prev
        for u in qs:  # full re-orthogonalisation: cheap for the few steps used here
            w = w - float(w @ u) * u
        qs.append(q)
        alphas.append(alpha)
        beta = float(w.norm())
        if beta < 1e-10 * max(1.0, abs(alpha)):
            break
        betas.append(beta)
        q_prev, q = q, w / beta
    k = len(alphas)
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if k > 1:
        off = torch.tensor(betas[: k - 1], dtype=torch.float64)
        T = T + torch.diag(off, 1) + torch.diag(off, -1)
    evals, evecs = torch.linalg.eigh(T)
    i = int(torch.argmax(evals))
    lam = max(float(evals[i]), 0.0)
    if not return_vector:
        return lam
    v = sum(float(evecs[j, i]) * qs[j] for j in range(k))
    return lam, (v / v.norm()).detach()


def _preconditioned(hvp, flow, y: Tensor):
    """q ↦ R·∇²_Θ L·R·q with R the symmetric square root of the Θ flow's preconditioner at state
    y: D^{1/2} for a diagonal D ``(P,)``, the map itself when the preconditioner is a callable
    q ↦ M^{1/2} q (:class:`~sbtm_flows.kfac_flow.KFACFlow`); q ↦ Cᵀ·∇²_Θ L·C·q for a factored
    M = C·Cᵀ (an object with ``root(q)`` = C·q and ``root_t(q)`` = Cᵀ·q,
    :class:`~sbtm_flows.gn_flow.CholeskyFactor`: symmetric, similar to M·∇²_Θ L); ``hvp`` itself
    for the identity."""
    d = flow.preconditioner(y)
    if d is None:
        return hvp
    if callable(d):
        return lambda q: d(hvp(d(q)))
    if not isinstance(d, Tensor):
        return lambda q: d.root_t(hvp(d.root(q)))
    root = d.sqrt()
    return lambda q: root * hvp(root * q)


class AutoEta(SampledEta):
    r"""η(t) = min(``eta_max``, ``safety``·c / (λ_max(∇²_Θ L)(t)·h)): the largest η that an
    explicit solver with real stability limit c keeps stable at step h, with λ_max tracked
    along the run by a :class:`StiffnessMonitor` (which calls :meth:`observe_curvature`): an
    :class:`~sbtm_flows.eta.EtaSchedule` that ``follows_curvature``.

    This is ``sample(..., eta="auto")``: as fast a network relaxation as the step size allows
    (η → ∞ as h → 0, the limit in which s_Θ is always the loss minimiser).
    Piecewise constant between monitor checks, so the ODE right-hand side stays a
    deterministic function of (t, y) on every solver step.
    """

    follows_curvature = True
    set_by = "sample() sets it from the initial curvature"

    def __init__(self, safety: float = 0.6, eta_max: float = 100.0):
        if not 0 < safety <= 1:
            raise ValueError(f"safety must be in (0, 1], got {safety}")
        if not eta_max > 0:
            raise ValueError(f"eta_max must be > 0, got {eta_max}")
        self.safety, self.eta_max = float(safety), float(eta_max)
        self.value: float | None = None

    def update(self, lam: float, limit: float, h: float) -> float:
        """Set η from λ_max, the solver's stability limit and the step h; returns it."""
        self.value = self.eta_max if not lam > 0 else min(self.eta_max, stable_eta(lam, h, limit, self.safety))
        return self.value

    def observe_curvature(self, lam: float, limit: float, h: float) -> None:
        """The monitor's λ_max, stability limit and step: :meth:`update`."""
        self.update(lam, limit, h)

    def state_dict(self) -> dict:
        """``{"value": η}`` (``None`` before the first curvature estimate)."""
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        """Inverse of :meth:`state_dict`."""
        self.value = state.get("value")

    def __repr__(self) -> str:
        return f"AutoEta(safety={self.safety}, eta_max={self.eta_max})"


class StiffnessMonitor:
    r"""Watches z = η(t)·λ_max(∇²_Θ L)·h along a fixed-step flow run.

    λ_max is tracked by Lanczos (:func:`hessian_max_eigenvalue`) warm-started from the previous
    check's Ritz vector (``iters`` Hessian-vector products every ``every`` steps), so it follows the curvature as the
    network changes — on annealing paths it can grow by orders of magnitude after t0, which
    a check at the start cannot see.  When z exceeds the solver's real stability limit c the
    fastest network modes no longer relax: they oscillate or grow.  Gradient training often
    settles at this "edge of stability" (the curvature hovers near c/(η·h)) without diverging,
    but with spikes in F^n and a score that can be silently wrong (§5.1, heun2, η = 5: F^n 44×
    its exact value at t ≈ 0.75), so :meth:`check` raises a SamplingError (naming t, z and what to do),
    keeps the largest z seen (``max_z``, ``t_max_z``), and leaves divergence to the NaN checks.
    Each estimate takes ``iters`` Lanczos steps from the last Ritz vector: Lanczos reads λ_max
    from below, and two steps every 20 read a 5.1 run's z as 1.30/1.47/1.59 at t = 0.4/0.6/0.8
    while it had crossed 2 at t = 0.5 (midpoint then returned a variance 23 % low); six read
    1.84 at t = 0.4 and stop the run at t = 0.6.
    Every check tells the flow's η schedule the curvature
    (:meth:`~sbtm_flows.eta.EtaSchedule.observe_curvature`: an :class:`AutoEta` sets η from it).
    """

    def __init__(self, flow: SBTMFlow, solver: str, limit: float, every: int = 50, iters: int = 6,
                 generator: torch.Generator | None = None):
        self.flow, self.solver, self.limit = flow, solver, float(limit)
        self.every, self.iters, self.generator = int(every), int(iters), generator
        self.v: Tensor | None = None
        self.lam = float("nan")
        self.last_step = -(10**18)
        self.max_z, self.t_max_z = 0.0, float("nan")

    def state_dict(self) -> dict:
        """What a checkpoint needs to continue the monitor bitwise (the η schedule keeps its own)."""
        return {"v": None if self.v is None else self.v.cpu(), "lam": self.lam, "last_step": self.last_step,
                "max_z": self.max_z, "t_max_z": self.t_max_z}

    def load_state_dict(self, state: dict) -> None:
        """Inverse of :meth:`state_dict`."""
        self.v = state["v"]  # moved to Θ's device and dtype by the next estimate
        self.lam, self.last_step = state["lam"], state["last_step"]
        self.max_z, self.t_max_z = state.get("max_z", 0.0), state.get("t_max_z", float("nan"))

    def estimate(self, y: Tensor, iters: int | None = None, t: float | None = None) -> float:
        """Update and return the λ_max estimate at state y (time t)."""
        self.lam, self.v = hessian_max_eigenvalue(self.flow, y, self.iters if iters is None else iters,
                                                  self.generator, self.v, return_vector=True, t=t)
        return self.lam

    def z(self, y: Tensor, t: float, h: float) -> float:
        """η(t)·λ_max·h with the current estimate."""
        x, theta = self.flow.split(y)
        return self.flow.eta_at(t, x, theta) * self.lam * h

    def check(self, y: Tensor, t: float, h: float, step: int) -> None:
        """Re-estimate λ_max every ``every`` steps; raise SamplingError if z = η(t)·λ_max·h > limit (z is
        re-evaluated at every call, so a growing η(t) is caught between estimates)."""
        if step - self.last_step >= self.every:
            self.last_step = step
            self.estimate(y, t=t)
        self.flow.eta.observe_curvature(self.lam, self.limit, h)
        z = self.z(y, t, h)
        if z > self.max_z:
            self.max_z, self.t_max_z = z, t
        if z > self.limit:
            x, theta = self.flow.split(y)
            eta = self.flow.eta_at(t, x, theta)
            raise SamplingError(
                f"the coupled X/Θ system became stiff at t={t:.6g}: eta·λ_max(∇²_Θ L)·dt = {eta:.4g}·{self.lam:.4g}·{h:.4g} = "
                f"{z:.3g} > {self.limit:g}, the stability limit of {self.solver!r}, so its fastest network modes no longer "
                "relax: they oscillate (spikes in F^n) or grow, and the samples can be silently wrong. Use solver='rkc' "
                f"(the flow's default: stable for any eta·λ_max·dt), eta <= {stable_eta(self.lam, h, self.limit):.3g}, a "
                "smaller dt, eta='auto', an adaptive solver, or training='steps'",
                t=t,
            )


def stability_ceiling(flow: "SBTMFlow", y: Tensor, h: float, c: float = 2.0, margin: float = 0.8,
                      generator: torch.Generator | None = None, t: float | None = None) -> float:
    r"""margin · c / (λ_max(∇²_Θ L) · h): the largest η a solver with real stability
    interval [−c, 0] and step h keeps stable at state y (the pre-run check of ``sample``
    refuses η·λ_max·h > c), with a safety ``margin`` because λ_max changes along the run."""
    lam = hessian_max_eigenvalue(flow, y, generator=generator, t=t)
    return stable_eta(lam, h, c, margin)


def prerun_check(flow: "SBTMFlow", y: Tensor, solver: str, h: float, t0: float, t_final: float, gen,
                     monitor: "StiffnessMonitor | None" = None) -> None:
    """Estimate z = η·λ_max(∇²_Θ L)·h at the start.  Fixed-step solvers with z beyond their
    real stability limit are refused (they would diverge); adaptive solvers get a warning
    with the step size and the RHS evaluations they will need.  The converged Lanczos
    vector seeds ``monitor``, which keeps watching during the run.

    Raises:
        SamplingError: a fixed-step solver with η·λ_max·h above its stability limit (names η, dt
            or an adaptive solver that would work)."""
    if monitor is not None:
        lam = monitor.estimate(y, iters=30, t=t0)
        monitor.last_step = 0  # the check at step 0 need not estimate again
        flow.eta.observe_curvature(lam, monitor.limit, h)
    else:
        lam = hessian_max_eigenvalue(flow, y, generator=gen, t=t0)
    eta = flow.eta_at(t0)
    c = SOLVER_FACTS[solver].stability if solver in SOLVER_FACTS else None
    if c is not None:
        z = eta * lam * h
        if z > c:
            raise SamplingError(
                f"the coupled X/Θ system is stiff for {solver!r}: eta·λ_max(∇²_Θ L)·dt = {eta:g}·{lam:.4g}·{h:g} = {z:.3g} "
                f"> {c:g} (the solver's stability limit), so fixed steps would diverge. Use eta <= {stable_eta(lam, h, c):.3g}, "
                f"dt <= {c / (eta * lam):.3g}, or an adaptive solver (solver='dopri5'); pass stiffness_check=False to run anyway",
                t=t0,
            )
    elif solver not in FIXED_GRID_SOLVERS:
        h_stable = ADAPTIVE_STABILITY / max(eta * lam, 1e-30)
        if h_stable < h / 10:
            warnings.warn(
                f"the coupled X/Θ system is stiff: eta·λ_max(∇²_Θ L) = {eta * lam:.4g}, so {solver!r} will be limited "
                f"to steps of about {h_stable:.2g} (≈ {(t_final - t0) / h_stable:.3g} steps over the run) whatever "
                "rtol/atol are; lower eta for speed, or bound the cost with max_nfe",
                RuntimeWarning,
                stacklevel=4,
            )
