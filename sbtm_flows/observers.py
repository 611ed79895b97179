r"""Diagnostics as observers of the run loop (:func:`sbtm_flows.loop.run`).

An observer is called at every output time t_k as ``observer(sampler, state, t, k)`` and
returns what to record (floats: diagnostics ``(T,)``; tensors: series ``(T, …)``); an optional
``finish(packed)`` adds the series derived from the whole record (``kl_decrease``).  The SBTM
observers read the sampler's :meth:`~sbtm_flows.sampling.SBTMSampler.view` of the state at t —
particles, Θ, the score function s_Θ(·, t), ℓ and the held-out block, with the held-out
velocity computed once per output time and shared.

* :class:`ScoreDiagnostics` — F^n, the score-matching loss, the dissipation and its learned
  version (:func:`~sbtm_flows.diagnostics.score_diagnostics`), then ``kl_decrease`` = ∫ dissipation dt;
* :class:`HeldOutStatus` — how many held-out particles were frozen (``holdout_lost``) or escaped
  far outside the training cloud (``holdout_escaped``, :func:`~sbtm_flows.guards.holdout_outliers`);
* :class:`DensityDiagnostics` — KL + log Z, log Z, ESS (and KL) from the tracked log-density, on
  the held-out particles when there are any (the training ones then as ``*_train``);
* :class:`EtaTrace` — the η in force (``eta``);
* :class:`NTKTrace` — Theorem 3.5's condition every ``every`` output times (``ntk_*``).
"""

from __future__ import annotations

from typing import Any, Callable

from .diagnostics import cumulative_trapezoid, score_diagnostics
from .logdensity import density_diagnostics

__all__ = ["ScoreDiagnostics", "HeldOutStatus", "DensityDiagnostics", "EtaTrace", "NTKTrace"]


class ScoreDiagnostics:
    """F^n, loss, dissipation and dissipation_learned at each output time; ``kl_decrease`` (and
    ``kl_decrease_learned``) = their cumulative trapezoid integrals over the output times."""

    def __call__(self, sampler: Any, state: Any, t: float, k: int) -> dict:
        v = sampler.view(state, t)
        x, probes = sampler.diagnostic_particles(v)  # (a fixed subset: the diagnostics are means)
        return score_diagnostics(sampler.path, v.score_fn, x, t, sampler.dyn.divergence, probes, sampler.cfg.chunk, sampler.comm)

    def finish(self, packed: dict) -> None:
        """Adds ``kl_decrease`` / ``kl_decrease_learned`` ``(T,)`` to ``packed["diagnostics"]``."""
        diags = packed["diagnostics"]
        for name in ("", "_learned"):
            if f"dissipation{name}" in diags:
                diags[f"kl_decrease{name}"] = cumulative_trapezoid(diags[f"dissipation{name}"], packed["times"])


class HeldOutStatus:
    """The numbers of held-out particles frozen because their position or rates stopped being
    finite (``holdout_lost``) and of the others that escaped far outside the training cloud
    (``holdout_escaped``); both are left out of the density diagnostics."""

    def __call__(self, sampler: Any, state: Any, t: float, k: int) -> dict:
        v = sampler.view(state, t)
        return {"holdout_lost": float(v.holdout_lost.sum()), "holdout_escaped": float(v.holdout_escaped.sum())}


class DensityDiagnostics:
    """Density diagnostics from the tracked ℓ = log f_t(X) and log π̃ (``log_target``), with the
    target's ``log_Z`` when known: on the held-out particles when there are any (lost and escaped
    ones left out; the values of the training particles then get a ``_train`` suffix), else on
    the training particles."""

    def __init__(self, log_target: Callable, log_Z: float | None = None):
        self.log_target, self.log_Z = log_target, log_Z

    def __call__(self, sampler: Any, state: Any, t: float, k: int) -> dict:
        v = sampler.view(state, t)
        dens = density_diagnostics(self.log_target(v.x), v.log_density, self.log_Z, sampler.comm)
        if v.holdout_x is None:
            return dens
        keep = ~(v.holdout_lost | v.holdout_escaped)
        out = {f"{name}_train": val for name, val in dens.items()}
        out.update(density_diagnostics(self.log_target(v.holdout_x[keep]), v.holdout_log_density[keep], self.log_Z))
        return out


class EtaTrace:
    """η(t) of the coupled flow (for η = "auto", the value the stiffness monitor last set)."""

    def __call__(self, sampler: Any, state: Any, t: float, k: int) -> dict:
        return {"eta": sampler.dyn.eta_at(t)}


class NTKTrace:
    """:func:`~sbtm_flows.ntk.eta_condition` every ``every`` output times (0 included) as the
    ``ntk_*`` diagnostics, NaN in between; ``reference``: g(x, t) ≈ ∇log f_t (default: the
    NTKEta's own ``reference_score``, else the implicit loss)."""

    def __init__(self, every: int, reference: Callable | None = None):
        self.every, self.reference = int(every), reference

    def __call__(self, sampler: Any, state: Any, t: float, k: int) -> dict:
        from .ntk import NTK_DIAGNOSTICS, eta_condition

        if k % self.every != 0:
            return dict.fromkeys(NTK_DIAGNOSTICS, float("nan"))
        v, dyn = sampler.view(state, t), sampler.dyn
        ref = self.reference if self.reference is not None else dyn.eta.reference_score
        return eta_condition(dyn, v.x, t, v.theta, reference_score=ref).as_diagnostics()
