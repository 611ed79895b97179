r"""Guards that stop a run whose target is not usable where the particles are.

A target's ``log_prob`` that is NaN on part of the space (say ``torch.where(c, f, nan)``) has
an autograd score of 0 there, so particles drift in and stay: the run "succeeds" with most of
its particles where π is undefined and NaN density diagnostics.  :func:`check_target_finite`
evaluates log π_t and ∇log π_t at every particle and raises :class:`SamplingError` naming t,
the count and an example x; :class:`FiniteTargetGuard` does it at every output time of a run.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from .errors import SamplingError
from .paths import Constant

__all__ = ["check_target_finite", "FiniteTargetGuard", "CollapsedScoreGuard", "holdout_outliers", "particle_curvature", "ParticleStiffness", "CHUNK"]

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


class CollapsedScoreGuard:
    r"""An observer that stops an SBTM run whose score network has collapsed (records nothing).

    For any law f with finite Fisher information, Cramér–Rao for a location parameter gives
    E_f|∇log f|² = tr J(f) ≥ tr Cov_f⁻¹ ≥ d²/tr Cov_f, and a fitted s_Θ has E|s_Θ|² ≈ tr J(f_t)
    (the implicit loss' optimum).  When the particles' mean |s_Θ|² falls below ``floor`` times
    d²/tr Cov of the particles, s_Θ no longer represents ∇log f_t: the network died (e.g. every
    hidden unit saturated, so s_Θ ≡ its output bias, which the loss then drives to 0) and the
    particles follow ∇log π alone — gradient ascent, which contracts them.  Seen on gmm40-50d
    (n = 300, the flow at η = 5): mean |s_Θ|² → 0 by t = 0.2, the loss exactly 0, and the
    particles' sd 0.37 at t = 1 where Langevin and the discrete training keep ≈ 1.0.
    Only a fall is a collapse: the run stops once the network, above the bound at an earlier
    output time, drops below it (an unfitted network, ``init_steps=0``, starts below it and
    trains up).  (Under torch.distributed each rank would see only its shard: skipped there.)
    """

    def __init__(self, floor: float = 0.01):
        self.floor = float(floor)
        self.fitted = False  # s_Θ has been above the bound at some output time

    def __call__(self, sampler: Any, state: Any, t: float, k: int) -> dict:
        """Check the learned score at the diagnostic particles at output time t_k; returns ``{}``."""
        if getattr(sampler, "comm", None) is not None:
            return {}
        v = sampler.view(state, t)
        x = sampler.diagnostic_particles(v)[0].detach()
        with torch.no_grad():
            s = v.score_fn(x).double()
        xc = x.double() - x.double().mean(0)
        spread = float((xc * xc).sum(-1).mean())
        bound = x.shape[1] ** 2 / spread if spread > 0 else float("inf")
        msq = float((s * s).sum(-1).mean())
        if msq >= self.floor * bound:
            self.fitted = True
        elif self.fitted:
            raise SamplingError(
                f"the score network collapsed at t={t:.6g}: mean |s_Θ|² = {msq:.3g} at the particles, while any law with "
                f"their covariance has Fisher information ≥ d²/tr Cov = {bound:.3g} (Cramér–Rao), so s_Θ no longer "
                "represents ∇log f_t and the particles follow ∇log π alone (they contract). Lower eta (the flow) or lr "
                f"(training='steps'), try training='steps', or use more particles ({x.shape[0]} in d = {x.shape[1]} "
                "are easily overfitted)",
                t=t,
            )
        return {}


def _outside(train: Tensor, held: Tensor, widths: float, below: bool = True) -> Tensor:
    """Bool ``(m,)``: rows of ``held (m, k)`` with an entry beyond the finite range of
    ``train (n, k)`` widened by ``widths`` range-widths on each side (only above when not
    ``below``), or not finite."""
    big = torch.finfo(train.dtype).max
    ok = torch.isfinite(train)
    lo = torch.where(ok, train, big).min(0).values
    hi = torch.where(ok, train, -big).max(0).values
    span = (hi - lo).clamp_min(0)
    bad = (held > hi + widths * span) | ~torch.isfinite(held)
    if below:
        bad |= held < lo - widths * span
    return bad.any(-1)


def holdout_outliers(x_train: Tensor, x_hold: Tensor, logd_train: Tensor | None = None, logd_hold: Tensor | None = None,
                     widths: float = 1.0) -> Tensor:
    r"""Held-out particles that escaped far outside the training cloud.

    The flow moves held-out particles with s_Θ, which is only trained where the training
    particles are; one that wanders off (e.g. into a target's far tail, where s_Θ
    extrapolates) gets a meaningless tracked log-density ℓ, and a single ℓ ≈ +1400 ruins
    ``kl_plus_logz``/``log_z``/``ess``.  Particle i is an outlier when a coordinate of x̃ᵢ
    lies beyond the training particles' range [min, max] widened by ``widths`` range-widths
    on each side (for n = 1000 Gaussian training particles that is beyond about ±9.6σ: no
    false alarms in practice), when its ℓ̃ᵢ lies that far above the training particles' ℓ
    range, or when either is not finite.

    Args:
        x_train: training particles ``(n, d)``; x_hold: held-out particles ``(m, d)``.
        logd_train, logd_hold: their tracked log-densities ``(n,)``, ``(m,)`` (optional).
        widths: the margin, in range-widths.

    Returns:
        bool ``(m,)``, True for an outlier.
    """
    out = _outside(x_train.detach(), x_hold.detach(), widths)
    if logd_train is not None and logd_hold is not None:
        # ℓ only from above: a low ℓ (a held-out particle in the init law's far tail, more likely
        # among many held-out than few training particles) has a negligible weight anyway
        out |= _outside(logd_train.detach().reshape(-1, 1), logd_hold.detach().reshape(-1, 1), widths, below=False)
    return out


# ----------------------------------------------------------------------------------------
# Stiffness of the particle block
# ----------------------------------------------------------------------------------------
def _hvp_rows(path: Any, x: Tensor, t: float, v: Tensor) -> Tensor:
    """Rows ∇²log π_t(xᵢ)·vᵢ, ``(k, d)`` (the score is row-wise, so one backward pass)."""
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        g = path.score(xr, t)
        (hv,) = torch.autograd.grad((g * v).sum(), xr, allow_unused=True)
    return torch.zeros_like(x) if hv is None else hv.detach()


def _power_rows(path: Any, x: Tensor, t: float, v: Tensor, iters: int, chunk: int, shift: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Batched power iteration on the rows' matrices Hᵢ − shiftᵢ·I (Hᵢ = ∇²log π_t(xᵢ)):
    ``(|μᵢ|, vᵢ)`` with μᵢ the dominant eigenvalue, its sign folded into ``vᵢ·(Hᵢ − shiftᵢ)vᵢ``."""
    lam = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    sign = torch.ones_like(lam)
    for _ in range(max(1, int(iters))):
        w = torch.cat([_hvp_rows(path, x[i : i + chunk], t, v[i : i + chunk]) for i in range(0, x.shape[0], chunk)])
        if shift is not None:
            w = w - shift[:, None] * v
        lam = w.norm(dim=-1)
        sign = torch.where((w * v).sum(-1) < 0, -1.0, 1.0).to(lam)
        v = torch.where(lam[:, None] > 0, w / lam[:, None].clamp_min(1e-30), v)
    return torch.where(torch.isfinite(lam), lam, torch.zeros_like(lam)), v, sign


def particle_curvature(path: Any, x: Tensor, t: float, iters: int = 20, generator: torch.Generator | None = None,
                       v0: Tensor | None = None, chunk: int = CHUNK) -> tuple[Tensor, Tensor]:
    r"""The stiffness of the target at each particle, κᵢ = max(0, −λ_min(∇²log π_t(xᵢ))).

    The particle block of every sampler here moves each particle with ∇log π_t (minus, for
    SBTM, the learned score); its Jacobian is block-diagonal over particles with blocks
    ∇²log π_t(xᵢ) (d × d).  A fixed step h of an explicit method is stable only when
    h·κ ≤ c (c = 2 for Euler, Euler–Maruyama and Heun): only the negative eigenvalues limit the
    step.  A positive one (between the modes of a mixture, where the flow pushes particles
    apart) grows in the exact flow too, and an explicit step follows it without oscillating.
    Batched power iteration (all particles at once, one Hessian-vector product per iteration,
    ``chunk`` rows at a time) gives the dominant eigenvalue μᵢ; where μᵢ > 0 a second pass on
    Hᵢ − μᵢI (eigenvalues in [λ_min − μᵢ, 0]) gives λ_min = μᵢ − ‖(Hᵢ − μᵢI)‖_dominant.

    Args:
        path: ``score(x, t)`` differentiable in x (autograd scores are).
        x: particles ``(n, d)``; t: time.
        iters: power iterations; generator: for the random start; v0: a start ``(n, d)``
            (warm start from the previous call).

    Returns:
        ``(κ, v)``: the stiffness at each particle ``(n,)`` (0 where not finite) and the
        iteration vectors ``(n, d)`` of the first pass.
    """
    if v0 is not None and v0.shape == x.shape:
        v = v0.to(x)
    else:
        v = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x)
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    mu, v, sign = _power_rows(path, x, t, v, iters, chunk)
    kappa = torch.where(sign < 0, mu, torch.zeros_like(mu))
    pos = sign > 0
    if bool(pos.any()):
        xp, mp = x[pos], mu[pos]
        u = torch.randn(xp.shape, generator=generator, dtype=torch.float64).to(x)
        u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        nu, _, _ = _power_rows(path, xp, t, u, iters, chunk, shift=mp)
        kappa[pos] = (nu - mp).clamp_min(0)
    return kappa, v


class ParticleStiffness:
    r"""Stability of fixed steps for the particle block X: z = h·max_i κᵢ (κ = −λ_min(∇²log π_t(xᵢ)), :func:`particle_curvature`) against
    the method's real stability limit c, at the start (:meth:`start`, ``iters`` power
    iterations, also at the target's mode centres when it knows them: a mixture's ``means``)
    and every ``every`` steps along the run (:meth:`check`, warm-started, 3 iterations).

    A step with z > c makes the particles near that curvature oscillate with growing
    amplitude (ULA on N(0, 10⁻⁶) with dt = 0.01 returned |x| ≈ 3·10⁸) or skip a narrow mode
    altogether.  A run is refused (:class:`SamplingError` naming the block — X, the particles,
    so lowering SBTM's η does not help —, t, z, where, and the stable step) when z > 10c
    somewhere (one step multiplies a deviation by |1 − z| > 19) or z > c at ≥ 10 % of the
    probe points; a milder excess at a few particles (a funnel's neck that they cross: ULA
    on eight_schools at dt = 0.03 has z = 3.3 at a start particle and samples well) warns once.
    The record (``max_z``, ``t_max_z``, ``lam``) is in :meth:`state_dict` for checkpoints.

    Args:
        path: the target or path; solver: its name (for the message); limit: c;
        method: ``"sbtm"`` or ``"ula"`` (for the advice); every: steps between estimates;
        generator: for the power iteration's start.
    """

    def __init__(self, path: Any, solver: str, limit: float, method: str = "ula", every: int = 50,
                 iters: int = 20, generator: torch.Generator | None = None):
        self.path, self.solver, self.limit, self.method = path, solver, float(limit), method
        self.every, self.iters, self.generator = int(every), int(iters), generator
        self.v: Tensor | None = None
        self.lam, self.last_step = float("nan"), -(10**18)
        self.max_z, self.t_max_z, self.warned = 0.0, float("nan"), False

    def _probe_points(self, x: Tensor) -> Tensor:
        means = getattr(getattr(self.path, "target", None), "means", None)
        constant = isinstance(self.path, Constant) or not hasattr(self.path, "target")
        if constant and isinstance(means, Tensor) and means.dim() == 2 and means.shape[1] == x.shape[1]:
            return torch.cat([x, means.to(x)])
        return x

    def start(self, x: Tensor, t: float, h: float) -> None:
        """The pre-run check at the particles ``(n, d)`` and the target's mode centres."""
        pts = self._probe_points(x)
        lam, _ = particle_curvature(self.path, pts, t, self.iters, self.generator)
        self.last_step = 0
        self._judge(lam, pts, t, h)

    def check(self, x: Tensor, t: float, h: float, step: int) -> None:
        """Re-estimate every ``every`` steps (``step``: the integration step index)."""
        if step - self.last_step < self.every:
            return
        self.last_step = step
        lam, self.v = particle_curvature(self.path, x, t, 3, self.generator, self.v)
        self._judge(lam, x, t, h)

    def _judge(self, lams: Tensor, pts: Tensor, t: float, h: float) -> None:
        i = int(lams.argmax())
        self.lam = lam = float(lams[i])
        z, frac = h * lam, float((h * lams > self.limit).double().mean())
        if z > self.max_z:
            self.max_z, self.t_max_z = z, t
        if z <= self.limit or (z <= 10 * self.limit and frac < 0.1 and self.warned):
            return
        advice = ("lowering eta does not help (the network block Θ is not the stiff one); " if self.method == "sbtm" else "")
        x = [round(v, 6) for v in pts[i].detach().double().cpu().tolist()[:8]]
        msg = (f"the particle block X is stiff for {self.solver!r} at t={t:.6g}: dt·(−λ_min(∇²log π_t)) = {h:g}·{lam:.4g} = {z:.3g} "
               f"> {self.limit:g} (the solver's stability limit) at x={x} ({100 * frac:.3g} % of the probed points), so fixed "
               f"steps oscillate there and blow up or skip that region. {advice}use dt <= {self.limit / lam:.3g}"
               + (", or an adaptive solver (solver='dopri5')" if self.method == "sbtm" else ""))
        if z > 10 * self.limit or frac >= 0.1:
            raise SamplingError(msg + "; pass stiffness_check=False to run anyway", t=float(t))
        self.warned = True
        warnings.warn(msg, RuntimeWarning, stacklevel=3)

    def state_dict(self) -> dict:
        """The record and the warm start, for checkpoints."""
        return {"v": None if self.v is None else self.v.cpu(), "lam": self.lam, "last_step": self.last_step,
                "max_z": self.max_z, "t_max_z": self.t_max_z, "warned": self.warned}

    def load_state_dict(self, state: dict) -> None:
        """Inverse of :meth:`state_dict`."""
        self.v, self.lam, self.last_step = state["v"], state["lam"], state["last_step"]
        self.max_z, self.t_max_z, self.warned = state["max_z"], state["t_max_z"], state["warned"]

    def record(self) -> dict:
        """``{"max_dt_lambda": z, "at_t": t, "solver_limit": c}`` for ``result.info``."""
        return {"max_dt_lambda": self.max_z, "at_t": self.t_max_z, "solver_limit": self.limit}
