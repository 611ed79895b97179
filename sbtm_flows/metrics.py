r"""Distances between particle clouds, law comparison with a noise floor, mode statistics.

Distances between samples x ``(n, d)`` and y ``(m, d)`` (all return a float):

* :func:`energy_distance` — the (squared) energy distance, V-statistic
  E(x, y) = 2·mean|xᵢ − yⱼ| − mean|xᵢ − xⱼ| − mean|yᵢ − yⱼ| (Székely & Rizzo), ≥ 0;
* :func:`sliced_wasserstein` — SW₂ by POT's ``ot.sliced_wasserstein_distance``;
* :func:`sinkhorn` — the debiased Sinkhorn divergence
  S_ε(x, y) = OT_ε(x, y) − ½OT_ε(x, x) − ½OT_ε(y, y) (squared-Euclidean cost) by POT's
  ``ot.bregman.empirical_sinkhorn_divergence`` in the log domain;
* :func:`wasserstein2` — exact W₂ between the empirical laws (POT ``ot.emd2``, ≤ 5,000 points);
* :func:`mmd2` — unbiased MMD² with an RBF kernel at the median-heuristic bandwidth.

:func:`noise_floor` gives any of them (mean, sd) between two independent samples of a reference
law.  Per-coordinate moments: :func:`moment_errors` (reference-sd units).  Weighted samplers:
:func:`importance_metrics` (log Z, ΔlogZ, ESS).  :func:`wasserstein2` imports POT when called.

:func:`compare_laws` measures one of them between two runs (or a run and a law) at matching
times, next to its **noise floor**: the same distance between two independent samples of
the same sizes from the reference law when one is given (a target with ``sample``, or a
callable t ↦ law such as the exact f_t of paper §5.1), else between the two halves of a
random split of the pooled particles (the permutation null).  Finite-sample distances of
two samples of one law are not 0; a ratio distance/floor ≈ 1 means "indistinguishable".

Mode statistics for mixtures: :func:`mode_weights` (fraction of particles nearest to each
component mean), :func:`mode_tv` (total variation of that vector to the true weights),
:func:`tv_distance`; :func:`assign_modes` / :func:`component_weights` (by the exact component
posterior when the mixture has ``responsibilities``), :func:`mode_entropy` and
:func:`entropic_mode_coverage` (EMC = H(p̂)/log K).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from .logdensity import effective_sample_size, log_z_estimate
from .result import Result
from .targets import check_particles

__all__ = [
    "energy_distance",
    "sliced_wasserstein",
    "sinkhorn",
    "METRICS",
    "LawComparison",
    "compare_laws",
    "mode_weights",
    "mode_tv",
    "tv_distance",
    "wasserstein2",
    "W2_MAX_POINTS",
    "median_bandwidth",
    "mmd2",
    "noise_floor",
    "assign_modes",
    "component_weights",
    "mode_entropy",
    "entropic_mode_coverage",
    "MomentErrors",
    "moment_errors",
    "importance_metrics",
]


def _pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor) or x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"x and y must be tensors (n, d) and (m, d) with the same d, got {getattr(x, 'shape', type(x))} and "
            f"{getattr(y, 'shape', type(y))}"
        )
    if x.shape[0] < 1 or y.shape[0] < 1:
        raise ValueError("x and y need at least one particle each")
    return x.detach().to(torch.float64).cpu(), y.detach().to(torch.float64).cpu()


def _mean_pairwise(x: Tensor, y: Tensor, chunk: int = 2048) -> Tensor:
    """mean_{i,j} |xᵢ − yⱼ| over all pairs, in row chunks (memory O(chunk·m))."""
    total = x.new_zeros(())
    for i in range(0, x.shape[0], chunk):
        total = total + torch.cdist(x[i : i + chunk], y).sum()
    return total / (x.shape[0] * y.shape[0])


def energy_distance(x: Tensor, y: Tensor) -> float:
    r"""Squared energy distance (V-statistic) 2·mean|x − y| − mean|x − x'| − mean|y − y'|
    between samples ``x (n, d)`` and ``y (m, d)``.

    ≥ 0, = 0 iff the empirical laws are equal.  Between two independent samples of one law its
    mean is exactly E|X − X'|·(1/n + 1/m) (the diagonal zeros of the within-sample means take
    E|X − X'|/n and E|X − X'|/m off the two subtracted terms): the noise floor that
    :func:`compare_laws` and :func:`noise_floor` measure."""
    x, y = _pair(x, y)
    return float(2 * _mean_pairwise(x, y) - _mean_pairwise(x, x) - _mean_pairwise(y, y))


def _seed_from(generator: torch.Generator | None) -> int | None:
    if generator is None:
        return None
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


def sliced_wasserstein(x: Tensor, y: Tensor, n_projections: int = 200, generator: torch.Generator | None = None) -> float:
    r"""Sliced 2-Wasserstein distance SW₂(x, y) = (E_θ W₂²(θᵀx, θᵀy))^{1/2} over ``n_projections``
    uniform directions θ on the sphere (POT ``ot.sliced_wasserstein_distance``; the
    directions are seeded from ``generator``).  ``x (n, d)``, ``y (m, d)``."""
    if not (isinstance(n_projections, int) and n_projections > 0):
        raise ValueError(f"n_projections must be a positive int, got {n_projections!r}")
    x, y = _pair(x, y)
    seed = _seed_from(generator)
    import ot  # POT takes seconds to import: loaded when first used

    return float(ot.sliced_wasserstein_distance(x.numpy(), y.numpy(), n_projections=n_projections, p=2, seed=seed))


def sinkhorn(x: Tensor, y: Tensor, reg: float = 0.5, method: str = "sinkhorn", max_iter: int = 2000, tol: float = 1e-6) -> float:
    r"""Debiased Sinkhorn divergence S_ε(x, y) = OT_ε(x, y) − ½OT_ε(x, x) − ½OT_ε(y, y) with
    squared-Euclidean cost and ε = ``reg`` (POT ``ot.bregman.empirical_sinkhorn_divergence``;
    ``method="sinkhorn_log"`` for small ε).  Approximates W₂² as ε → 0.  ``x (n, d)``,
    ``y (m, d)``.  Cost O(n·m) per iteration: the slowest metric here (seconds at n = m = 2000)."""
    if not (isinstance(reg, (int, float)) and reg > 0):
        raise ValueError(f"reg must be a positive number, got {reg!r}")
    x, y = _pair(x, y)
    import ot

    val = ot.bregman.empirical_sinkhorn_divergence(
        x.numpy(), y.numpy(), float(reg), method=method, numIterMax=int(max_iter), stopThr=float(tol), warn=False
    )
    return float(val)


def _sq_dists(x: Tensor, y: Tensor, budget: int = 2**22) -> Tensor:
    """Exact squared distances |xᵢ − yⱼ|² ``(n, m)`` (differences, not the |x|² − 2x·y + |y|²
    expansion, so identical points give exactly 0), in row chunks of ≤ ``budget`` elements."""
    chunk = max(1, budget // (y.shape[0] * y.shape[1]))
    rows = [((x[i : i + chunk, None, :] - y[None]) ** 2).sum(-1) for i in range(0, x.shape[0], chunk)]
    return torch.cat(rows)


#: Largest sample size :func:`wasserstein2` accepts (exact OT is O(n³); 5,000 points take ~1 min).
W2_MAX_POINTS = 5000


def wasserstein2(x: Tensor, y: Tensor, max_points: int = W2_MAX_POINTS) -> float:
    r"""Exact 2-Wasserstein distance between the empirical laws of ``x (n, d)`` and ``y (m, d)``
    (uniform weights): W₂ = (min_P Σᵢⱼ Pᵢⱼ|xᵢ − yⱼ|²)^{1/2} over couplings P of (1/n, 1/m), by
    POT's network simplex ``ot.emd2``.

    Raises:
        ValueError: more than ``max_points`` points in x or y (the solver's time and the n×m cost
            matrix grow too fast): subsample, or use :func:`sinkhorn` / :func:`sliced_wasserstein`.
        RuntimeError: the network simplex did not converge (POT's message is included).
    """
    x, y = _pair(x, y)
    if max(x.shape[0], y.shape[0]) > max_points:
        raise ValueError(
            f"wasserstein2 takes at most {max_points} points per sample (got {x.shape[0]} and {y.shape[0]}): "
            "subsample both clouds, or use sinkhorn() / sliced_wasserstein() for larger ones"
        )
    import ot

    a = torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=torch.float64).numpy()
    b = torch.full((y.shape[0],), 1.0 / y.shape[0], dtype=torch.float64).numpy()
    cost, log = ot.emd2(a, b, _sq_dists(x, y).numpy(), numItermax=100_000_000, log=True)
    if log.get("result_code", 1) != 1:
        raise RuntimeError(f"ot.emd2 did not solve the transport problem: {log.get('warning')}")
    return float(max(float(cost), 0.0)) ** 0.5


def median_bandwidth(x: Tensor, y: Tensor, max_points: int = 1000) -> float:
    r"""The median heuristic h = median{|zᵢ − zⱼ| : i < j} over the pooled sample z = (x, y), using at
    most ``max_points`` evenly spaced points of each (deterministic).  ``x (n, d)``, ``y (m, d)``."""
    x, y = _pair(x, y)

    def thin(v: Tensor) -> Tensor:
        if v.shape[0] <= max_points:
            return v
        return v[torch.linspace(0, v.shape[0] - 1, max_points).round().long()]

    z = torch.cat([thin(x), thin(y)])
    i, j = torch.triu_indices(z.shape[0], z.shape[0], offset=1)
    h = float(torch.median(_sq_dists(z, z)[i, j]).sqrt())
    if not h > 0:
        raise ValueError("the median pairwise distance is 0 (more than half the pooled points coincide); pass bandwidth=")
    return h


def _kernel_sum(x: Tensor, y: Tensor, h: float, chunk: int = 1024) -> Tensor:
    """Σᵢⱼ exp(−|xᵢ − yⱼ|²/(2h²)) over all pairs, in row chunks."""
    total = x.new_zeros(())
    for i in range(0, x.shape[0], chunk):
        total = total + torch.exp(-_sq_dists(x[i : i + chunk], y) / (2 * h * h)).sum()
    return total


def mmd2(x: Tensor, y: Tensor, bandwidth: float | None = None) -> float:
    r"""Unbiased estimate of the squared maximum mean discrepancy with the RBF kernel
    k(a, b) = exp(−|a − b|²/(2h²)), h = ``bandwidth`` or the median heuristic
    (:func:`median_bandwidth` of the pooled sample):

    MMD²_u = Σ_{i≠j} k(xᵢ, xⱼ)/(n(n−1)) + Σ_{i≠j} k(yᵢ, yⱼ)/(m(m−1)) − 2Σᵢⱼ k(xᵢ, yⱼ)/(nm).

    ``x (n, d)``, ``y (m, d)``, n, m ≥ 2.  Unbiased, so it is negative about half the time when
    the laws are equal: its noise floor has mean 0 and sd ≈ √2·‖k‖/n; judge a value against the
    floor's spread (:func:`noise_floor`), not a ratio.
    """
    x, y = _pair(x, y)
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"mmd2 needs at least 2 points per sample, got {n} and {m}")
    h = median_bandwidth(x, y) if bandwidth is None else float(bandwidth)
    if not h > 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth!r}")
    kxx = (_kernel_sum(x, x, h) - n) / (n * (n - 1))  # the diagonal k(xᵢ, xᵢ) = 1 left out
    kyy = (_kernel_sum(y, y, h) - m) / (m * (m - 1))
    return float(kxx + kyy - 2 * _kernel_sum(x, y, h) / (n * m))


#: metric name -> function(x, y, generator) -> float.
METRICS: dict[str, Callable[..., float]] = {
    "energy": lambda x, y, gen, **kw: energy_distance(x, y),
    "sliced_w2": lambda x, y, gen, **kw: sliced_wasserstein(x, y, generator=gen, **kw),
    "sinkhorn": lambda x, y, gen, **kw: sinkhorn(x, y, **kw),
    "w2": lambda x, y, gen, **kw: wasserstein2(x, y, **kw),
    "mmd": lambda x, y, gen, **kw: mmd2(x, y, **kw),
}


@dataclass
class LawComparison:
    """Distances between two particle laws at matching times, with the noise floor.

    Attributes:
        times: ``(T,)`` the compared times.
        distance: ``(T,)`` the metric between the two clouds.
        floor: ``(T,)`` the same metric between two independent samples of the same sizes
            (mean over ``floor_reps`` draws).
        metric: the metric's name.
        floor_kind: ``"reference"`` (drawn from a reference law) or ``"permutation"`` (split
            of the pooled particles).
        distance_sd: ``(T,)`` standard error of ``distance`` over the draws of a law ``b``
            (sd/√draws; 0 when ``b`` is particles).
        floor_sd: ``(T,)`` standard error of ``floor`` (sd/√floor_reps).
    """

    times: Tensor
    distance: Tensor
    floor: Tensor
    metric: str
    floor_kind: str
    distance_sd: Tensor | None = None
    floor_sd: Tensor | None = None

    @property
    def ratio(self) -> Tensor:
        """distance / floor, ``(T,)``; ≲ 1–2 means the laws are indistinguishable at this n."""
        return self.distance / self.floor

    def at(self, t: float) -> tuple[float, float]:
        """``(distance, floor)`` at the compared time nearest to t."""
        k = int(torch.argmin((self.times - t).abs()))
        return float(self.distance[k]), float(self.floor[k])


_SEED_OFFSET = 0x51A7E


def _is_law(obj) -> bool:
    return callable(getattr(obj, "sample", None)) or (callable(obj) and not isinstance(obj, (Tensor, Result)))


def _law_at(law, t: float):
    if callable(getattr(law, "sample", None)):
        return law
    got = law(t)
    if not callable(getattr(got, "sample", None)):
        raise ValueError(f"a reference callable must return a law with sample(n, generator) at t={t}, got {type(got).__name__}")
    return got


def _cloud(obj, t: float | None, tol: float) -> Tensor:
    if isinstance(obj, Tensor):
        return obj if obj.ndim == 2 else obj[-1]
    k = int(torch.argmin((obj.times - t).abs()))
    if abs(float(obj.times[k]) - t) > tol:
        raise ValueError(f"the {obj.method!r} result has no output time within {tol:g} of t={t:g}; pass times= or save_every=")
    return obj.trajectory[k]


def _times_of(a, b, times, tol: float) -> Tensor:
    if times is not None:
        return torch.as_tensor(times, dtype=torch.float64).flatten()
    if isinstance(a, Result) and isinstance(b, Result):
        common = [float(t) for t in a.times if (b.times - t).abs().min() <= tol]
        if not common:
            raise ValueError("the two results share no output time; pass times=")
        return torch.tensor(common, dtype=torch.float64)
    if isinstance(a, Result):
        return a.times.to(torch.float64)
    return torch.tensor([float("nan")], dtype=torch.float64)


def compare_laws(
    a: Result | Tensor,
    b,
    metric: str = "energy",
    times=None,
    reference=None,
    floor_reps: int = 10,
    seed: int | None = 0,
    tol: float = 1e-6,
    draws: int = 10,
    **metric_kwargs,
) -> LawComparison:
    r"""Distance between the particle laws of ``a`` and ``b`` at matching times, with a noise floor.

    Args:
        a: a :class:`Result` (its trajectory is read) or particles ``(n, d)``.
        b: a :class:`Result`, particles ``(m, d)``, or a law: a target with ``sample(n, generator)``
            or a callable ``t -> law`` (e.g. ``lambda t: Gaussian(0, 1 - exp(-2(t + 0.1)))``);
            a law is sampled afresh ``draws`` times at every time with as many points as ``a``
            and the distances averaged (one draw's distance swings by tens of percent), and is
            the reference unless ``reference`` is given.
        metric: ``"energy"`` (default), ``"sliced_w2"`` or ``"sinkhorn"`` (:data:`METRICS`);
            ``metric_kwargs`` go to it (``n_projections``, ``reg``).
        times: times to compare at (default: the output times common to both results, or the
            times of ``a`` against a law).  Each must be an output time of the results (± tol).
        reference: the law both runs should follow (a target with ``sample`` or ``t -> law``);
            the floor is then the metric between two fresh reference samples of sizes (n, m).
            Without one, the floor is the metric between the two parts of random splits of the
            pooled particles into sizes (n, m) (the permutation null).
        floor_reps: number of floor draws averaged; draws: number of draws of a law ``b``
            averaged; seed: seeds all draws.

    Returns:
        a :class:`LawComparison` (``times``, ``distance``, ``floor``, ``ratio``, and the
        standard errors ``distance_sd``, ``floor_sd``).

    Raises:
        ValueError: an unknown metric, mismatched dimensions, or times not among the outputs.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    for name, v in (("floor_reps", floor_reps), ("draws", draws)):
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not isinstance(a, (Result, Tensor)):
        raise ValueError(f"a must be a Result or a tensor of particles (n, d), got {type(a).__name__}")
    b_is_law = not isinstance(b, (Result, Tensor)) and _is_law(b)
    if not (b_is_law or isinstance(b, (Result, Tensor))):
        raise ValueError(f"b must be a Result, a tensor (m, d) or a law with sample(), got {type(b).__name__}")
    if reference is None and b_is_law:
        reference = b
    if reference is not None and not _is_law(reference):
        raise ValueError(f"reference must be a target with sample() or a callable t -> law, got {type(reference).__name__}")
    fn = METRICS[metric]
    gen = torch.Generator()
    # offset, so that seed=0 here does not replay the draws of a run with seed=0
    gen.manual_seed(_SEED_OFFSET + (0 if seed is None else int(seed)))
    ts = _times_of(a, None if b_is_law else b, times, tol)

    dist, floor = [], []
    for t in ts.tolist():
        x = _cloud(a, t, tol)
        ref = _law_at(reference, t) if reference is not None else None
        ys = [_law_at(b, t).sample(x.shape[0], generator=gen).to(x) for _ in range(draws)] if b_is_law else [_cloud(b, t, tol)]
        check_particles(ys[0], x.shape[1], "b's particles")
        dist.append([fn(x, y, gen, **metric_kwargs) for y in ys])
        reps = []
        for _ in range(floor_reps):
            if ref is not None:
                u, v = ref.sample(x.shape[0], generator=gen), ref.sample(ys[0].shape[0], generator=gen)
            else:
                pooled = torch.cat([x, ys[0].to(x)])
                perm = torch.randperm(pooled.shape[0], generator=gen)
                u, v = pooled[perm[: x.shape[0]]], pooled[perm[x.shape[0] :]]
            reps.append(fn(u, v, gen, **metric_kwargs))
        floor.append(reps)
    d_mean, d_se = _mean_and_se(dist)
    f_mean, f_se = _mean_and_se(floor)
    return LawComparison(times=ts, distance=d_mean, floor=f_mean, metric=metric,
                         floor_kind="reference" if reference is not None else "permutation", distance_sd=d_se, floor_sd=f_se)


def _mean_and_se(rows: list[list[float]]) -> tuple[Tensor, Tensor]:
    """Per-row mean and standard error (sd/√k; 0 for a single value), each ``(T,)``."""
    v = torch.tensor(rows, dtype=torch.float64)
    se = v.std(1) / math.sqrt(v.shape[1]) if v.shape[1] > 1 else torch.zeros(v.shape[0], dtype=torch.float64)
    return v.mean(1), se


# ----------------------------------------------------------------------------------------
# Mode statistics
# ----------------------------------------------------------------------------------------
def mode_weights(x: Tensor, means: Tensor) -> Tensor:
    """Fraction of the particles ``x (n, d)`` nearest (Euclidean) to each of the ``means (k, d)``,
    ``(k,)`` float64 summing to 1."""
    means = torch.as_tensor(means)
    if means.ndim != 2:
        raise ValueError(f"means must have shape (k, d), got {tuple(means.shape)}")
    x, means = _pair(x, means)
    idx = torch.cdist(x, means).argmin(1)
    return torch.bincount(idx, minlength=means.shape[0]).to(torch.float64) / x.shape[0]


def tv_distance(p: Tensor, q: Tensor) -> float:
    """Total variation ½Σ|pₖ − qₖ| between two probability vectors ``(k,)``."""
    p = torch.as_tensor(p, dtype=torch.float64).flatten()
    q = torch.as_tensor(q, dtype=torch.float64).flatten()
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same length, got {p.numel()} and {q.numel()}")
    return float(0.5 * (p - q).abs().sum())


def mode_tv(x: Tensor, mixture) -> float:
    """TV between :func:`mode_weights` of ``x (n, d)`` for the mixture's means and its true
    weights: ½Σₖ|#{i: xᵢ nearest mₖ}/n − wₖ|.  ``mixture`` has ``means (k, d)``, ``weights (k,)``."""
    if not (hasattr(mixture, "means") and hasattr(mixture, "weights")):
        raise ValueError(f"mixture must have means (k, d) and weights (k,), got {type(mixture).__name__}")
    return tv_distance(mode_weights(x, mixture.means), mixture.weights)


def assign_modes(x: Tensor, mixture) -> Tensor:
    """The component each particle belongs to, ``(n, d) -> (n,)`` long: argmaxₖ of the mixture's
    ``responsibilities(x)`` (the exact component posterior) when it has them, else the nearest
    of its ``means (k, d)``."""
    if callable(getattr(mixture, "responsibilities", None)):
        check_particles(x, mixture.means.shape[1])
        with torch.no_grad():
            return mixture.responsibilities(x.to(mixture.means)).argmax(1).cpu()
    if not hasattr(mixture, "means"):
        raise ValueError(f"mixture must have responsibilities(x) or means (k, d), got {type(mixture).__name__}")
    x, means = _pair(x, torch.as_tensor(mixture.means))
    return torch.cdist(x, means).argmin(1)


def component_weights(x: Tensor, mixture) -> Tensor:
    """Fraction of the particles ``x (n, d)`` that :func:`assign_modes` puts in each component,
    ``(k,)`` float64 summing to 1."""
    k = mixture.means.shape[0]
    return torch.bincount(assign_modes(x, mixture), minlength=k).to(torch.float64) / x.shape[0]


def mode_entropy(p: Tensor) -> float:
    r"""Normalised entropy of a probability vector ``(k,)``, k ≥ 2: −Σₖ pₖ log pₖ / log k (0 log 0 = 0).

    1 for uniform weights, 0 when all mass is on one mode."""
    p = torch.as_tensor(p, dtype=torch.float64).flatten()
    if p.numel() < 2 or (p < 0).any() or abs(float(p.sum()) - 1) > 1e-6:
        raise ValueError(f"p must be a probability vector (≥ 0, summing to 1) with at least 2 entries, got {p.tolist()}")
    p = p / p.sum()
    h = -(p * torch.log(p.clamp_min(1e-300))).sum()
    return float(h / math.log(p.numel()))


def entropic_mode_coverage(x: Tensor, mixture) -> float:
    r"""EMC = H(p̂)/log K with p̂ the :func:`component_weights` of ``x (n, d)`` in the K components
    of an equal-weight ``mixture``: 1 when every mode holds the same share, 0 when one mode holds
    all particles (Blessing et al.'s entropic mode coverage)."""
    return mode_entropy(component_weights(x, mixture))


class MomentErrors(NamedTuple):
    """Per-coordinate moment errors in units of the reference sd (see :func:`moment_errors`).

    Attributes:
        mean: ``(d,)`` |mean(x) − μ|/σ.
        sd: ``(d,)`` |sd(x)/σ − 1|.
        max_mean, max_sd: their largest entries.
    """

    mean: Tensor
    sd: Tensor
    max_mean: float
    max_sd: float


def moment_errors(x: Tensor, reference) -> MomentErrors:
    r"""Errors of the per-coordinate mean and sd of ``x (n, d)`` in reference-sd units:
    |x̄ₖ − μₖ|/σₖ and |sₖ/σₖ − 1|.

    ``reference`` is a sample ``(m, d)`` (μ, σ its mean and sd) or a pair ``(mean (d,), sd (d,))``.
    For independent draws the mean error is ≈ |N(0, 1/n + 1/m)|; for heavy-tailed laws (the
    Student-t mixture, the funnel's xᵢ) the sd is unstable and its error not meaningful.
    """
    if isinstance(reference, Tensor):
        r, _ = _pair(reference, x)
        mu, sig = r.mean(0), r.std(0)
    else:
        mu, sig = (torch.as_tensor(v, dtype=torch.float64).flatten() for v in reference)
    x = check_particles(x, mu.shape[0]).detach().cpu().to(torch.float64)
    if x.shape[0] < 2 or not bool((sig > 0).all()):
        raise ValueError("moment_errors needs n >= 2 particles and a reference sd > 0 in every coordinate")
    me = (x.mean(0) - mu).abs() / sig
    se = (x.std(0) / sig - 1).abs()
    return MomentErrors(me, se, float(me.max()), float(se.max()))


def importance_metrics(log_w: Tensor, log_Z: float | None = None) -> dict[str, float]:
    r"""Metrics of a weighted sampler from its log importance weights ``(n,)``, log wⁱ = log π̃(Xⁱ) − log q(Xⁱ):
    ``log_z`` (log mean w, :func:`~sbtm_flows.logdensity.log_z_estimate`), ``ess`` ((Σw)²/(nΣw²)) and,
    when the true ``log_Z`` is known, ``delta_log_z`` = log_z − log Z (biased low by ≈ Var(w)/(2nZ²))."""
    out = {"log_z": log_z_estimate(log_w), "ess": effective_sample_size(log_w)}
    if log_Z is not None:
        out["delta_log_z"] = out["log_z"] - float(log_Z)
    return out


def noise_floor(metric: str, reference, n: int, m: int | None = None, reps: int = 5, seed: int = 0, **metric_kwargs) -> tuple[float, float]:
    """Mean and sd over ``reps`` draws of a metric of :data:`METRICS` between two independent samples
    of sizes ``n`` and ``m`` (default n) from ``reference`` (a law with ``sample(n, generator)``):
    the value a perfect sampler would get.  Every draw comes from ``seed``."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    if not callable(getattr(reference, "sample", None)):
        raise ValueError(f"reference must have sample(n, generator), got {type(reference).__name__}")
    if not (isinstance(reps, int) and reps >= 2):
        raise ValueError(f"reps must be an int >= 2 (the sd needs two draws), got {reps!r}")
    gen = torch.Generator().manual_seed(_SEED_OFFSET + int(seed))
    vals = torch.tensor([
        METRICS[metric](reference.sample(n, generator=gen), reference.sample(m or n, generator=gen), gen, **metric_kwargs)
        for _ in range(reps)
    ], dtype=torch.float64)
    return float(vals.mean()), float(vals.std())
