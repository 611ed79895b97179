"""§5.1 (`sbtm-flows run gaussian-1d` defaults): the coupled flow (training="flow", its default
solver "rkc") against the paper's discrete training (training="steps", heun2), side by side.

Run:  OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/flow_vs_steps_51.py [repeats] [seeds...]
Prints, per seed and training, the SBTM wall time (median over ``repeats`` interleaved runs), NFE,
max over output times t ∈ [0.05, 1] of |F^n(t)/F(t) − 1| (F the exact relative Fisher
information of f_t = N(0, 1 − e^{−2(t+0.1)}) against π = N(0, 1)) and the variance error at
t = 2; then the flow/steps wall-time ratio.  The SBTM call is the one the experiment makes.
"""

from __future__ import annotations

import math
import statistics
import sys

import torch

import sbtm_flows as sf
from sbtm_flows.experiments import experiment_config


def run(training: str, seed: int) -> dict:
    """One §5.1 SBTM run with the experiment's defaults and ``training``; its numbers."""
    cfg = experiment_config("gaussian-1d", seed=seed)
    init = sf.Gaussian(torch.zeros(1), (1 - math.exp(-0.2)) * torch.eye(1))
    solver = cfg["solver"] if training == "flow" else None
    res = sf.sample(sf.Gaussian(torch.zeros(1), torch.eye(1)), method="sbtm", init=init, n=cfg["n"], t_final=cfg["t_final"],
                    dt=cfg["dt"], seed=seed, save_every=cfg["save_every"], solver=solver, training=training,
                    track_logdensity=True, holdout=cfg["holdout"], **({"eta": cfg["eta"]} if training == "flow" else {}))
    v = 1 - torch.exp(-2 * (res.times.double() + 0.1))
    rel = res.diagnostics["fisher"] / ((1 - v) ** 2 / v) - 1
    window = (res.times >= 0.05 - 1e-9) & (res.times <= 1.0 + 1e-9)
    return {"wall": res.wall_time, "nfe": res.nfe, "max_fisher_rel_err": float(rel[window].abs().max()),
            "var_err_t2": float(res.at(2.0).double().var() / v[-1] - 1), "training": res.info["training"],
            "rejected": (res.info.get("rkc") or {}).get("rejected_steps")}


def main(repeats: int, seeds: list[int]) -> None:
    torch.set_num_threads(1)
    walls: dict[str, list[float]] = {"flow": [], "steps": []}
    for seed in seeds:
        for _ in range(repeats):
            for training in ("flow", "steps"):  # interleaved: both see the same machine load
                r = run(training, seed)
                walls[training].append(r["wall"])
                print(f"seed {seed} {training:5s} wall {r['wall']:6.2f} s  nfe {r['nfe']:5d}  max|F^n/F-1| on [0.05,1] "
                      f"{r['max_fisher_rel_err']:.3f}  var err t=2 {r['var_err_t2']:+.4f}  rkc retries {r['rejected']}", flush=True)
    med = {k: statistics.median(v) for k, v in walls.items()}
    print(f"median wall: flow {med['flow']:.2f} s, steps {med['steps']:.2f} s, ratio flow/steps {med['flow'] / med['steps']:.2f}")


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    main(args[0] if args else 3, args[1:] or [0, 1])
