"""Accuracy cost of training on a mini-batch (``batch=m``) on the paper's §5.1–5.4 (issue 13).

    PYTHONPATH=. python benchmarks/batch_accuracy.py [51 52 53 54] [--ms 256 1024 4096 all]

* §5.1 (coupled flow, heun2, T = 2): variance error at t = 2 and relative F^n error at t = 0.5
  against the exact N(0, 1 − e^{−2(t+0.1)}); "51" at the paper's n = 1000 (η = 5), "51big" at
  n = 5000 with η = 4 (at n = 5000 the default η = 5 is refused as stiff for heun2 at t0 —
  η·λ_max·dt = 2.2 > 2 — whatever the batch).
* §5.2 (discrete training, n = 5000, T = 30, dt = 0.02 — the paper's dt is 0.01): P(x > 0)
  against the exact law f_30 (fokker_planck_1d: 0.7360); the slow test's bound is 0.025.
* §5.3 (discrete training, geometric path, n = 5000, T = 10, dt = 0.01): P(x > 0) against the
  exact annealed law (0.5951); the slow test's bound is 0.02.
* §5.4 REDUCED (the full run takes ~15–25 min per m here): dilation path with λ₀ = 0.2,
  T = 10, dt = 0.05, n = 4000 (the CLI's quick settings at the full n), discrete training; mode
  TV between SBTM and annealed ULA at the same settings (the full-size bound is 0.06).

One line of JSON per run, then a table.  ``all`` = every particle in the loss (batch=None).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import paper_cases as P  # noqa: E402

import sbtm_flows as sf  # noqa: E402


def case_51(batch, n: int = 1000, eta: float = 5.0) -> dict:
    target = sf.Gaussian(torch.zeros(1), 1.0)
    init = sf.Gaussian(torch.zeros(1), 1 - math.exp(-0.2))
    res = sf.sample(target, init=init, n=n, t_final=2.0, dt=0.01, save_every=50, training="flow", eta=eta, batch=batch,
                    seed=0)
    v = lambda t: 1 - math.exp(-2 * (t + 0.1))  # noqa: E731
    k = int(torch.searchsorted(res.times, torch.tensor(0.5, dtype=res.times.dtype)))
    f_exact = (1 - v(0.5)) ** 2 / v(0.5)
    return {"var_err_t2": float(res.particles.double().var()) / v(2.0) - 1,
            "fisher_err_t05": float(res.diagnostics["fisher"][k]) / f_exact - 1, "wall": res.wall_time}


def case_52(batch) -> dict:
    target = sf.GaussianMixture(torch.tensor([[-2.0], [2.0]]), 1.0, torch.tensor([0.25, 0.75]))
    init = sf.Gaussian(torch.zeros(1), 1.0)
    res = sf.sample(target, init=init, n=5000, t_final=30.0, dt=0.02, save_every=10**6, training="steps", batch=batch, seed=0)
    return {"frac_pos": float((res.particles[:, 0] > 0).double().mean()), "exact": 0.7360, "wall": res.wall_time}


def case_53(batch) -> dict:
    path, init = P.geometric_53_path(10.0)
    res = sf.sample(path, init=init, n=5000, t_final=10.0, dt=0.01, save_every=10**6, training="steps", batch=batch, seed=0)
    return {"frac_pos": float((res.particles[:, 0] > 0).double().mean()), "exact": 0.5951, "wall": res.wall_time}


_ULA_54: dict = {}


def case_54(batch) -> dict:
    target = P.grid16_target()
    init = sf.Gaussian(torch.zeros(2), torch.eye(2))
    path = sf.Dilation(target, t_final=10.0, lam0=0.2)
    if "w" not in _ULA_54:
        ula = sf.sample(path, method="ula", init=init, n=4000, t_final=10.0, dt=0.05, save_every=10**6, seed=0)
        _ULA_54["w"] = sf.mode_weights(ula.particles, target.means)
    res = sf.sample(path, init=init, n=4000, t_final=10.0, dt=0.05, save_every=10**6, training="steps", batch=batch, seed=0)
    w = sf.mode_weights(res.particles, target.means)
    return {"tv_to_ula": sf.tv_distance(w, _ULA_54["w"]), "min_weight": float(w.min()), "wall": res.wall_time}


CASES = {"51": case_51, "51big": lambda b: case_51(b, n=5000, eta=4.0), "52": case_52, "53": case_53, "54": case_54}


def main() -> None:
    torch.set_num_threads(1)
    args = sys.argv[1:]
    ms = ["256", "1024", "4096", "all"]
    if "--ms" in args:
        i = args.index("--ms")
        ms, args = args[i + 1 :], args[:i]
    which = args or list(CASES)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}, 1 thread", flush=True)
    for case in which:
        for m in ms:
            batch = None if m == "all" else int(m)
            try:
                out = CASES[case](batch)
            except sf.SamplingError as e:  # e.g. refused as stiff: that is a result too
                out = {"error": str(e)[:200]}
            print(json.dumps({"case": case, "batch": m, **out}), flush=True)


if __name__ == "__main__":
    main()
