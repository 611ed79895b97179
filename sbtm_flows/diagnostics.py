r"""Diagnostics of a particle cloud X ~ f_t with a learned score s ≈ ∇log f_t.

With π the final target, π_t the path at time t and v = ∇log π_t − s the particle
velocity, :func:`score_diagnostics` returns, as means over the particles:

* ``fisher`` — relative Fisher information F^n(f_t‖π) = mean|s − ∇log π|² (Remark 3.8;
  the stopping criterion ``stop_fisher``);
* ``loss`` — the implicit score-matching loss mean(|s|² + 2∇·s) (= L(s, f_t) − E|∇log f_t|²);
* ``dissipation`` — the entropy dissipation −dKL(f_t‖π)/dt of the particle ODE driven by
  s, written without ∇log f_t by integrating by parts (Theorem 3.2 / 4.1 before Young's
  inequality):  −dKL/dt = E[∇·v + ⟨∇log π, v⟩] = E[Δlog π_t − ∇·s + ⟨∇log π, ∇log π_t − s⟩].
  This holds for *any* s, so it measures what the run really does;
* ``dissipation_learned`` — the same rate with ∇log f_t replaced by s, the right-hand
  side of eq. (4.1): E⟨s − ∇log π, s − ∇log π_t⟩ (for a constant path, = F^n).
  ``dissipation ≈ dissipation_learned`` indicates a well-learned score (Figures 2, 4, 6).

``kl_decrease`` (cumulative ∫ dissipation dt, trapezoid rule over the output times) is
added by :func:`cumulative_trapezoid`.  A flow run also records ``eta``, the η in force at
each output time (``eta="auto"`` changes it as the curvature of the loss changes).

With ``track_logdensity=True`` a run also records, from the tracked ℓ = log f_t(X)
(:func:`sbtm_flows.logdensity.density_diagnostics`): ``kl_plus_logz`` = mean(ℓ − log π̃(X))
= KL(f_t‖π) − log Z, ``log_z`` (importance-sampling estimate of log Z), ``ess`` and, when
the target knows ``log_Z``, ``kl``.  Along the flow d/dt(ℓ − log π̃(X)) = −∇·v − ⟨∇log π, v⟩
particle by particle, whose mean is −``dissipation``: so kl_plus_logz(0) − kl_plus_logz(t)
= ``kl_decrease``(t) up to the time discretisation, for any s.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .losses import CHUNK, row_blocks
from .losses import divergence as _divergence
from .paths import Path

__all__ = ["score_diagnostics", "cumulative_trapezoid", "SCORE_DIAGNOSTICS"]

SCORE_DIAGNOSTICS = ("fisher", "loss", "dissipation", "dissipation_learned")


def _diagnostic_sums(path: Path, score_fn, x: Tensor, t: float, divergence: str, probes: Tensor | None) -> Tensor:
    """Σ over the rows of ``x`` of the four per-particle terms, ``(4,)`` in SCORE_DIAGNOSTICS order."""
    s, div = _divergence(score_fn, x, divergence, probes, chunk=None)
    g_pi = path.target.score(x)
    g_t = path.score(x, t)
    lap_t = path.laplacian(x, t, probes) if divergence == "hutchinson" else path.laplacian(x, t)
    terms = (
        ((s - g_pi) ** 2).sum(-1),
        (s * s).sum(-1) + 2 * div,
        lap_t - div + (g_pi * (g_t - s)).sum(-1),
        ((s - g_pi) * (s - g_t)).sum(-1),
    )
    return torch.stack([u.sum() for u in terms])


@torch.no_grad()
def score_diagnostics(
    path: Path,
    score_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    t: float,
    divergence: str = "exact",
    probes: Tensor | None = None,
    chunk: int | None = CHUNK,
    comm=None,
) -> dict[str, float]:
    """The diagnostics listed in the module docstring at particles ``x (n, d)``, time t.

    The per-particle terms are summed block by block (``chunk`` particles at a time, so memory
    grows with the block, not with n); with a :class:`~sbtm_flows.distributed.Comm` the sums and
    counts are added over the ranks, so every rank gets the means over all particles."""
    n = x.shape[0]
    sums = sum(_diagnostic_sums(path, score_fn, x[b], t, divergence, None if probes is None else probes[:, b])
               for b in row_blocks(n, chunk))
    if comm is not None:
        sums, n = comm.sum(sums), comm.count(n)
    return {k: float(v) / n for k, v in zip(SCORE_DIAGNOSTICS, sums)}


def cumulative_trapezoid(values: Tensor, times: Tensor) -> Tensor:
    """∫_{t_0}^{t_k} values dt for every k (trapezoid rule), ``(T,) -> (T,)``, starting at 0."""
    values = torch.as_tensor(values, dtype=torch.float64)
    times = torch.as_tensor(times, dtype=torch.float64)
    if values.numel() == 0:
        return values
    inc = 0.5 * (values[1:] + values[:-1]) * (times[1:] - times[:-1])
    return torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(inc, 0)])
