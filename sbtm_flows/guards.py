r"""Guards that stop a run whose target is not usable where the particles are.

A target's ``log_prob`` that is NaN on part of the space (say ``torch.where(c, f, nan)``) has
an autograd score of 0 there, so particles drift in and stay: the run "succeeds" with most of
its particles where π is undefined and NaN density diagnostics.  :func:`check_target_finite`
evaluates log π_t and ∇log π_t at every particle and raises :class:`SamplingError` naming t,
the count and an example x; :class:`FiniteTargetGuard` does it at every output time of a run.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .errors import SamplingError

__all__ = ["check_target_finite", "FiniteTargetGuard", "holdout_outliers", "CHUNK"]

#: Rows per evaluation of the per-particle checks (bounds their memory at large n).
CHUNK = 65536


def _rows_bad(fn, x: Tensor, t: float, chunk: int) -> Tensor | None:
    """Bool ``(n,)``: rows of ``x (n, d)`` where ``fn(rows, t)`` is not finite, or ``None``
    when ``fn`` is not implemented."""
    bad = []
    for i in range(0, x.shape[0], chunk):
        try:
            with torch.no_grad():
                v = fn(x[i : i + chunk], t)
        except NotImplementedError:
            return None
        rows = x[i : i + chunk].shape[0]
        if not isinstance(v, Tensor) or v.dim() == 0 or v.shape[0] != rows:
            got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(f"the target's {getattr(fn, '__name__', 'function')} must return a tensor with one row per "
                             f"particle ({rows}, …) for particles ({rows}, {x.shape[1]}), got {got}")
        bad.append(~torch.isfinite(v.reshape(rows, -1)).all(-1))
    return torch.cat(bad)


def check_target_finite(path: Any, x: Tensor, t: float, chunk: int = CHUNK, log_prob: bool = True) -> None:
    r"""Raise unless log π_t(x) and ∇log π_t(x) are finite at every particle.

    Args:
        path: a :class:`~sbtm_flows.paths.Path` (``score(x, t)``, optionally ``log_prob(x, t)``;
            a path without ``log_prob`` is checked on its score only).
        x: particles ``(n, d)``.
        t: the time of the path.
        chunk: rows per evaluation (memory bound).
        log_prob: also check log π_t (else only the score).

    Raises:
        SamplingError: names the quantity, t, the count of particles and one example x.
    """
    checks = [("score ∇log π", path.score)]
    if log_prob and callable(getattr(path, "log_prob", None)):
        checks.insert(0, ("log π", path.log_prob))
    for name, fn in checks:
        bad = _rows_bad(fn, x, t, chunk)
        if bad is None or not bad.any():
            continue
        i = int(bad.nonzero()[0, 0])
        example = [round(v, 6) for v in x[i].detach().double().cpu().tolist()[:8]]
        raise SamplingError(
            f"the target's {name} is NaN/inf at {int(bad.sum())} of {x.shape[0]} particles at t={t:.6g} (e.g. x={example}): "
            "the run is stopped, since where log π is undefined an autograd score is 0 and particles settle there. "
            "Make the target finite wherever particles can go (e.g. a finite penalty instead of torch.where(..., nan))",
            t=float(t),
        )


class FiniteTargetGuard:
    """An observer for the run loop: :func:`check_target_finite` at every output time
    (records nothing).  ``log_prob=False`` checks the score only."""

    def __init__(self, path: Any, log_prob: bool = True):
        self.path, self.log_prob = path, log_prob

    def __call__(self, sampler: Any, state: Any, t: float, k: int) -> dict:
        """Check the particles of ``state`` at output time t_k; returns ``{}``."""
        check_target_finite(self.path, sampler.particles(state), t, log_prob=self.log_prob)
        return {}


def _outside(train: Tensor, held: Tensor, widths: float) -> Tensor:
    """Bool ``(m,)``: rows of ``held (m, k)`` with an entry beyond the finite range of
    ``train (n, k)`` widened by ``widths`` range-widths on each side (or not finite)."""
    big = torch.finfo(train.dtype).max
    ok = torch.isfinite(train)
    lo = torch.where(ok, train, big).min(0).values
    hi = torch.where(ok, train, -big).max(0).values
    span = (hi - lo).clamp_min(0)
    bad = (held < lo - widths * span) | (held > hi + widths * span) | ~torch.isfinite(held)
    return bad.any(-1)


def holdout_outliers(x_train: Tensor, x_hold: Tensor, logd_train: Tensor | None = None, logd_hold: Tensor | None = None,
                     widths: float = 1.0) -> Tensor:
    r"""Held-out particles that escaped far outside the training cloud.

    The flow moves held-out particles with s_Θ, which is only trained where the training
    particles are; one that wanders off (e.g. into a target's far tail, where s_Θ
    extrapolates) gets a meaningless tracked log-density ℓ, and a single ℓ ≈ +1400 ruins
    ``kl_plus_logz``/``log_z``/``ess``.  Particle i is an outlier when a coordinate of x̃ᵢ,
    or its ℓ̃ᵢ, lies beyond the training particles' range [min, max] widened by ``widths``
    range-widths on each side (for n = 1000 Gaussian training particles that is beyond about
    ±9.6σ for each coordinate: no false alarms in practice), or is not finite.

    Args:
        x_train: training particles ``(n, d)``; x_hold: held-out particles ``(m, d)``.
        logd_train, logd_hold: their tracked log-densities ``(n,)``, ``(m,)`` (optional).
        widths: the margin, in range-widths.

    Returns:
        bool ``(m,)``, True for an outlier.
    """
    out = _outside(x_train.detach(), x_hold.detach(), widths)
    if logd_train is not None and logd_hold is not None:
        out |= _outside(logd_train.detach().reshape(-1, 1), logd_hold.detach().reshape(-1, 1), widths)
    return out
