r"""η, the network's rate in the coupled flow dΘ/dt = −η ∇_Θ L: one protocol for every schedule.

An η schedule is an :class:`EtaSchedule`: called as ``eta(t, x, theta, flow)`` it returns η > 0
(``x (n, d)``, ``theta (P,)`` and ``flow`` are ``None`` when the caller has no state, e.g. the
pre-run stiffness check or the η trace).  What the sampler does with it depends only on the
capabilities it declares, never on its class:

* ``stateful``: η depends on (X, Θ), not on t alone (:class:`~sbtm_flows.ntk.NTKEta`) — it is
  evaluated inside the right-hand side with the state, has no η(t) trace, and needs all
  particles in one process;
* ``follows_curvature``: η is sized from λ_max(∇²_Θ L) by the stiffness monitor, which calls
  :meth:`~EtaSchedule.observe_curvature` (:class:`~sbtm_flows.stiffness.AutoEta`); such a run
  defaults to ``heun2`` and always runs the monitor;
* ``wants_ceiling``: η needs an upper bound that the sampler sets once, after the initial fit,
  with :meth:`~EtaSchedule.set_ceiling` (the stability ceiling of an NTKEta without one);
* ``reference_score``: g(x, t) ≈ ∇log f_t that the schedule compares against (``None``: none),
  used by the NTK records too;
* ``refresh_every``: every this many integration steps (and at the start) the sampler calls
  :meth:`~EtaSchedule.refresh` with the state, from which the schedule re-sizes η (then constant
  until the next refresh; :class:`~sbtm_flows.tracking_eta.TrackingEta`); ``None``: never;
* ``absorbs_loss_scale``: η follows λ_max(∇²_Θ L), so a loss multiplied by a time-dependent
  factor (a :class:`~sbtm_flows.score.ScaledScore` network on a dilation path: c(t)⁻²) leaves
  the flow's stiffness unchanged — the default network is then a ScaledScore on such a path too;
* :meth:`~EtaSchedule.state_dict` / :meth:`~EtaSchedule.load_state_dict`: what a checkpoint
  keeps (plain data) so that a resumed run is bitwise the same.

:func:`as_eta` turns what ``sample(eta=...)`` accepts into a schedule, once: a number
(:class:`ConstantEta`), a callable of t (:class:`TimeEta`), the keywords of a
:class:`DecayingEta` (a dict, as JSON configs hold it), ``"auto"``, ``"ntk"``, ``"track"`` or a schedule.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable

from torch import Tensor

from .paths import time_float

__all__ = ["EtaSchedule", "SampledEta", "ConstantEta", "TimeEta", "DecayingEta", "as_eta"]


class EtaSchedule:
    """Base class of η schedules (see the module docstring for the capabilities).

    Subclasses implement :meth:`__call__`; the defaults describe a schedule of t alone with no
    state to checkpoint."""

    stateful: bool = False
    follows_curvature: bool = False
    refresh_every: int | None = None
    absorbs_loss_scale: bool = False
    reference_score: Callable[[Tensor, float], Tensor] | None = None

    def __call__(self, t: float | Tensor, x: Tensor | None = None, theta: Tensor | None = None, flow: Any = None) -> float:
        """η at time t (and, for a ``stateful`` schedule, at particles ``x (n, d)``, Θ ``(P,)``)."""
        raise NotImplementedError

    @property
    def wants_ceiling(self) -> bool:
        """True when the sampler must set an upper bound with :meth:`set_ceiling` before the run."""
        return False

    def set_ceiling(self, value: float) -> None:
        """Bound η from above by ``value`` (only schedules with ``wants_ceiling`` use it)."""
        raise ValueError(f"{self!r} takes no ceiling")

    def observe_curvature(self, lam: float, limit: float, h: float) -> None:
        """Told λ_max(∇²_Θ L), the solver's stability limit c and the step h by the stiffness
        monitor; a ``follows_curvature`` schedule sets η from them (the default ignores them)."""

    def refresh(self, flow: Any, y: Tensor, t: float) -> None:
        """Re-size η from the coupled state y ``(len,)`` of ``flow`` at time t (schedules with
        ``refresh_every``; the default ignores it)."""

    def summary(self) -> dict | None:
        """Facts about the run for ``result.info["eta_schedule"]`` (``None``: nothing to report)."""
        return None

    def state_dict(self) -> dict:
        """What a checkpoint keeps (plain data; empty for a fixed schedule)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Inverse of :meth:`state_dict`."""


class SampledEta(EtaSchedule):
    """An η whose ``value`` the sampler sets during the run (from curvature estimates) and that is
    constant in t between settings, so the right-hand side stays a function of (t, y):
    :class:`~sbtm_flows.stiffness.AutoEta`, :class:`~sbtm_flows.tracking_eta.TrackingEta`.
    Calling it before the first value is an error that says how the value is set (``set_by``)."""

    value: float | None = None
    #: how the first value is set (ends the error raised before it)
    set_by = "sample() sets it"

    def __call__(self, t: float | Tensor, x: Tensor | None = None, theta: Tensor | None = None, flow: Any = None) -> float:
        """The η last set (the state arguments are not used)."""
        if self.value is None:
            raise RuntimeError(f"{type(self).__name__} has no value yet: {self.set_by}")
        return self.value


class ConstantEta(EtaSchedule):
    """η(t) = ``value`` > 0."""

    def __init__(self, value: float):
        value = float(value)
        if not value > 0:
            raise ValueError(f"eta must be > 0, got {value}")
        self.value = value

    def __call__(self, t: float | Tensor, x: Tensor | None = None, theta: Tensor | None = None, flow: Any = None) -> float:
        return self.value

    def __repr__(self) -> str:
        return f"ConstantEta({self.value!r})"


class TimeEta(EtaSchedule):
    """η(t) = ``fn(t)`` for a callable of the time (a Python float); each value must be a
    positive finite number."""

    def __init__(self, fn: Callable[[float], float]):
        if not callable(fn):
            raise ValueError(f"TimeEta needs a callable of t, got {fn!r}")
        self.fn = fn

    def __call__(self, t: float | Tensor, x: Tensor | None = None, theta: Tensor | None = None, flow: Any = None) -> float:
        eta = float(self.fn(time_float(t)))
        if not (math.isfinite(eta) and eta > 0):
            raise ValueError(f"eta(t) must be a positive finite number, got eta({time_float(t):.6g}) = {eta!r}")
        return eta

    def __repr__(self) -> str:
        return f"TimeEta({self.fn!r})"


class DecayingEta(EtaSchedule):
    r"""η(t) = η_∞ + (η₀ − η_∞)·exp(−(t − t0)/t_c): a network rate that is large while the law f_t
    moves fast (just after t0) and relaxes to η_∞ — a callable of t, so any solver runs it.

    Why: the network lags the moving optimum s*_t = ∇log f_t by about
    |ds*/dt|/(η·λ(∇²_Θ L)), and on a constant target f_t moves fastest at the start (§5.2: the
    dissipation falls 2.6 → 0.25 over t ∈ [0, 1]), which is also where eq. (4.1)'s two sides
    are largest; later a large η only costs (rkc's stages grow like √η).  t_c is the time scale
    of that early motion — about the relaxation time of the Fokker–Planck flow (1 for the
    unit-variance modes of §5.2).

    Args:
        eta0: η at t0 (> 0); eta_inf: η as t → ∞ (> 0); t_c: decay time (> 0); t0: start.

    Raises:
        ValueError: a non-positive or non-finite argument (t0: non-finite).
    """

    def __init__(self, eta0: float, eta_inf: float, t_c: float, t0: float = 0.0):
        for key, val in (("eta0", eta0), ("eta_inf", eta_inf), ("t_c", t_c), ("t0", t0)):
            ok = not isinstance(val, bool) and isinstance(val, (int, float)) and math.isfinite(val)
            if not ok or (key != "t0" and not val > 0):
                raise ValueError(f"DecayingEta: {key} must be a {'finite' if key == 't0' else 'positive finite'} number, got {val!r}")
        self.eta0, self.eta_inf, self.t_c, self.t0 = float(eta0), float(eta_inf), float(t_c), float(t0)

    def __call__(self, t: float | Tensor, x: Tensor | None = None, theta: Tensor | None = None, flow: Any = None) -> float:
        return self.eta_inf + (self.eta0 - self.eta_inf) * math.exp(-(time_float(t) - self.t0) / self.t_c)

    def config(self) -> dict:
        """JSON form: the keywords that rebuild it (``sample(eta=dict)`` builds it, see :func:`as_eta`)."""
        return {"eta0": self.eta0, "eta_inf": self.eta_inf, "t_c": self.t_c, "t0": self.t0}

    def __repr__(self) -> str:
        return f"DecayingEta(eta0={self.eta0}, eta_inf={self.eta_inf}, t_c={self.t_c}, t0={self.t0})"


def as_eta(eta: Any, t0: float | None = None) -> EtaSchedule:
    """``eta`` as an :class:`EtaSchedule`: a schedule itself, ``"auto"`` → a fresh
    :class:`~sbtm_flows.stiffness.AutoEta`, ``"ntk"`` → a fresh :class:`~sbtm_flows.ntk.NTKEta`,
    a dict → :class:`DecayingEta` of its keywords,
    ``"track"`` → a fresh :class:`~sbtm_flows.tracking_eta.TrackingEta`,
    a number → :class:`ConstantEta`, a callable of t → :class:`TimeEta` (with ``t0`` given, its
    value at t0 is checked first).

    Raises:
        ValueError: an unknown string, a number ≤ 0, or a callable whose value at ``t0`` is not a
            finite non-negative number."""
    if isinstance(eta, EtaSchedule):
        return eta
    if isinstance(eta, dict):  # a DecayingEta's keywords (JSON configs)
        try:
            return DecayingEta(**eta)
        except TypeError as err:
            raise ValueError(f"eta as a dict takes DecayingEta's keywords eta0, eta_inf, t_c[, t0]; got {eta!r}") from err
    if isinstance(eta, str):
        if eta == "auto":
            from .stiffness import AutoEta

            return AutoEta()
        if eta == "ntk":
            from .ntk import NTKEta

            return NTKEta()
        if eta == "track":
            from .tracking_eta import TrackingEta

            return TrackingEta()
        raise ValueError(f"eta must be a number, a callable of t, 'auto', 'ntk', 'track' or an EtaSchedule, got {eta!r}")
    if callable(eta):
        if t0 is not None:
            v = eta(t0)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
                raise ValueError(f"eta(t) must return a finite non-negative number; eta({t0:g}) returned {v!r}")
        return TimeEta(eta)
    return ConstantEta(eta)
