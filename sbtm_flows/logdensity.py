r"""Log-density along the deterministic flow: importance weights, log Z, ESS and KL estimates.

With ``track_logdensity=True`` every particle carries ℓⁱ = log f_T(Xⁱ), the exact log
density of the law of the particles (the push-forward of the initial law f_0 by the learned
flow map, up to the ODE solver's error).  Because X ~ f_T, the ratio of the target to f_T
gives importance weights.

Conventions (used by every function here and by the diagnostics of a run):

* π̃(x) = exp(target.log_prob(x)) is the **unnormalised** target, Z = ∫π̃ its normaliser and
  π = π̃ / Z the normalised target (``target.log_Z`` is log Z when known);
* log wⁱ = log π̃(Xⁱ) − ℓⁱ are the log importance weights, so E_{f_T}[w] = Z.

Estimators (n particles, all in log space for stability):

* ``kl_plus_logz`` = mean(ℓ − log π̃(X)) = KL(f_T‖π) − log Z  (the negative ELBO; note the
  sign: with π̃ = Z·π it is KL *minus* log Z.  The name is kept for the diagnostics; it equals
  KL(f_T‖π) exactly when the target is normalised).  It is an upper bound on −log Z.
* ``log_z`` = log((1/n) Σ wⁱ) = logsumexp(log w) − log n, the importance-sampling estimate of
  log Z.  Unbiased for Z, biased low for log Z (Jensen), by ≈ Var(w)/(2nZ²) for large n.
  Always  −kl_plus_logz ≤ log_z  (Jensen on the same particles).
* ``ess`` = (Σw)² / (n Σw²) ∈ (0, 1], the effective sample size as a fraction of n.
* ``kl`` = kl_plus_logz + log Z when the target knows ``log_Z``.

:func:`importance` gives the self-normalised estimate E_π[g] ≈ Σ w̄ⁱ g(Xⁱ), w̄ = w / Σw,
with its ESS and a delta-method standard error.

Caveat — the training particles are not independent of the map.  s_Θ is trained on the very
particles whose density is tracked, and implicit score matching, mean(|s|² + 2∇·s), rewards a
too negative ∇·s at the training points; so ℓ drifts low there, the weights come out too large,
``log_z`` is biased high and ``kl_plus_logz`` low (the KL estimate can even go negative).

Held-out particles fix this: ``sample(..., holdout=m, track_logdensity=True)`` carries m extra
particles from the initial law in the ODE state, moved by the same velocity ∇log π_t − s_Θ with
their ℓ̃ tracked, but left out of the loss.  They are then an i.i.d. sample of the law f_T of
the learned flow map (given Θ(t), which never saw them), so the estimators above are the
honest ones.  With ``holdout > 0`` a run's ``log_z``, ``ess``, ``kl_plus_logz``, ``kl`` are
computed on them (``result.info["density_diagnostics"]`` says so), the training-particle
values are kept as ``log_z_train``, ``ess_train``, ``kl_plus_logz_train``, ``kl_train``, and
:func:`importance` weights the held-out particles by default.  The training run is not changed
by them (bitwise with fixed-step solvers; see :mod:`sbtm_flows.dynamics`).
Measured (``benchmarks/logdensity_hutchinson.py``, d = 10, n = 500, m = 2000, exact
divergence): training particles +0.79 in log Z and a negative "KL", held-out +0.02 (sd 0.03,
3 seeds); d = 5, n = 200 (tests/test_holdout.py, 10 seeds): training +0.31…+0.91, held-out
within ±0.07.
At d = 2, n = 1000 the training bias is small (+0.02), but even there a single over-fitted
training particle can dominate the weights (+0.8 at n = 200 for one seed in six).  Use
``holdout`` (a few hundred to a few thousand; the cost is one more network and ∇·s
evaluation on m points per RHS call) whenever the density numbers matter.

Hutchinson divergences (``divergence="hutchinson"``): the rate −Δlog π + ∇·s then uses one
set of probes per particle for the whole run (flow mode; redrawn every step in steps mode),
and an autograd Laplacian of log π uses the same probes as ∇·s
(:func:`~sbtm_flows.dynamics.particle_rates`).  Each particle's ℓ then carries a random error
whose variance grows with time and with ‖∇v‖_F, and log Z, an exponential average, is
biased by it (upwards, like the training-particle bias; held-out particles have it too, with
their own probes): see the benchmark table.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "DENSITY_DIAGNOSTICS",
    "PARTICLE_SETS",
    "ImportanceEstimate",
    "log_weights",
    "log_z_estimate",
    "effective_sample_size",
    "normalised_weights",
    "density_diagnostics",
    "importance",
    "initial_log_density",
    "target_log_prob",
]

#: Names :func:`density_diagnostics` adds to ``Result.diagnostics`` (``kl`` only when log Z is known).
DENSITY_DIAGNOSTICS = ("kl_plus_logz", "log_z", "ess", "kl")


def _check_vector(v: Tensor, name: str, n: int | None = None) -> Tensor:
    if not isinstance(v, Tensor) or v.ndim != 1 or (n is not None and v.shape[0] != n):
        shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
        raise ValueError(f"{name} must be a 1-D tensor of shape ({'n' if n is None else n},), got {shape}")
    if v.shape[0] < 1:
        raise ValueError(f"{name} is empty")
    return v


def log_weights(log_target: Tensor, log_density: Tensor) -> Tensor:
    """log wⁱ = log π̃(Xⁱ) − log f(Xⁱ), ``(n,), (n,) -> (n,)`` (float64)."""
    _check_vector(log_density, "log_density")
    _check_vector(log_target, "log_target", log_density.shape[0])
    return log_target.to(torch.float64) - log_density.to(torch.float64)


def log_z_estimate(log_w: Tensor) -> float:
    """log((1/n) Σ exp(log wⁱ)) by logsumexp, ``(n,) -> float``: the importance-sampling
    estimate of log Z (biased low by ≈ Var(w)/(2nZ²))."""
    _check_vector(log_w, "log_w")
    return float(torch.logsumexp(log_w.to(torch.float64), 0) - math.log(log_w.shape[0]))


def effective_sample_size(log_w: Tensor) -> float:
    """(Σw)² / (n Σw²) ∈ (0, 1], ``(n,) -> float``, computed from log weights."""
    _check_vector(log_w, "log_w")
    lw = log_w.to(torch.float64)
    return float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0) - math.log(lw.shape[0])))


def normalised_weights(log_w: Tensor) -> Tensor:
    """w̄ⁱ = wⁱ / Σw (softmax of the log weights), ``(n,) -> (n,)``."""
    _check_vector(log_w, "log_w")
    return torch.softmax(log_w.to(torch.float64), 0)


def density_diagnostics(log_target: Tensor, log_density: Tensor, log_Z: float | None = None, comm=None) -> dict[str, float]:
    """``kl_plus_logz``, ``log_z``, ``ess`` (and ``kl`` when ``log_Z`` is given) from
    log π̃(X) ``(n,)`` and the tracked log f(X) ``(n,)``; see the module docstring.

    With a :class:`~sbtm_flows.distributed.Comm` each rank passes its shard and all get the
    values over all N particles: with M = max log w over the ranks, S_k = Σ exp(k(log w − M)),
    log Z ≈ M + log S₁ − log N and ESS = S₁² / (N S₂) (one max and one sum all-reduce).

    Non-finite values of log π̃ − ℓ (a particle where π̃ = 0) propagate as NaN/inf into
    the numbers rather than being dropped silently."""
    lw = log_weights(log_target, log_density)
    if comm is None:
        out = {
            "kl_plus_logz": float(-lw.mean()),
            "log_z": log_z_estimate(lw),
            "ess": effective_sample_size(lw),
        }
    else:
        top = comm.max(lw.max().reshape(1))
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        e = torch.exp(lw - top)
        s0, s1, s2 = comm.sum(torch.stack([lw.sum(), e.sum(), (e * e).sum()])).tolist()
        n = comm.count(lw.shape[0])
        out = {"kl_plus_logz": -s0 / n, "log_z": float(top) + math.log(s1) - math.log(n), "ess": s1 * s1 / (n * s2)}
    if log_Z is not None:
        out["kl"] = out["kl_plus_logz"] + float(log_Z)
    return out


def _tensor_dtype(obj, default: torch.dtype) -> torch.dtype:
    """The dtype of a module's first floating buffer or parameter (``default`` if none)."""
    if isinstance(obj, torch.nn.Module):
        for t in (*obj.buffers(), *obj.parameters()):
            if t.is_floating_point():
                return t.dtype
    return default


def initial_log_density(init, x0: Tensor) -> Tensor:
    """ℓ₀ = log f_0(X₀) ``(n,)`` for ``track_logdensity``: ``init.log_prob(X₀) − init.log_Z``.

    ``init`` must be a law with an exact ``log_prob``; a known ``log_Z`` (the log normaliser of
    ``exp(log_prob)``) is subtracted, ``log_Z = None`` is taken to mean "already normalised".

    Raises:
        ValueError: ``init`` is ``None`` (particles were given as a tensor, whose density is
            unknown) or has no ``log_prob``.
    """
    if init is None:
        raise ValueError(
            "track_logdensity=True needs the exact initial density log f_0, but init was given as a tensor "
            "of particles; pass init as a law with log_prob and sample (e.g. sf.Gaussian(mean, cov)) and n"
        )
    if not getattr(init, "has_log_prob", callable(getattr(init, "log_prob", None))):
        raise ValueError(f"track_logdensity=True needs init.log_prob (the exact initial density); {type(init).__name__} has none")
    with torch.no_grad():
        lp = init.log_prob(x0)
    if not isinstance(lp, Tensor) or lp.shape != x0.shape[:1]:
        raise ValueError(f"init.log_prob must return shape ({x0.shape[0]},), got {getattr(lp, 'shape', type(lp))}")
    log_Z = getattr(init, "log_Z", None)
    return lp - float(log_Z) if log_Z is not None else lp


def target_log_prob(path) -> Callable[[Tensor], Tensor] | None:
    """x ↦ log π̃(x) ``(n, d) -> (n,)`` of the final target of a path (the target itself for
    a constant path), or ``None`` when that target has no ``log_prob``."""
    target = getattr(path, "target", path)
    if not getattr(target, "has_log_prob", callable(getattr(target, "log_prob", None))):
        return None

    def log_prob(x: Tensor) -> Tensor:
        with torch.no_grad():
            return target.log_prob(x)

    return log_prob


class ImportanceEstimate(NamedTuple):
    """Result of :func:`importance`.

    Attributes:
        value: self-normalised estimate of E_π[g], ``()`` or ``(k,)``.
        stderr: its delta-method standard error √(Σ w̄ⁱ² (g(Xⁱ) − value)²), same shape.
        ess: effective sample size fraction (Σw)² / (n Σw²).
        log_z: importance-sampling estimate of log Z.
        weights: normalised weights w̄ ``(n,)``.
    """

    value: Tensor
    stderr: Tensor
    ess: float
    log_z: float
    weights: Tensor


#: Which particles :func:`importance` weights.
PARTICLE_SETS = ("auto", "holdout", "train")


def importance(result, g: Callable[[Tensor], Tensor], target=None, particles: str = "auto") -> ImportanceEstimate:
    r"""Self-normalised importance-sampling estimate of E_π[g(X)] from a run's final particles.

    E_π[g] ≈ Σᵢ w̄ⁱ g(Xⁱ),  w̄ⁱ ∝ π̃(Xⁱ) / f_T(Xⁱ), with f_T the log-density tracked along the flow
    (``sample(..., track_logdensity=True)``).  Consistent as n → ∞ even when f_T ≠ π; the
    ``ess`` says how many of the n particles the estimate is effectively worth.

    Args:
        result: a :class:`~sbtm_flows.result.Result` with ``log_density`` ``(n,)``.
        g: ``(n, d) -> (n,)`` or ``(n, k)``, evaluated at the final particles.
        target: recompute log π̃ at the particles with this target's ``log_prob`` instead of
            using ``result.log_target`` (e.g. for results without it, or another π̃).
        particles: ``"holdout"`` (the run's held-out particles, ``sample(..., holdout=m)``,
            unbiased by the self-training of s_Θ), ``"train"`` (the n training particles) or
            ``"auto"`` (held-out when the result has their log-density, else training).

    Raises:
        ValueError: the result has no tracked log-density (for the chosen particles), no
            log π̃ is available (the target has no ``log_prob``), ``particles`` is not one of
            :data:`PARTICLE_SETS`, or ``g`` returns a wrong shape.
    """
    if particles not in PARTICLE_SETS:
        raise ValueError(f"unknown particles {particles!r}; valid: {', '.join(PARTICLE_SETS)}")
    if particles == "auto":
        particles = "holdout" if getattr(result, "holdout_log_density", None) is not None else "train"
    prefix = "holdout_" if particles == "holdout" else ""
    log_density = getattr(result, prefix + "log_density", None)
    if log_density is None:
        raise ValueError(
            f"importance(particles={particles!r}) needs the log-density of those particles: run "
            f"sample(..., track_logdensity=True{', holdout=m' if prefix else ''}) with an init law that has log_prob"
        )
    x = getattr(result, prefix + "particles")
    if target is not None:
        if not getattr(target, "has_log_prob", callable(getattr(target, "log_prob", None))):
            raise ValueError(f"target {type(target).__name__} has no log_prob: importance weights need log π̃")
        with torch.no_grad():
            log_target = target.log_prob(x.to(_tensor_dtype(target, x.dtype)))
    else:
        log_target = getattr(result, prefix + "log_target", None)
        if log_target is None:
            raise ValueError(
                "the run's target has no log_prob (or the result predates log_target), so there are no "
                "importance weights; pass target= with a log_prob"
            )
    lw = log_weights(log_target.detach().cpu().flatten(), log_density.detach().cpu().flatten())
    with torch.no_grad():
        values = g(x)
    if not isinstance(values, Tensor) or values.ndim not in (1, 2) or values.shape[0] != x.shape[0]:
        shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(f"g must return a tensor of shape ({x.shape[0]},) or ({x.shape[0]}, k), got {shape}")
    values = values.detach().cpu().to(torch.float64)
    # held-out particles frozen where their score stopped being finite, or escaped far outside
    # the training cloud (guards.holdout_outliers), are left out (weight 0)
    lost = getattr(result, "holdout_lost", None) if prefix else None
    keep = torch.ones_like(lw, dtype=torch.bool) if lost is None else ~lost.cpu()
    if prefix and result.log_density is not None:
        from .guards import holdout_outliers

        keep &= ~holdout_outliers(result.particles.cpu(), x.cpu(), result.log_density.cpu(), log_density.cpu())
    lw, values = lw[keep], values[keep]
    w = normalised_weights(lw)
    wv = w if values.ndim == 1 else w[:, None]
    value = (wv * values).sum(0)
    stderr = torch.sqrt((wv**2 * (values - value) ** 2).sum(0))
    weights = torch.zeros(keep.shape[0], dtype=w.dtype).masked_scatter(keep, w)
    return ImportanceEstimate(value, stderr, effective_sample_size(lw), log_z_estimate(lw), weights)
