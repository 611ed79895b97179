"""Cost of the benchmark targets and metrics, and the metrics' noise floors at n = m = 2000.

Run:  python benchmarks/target_costs.py [--n 2000] [--reps 3] [--out benchmarks/results/target_costs.md]

For every target of ``BENCHMARK_TARGETS`` (float32, CPU, one thread): median time of ``score``
and ``log_prob`` on n points (5 repeats).  For every target with an exact sampler: each metric
between two independent exact samples of n points (the noise floor a perfect sampler would
score), as mean ± sd over ``reps`` draws, with the median time of one evaluation.
Sinkhorn uses the relative ε = 0.05 × mean cost (``relative=True``): the absolute default
ε = 0.5 needs thousands of iterations on GMM40 and the funnel.
"""

from __future__ import annotations

import argparse
import statistics
import time
import timeit

import torch

from sbtm_flows import metrics as M
from sbtm_flows.targets import BENCHMARK_TARGETS


def timed(fn, reps: int = 5) -> float:
    """Median wall time of ``fn()`` over ``reps`` calls, seconds."""
    return statistics.median(timeit.repeat(fn, number=1, repeat=reps))


def floors(tgt, n: int, reps: int) -> list[str]:
    """Table cells 'mean ± sd (time)' of each metric between two exact samples of ``tgt``."""
    cells = []
    for metric, kw in (("w2", {}), ("sinkhorn", {"reg": 0.05, "relative": True}), ("mmd", {}), ("energy", {})):
        t0 = time.perf_counter()
        mean, sd = M.noise_floor(metric, tgt, n, reps=reps, seed=0, **kw)
        cells.append(f"{mean:.4g} ± {sd:.2g} ({(time.perf_counter() - t0) / reps:.1f} s)")
    return cells


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/target_costs.md")
    a = ap.parse_args()
    torch.set_num_threads(1)
    lines = [f"# Benchmark targets: cost at n = {a.n} (float32, 1 thread) and metric noise floors (two exact samples of n, {a.reps} draws)", "",
             "| target | d | score ms | log_prob ms | W2 floor | Sinkhorn (ε = 0.05·mean C) floor | MMD² floor | energy floor |",
             "|---|---|---|---|---|---|---|---|"]
    for name, make in BENCHMARK_TARGETS.items():
        tgt = make()
        x = torch.randn(a.n, tgt.dim, generator=torch.Generator().manual_seed(0))
        ts, tl = timed(lambda: tgt.score(x)), timed(lambda: tgt.log_prob(x))
        cells = floors(tgt, a.n, a.reps) if tgt.has_sample else ["(no exact sampler)"] * 4
        lines.append(f"| {name} | {tgt.dim} | {1e3 * ts:.2f} | {1e3 * tl:.2f} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    lines.append("")
    lines.append("Floor cells: mean ± sd over draws (seconds per draw: two exact samples and one metric evaluation).")
    with open(a.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
