r"""Kernel density estimates of a particle cloud, for runs that have no learned score.

A Gaussian KDE with bandwidth h (Scott's rule by default, h = σ̂ n^{−1/(d+4)} per
coordinate-averaged σ̂) gives

* ``kde_log_density(x, y)``: log f̂(y) = logsumexp_j(−|y − x_j|²/2h²) − log n − (d/2)log(2πh²);
* ``kde_score(x, y)``: ∇log f̂(y) = Σ_j w_j(y)(x_j − y)/h² with softmax weights w_j;
* ``kde_fisher(x, target)``: the plug-in relative Fisher information mean|∇log f̂ − ∇log π|²
  at the particles — the "SDE estimate" of the entropy dissipation −dKL/dt = F(f_t‖π) for
  Langevin runs (noisy, as the paper's Figures 2–3 show);
* ``l2_error_1d(x, density, grid)``: ‖f̂ − f‖_{L²} on a 1-D grid (paper Figure 2, right).

Pairwise terms are evaluated in blocks, so memory is O(block · n).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

__all__ = ["scott_bandwidth", "kde_log_density", "kde_score", "kde_fisher", "l2_error_1d"]


def scott_bandwidth(x: Tensor) -> float:
    """Scott's rule h = σ̂ n^{−1/(d+4)}, σ̂ the mean per-coordinate standard deviation of ``x (n, d)``."""
    n, d = x.shape
    return float(x.std(0).mean()) * n ** (-1.0 / (d + 4))


def _blocks(y: Tensor, block: int):
    for i in range(0, y.shape[0], block):
        yield y[i : i + block]


def kde_log_density(x: Tensor, y: Tensor, h: float | None = None, block: int = 2048) -> Tensor:
    """log f̂(y) ``(m,)`` of the Gaussian KDE of particles ``x (n, d)`` at points ``y (m, d)``."""
    n, d = x.shape
    h = scott_bandwidth(x) if h is None else h
    out = []
    for yb in _blocks(y, block):
        d2 = torch.cdist(yb, x).pow(2)
        out.append(torch.logsumexp(-d2 / (2 * h * h), dim=1))
    return torch.cat(out) - math.log(n) - 0.5 * d * math.log(2 * math.pi * h * h)


def kde_score(x: Tensor, y: Tensor, h: float | None = None, block: int = 2048) -> Tensor:
    """∇log f̂(y) ``(m, d)`` of the Gaussian KDE of ``x (n, d)``."""
    h = scott_bandwidth(x) if h is None else h
    out = []
    for yb in _blocks(y, block):
        w = torch.softmax(-torch.cdist(yb, x).pow(2) / (2 * h * h), dim=1)  # (b, n)
        out.append((w @ x - yb) / (h * h))
    return torch.cat(out)


def kde_fisher(x: Tensor, target_score: Callable[[Tensor], Tensor], h: float | None = None) -> float:
    """Plug-in relative Fisher information mean_i |∇log f̂(Xⁱ) − ∇log π(Xⁱ)|²."""
    r = kde_score(x, x, h) - target_score(x)
    return float((r * r).sum(-1).mean())


def l2_error_1d(x: Tensor, density: Callable[[Tensor], Tensor], grid: Tensor, h: float | None = None) -> float:
    """‖f̂ − f‖_{L²(grid)} (trapezoid rule) between the KDE of 1-D particles ``x (n, 1)`` and a
    density ``f: (m, 1) -> (m,)`` on an increasing ``grid (m,)``."""
    g = grid.to(x)[:, None]
    diff2 = (kde_log_density(x, g, h).exp() - density(g)) ** 2
    return float(torch.trapezoid(diff2, grid.to(x))) ** 0.5
