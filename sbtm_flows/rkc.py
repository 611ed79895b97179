r"""A stabilised explicit solver for the coupled X/Θ flow: second-order damped
Runge–Kutta–Chebyshev (RKC, van der Houwen & Sommeijer 1980; Verwer, Hundsdorfer & Sommeijer
2004), registered in torchdiffeq's solver table as ``method="rkc"``.

Why.  The Θ block of the coupled flow, dΘ/dt = −η∇_Θ L, has Jacobian −η∇²_Θ L: (near-)real,
negative spectrum reaching −η·λ_max(∇²_Θ L), and λ_max grows along a run (on §5.1 from 23 to 50,
on a dilation path by orders of magnitude).  A classical explicit method is stable only while
η·λ_max·h ≤ c (c = 2 for Heun); past it the fastest network modes oscillate (the "edge of
stability" spikes in F^n) or diverge.  An s-stage RKC step is stable on the real interval
[−β(s), 0] with β(s) ≈ 0.65·s² (damping ε = 2/13 also gives a strip of width ≈ 0.1·s around
it), so choosing s per step from an estimate ρ of the spectral radius of the full right-hand
side's Jacobian,

    s = min{ s ≥ 2 : β(s) ≥ safety · ρ · h },

keeps every step stable at a cost of ≈ √(ρh/0.65) right-hand-side evaluations per step
instead of ρh/2 (the steps Heun would need).

One step from y₀ at t₀ (F(t, y) the right-hand side, T_j Chebyshev polynomials, w₀ = 1 + ε/s²,
w₁ = T_s'(w₀)/T_s''(w₀), b_j = T_j''(w₀)/T_j'(w₀)² for j ≥ 2, b₀ = b₁ = b₂)::

    Y₀ = y₀,  Y₁ = y₀ + μ̃₁ h F(t₀, y₀),                                      μ̃₁ = b₁w₁
    Y_j = (1 − μ_j − ν_j) y₀ + μ_j Y_{j−1} + ν_j Y_{j−2}
          + μ̃_j h F(t₀ + c_{j−1}h, Y_{j−1}) + γ̃_j h F(t₀, y₀),                j = 2..s
    μ_j = 2b_j w₀/b_{j−1}, ν_j = −b_j/b_{j−2}, μ̃_j = 2b_j w₁/b_{j−1}, γ̃_j = −(1 − b_{j−1}T_{j−1}(w₀)) μ̃_j
    y₁ = Y_s

with stage times c_j from the same recursion applied to F ≡ 1 (c_s = 1).

The spectral radius is estimated by the nonlinear power method on finite differences of the
right-hand side (Sommeijer's RKC code): v ← (F(t, y + δv̂) − F(t, y))/δ, ρ ≈ ‖v‖, warm-started
from the previous direction and refreshed every ``every`` steps (:class:`SpectralRadius`).  It
sees the whole state — particles, Θ, the log-density block — so a stiff particle block (a
sharply curved target) is covered too.  The power iterations are counted as right-hand-side
evaluations.  The estimate can still read low (a warm-started direction that missed a mode that
has just become stiff, a complex pair the power method does not resolve), so every step also
watches its own stages: if a stage derivative grows beyond ``GROWTH`` (2) times ‖F(t₀, y₀)‖
plus ``FLOOR``·max(‖y₀‖, 1)/h (0.01: a rate that would move the state by 1 % in one step), or
stops being finite, the step has left the stability region, and it is redone from y₀ with
⌈1.5·s⌉ stages (ρ raised to match, a fresh estimate at the next step; counted in
``rejected_steps``).  This costs nothing while steps are stable, so a run without rejections is
bitwise the run without the check.  When the stage count needed exceeds ``max_stages`` the step stops with a
:class:`~sbtm_flows.errors.SamplingError` naming ρ, h and what to change: the solver never
takes a step it knows to be unstable.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

from .compat import FIXED_GRID_SOLVER as FixedGridODESolver
from .compat import TORCHDIFFEQ_REGISTRY, TORCHDIFFEQ_SOLVERS
from .errors import SamplingError

__all__ = ["RKC", "SpectralRadius", "rkc_coefficients", "rkc_stability_bound", "rkc_stages"]

#: a step whose stage derivatives grow beyond GROWTH·‖F(t0, y0)‖ is redone with more stages
GROWTH = 2.0
#: ... plus FLOOR·max(‖y₀‖, 1)/h (see RKC._chebyshev_step)
FLOOR = 0.01

#: damping of the Chebyshev polynomial (w₀ = 1 + ε/s²): ε = 2/13 as in Verwer et al. (2004)
DAMPING = 2.0 / 13.0


def _chebyshev(s: int, x: float) -> tuple[list[float], list[float], list[float]]:
    """``(T, T', T'')``: T_j(x), T_j'(x), T_j''(x) for j = 0..s (three-term recursions)."""
    t, d1, d2 = [1.0, x], [0.0, 1.0], [0.0, 0.0]
    for j in range(2, s + 1):
        t.append(2 * x * t[j - 1] - t[j - 2])
        d1.append(2 * t[j - 1] + 2 * x * d1[j - 1] - d1[j - 2])
        d2.append(4 * d1[j - 1] + 2 * x * d2[j - 1] - d2[j - 2])
    return t, d1, d2


@lru_cache(maxsize=None)
def rkc_coefficients(s: int) -> tuple[tuple[float, ...], ...]:
    r"""``(mu, nu, mu_t, gamma_t, c)`` of the s-stage damped RKC method (module docstring),
    each a tuple indexed by stage j = 0..s (entries unused by the recursion are 0); c_j are the
    stage times in units of h.

    Raises:
        ValueError: s < 2."""
    if s < 2:
        raise ValueError(f"RKC needs s >= 2 stages, got {s}")
    w0 = 1.0 + DAMPING / s**2
    t, d1, d2 = _chebyshev(s, w0)
    w1 = d1[s] / d2[s]
    b = [0.0] * (s + 1)
    for j in range(2, s + 1):
        b[j] = d2[j] / d1[j] ** 2
    b[0] = b[1] = b[2]
    mu, nu, mu_t, gamma_t, c = ([0.0] * (s + 1) for _ in range(5))
    mu_t[1] = b[1] * w1
    c[1] = mu_t[1]
    for j in range(2, s + 1):
        mu[j] = 2 * b[j] * w0 / b[j - 1]
        nu[j] = -b[j] / b[j - 2]
        mu_t[j] = 2 * b[j] * w1 / b[j - 1]
        gamma_t[j] = -(1 - b[j - 1] * t[j - 1]) * mu_t[j]
        c[j] = mu[j] * c[j - 1] + nu[j] * c[j - 2] + mu_t[j] + gamma_t[j]
    return tuple(mu), tuple(nu), tuple(mu_t), tuple(gamma_t), tuple(c)


def rkc_stability_bound(s: int) -> float:
    r"""β(s) = (1 + w₀)·T_s''(w₀)/T_s'(w₀): the s-stage method is stable on [−β(s), 0]
    (β ≈ 0.653·s² for large s; 1.96 for s = 2, 5.23 for s = 3)."""
    w0 = 1.0 + DAMPING / s**2
    _, d1, d2 = _chebyshev(s, w0)
    return (1 + w0) * d2[s] / d1[s]


def rkc_stages(z: float, safety: float = 1.2) -> int:
    """The smallest s ≥ 2 with β(s) ≥ safety·z, for z = ρ·h ≥ 0 (ρ the spectral radius)."""
    need = safety * max(float(z), 0.0)
    s = max(2, int(math.ceil(math.sqrt(need / 0.653))) - 1)
    while rkc_stability_bound(s) < need:
        s += 1
    return s


class SpectralRadius:
    r"""Estimate ρ(∂F/∂y), the spectral radius of the right-hand side's Jacobian, along a run
    by the nonlinear power method on finite differences, warm-started.

    Every ``every`` steps (and at the first): ``iters`` iterations (``first_iters`` the first
    time; more, up to ``max_iters``, until ρ changes by less than 5 %) of w = (F(t, y + δv) − F(t, y))/δ, ρ = ‖w‖, v ← w/‖w‖ (‖v‖ = 1), with
    δ = √eps·max(‖y‖, 1).
    Between refreshes the last ρ is used; a refresh lowers it by at most the factor ``decay``.
    While ρ grows (rate g per step, from the last two refreshes) it is extrapolated, ρ·g^k k steps
    after a refresh, and the next refresh comes as soon as g^k > 1.1 (on §5.3 at T = 4 ρ grows
    8 % per step).  A refresh also comes early when ‖F(t, y)‖ at a step's start exceeds 1.5× the
    previous step's (a stiff mode that has begun to grow).  Also records the largest ρ·h and stage count seen
    and, when the state's blocks are named (:meth:`name_blocks`), which block the dominant
    direction lives in: the share ‖v_b‖²/‖v‖² of each block b in the power iteration's vector at
    the step with the largest ρ·h (``summary()["dominant_share"]``; e.g. the coupled flow on
    paper §5.4 is stiff in Θ, on eight_schools in X).

    Args:
        every: steps between refreshes; iters / first_iters: power iterations per refresh.
        safety: the stage count covers safety·ρ·h.
        max_stages: a step that needs more stages raises :class:`SamplingError`.
        generator: draws the first direction (so runs are reproducible).
    """

    def __init__(self, every: int = 10, iters: int = 2, first_iters: int = 20, safety: float = 1.2, max_stages: int = 200,
                 generator: torch.Generator | None = None, max_iters: int = 10, decay: float = 0.8):
        for name, v in (("every", every), ("iters", iters), ("first_iters", first_iters), ("max_stages", max_stages)):
            if int(v) < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if not safety >= 1.0:
            raise ValueError(f"safety must be >= 1, got {safety}")
        self.every, self.iters, self.first_iters = int(every), int(iters), int(first_iters)
        if not 0 <= decay <= 1:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        self.safety, self.max_stages, self.generator = float(safety), int(max_stages), generator
        self.max_iters, self.decay = max(int(max_iters), self.iters), float(decay)
        self.v: Tensor | None = None
        #: estimate on the first ``head`` state entries only (``None``: all; :meth:`restrict`): the
        #: SBTM sampler restricts it to the training block so that held-out particles leave the
        #: stage counts unchanged
        self.head: int | None = None
        self.rho = float("nan")
        self.steps, self.last_refresh, self.f_norm, self.growth = 0, -(10**18), math.inf, 1.0
        self.evaluations = 0
        self.max_rho_h, self.max_stages_used, self.t_max = 0.0, 0, float("nan")
        self.stage_total = 0
        self.blocks: dict[str, int] = {}
        self.shares: dict[str, float] = {}
        self.shares_at_max: dict[str, float] = {}
        self.rejections = 0

    def restrict(self, head: int | None) -> None:
        """Estimate ρ on the first ``head`` state entries only (``None``: all of them)."""
        self.head = None if head is None else int(head)

    def name_blocks(self, sizes: dict[str, int]) -> None:
        """Name the consecutive blocks of the state (name -> length, in order from the start) whose
        share of the dominant direction is recorded; entries past them count as ``"rest"``."""
        for name, k in sizes.items():
            if isinstance(k, bool) or not isinstance(k, int) or k < 0:
                raise ValueError(f"block {name!r}: length must be a non-negative integer, got {k!r}")
        self.blocks = dict(sizes)

    def _block_shares(self, v: Tensor) -> dict[str, float]:
        """‖v_b‖²/‖v‖² for each named block b (and ``"rest"``), ``{}`` without names."""
        if not self.blocks:
            return {}
        total = max(float(v.double().pow(2).sum()), 1e-300)
        out, start = {}, 0
        for name, k in self.blocks.items():
            out[name] = float(v[start : start + k].double().pow(2).sum()) / total
            start += k
        if start < v.shape[0]:
            out["rest"] = float(v[start:].double().pow(2).sum()) / total
        return out

    def state_dict(self) -> dict:
        """What a checkpoint needs to continue bitwise."""
        return {"blocks": dict(self.blocks), "shares": dict(self.shares), "shares_at_max": dict(self.shares_at_max),
                "v": None if self.v is None else self.v.cpu(), "rho": self.rho, "steps": self.steps,
                "last_refresh": self.last_refresh, "f_norm": self.f_norm, "growth": self.growth,
                "evaluations": self.evaluations, "max_rho_h": self.max_rho_h, "max_stages_used": self.max_stages_used,
                "t_max": self.t_max, "stage_total": self.stage_total, "rejections": self.rejections}

    def load_state_dict(self, state: dict) -> None:
        """Inverse of :meth:`state_dict`."""
        for k, v in state.items():
            setattr(self, k, v)

    def summary(self) -> dict:
        """Largest ρ·h and stage count seen, mean stages per step, power-iteration evaluations."""
        return {"max_rho_h": self.max_rho_h, "at_t": self.t_max, "max_stages": self.max_stages_used,
                "mean_stages": self.stage_total / max(self.steps, 1), "power_evaluations": self.evaluations,
                "rho_last": self.rho, "rejected_steps": self.rejections, "dominant_share": dict(self.shares_at_max)}

    def refresh(self, func, t: Tensor, y: Tensor, f0: Tensor) -> float:
        """Power iterations at (t, y) with F(t, y) = ``f0``; returns ρ."""
        m = y.shape[-1] if self.head is None else int(self.head)
        first = self.v is None or self.v.shape != (m,)
        if first:
            v = torch.randn(m, generator=self.generator, dtype=torch.float64).to(y)
        else:
            v = self.v.to(y)
        pad = y.new_zeros(y.shape[-1] - m)
        eps = torch.finfo(y.dtype).eps
        delta = math.sqrt(eps) * max(float(y.norm()), 1.0)
        rho, rho_prev, k = 0.0, 0.0, 0
        while k < (self.first_iters if first else self.iters) or (k < self.max_iters and abs(rho - rho_prev) > 0.05 * rho):
            rho_prev, k = rho, k + 1
            nv = float(v.norm())
            if not (nv > 0 and math.isfinite(nv)):  # a lost direction: start afresh
                v = torch.randn(m, generator=self.generator, dtype=torch.float64).to(y)
                nv = float(v.norm())
            dv = (func(t, y + torch.cat([(delta / nv) * v, pad])) - f0)[:m] * (nv / delta)
            self.evaluations += 1
            rho_new = float(dv.norm()) / nv
            if not math.isfinite(rho_new):
                break
            rho, v = rho_new, dv / max(float(dv.norm()), 1e-300)
        self.v = v.detach()
        self.shares = self._block_shares(self.v)
        # the power method approaches ρ from below, and a direction warm-started from a spectrum
        # that has since moved can read low: let the estimate fall by at most `decay` per refresh
        self.rho = rho if first or not math.isfinite(self.rho) else max(rho, self.decay * self.rho)
        return self.rho

    def cap_stages(self, max_stages: int) -> None:
        """Set ``max_stages``, the stage count beyond which a step raises :class:`SamplingError`
        (``solver_options={"max_stages": …}`` of ``rkc``).

        Raises:
            ValueError: not an integer >= 2."""
        if isinstance(max_stages, bool) or not isinstance(max_stages, int) or max_stages < 2:
            raise ValueError(f"rkc: max_stages must be an integer >= 2, got {max_stages!r}")
        self.max_stages = max_stages

    def reject(self, t: Tensor, h: float, s: int) -> int:
        """A step of s stages from t grew (:meth:`RKC._chebyshev_step`): the estimate was low.
        Returns the stage count of the retry, ⌈1.5·s⌉, raises ρ to what that count covers and
        asks for a fresh estimate at the next step.

        Raises:
            SamplingError: the retry would need more than ``max_stages`` stages."""
        s_new = max(s + 1, math.ceil(1.5 * s))
        if s_new > self.max_stages:
            raise SamplingError(
                f"solver 'rkc': steps from t = {float(t):.6g} keep growing (the right-hand side's spectral radius is above "
                f"what {s} stages cover at step {abs(h):.3g}, estimate ρ = {self.rho:.4g}): the coupled system is extremely "
                "stiff or the flow diverges. Lower eta (the network's rate), lower dt, or use training='steps'",
                t=float(t),
            )
        self.rejections += 1
        covered = rkc_stability_bound(s_new) / (self.safety * abs(h))
        self.rho = covered if not math.isfinite(self.rho) else max(self.rho, covered)
        self.growth, self.last_refresh = 1.0, self.steps - self.every  # a fresh estimate at the next step
        self.stage_total += s_new
        self.max_stages_used = max(self.max_stages_used, s_new)
        return s_new

    def stages(self, func, t: Tensor, y: Tensor, f0: Tensor, h: float) -> int:
        """The stage count for a step of size h from (t, y) (refreshing ρ when due).

        Raises:
            SamplingError: more than ``max_stages`` stages would be needed."""
        fn = float(f0.norm())
        k = self.steps - self.last_refresh
        # refresh when due: every `every` steps, sooner while ρ grows fast (predicted growth
        # since the last refresh > 10 %), or when ‖F‖ jumped (a stiff mode growing)
        due = k >= self.every or self.growth**k > 1.1 or not math.isfinite(self.rho) or fn > 1.5 * self.f_norm
        if due:
            rho_old = self.rho
            self.refresh(func, t, y, f0)
            if math.isfinite(rho_old) and rho_old > 0 and k > 0:
                self.growth = max(1.0, self.rho / rho_old) ** (1.0 / k)
            self.last_refresh, k = self.steps, 0
        self.f_norm = fn
        self.steps += 1
        rho = self.rho * self.growth**k  # extrapolated between refreshes while ρ grows
        z = rho * abs(h)
        s = rkc_stages(z, self.safety)
        if s > self.max_stages:
            raise SamplingError(
                f"solver 'rkc': the right-hand side's spectral radius is ρ = {rho:.4g} at t = {float(t):.6g}, so a step "
                f"of {abs(h):.3g} needs {s} > max_stages = {self.max_stages} stages: the coupled system is extremely stiff. "
                "Lower eta (the network's rate), lower dt, or raise max_stages in solver_options",
                t=float(t),
            )
        if z > self.max_rho_h:
            self.max_rho_h, self.t_max, self.shares_at_max = z, float(t), dict(self.shares)
        self.max_stages_used = max(self.max_stages_used, s)
        self.stage_total += s
        return s


class RKC(FixedGridODESolver):
    r"""Second-order damped Runge–Kutta–Chebyshev with the stage count chosen per step from a
    spectral-radius estimate (module docstring); a torchdiffeq fixed-grid solver
    (``odeint(..., method="rkc", options={"spectral": SpectralRadius(...)})``; the grid is the
    requested times, or ``step_size``).

    Options: ``spectral`` (a :class:`SpectralRadius`, kept across calls so its estimate is
    warm-started; default a fresh one), ``max_stages`` (sets that estimator's stage cap), or
    ``stages`` (a fixed stage count, no estimate)."""

    order = 2

    def __init__(self, func, y0, spectral: SpectralRadius | None = None, stages: int | None = None,
                 max_stages: int | None = None, **kwargs):
        super().__init__(func, y0, **kwargs)
        if stages is not None and int(stages) < 2:
            raise ValueError(f"rkc: stages must be >= 2, got {stages}")
        self.fixed_stages = None if stages is None else int(stages)
        self.spectral = spectral if spectral is not None else SpectralRadius()
        if max_stages is not None:
            self.spectral.cap_stages(max_stages)

    def _step_func(self, func, t0, dt, t1, y0):
        f0 = func(t0, y0)
        s = self.fixed_stages or self.spectral.stages(func, t0, y0, f0, float(dt))
        while True:
            y1, grew = self._chebyshev_step(func, t0, dt, y0, f0, s)
            if not grew or self.fixed_stages:
                return y1 - y0, f0
            s = self.spectral.reject(t0, float(dt), s)

    def _chebyshev_step(self, func, t0, dt, y0: Tensor, f0: Tensor, s: int) -> tuple[Tensor, bool]:
        """One s-stage step from y0 (module docstring); also says whether a stage derivative
        grew beyond ``GROWTH``·‖F(t0, y0)‖ + ``FLOOR``·max(‖y0‖, 1)/h (or stopped being finite):
        the step left the stability region, whatever the estimate said.  (The floor lets F grow
        from ≈ 0 — a state at rest, a forcing — by what would move the state 1 % in one step.)"""
        mu, nu, mu_t, gamma_t, c = rkc_coefficients(s)
        hf0 = dt * f0
        limit = GROWTH * float(f0.norm()) + FLOOR * max(float(y0.norm()), 1.0) / max(abs(float(dt)), 1e-300)
        grew = False
        y_prev2, y_prev = y0, y0 + mu_t[1] * hf0
        for j in range(2, s + 1):
            fj = func(t0 + c[j - 1] * dt, y_prev)
            fn = float(fj.norm())
            if not (fn <= limit):  # (NaN too)
                grew = True
                break
            y_new = (1 - mu[j] - nu[j]) * y0 + mu[j] * y_prev + nu[j] * y_prev2 + mu_t[j] * dt * fj + gamma_t[j] * hf0
            y_prev2, y_prev = y_prev, y_new
        return y_prev, grew


TORCHDIFFEQ_REGISTRY.setdefault("rkc", RKC)  # what torchdiffeq.odeint looks up
TORCHDIFFEQ_SOLVERS.setdefault("rkc", RKC)  # sbtm_flows' view of the table
