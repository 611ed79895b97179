r"""Annealing paths π_t, shared by the ODE (SBTM) and the SDE (Langevin).

A path is a time-dependent target with

* ``score(x: (n, d), t) -> (n, d)``  — ∇log π_t(x);
* optional ``log_prob(x, t) -> (n,)`` and ``laplacian(x, t) -> (n,)``;
* ``target`` — the final target π (diagnostics such as the relative Fisher information
  F(f_t‖π) are measured against it);
* ``time_grid(t0, t1, dt) -> (m,)`` — the integration grid a fixed-step solver uses.
  The default is uniform; paths whose stiffness varies in time override it.

A plain :class:`~sbtm_flows.targets.Target` is the constant path (:class:`Constant`);
:func:`as_path` turns any accepted object into a :class:`Path`.

Annealing paths (paper §4; Neal 2001; Chehab & Korba 2024), each driven by a schedule
λ: [0, t_final] → [λ₀, 1] (:func:`make_schedule`):

* :class:`Geometric` — π_t ∝ f_0^{1−λ(t)} π^{λ(t)}, so ∇log π_t = (1−λ)∇log f_0 + λ∇log π;
* :class:`Dilation` — π_t(x) ∝ π(x/λ(t)), λ rising from λ₀ > 0 to 1, so
  ∇log π_t(x) = λ⁻¹ ∇log π(x/λ) and Δlog π_t(x) = λ⁻² Δlog π(x/λ).  Its stiffness grows
  like 1/λ², so its :meth:`Dilation.time_grid` takes steps dt·(λ/λ_ref)² below λ_ref.

After t_final both paths are the constant path π (λ is clamped to 1).
"""

from __future__ import annotations

import inspect
import math
from typing import Callable

import torch
from torch import Tensor

from .targets import Target, autograd_laplacian, from_log_prob, from_score

__all__ = ["Path", "Constant", "Geometric", "Dilation", "SCHEDULES", "make_schedule", "as_path", "uniform_grid"]


def uniform_grid(t0: float, t1: float, dt: float, dtype=torch.float64) -> Tensor:
    """``m + 1`` equally spaced times from ``t0`` to ``t1`` with ``m = ceil((t1-t0)/dt - 1e-9)``;
    the last point is exactly ``t1`` (the step is ``(t1-t0)/m <= dt``)."""
    m = max(1, math.ceil((t1 - t0) / dt - 1e-9))
    return torch.linspace(t0, t1, m + 1, dtype=dtype)


class Path(torch.nn.Module):
    """Base class of annealing paths (subclasses implement ``score(x, t)``).

    A path that dilates space (π_t(x) ∝ π(x / c(t))) may also define ``scale(t) -> c(t)``:
    SBTM's default network then learns in the coordinates x / c(t)
    (:class:`~sbtm_flows.score.ScaledScore`)."""

    target: Target

    @property
    def dim(self) -> int:
        """Dimension d of the state."""
        return self.target.dim

    def score(self, x: Tensor, t: float | Tensor) -> Tensor:  # pragma: no cover - abstract
        """∇log π_t(x), ``(n, d) -> (n, d)``."""
        raise NotImplementedError

    def log_prob(self, x: Tensor, t: float | Tensor) -> Tensor:  # pragma: no cover - abstract
        """log π_t(x) up to a t-dependent constant, ``(n, d) -> (n,)``."""
        raise NotImplementedError(f"{type(self).__name__} has no log_prob")

    def laplacian(self, x: Tensor, t: float | Tensor, probes: Tensor | None = None) -> Tensor:
        """Δlog π_t(x), ``(n,)``; default: autograd of ``score`` (exact or Hutchinson)."""
        return autograd_laplacian(lambda y: self.score(y, t), x, probes)

    def time_grid(self, t0: float, t1: float, dt: float) -> Tensor:
        """Integration grid from ``t0`` to ``t1`` with steps at most ``dt`` (uniform)."""
        return uniform_grid(t0, t1, dt)

    def forward(self, x: Tensor, t: float | Tensor) -> Tensor:
        return self.score(x, t)


class Constant(Path):
    """The constant path π_t = π."""

    def __init__(self, target: Target):
        super().__init__()
        self.target = target

    def score(self, x: Tensor, t: float | Tensor = 0.0) -> Tensor:
        return self.target.score(x)

    def log_prob(self, x: Tensor, t: float | Tensor = 0.0) -> Tensor:
        return self.target.log_prob(x)

    def laplacian(self, x: Tensor, t: float | Tensor = 0.0, probes: Tensor | None = None) -> Tensor:
        return self.target.laplacian(x, probes)


class _UserPath(Path):
    """Adapter for any object with ``score(x, t)`` and ``dim`` (and optionally
    ``log_prob(x, t)``, ``laplacian(x, t)``, ``target``, ``time_grid``)."""

    def __init__(self, obj):
        super().__init__()
        self.obj = obj
        tgt = getattr(obj, "target", None)
        if tgt is None:
            dim = getattr(obj, "dim", None)
            if not isinstance(dim, int):
                raise ValueError("a user path must have an int attribute `dim` (or a `target`)")
            tgt = from_score(lambda x: obj.score(x, 1.0), dim)
        self.target = tgt

    def score(self, x, t):
        return self.obj.score(x, t)

    def log_prob(self, x, t):
        if not hasattr(self.obj, "log_prob"):
            raise NotImplementedError("this path has no log_prob")
        return self.obj.log_prob(x, t)

    def laplacian(self, x, t, probes=None):
        if hasattr(self.obj, "laplacian"):
            return self.obj.laplacian(x, t)
        return super().laplacian(x, t, probes)

    def time_grid(self, t0, t1, dt):
        if hasattr(self.obj, "time_grid"):
            return torch.as_tensor(self.obj.time_grid(t0, t1, dt), dtype=torch.float64)
        return super().time_grid(t0, t1, dt)


def _takes_time(fn) -> bool:
    try:
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
    except (TypeError, ValueError):
        return False
    return len(params) >= 2


def as_path(obj) -> Path:
    """Turn a target or path-like object into a :class:`Path`.

    Accepted: a :class:`Path`; a :class:`~sbtm_flows.targets.Target` (constant path); any
    object with ``dim`` and ``score(x, t)`` (a user path) or ``score(x)`` (a user target).

    Raises:
        ValueError: if the object has no ``score``.
    """
    if isinstance(obj, Path):
        return obj
    if isinstance(obj, Target):
        return Constant(obj)
    score = getattr(obj, "score", None)
    if not callable(score):
        raise ValueError(
            f"expected a Target, a Path or an object with dim and score(x[, t]); got {type(obj).__name__}"
        )
    if _takes_time(score):
        return _UserPath(obj)
    dim = getattr(obj, "dim", None)
    if not isinstance(dim, int):
        raise ValueError("a user target must have an int attribute `dim`")
    log_prob = getattr(obj, "log_prob", None)
    if callable(log_prob):  # a duck-typed Target: keep its log-density (MALA, log Z, the guards use it)
        return Constant(from_log_prob(log_prob, dim, score=score))
    return Constant(from_score(score, dim))


# ----------------------------------------------------------------------------------------
# Schedules and annealing paths
# ----------------------------------------------------------------------------------------
#: Named schedules σ: [0, 1] → [0, 1], σ(0) = 0, σ(1) = 1, increasing (u = t / t_final).
SCHEDULES: dict[str, Callable[[float], float]] = {
    "linear": lambda u: u,
    "quadratic": lambda u: u * u,
    "sqrt": lambda u: math.sqrt(u),
    "cosine": lambda u: 0.5 - 0.5 * math.cos(math.pi * u),
}


def make_schedule(name_or_fn: str | Callable[[float], float], t_final: float, lam0: float = 0.0) -> Callable[[float], float]:
    r"""λ(t) = λ₀ + (1 − λ₀) σ(clamp(t / t_final, 0, 1)) for a named schedule σ (see
    :data:`SCHEDULES`; ``"exponential"`` is λ(t) = λ₀^{1−u}, needs λ₀ > 0) or a callable
    σ(u) with σ(0) = 0, σ(1) = 1.

    Raises:
        ValueError: an unknown name, t_final <= 0, λ₀ outside [0, 1), or a callable whose
            endpoints are not 0 and 1.
    """
    if not (isinstance(t_final, (int, float)) and math.isfinite(t_final) and t_final > 0):
        raise ValueError(f"t_final must be a positive finite number, got {t_final!r}")
    if not 0.0 <= lam0 < 1.0:
        raise ValueError(f"lam0 must be in [0, 1), got {lam0!r}")
    if name_or_fn == "exponential":
        if lam0 <= 0:
            raise ValueError("the 'exponential' schedule needs lam0 > 0")
        return lambda t: lam0 ** (1.0 - min(max(float(t) / t_final, 0.0), 1.0))
    if isinstance(name_or_fn, str):
        if name_or_fn not in SCHEDULES:
            raise ValueError(f"unknown schedule {name_or_fn!r}; valid: {', '.join([*SCHEDULES, 'exponential'])} or a callable")
        sigma = SCHEDULES[name_or_fn]
    elif callable(name_or_fn):
        sigma = name_or_fn
        if abs(float(sigma(0.0))) > 1e-9 or abs(float(sigma(1.0)) - 1.0) > 1e-9:
            raise ValueError(f"a schedule callable must have sigma(0) = 0 and sigma(1) = 1, got {sigma(0.0)}, {sigma(1.0)}")
    else:
        raise ValueError(f"schedule must be a name or a callable, got {type(name_or_fn).__name__}")
    return lambda t: lam0 + (1.0 - lam0) * float(sigma(min(max(float(t) / t_final, 0.0), 1.0)))


def time_float(t) -> float:
    """A time given as a number or a 0-d tensor, as a Python float."""
    return float(t.item()) if isinstance(t, Tensor) else float(t)


_tf = time_float


class Geometric(Path):
    r"""Geometric annealing π_t ∝ f_0^{1−λ(t)} π^{λ(t)} (paper §5.3; Neal 2001).

    ∇log π_t = (1−λ)∇log f_0 + λ∇log π,  Δlog π_t = (1−λ)Δlog f_0 + λΔlog π,
    log π_t = (1−λ)log f_0 + λ log π (up to a t-dependent constant).

    Args:
        init: f_0, a target with ``score`` (and ``log_prob``/``laplacian`` for those methods).
        target: the final π.
        schedule: a name from :data:`SCHEDULES` or a callable σ(u); default linear,
            λ(t) = t / t_final.
        t_final: the time at which λ reaches 1.
    """

    def __init__(self, init: Target, target: Target, schedule: str | Callable[[float], float] = "linear", t_final: float = 1.0):
        super().__init__()
        if getattr(init, "dim", None) != target.dim:
            raise ValueError(f"init has dimension {getattr(init, 'dim', None)}, the target has dimension {target.dim}")
        self.init = init
        self.target = target
        self.t_final = float(t_final)
        self.schedule_name = schedule if isinstance(schedule, str) else getattr(schedule, "__name__", "callable")
        self.lam = make_schedule(schedule, self.t_final, 0.0)

    def score(self, x: Tensor, t: float | Tensor) -> Tensor:
        """(1−λ(t))∇log f_0(x) + λ(t)∇log π(x), ``(n, d) -> (n, d)``."""
        lam = self.lam(_tf(t))
        return (1.0 - lam) * self.init.score(x) + lam * self.target.score(x)

    def log_prob(self, x: Tensor, t: float | Tensor) -> Tensor:
        """(1−λ)log f_0(x) + λ log π(x), ``(n,)`` (unnormalised)."""
        lam = self.lam(_tf(t))
        return (1.0 - lam) * self.init.log_prob(x) + lam * self.target.log_prob(x)

    def laplacian(self, x: Tensor, t: float | Tensor, probes: Tensor | None = None) -> Tensor:
        """(1−λ)Δlog f_0(x) + λΔlog π(x), ``(n,)``."""
        lam = self.lam(_tf(t))
        return (1.0 - lam) * self.init.laplacian(x, probes) + lam * self.target.laplacian(x, probes)

    def extra_repr(self) -> str:
        return f"schedule={self.schedule_name}, t_final={self.t_final:g}"


class Dilation(Path):
    r"""Dilation annealing π_t(x) ∝ π(x / λ(t)) (paper §5.4; Chehab & Korba 2024).

    λ rises from λ₀ > 0 to 1 at t_final (the paper's π(Tx/t) is the linear schedule with
    λ₀ = t_start / T).  With y = x/λ:

    ∇log π_t(x) = λ⁻¹∇log π(y),  Δlog π_t(x) = λ⁻²Δlog π(y),  log π_t(x) = log π(y) − d log λ
    (the last one normalised when π is).

    The Jacobian of the score is λ⁻² ∇²log π, so explicit solvers need steps ∝ λ².
    :meth:`time_grid` takes steps ``dt · min(1, (λ/λ_ref)²)`` (piecewise uniform: one
    uniform block per factor √2 of λ), so a run with the default arguments stays stable.

    Args:
        target: the final π.
        t_final: the time at which λ reaches 1.
        lam0: λ(0) > 0 (default 0.1).
        schedule: a name from :data:`SCHEDULES`, ``"exponential"``, or a callable σ(u).
        lam_ref: below this λ the grid steps shrink like λ² (default 0.5: π_t's curvature is then
            at most 4× π's, at step dt).
        t_start: the paper's parametrisation π_t(x) = π(Tx/(t_start + t·(T − t_start)/T)):
            λ₀ = t_start / t_final (give it or ``lam0``, not both).
    """

    def __init__(
        self,
        target: Target,
        t_final: float = 1.0,
        lam0: float | None = None,
        schedule: str | Callable[[float], float] = "linear",
        lam_ref: float = 0.5,
        t_start: float | None = None,
    ):
        super().__init__()
        if t_start is not None:
            if lam0 is not None:
                raise ValueError("give lam0 or t_start (λ₀ = t_start / t_final), not both")
            if not (isinstance(t_start, (int, float)) and 0.0 < t_start < t_final):
                raise ValueError(f"t_start must be in (0, t_final={t_final}), got {t_start!r}")
            lam0 = t_start / t_final
        lam0 = 0.1 if lam0 is None else lam0
        if not (isinstance(lam0, (int, float)) and 0.0 < lam0 < 1.0):
            raise ValueError(f"lam0 must be in (0, 1) (λ(0) = 0 makes the score singular), got {lam0!r}")
        if not (isinstance(lam_ref, (int, float)) and 0.0 < lam_ref <= 1.0):
            raise ValueError(f"lam_ref must be in (0, 1], got {lam_ref!r}")
        self.target = target
        self.t_final = float(t_final)
        self.lam0 = float(lam0)
        self.lam_ref = float(lam_ref)
        self.schedule_name = schedule if isinstance(schedule, str) else getattr(schedule, "__name__", "callable")
        self.lam = make_schedule(schedule, self.t_final, self.lam0)

    def scale(self, t: float | Tensor) -> float:
        """λ(t), the factor by which π_t is π dilated (the default SBTM network learns the score
        in the coordinates x/λ(t): :class:`~sbtm_flows.score.ScaledScore`)."""
        return self.lam(_tf(t))

    def score(self, x: Tensor, t: float | Tensor) -> Tensor:
        """λ⁻¹∇log π(x/λ), ``(n, d) -> (n, d)``."""
        lam = self.lam(_tf(t))
        return self.target.score(x / lam) / lam

    def log_prob(self, x: Tensor, t: float | Tensor) -> Tensor:
        """log π(x/λ) − d log λ, ``(n,)``."""
        lam = self.lam(_tf(t))
        return self.target.log_prob(x / lam) - self.dim * math.log(lam)

    def laplacian(self, x: Tensor, t: float | Tensor, probes: Tensor | None = None) -> Tensor:
        """λ⁻²Δlog π(x/λ), ``(n,)`` (Hutchinson probes are scale-free, so passed through)."""
        lam = self.lam(_tf(t))
        return self.target.laplacian(x / lam, probes) / (lam * lam)

    def time_grid(self, t0: float, t1: float, dt: float) -> Tensor:
        """Grid from t0 to t1 with steps ``≤ dt·min(1, (λ(t)/λ_ref)²)``, ``(m,)`` float64.

        Piecewise uniform: the interval is cut where λ crosses λ_ref·2^{-j/2} (j = 0, 1, …);
        each block [a, b) is uniform with step ≤ dt·min(1, (λ(a)/λ_ref)²), λ(a) its smallest λ."""
        cuts = [t0]
        for j in range(128):
            level = self.lam_ref * 2.0 ** (-0.5 * j)
            if level < self.lam(t0) / 1.5:
                break
            tc = self._time_of(level, t0, t1)
            if tc is not None:
                cuts.append(tc)
        cuts = sorted({c for c in cuts if t0 <= c <= t1} | {t1})
        pieces = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            if b - a <= 1e-12 * max(1.0, abs(b)):
                continue
            lam_a = max(self.lam(a), 1e-300)
            h = dt * min(1.0, (lam_a / self.lam_ref) ** 2)
            g = uniform_grid(a, b, h)
            pieces.append(g if not pieces else g[1:])
        return torch.cat(pieces) if pieces else uniform_grid(t0, t1, dt)

    def _time_of(self, level: float, t0: float, t1: float) -> float | None:
        """The first t in [t0, t1] with λ(t) >= level (bisection; λ is non-decreasing)."""
        if self.lam(t1) < level:
            return None
        if self.lam(t0) >= level:
            return t0
        a, b = t0, t1
        for _ in range(80):
            m = 0.5 * (a + b)
            if self.lam(m) >= level:
                b = m
            else:
                a = m
        return b

    def extra_repr(self) -> str:
        return f"lam0={self.lam0:g}, schedule={self.schedule_name}, t_final={self.t_final:g}, lam_ref={self.lam_ref:g}"
