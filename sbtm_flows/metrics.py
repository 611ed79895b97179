r"""Distances between particle clouds, law comparison with a noise floor, mode statistics.

Distances between samples x ``(n, d)`` and y ``(m, d)`` (all return a float):

* :func:`energy_distance` — the (squared) energy distance, V-statistic
  E(x, y) = 2·mean|xᵢ − yⱼ| − mean|xᵢ − xⱼ| − mean|yᵢ − yⱼ| (Székely & Rizzo), ≥ 0;
* :func:`sliced_wasserstein` — SW₂ by POT's ``ot.sliced_wasserstein_distance``;
* :func:`sinkhorn` — the debiased Sinkhorn divergence
  S_ε(x, y) = OT_ε(x, y) − ½OT_ε(x, x) − ½OT_ε(y, y) (squared-Euclidean cost) by POT's
  ``ot.bregman.empirical_sinkhorn_divergence`` in the log domain.

:func:`compare_laws` measures one of them between two runs (or a run and a law) at matching
times, next to its **noise floor**: the same distance between two independent samples of
the same sizes from the reference law when one is given (a target with ``sample``, or a
callable t ↦ law such as the exact f_t of paper §5.1), else between the two halves of a
random split of the pooled particles (the permutation null).  Finite-sample distances of
two samples of one law are not 0; a ratio distance/floor ≈ 1 means "indistinguishable".

Mode statistics for mixtures: :func:`mode_weights` (fraction of particles nearest to each
component mean), :func:`mode_tv` (total variation of that vector to the true weights) and
:func:`tv_distance`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

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

    ≥ 0, = 0 iff the empirical laws are equal; between two independent samples of one law its
    mean is ≈ E|X − X'|·(1/n + 1/m)/2 (the noise floor :func:`compare_laws` reports)."""
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


#: metric name -> function(x, y, generator) -> float.
METRICS: dict[str, Callable[..., float]] = {
    "energy": lambda x, y, gen, **kw: energy_distance(x, y),
    "sliced_w2": lambda x, y, gen, **kw: sliced_wasserstein(x, y, generator=gen, **kw),
    "sinkhorn": lambda x, y, gen, **kw: sinkhorn(x, y, **kw),
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
    """

    times: Tensor
    distance: Tensor
    floor: Tensor
    metric: str
    floor_kind: str

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
    **metric_kwargs,
) -> LawComparison:
    r"""Distance between the particle laws of ``a`` and ``b`` at matching times, with a noise floor.

    Args:
        a: a :class:`Result` (its trajectory is read) or particles ``(n, d)``.
        b: a :class:`Result`, particles ``(m, d)``, or a law: a target with ``sample(n, generator)``
            or a callable ``t -> law`` (e.g. ``lambda t: Gaussian(0, 1 - exp(-2(t + 0.1)))``);
            a law is sampled afresh at every time with as many points as ``a`` (and is the
            reference unless ``reference`` is given).
        metric: ``"energy"`` (default), ``"sliced_w2"`` or ``"sinkhorn"`` (:data:`METRICS`);
            ``metric_kwargs`` go to it (``n_projections``, ``reg``).
        times: times to compare at (default: the output times common to both results, or the
            times of ``a`` against a law).  Each must be an output time of the results (± tol).
        reference: the law both runs should follow (a target with ``sample`` or ``t -> law``);
            the floor is then the metric between two fresh reference samples of sizes (n, m).
            Without one, the floor is the metric between the two parts of random splits of the
            pooled particles into sizes (n, m) (the permutation null).
        floor_reps: number of floor draws averaged; seed: seeds all draws.

    Returns:
        a :class:`LawComparison` (``times``, ``distance``, ``floor``, ``ratio``).

    Raises:
        ValueError: an unknown metric, mismatched dimensions, or times not among the outputs.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    if not (isinstance(floor_reps, int) and floor_reps >= 1):
        raise ValueError(f"floor_reps must be a positive int, got {floor_reps!r}")
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
        y = _law_at(b, t).sample(x.shape[0], generator=gen).to(x) if b_is_law else _cloud(b, t, tol)
        check_particles(y, x.shape[1], "b's particles")
        dist.append(fn(x, y, gen, **metric_kwargs))
        reps = []
        for _ in range(floor_reps):
            if ref is not None:
                u, v = ref.sample(x.shape[0], generator=gen), ref.sample(y.shape[0], generator=gen)
            else:
                pooled = torch.cat([x, y.to(x)])
                perm = torch.randperm(pooled.shape[0], generator=gen)
                u, v = pooled[perm[: x.shape[0]]], pooled[perm[x.shape[0] :]]
            reps.append(fn(u, v, gen, **metric_kwargs))
        floor.append(sum(reps) / len(reps))
    return LawComparison(
        times=ts,
        distance=torch.tensor(dist, dtype=torch.float64),
        floor=torch.tensor(floor, dtype=torch.float64),
        metric=metric,
        floor_kind="reference" if reference is not None else "permutation",
    )


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
