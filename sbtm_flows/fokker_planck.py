r"""A reference solution of the Fokker–Planck equation in one dimension.

Both SBTM and (annealed) Langevin sample the law f_t that solves

    ∂_t f = ∂_x (∂_x f − f ∂_x log π_t) = ∂_x ( π_t ∂_x (f / π_t) ),

so in d = 1 a grid solution gives the exact answer both samplers must reproduce (e.g. the
mass split P(X_T > 0) of paper §5.3, where neither the paper nor Langevin gives the truth).

Discretisation: cell averages f_i on a uniform grid of m cells on [−L, L]; the flux through
the face between cells i and i+1 is the symmetric (Scharfetter–Gummel-type) form

    J_{i+½} = −√(π_i π_{i+1}) · ((f/π)_{i+1} − (f/π)_i) / h,

which conserves mass exactly, keeps f ≥ 0, has zero flux at the boundary (no mass leaves) and
leaves f ∝ π_t invariant, so the stationary state is exact on the grid.  Time: implicit Euler
(one tridiagonal solve per step, with π at the new time), first order in dt; the result is
checked against the exact Gaussian solution of paper (5.1) in the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy.linalg import solve_banded
from torch import Tensor

from .paths import as_path

__all__ = ["FokkerPlanck1D", "fokker_planck_1d"]


@dataclass
class FokkerPlanck1D:
    """A grid solution: ``x (m,)`` cell centres, ``times (T,)``, ``density (T, m)`` (each row
    integrates to 1 with the cell width ``h``)."""

    x: Tensor
    times: Tensor
    density: Tensor
    h: float

    def prob(self, event: Callable[[Tensor], Tensor], k: int = -1) -> float:
        """P(event) under f at output index k, for a boolean function of the cell centres
        (e.g. ``lambda x: x > 0``)."""
        return float((self.density[k] * event(self.x).to(self.density.dtype)).sum() * self.h)

    def moment(self, p: int, k: int = -1) -> float:
        """E[X^p] under f at output index k."""
        return float((self.density[k] * self.x**p).sum() * self.h)


def fokker_planck_1d(
    target,
    init_log_prob: Callable[[Tensor], Tensor],
    t_final: float,
    *,
    t0: float = 0.0,
    times=None,
    x_max: float = 12.0,
    m: int = 2400,
    dt: float = 1e-3,
) -> FokkerPlanck1D:
    r"""Solve ∂_t f = ∂_x(π_t ∂_x(f/π_t)) on [−x_max, x_max] from f_0 ∝ exp(init_log_prob).

    Args:
        target: a 1-D target or path with ``log_prob(x)`` / ``log_prob(x, t)`` (x ``(m, 1)``).
        init_log_prob: log f_0 up to a constant, ``(m, 1) -> (m,)``.
        t_final, t0: time interval; ``times``: output times (default ``[t0, t_final]``).
        x_max, m: the grid: m cells on [−x_max, x_max] (the mass must stay well inside).
        dt: implicit-Euler step (first order: halve it to check).

    Returns:
        :class:`FokkerPlanck1D`.

    Raises:
        ValueError: a target that is not 1-D or has no ``log_prob``, bad grid sizes, or an initial
            density with mass at the edges of the grid.
    """
    path = as_path(target)
    if path.dim != 1:
        raise ValueError(f"fokker_planck_1d needs a 1-D target, got dim={path.dim}")
    if not (x_max > 0 and int(m) >= 10 and dt > 0 and t_final > t0):
        raise ValueError(f"need x_max > 0, m >= 10, dt > 0 and t_final > t0; got {x_max}, {m}, {dt}, {t0}..{t_final}")
    m = int(m)
    edges = np.linspace(-x_max, x_max, m + 1)
    xc = 0.5 * (edges[1:] + edges[:-1])
    h = float(edges[1] - edges[0])
    xt = torch.tensor(xc[:, None], dtype=torch.float64)

    def log_pi(t: float) -> np.ndarray:
        try:
            lp = path.log_prob(xt, t)
        except NotImplementedError as e:
            raise ValueError(f"fokker_planck_1d needs the target's log_prob: {e}") from e
        lp = lp.detach().double().numpy()
        return lp - lp.max()

    lf = init_log_prob(xt).detach().double().numpy().reshape(-1)
    f = np.exp(lf - lf.max())
    f /= f.sum() * h
    if (f[0] + f[-1]) * h > 1e-8:
        raise ValueError(f"the initial density has mass at the grid edges ±{x_max}: raise x_max")
    out_t = np.asarray([t0, t_final] if times is None else torch.as_tensor(times, dtype=torch.float64).tolist(), dtype=float)
    if out_t[0] != t0 or abs(out_t[-1] - t_final) > 1e-12 or np.any(np.diff(out_t) <= 0):
        raise ValueError("times must increase from t0 to t_final")
    dens = [f.copy()]
    t = float(t0)
    for t_next in out_t[1:]:
        n_steps = max(1, math.ceil((t_next - t) / dt - 1e-9))
        step = (t_next - t) / n_steps
        for _ in range(n_steps):
            t += step
            f = _implicit_euler_step(f, log_pi(t), h, step)
        t = float(t_next)
        dens.append(f.copy())
    return FokkerPlanck1D(
        x=torch.tensor(xc, dtype=torch.float64),
        times=torch.tensor(out_t, dtype=torch.float64),
        density=torch.tensor(np.stack(dens), dtype=torch.float64),
        h=h,
    )


def _implicit_euler_step(f: np.ndarray, lp: np.ndarray, h: float, dt: float) -> np.ndarray:
    """Solve (I − dt A) f_new = f with A the symmetric-flux operator at log π = ``lp`` (m,)."""
    w = np.exp(0.5 * (lp[1:] + lp[:-1]))  # √(π_i π_{i+1}) on the m−1 inner faces
    inv = np.exp(-lp)  # 1/π_i
    c = dt / (h * h)
    m = f.size
    diag = np.ones(m)
    diag[:-1] += c * w * inv[:-1]
    diag[1:] += c * w * inv[1:]
    ab = np.zeros((3, m))
    ab[0, 1:] = -c * w * inv[1:]  # super-diagonal: coefficient of f_{i+1} in row i
    ab[1] = diag
    ab[2, :-1] = -c * w * inv[:-1]  # sub-diagonal: coefficient of f_i in row i+1
    return solve_banded((1, 1), ab, f)
