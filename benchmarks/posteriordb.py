"""SBTM (training="steps") and ULA on posteriordb posteriors, against the reference draws.

Run:  OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/posteriordb.py [eight_schools arK]
Prints, per posterior and method, the max standardized mean error |mean − mean_ref|/sd_ref, the
max sd error |sd/sd_ref − 1|, the sliced-W2 (reference-sd units) with its noise floor (two
disjoint halves of the reference at the same size) and the wall time.  float64, init N(0, c²I) (c = 1, arK 0.1),
seed 0.  gp_pois_regr and diamonds are left out (slow / too stiff for plain ULA at this budget).
"""

from __future__ import annotations

import sys
import time

import torch

import sbtm_flows as sf

#: posterior -> {method: sample() keyword arguments}
RUNS = {
    "eight_schools": {
        "init_sd": 1.0,
        "ula": dict(n=2000, t_final=30.0, dt=0.03),
        "sbtm": dict(n=1000, t_final=30.0, dt=0.03, training="steps"),
    },
    "arK": {
        # posterior sds 0.01-0.09 in u: steps must stay below ~2·(smallest variance); from N(0, I)
        # the s tail (σ = eˢ) overshoots on the first steps, so start narrower
        "init_sd": 0.1,
        "ula": dict(n=2000, t_final=0.2, dt=2e-5),
        # SBTM needs the same 10,000 steps (each with inner Adam steps): not run here (too slow on 2 cores)
    },
}


def main(names: list[str]) -> None:
    torch.set_num_threads(1)
    for name in names:
        post = sf.posteriordb.load(name)
        runs = dict(RUNS[name])
        var = runs.pop("init_sd") ** 2
        init = sf.Gaussian(torch.zeros(post.dim, dtype=torch.float64), var * torch.eye(post.dim, dtype=torch.float64))
        for method, kw in runs.items():
            steps = int(round(kw["t_final"] / kw["dt"]))
            t0 = time.perf_counter()
            res = sf.sample(post, method=method, init=init, dtype=torch.float64, seed=0, save_every=steps, **kw)
            wall = time.perf_counter() - t0
            c = post.compare(res)
            worst = max(c["mean_error"], key=c["mean_error"].get)
            print(
                f"{post.name:40s} {method:5s} n={c['n']:5d} T={kw['t_final']:g} dt={kw['dt']:g}  "
                f"max mean err {c['max_mean_error']:.3f} ({worst})  max sd err {c['max_sd_error']:.3f}  "
                f"SW2 {c['distance']:.3f} (floor {c['floor']:.3f}, ratio {c['ratio']:.2f})  wall {wall:.1f} s",
                flush=True,
            )


if __name__ == "__main__":
    main(sys.argv[1:] or list(RUNS))
