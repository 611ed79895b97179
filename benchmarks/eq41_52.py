"""§5.2 (`mixture-1d`): eq. (4.1)'s two sides with the coupled flow under an η schedule.

Run:  OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/eq41_52.py [--t-final 30] [--n 5000] [--seed 0]
          [--eta '{"eta0": 1000, "eta_inf": 10, "t_c": 0.25}'] [--exact]

The SBTM call is the experiment's (rkc, dt = 0.01, outputs every 10 steps; held-out particles do
not change the training trajectory, so none are used).  Prints the relative L2 gap
‖D_learned − D‖/‖D‖ (``tests/paper_cases.eq41_gap``) over the run and per window, the share of
the squared gap per window, P(X_T > 0) (against the exact f_T from the Fokker–Planck grid when
``--exact``), NFE and rkc's stage record.  ``--t-final 1`` is the cheap proxy: ≈ 99 % of the full
run's squared gap sits in t ∈ [0.05, 0.55].
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from sbtm_flows.experiments import ETA_52

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import paper_cases as P  # noqa: E402

WINDOWS = ((0.0, 0.05), (0.05, 0.55), (0.55, 2.0), (2.0, 5.0), (5.0, float("inf")))


def windows(res) -> dict:
    """Gap and share of the squared gap per time window."""
    d, t = res.diagnostics, res.times
    err2 = (d["dissipation_learned"] - d["dissipation"]) ** 2
    out = {}
    for a, b in WINDOWS:
        m = (t >= a) & (t < b) if b < float("inf") else t >= a
        if m.any():
            out[f"[{a:g},{b:g})"] = {"gap": float((err2[m].sum() / (d["dissipation"][m] ** 2).sum()).sqrt()),
                                     "share": float(err2[m].sum() / err2.sum())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--t-final", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eta", default=json.dumps(ETA_52), help="a number or a DecayingEta dict (JSON)")
    ap.add_argument("--exact", action="store_true", help="also compute P(X_T > 0) under the exact f_T (slow for T = 30)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    eta = json.loads(a.eta)
    start = time.perf_counter()
    out = P.mixture_52("sbtm", n=a.n, t_final=a.t_final, dt=0.01, seed=a.seed, eta=eta, save_every=10)
    res = out["result"]
    row = {"n": a.n, "t_final": a.t_final, "seed": a.seed, "eta": eta, "theta_flow": res.info.get("theta_flow"),
           "eq41_gap": P.eq41_gap(res), "windows": windows(res), "frac_pos": out["frac_pos"], "nfe": res.nfe,
           "wall_s": time.perf_counter() - start, "rkc": res.info.get("rkc")}
    if a.exact:
        row["exact_frac_pos"] = P.exact_f_T_52(a.t_final)
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
