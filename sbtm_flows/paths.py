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
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import Tensor

from .targets import Target, autograd_laplacian, from_score

__all__ = ["Path", "Constant", "as_path", "uniform_grid"]


def uniform_grid(t0: float, t1: float, dt: float, dtype=torch.float64) -> Tensor:
    """``m + 1`` equally spaced times from ``t0`` to ``t1`` with ``m = ceil((t1-t0)/dt - 1e-9)``;
    the last point is exactly ``t1`` (the step is ``(t1-t0)/m <= dt``)."""
    m = max(1, math.ceil((t1 - t0) / dt - 1e-9))
    return torch.linspace(t0, t1, m + 1, dtype=dtype)


class Path(torch.nn.Module):
    """Base class of annealing paths (subclasses implement ``score(x, t)``)."""

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
    return Constant(from_score(score, dim))
