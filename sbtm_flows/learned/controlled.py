r"""The controlled SDE as a torchsde module, and its per-path log importance weights.

On [0, T] the sampler runs  dX = (μ(X, t) + σ(t) v(X, t)) dt + σ(t) dW  from X₀ ~ p₀ (the
reference's initial law, :mod:`sbtm_flows.learned.reference`), where v is the control that
*generates* the paths (v = u_θ, or a detached copy of it for the log-variance loss).  The
state is augmented with two scalar coordinates, so the log-weights come out of the solver:

    y = [X (d), R, S]:   dR = (u·v − ½|u|²) dt,     dS = uᵀ dW,

i.e. ``noise_type = "general"``: the diffusion matrix g is ``(n, d + 2, d)`` with σ I in the
X rows, a zero row for R and the row uᵀ for S.  With the Brownian motion W of the controlled
process, dW_ref = v dt + dW is the reference's, and Girsanov gives

    log dP_u/dP_ref (X) = ∫ u·dW_ref − ½∫|u|² dt = S_T + R_T,

so the log importance weight of a path against Q* = P_ref·π/p_T is

    log w = log π̃(X_T) − log p_T(X_T) − R_T − S_T,        E_{P_v}[w · dP_u/dP_v] = Z.

With v = u (on-policy) R_T = ½∫|u|² dt and E_{P_u}[w] = Z: log Z ≈ logsumexp(log w) − log n and
E[log w] ≤ log Z (the ELBO).  With v = u.detach() (the log-variance loss) the X-path does not
depend on θ, and log w is the log-RN derivative log dQ*/dP_u evaluated on those paths.

Integration: torchsde's Euler–Maruyama (``method="euler"``, Itô; u at the left end point of
each step, so S is the Itô integral) on a uniform grid of K steps, with the Brownian increments
drawn up front from the run's generator (:class:`GridBrownian`): same generator state ⇒ same
paths, bitwise.  p_T is the terminal law of the discrete reference chain
(:meth:`~sbtm_flows.learned.reference.OUReference.discrete_terminal_var`), which makes
E[w] = Z exact for the chain: the step h costs variance of the weights, not bias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torchsde
from torch import Tensor

from ..errors import SamplingError

__all__ = ["ControlledSDE", "GridBrownian", "PathBatch", "simulate"]


class GridBrownian(torchsde.BaseBrownian):
    """A Brownian motion ``(n, m)`` on the uniform grid t₀ + k h, k = 0..K, from increments
    ``dW (K, n, m)`` (each N(0, h)); ``bm(ta, tb)`` = W(tb) − W(ta) for grid times ta, tb.

    Recording the increments makes the path's noise explicit (and reusable: the same ``dW``
    drives the same paths), which torchsde's BrownianInterval does not expose."""

    def __init__(self, t0: float, h: float, increments: Tensor):
        if increments.ndim != 3:
            raise ValueError(f"increments must have shape (K, n, m), got {tuple(increments.shape)}")
        self.t0, self.h = float(t0), float(h)
        self.increments = increments
        self.cum = torch.cat([torch.zeros_like(increments[:1]), increments.cumsum(0)])

    def _index(self, t) -> int:
        k = round((float(t) - self.t0) / self.h)
        return min(max(k, 0), self.cum.shape[0] - 1)

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        if return_U or return_A:
            raise ValueError("GridBrownian has no Lévy area: use method='euler'")
        if tb is None:
            return self.cum[self._index(ta)]
        return self.cum[self._index(tb)] - self.cum[self._index(ta)]

    def __repr__(self) -> str:
        return f"GridBrownian(t0={self.t0}, h={self.h}, K={self.increments.shape[0]}, shape={tuple(self.shape)})"

    @property
    def dtype(self):
        return self.increments.dtype

    @property
    def device(self):
        return self.increments.device

    @property
    def shape(self):
        return self.increments.shape[1:]

    @property
    def levy_area_approximation(self):
        return "none"


def _check_target_score(grad: Tensor, x: Tensor, t) -> None:
    """Raise SamplingError if ∇log π̃ ``grad (n, d)`` is NaN/inf at a finite point of ``x (n, d)``
    (the target's fault, not the control's: the path would turn NaN at the next step)."""
    bad = torch.isfinite(x).all(-1) & ~torch.isfinite(grad).all(-1)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise SamplingError(f"the target's score ∇log π̃ is NaN/inf at {int(bad.sum())} of {x.shape[0]} path points at "
                            f"t={float(t):.4g} (e.g. x={x[i].tolist()}): make the target finite wherever the paths can "
                            "go (or pass use_score=False)", t=float(t))


class ControlledSDE(torch.nn.Module):
    r"""dX = (μ + σ v) dt + σ dW augmented with R, S (module docstring) as a torchsde SDE.

    Args:
        reference: the reference process (``drift``, ``sigma``).
        control: u_θ(x, t[, ∇log π̃(x)]) ``(n, d) -> (n, d)`` (a :class:`ControlNet` or any module
            with the same call; ``control.use_score`` asks for the target-score feature).
        target: the target (``score`` when the control uses it).
        detached: generate the paths with v = u.detach() (no gradient flows through X).

    State ``y`` is ``(n, d + 2)``.  ``nfe`` counts control evaluations (batched calls),
    ``score_evals`` the ∇log π̃ evaluations (per point).
    """

    noise_type = "general"
    sde_type = "ito"

    def __init__(self, reference, control: torch.nn.Module, target=None, detached: bool = False):
        super().__init__()
        self.reference = reference
        self.control = control
        self.target = target
        self.detached = bool(detached)
        self.use_score = bool(getattr(control, "use_score", False))
        if self.use_score and target is None:
            raise ValueError("the control uses the target score as a feature: pass target")
        self.nfe = 0
        self.score_evals = 0

    def _controls(self, t, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | float]:
        """``(x, u, v, σ)`` at time t for the state ``y (n, d + 2)``."""
        x = y[:, :-2]
        if self.detached:
            x = x.detach()
        grad = None
        if self.use_score:
            grad = self.target.score(x)
            self.score_evals += x.shape[0]
            _check_target_score(grad, x, t)
        u = self.control(x, t, grad) if self.use_score else self.control(x, t)
        self.nfe += 1
        v = u.detach() if self.detached else u
        return x, u, v, self.reference.sigma(t)

    def f_and_g_prod(self, t, y: Tensor, dw: Tensor) -> tuple[Tensor, Tensor]:
        """Drift ``(n, d + 2)`` and the diffusion applied to the increment ``dw (n, d)``:
        [μ + σv, u·v − ½|u|², 0] and [σ dw, 0, u·dw]."""
        x, u, v, sig = self._controls(t, y)
        zero = torch.zeros_like(u[:, :1])
        run = (u * v).sum(-1, keepdim=True) - 0.5 * (u * u).sum(-1, keepdim=True)
        f = torch.cat([self.reference.drift(x, t) + sig * v, run, zero], -1)
        gdw = torch.cat([sig * dw, zero, (u * dw).sum(-1, keepdim=True)], -1)
        return f, gdw

    def g(self, t, y: Tensor) -> Tensor:
        """The diffusion matrix ``(n, d + 2, d)``: σ I over the rows of X, 0 for R, uᵀ for S."""
        x, u, _, sig = self._controls(t, y)
        n, d = x.shape
        eye = sig * torch.eye(d, dtype=y.dtype, device=y.device).expand(n, d, d)
        return torch.cat([eye, torch.zeros_like(u[:, None, :]), u[:, None, :]], 1)


@dataclass
class PathBatch:
    """Simulated paths: terminal points ``x (n, d)``, the running cost ``running (n,)`` = R_T,
    the stochastic integral ``stochastic (n,)`` = S_T, ``log_target (n,)`` = log π̃(X_T),
    ``log_reference (n,)`` = log p_T(X_T) and ``log_w (n,)`` = the log importance weights."""

    x: Tensor
    running: Tensor
    stochastic: Tensor
    log_target: Tensor
    log_reference: Tensor
    log_w: Tensor


def brownian_increments(n: int, d: int, steps: int, h: float, generator: torch.Generator, dtype, device) -> Tensor:
    """dW ``(steps, n, d)`` ~ N(0, h), drawn on the CPU from ``generator`` (same numbers on every device)."""
    z = torch.randn(steps, n, d, generator=generator, dtype=torch.float64)
    return (math.sqrt(h) * z).to(dtype=dtype, device=device)


def simulate(sde: ControlledSDE, x0: Tensor, steps: int, generator: torch.Generator, increments: Tensor | None = None) -> PathBatch:
    r"""Run ``sde`` from ``x0 (n, d)`` over [0, T] with K = ``steps`` Euler–Maruyama steps through
    ``torchsde.sdeint`` and return the :class:`PathBatch` (log-weights as in the module docstring).

    ``increments`` ``(K, n, d)``: the Brownian increments to use (default: drawn from ``generator``).
    Gradients flow to the control's parameters unless called under ``torch.no_grad()``.

    Raises:
        SamplingError: the paths or their weights became NaN/inf.
    """
    n, d = x0.shape
    T = sde.reference.T
    h = T / steps
    if increments is None:
        increments = brownian_increments(n, d, steps, h, generator, x0.dtype, x0.device)
    bm = GridBrownian(0.0, h, increments)
    y0 = torch.cat([x0, x0.new_zeros(n, 2)], -1)
    ts = torch.tensor([0.0, T], dtype=x0.dtype, device=x0.device)
    # a step a hair longer than T/K lands exactly on T after K steps (no extra sliver step)
    y = torchsde.sdeint(sde, y0, ts, bm=bm, method="euler", dt=h * (1 + 1e-9))[-1]
    x, running, stochastic = y[:, :d], y[:, d], y[:, d + 1]
    if sde.detached:  # X was driven by the detached control: it does not depend on θ
        x = x.detach()
    if not torch.isfinite(y).all():
        raise SamplingError(f"the controlled paths became NaN/inf ({int((~torch.isfinite(y).all(-1)).sum())} of {n}); "
                            "lower lr, raise steps or clip the score feature", t=T)
    log_target = sde.target.log_prob(x)
    log_ref = sde.reference.terminal_log_prob(x, steps)
    log_w = log_target - log_ref - running - stochastic
    return PathBatch(x, running, stochastic, log_target, log_ref, log_w)
