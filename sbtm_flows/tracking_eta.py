r"""η(t) that keeps the network block as fast as a fixed multiple of the particle block.

The coupled flow's Jacobian has two diagonal blocks with very different origins:

* the particle block X, ∂v/∂x = ∇²log π_t − ∇s_Θ, whose rates are the target's curvatures
  κᵢ = max(0, −λ_min(∇²log π_t(Xᵢ))) at the particles (:func:`~sbtm_flows.guards.particle_curvature`);
  κ_X(t) is their median — the rate at which the bulk of the particles, and so f_t, moves (the
  largest κᵢ, one particle in a sharp corner, is the solver's business: rkc sees it, and sizing the
  network from it made eight_schools' flow diverge when one particle entered the τ² z² corner
  of the posterior: κ_max 67 → 560 in Δt = 0.1, η ×6, Θ ran away within four steps); on a
  dilation path π_t(x) ∝ π(x/λ(t)) κ_X = κ_π/λ(t)², 100× κ_π at λ = 0.1;
* the network block Θ, −η∇²_Θ L, whose stiff end is η·λ_max(∇²_Θ L), the rate of the network's
  fastest mode.

With a fixed η the second is blind to the first: on the dilation path of paper §5.4 (λ₀ = 0.1,
n = 1000, η = 10) the particle block stays at ρ_X ≈ 60–1000 while λ_max(∇²_Θ L) grows 100-fold
in a fraction of a time unit and the Θ block takes the whole spectral radius (ρ 130 → 2·10⁵ by
t ≈ 0.68 with a plain MLP; with a :class:`~sbtm_flows.score.ScaledScore` 2.5·10⁵ → 2·10⁷ by
t = 0.05): :mod:`sbtm_flows.rkc` then needs hundreds of stages per step and stops.
:class:`TrackingEta` sets

    η(t) = ratio · max(κ_X(t), κ_min) / λ_max(∇²_Θ L)(t),

clipped to [``eta_min``, ``eta_max``], so that the network's fastest mode relaxes ``ratio``
times faster than the bulk of the particles, whatever the curvature of either: the Θ block's
spectral radius stays ≈ ratio·κ_X (the X block's is max κᵢ) and an rkc step of size h needs
about √(1.2·ρ·h/0.65) stages (on a λ²-graded dilation grid κ_X·h is constant).
λ_max comes from warm-started Lanczos (:func:`~sbtm_flows.stiffness.hessian_max_eigenvalue`),
κ_X from a warm-started batched power iteration; both are refreshed every ``every`` steps
by the sampler (:meth:`refresh`, the ``refresh_every`` capability of
:class:`~sbtm_flows.eta.EtaSchedule`), so η is piecewise constant in t and the right-hand side
a deterministic function of the state on every step.  Because η follows λ_max, a loss scaled by
c(t)⁻² (a :class:`~sbtm_flows.score.ScaledScore` on a dilation path) leaves the stiffness
unchanged (``absorbs_loss_scale``): with this η the default network on such a path is a
ScaledScore, as for the discrete training.

``sample(..., eta="track")`` is ``TrackingEta()``; ``result.info["eta_schedule"]`` records the
range of η, λ_max and κ_X seen.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .eta import SampledEta
from .guards import particle_curvature
from .stiffness import hessian_max_eigenvalue

__all__ = ["TrackingEta"]


class TrackingEta(SampledEta):
    r"""η(t) = clip(ratio·max(κ_X, κ_min)/λ_max(∇²_Θ L), eta_min, eta_max) (module docstring),
    a callable of t between the sampler's refreshes.

    Args:
        ratio: how many times faster than the particle block the network's fastest mode relaxes.
        every: integration steps between refreshes of λ_max and κ_X.
        iters: Lanczos / power iterations per refresh (``first_iters`` at the first).
        quantile: κ_X is this quantile of the κᵢ over the particles (0.5: the median).
        kappa_min: floor of κ_X (a rate, 1/time), so a target flat at every particle
            (κ_X = 0) still gets a network relaxing at rate ``ratio·kappa_min``.
        eta_min, eta_max: bounds of η.
        seed: seeds the iterations' random vectors (the generator's state is checkpointed).
    """

    absorbs_loss_scale = True
    set_by = "sample() sets it from the initial state (refresh())"

    def __init__(self, ratio: float = 50.0, every: int = 10, iters: int = 3, first_iters: int = 10,
                 kappa_min: float = 1.0, eta_min: float = 1e-6, eta_max: float = 1e4,
                 seed: int = 0, quantile: float = 0.5):
        for name, v in (("ratio", ratio), ("kappa_min", kappa_min), ("eta_min", eta_min), ("eta_max", eta_max)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise ValueError(f"TrackingEta: {name} must be a positive finite number, got {v!r}")
        if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not 0 <= quantile <= 1:
            raise ValueError(f"TrackingEta: quantile must be in [0, 1], got {quantile!r}")
        if eta_min > eta_max:
            raise ValueError(f"TrackingEta: eta_min={eta_min} exceeds eta_max={eta_max}")
        for name, v in (("every", every), ("iters", iters), ("first_iters", first_iters)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"TrackingEta: {name} must be an integer >= 1, got {v!r}")
        self.ratio, self.kappa_min = float(ratio), float(kappa_min)
        self.eta_min, self.eta_max = float(eta_min), float(eta_max)
        self.every, self.iters, self.first_iters, self.seed = every, iters, first_iters, int(seed)
        self.quantile = float(quantile)
        self.generator: torch.Generator | None = None  # made at the first refresh (a fresh schedule is plain data)
        self.value: float | None = None
        self.lam = self.kappa = float("nan")
        self.v_theta: Tensor | None = None
        self.v_x: Tensor | None = None
        self.record = {"refreshes": 0, "eta_min_seen": math.inf, "eta_max_seen": 0.0, "lam_max_seen": 0.0,
                       "kappa_max_seen": 0.0}

    @property
    def refresh_every(self) -> int:
        """Integration steps between refreshes (the :class:`~sbtm_flows.eta.EtaSchedule` capability)."""
        return self.every

    def __copy__(self) -> "TrackingEta":
        """A new, not yet refreshed TrackingEta with the same settings (what a run starts from)."""
        return TrackingEta(self.ratio, self.every, self.iters, self.first_iters, self.kappa_min, self.eta_min,
                           self.eta_max, self.seed, self.quantile)

    def rate(self) -> float:
        """The network's target relaxation rate ratio·max(κ_X, κ_min) (1/time)."""
        return self.ratio * max(self.kappa, self.kappa_min)

    def refresh(self, flow, y: Tensor, t: float) -> float:
        r"""Re-estimate λ_max(∇²_Θ L) and κ_X at the state y ``(len,)`` of ``flow`` (an
        :class:`~sbtm_flows.dynamics.SBTMFlow`) at time t and set η; returns it."""
        first = self.value is None
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(self.seed)
        iters = self.first_iters if first else self.iters
        lam, self.v_theta = hessian_max_eigenvalue(flow, y, iters, self.generator, self.v_theta, return_vector=True, t=t)
        x = flow.split(y)[0].detach()
        v0 = self.v_x if self.v_x is not None and self.v_x.shape == x.shape else None
        kappa, self.v_x = particle_curvature(flow.path, x, t, iters, self.generator, v0)
        self.lam = float(lam)
        self.kappa = float(torch.quantile(kappa.double(), self.quantile)) if kappa.numel() else 0.0
        eta = self.rate() / self.lam if self.lam > 0 else self.eta_max
        self.value = min(self.eta_max, max(self.eta_min, eta))
        r = self.record
        r["refreshes"] += 1
        r["eta_min_seen"], r["eta_max_seen"] = min(r["eta_min_seen"], self.value), max(r["eta_max_seen"], self.value)
        r["lam_max_seen"], r["kappa_max_seen"] = max(r["lam_max_seen"], self.lam), max(r["kappa_max_seen"], self.kappa)
        return self.value

    def state_dict(self) -> dict:
        """What a checkpoint needs to continue bitwise."""
        return {"value": self.value, "lam": self.lam, "kappa": self.kappa, "record": dict(self.record),
                "v_theta": None if self.v_theta is None else self.v_theta.cpu(),
                "v_x": None if self.v_x is None else self.v_x.cpu(), "generator": None if self.generator is None else self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Inverse of :meth:`state_dict`."""
        self.value, self.lam, self.kappa = state["value"], state["lam"], state["kappa"]
        self.record = dict(state["record"])
        self.v_theta, self.v_x = state["v_theta"], state["v_x"]
        if state["generator"] is not None:
            self.generator = torch.Generator().manual_seed(self.seed)
            self.generator.set_state(state["generator"])

    def summary(self) -> dict | None:
        """Range of η, largest λ_max and κ_X seen, number of refreshes."""
        return dict(self.record)

    def __repr__(self) -> str:
        return (f"TrackingEta(ratio={self.ratio}, every={self.every}, iters={self.iters}, kappa_min={self.kappa_min}, "
                f"eta_min={self.eta_min}, eta_max={self.eta_max}, seed={self.seed}, quantile={self.quantile})")
