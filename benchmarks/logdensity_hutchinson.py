"""Bias and variance of the log Z estimate with Hutchinson divergences (issue 6).

Target: a d = 10 Gaussian N(m, C) (m = 0.5·1, C diagonal from 0.5 to 2) with known log Z,
sampled by SBTM from N(0, I) with ``track_logdensity=True``.  The log-density rate
−Δlog π + ∇·s_Θ is integrated with

* ``exact``: exact ∇·s (d backward passes), the reference;
* ``hutch-m``: Hutchinson ∇·s with m Rademacher probes, and

  - target ``analytic``: sf.Gaussian (log Z = 0), Δlog π = −tr C⁻¹ exact;
  - target ``autograd``: from_log_prob(log N + 3) (log Z = 3), Δlog π by autograd with the
    *same* probes as ∇·s, so the rate is a Hutchinson estimate of ∇·v itself.

For each setting and seed it reports the error of the final log Z estimate, the ESS and the
KL estimate kl_plus_logz + log Z; then mean (bias) and standard deviation over seeds, for

* ``train``: the run's ``*_train`` diagnostics, on the n particles s_Θ was
  trained on;
* ``held-out``: m fresh particles from the initial law carried along by the library
  (``sample(..., holdout=m)``): same velocity, same divergence method and probe count (their
  own probes), never trained on; the run's ``log_z``/``ess``/``kl_plus_logz`` are then theirs
  and the training values are ``*_train``.  The gap between the two is the bias of re-using
  the training particles (implicit score matching makes ∇·s_Θ too negative at them).  The
  held-out particles do not change the training run (heun2: bitwise), so the ``train``
  columns are those of a run without them.

Run:  PYTHONPATH=. python benchmarks/logdensity_hutchinson.py [--seeds 3] [--n 500] [--t-final 2]
Results: benchmarks/results/logdensity_hutchinson.txt
"""

from __future__ import annotations

import argparse
import time

import torch

import sbtm_flows as sf


def targets(d: int):
    g = sf.Gaussian(0.5 * torch.ones(d), torch.diag(torch.linspace(0.5, 2.0, d)))
    return {"analytic": (g, 0.0), "autograd": (sf.from_log_prob(lambda x: g.log_prob(x) + 3.0, d), 3.0)}


def one(target, log_z: float, divergence: str, probes: int, seed: int, args) -> dict:
    t0 = time.perf_counter()
    res = sf.sample(
        target, n=args.n, holdout=args.m, t_final=args.t_final, dt=args.dt, eta=args.eta, divergence=divergence,
        probes=probes, track_logdensity=True, seed=seed,
    )
    d = {k: float(v[-1]) for k, v in res.diagnostics.items()}
    return {
        "err": d["log_z_train"] - log_z,
        "ess": d["ess_train"],
        "kl": d["kl_plus_logz_train"] + log_z,
        "h_err": d["log_z"] - log_z,
        "h_ess": d["ess"],
        "h_kl": d["kl_plus_logz"] + log_z,
        "sec": time.perf_counter() - t0,
    }


def summary(rows: list[dict], prefix: str) -> str:
    errs = torch.tensor([r[prefix + "err"] for r in rows])
    sd = float(errs.std()) if len(rows) > 1 else float("nan")
    ess = sum(r[prefix + "ess"] for r in rows) / len(rows)
    kl = sum(r[prefix + "kl"] for r in rows) / len(rows)
    return f"{float(errs.mean()):+8.3f} {sd:6.3f} {ess:5.2f} {kl:+7.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=10)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--t-final", type=float, default=2.0)
    p.add_argument("--dt", type=float, default=0.02)
    p.add_argument("--eta", type=float, default=2.0)
    p.add_argument("--m", type=int, default=2000, help="held-out particles")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--probes", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--targets", nargs="+", default=["analytic", "autograd"])
    args = p.parse_args()
    torch.set_num_threads(1)
    tg = targets(args.d)
    print(f"d={args.d} n={args.n} (held-out m={args.m}) t_final={args.t_final} dt={args.dt} eta={args.eta} "
          f"training=flow seeds={args.seeds}")
    head = f"{'bias':>8s} {'sd':>6s} {'ESS':>5s} {'KL':>7s}"
    print(f"{'':9s} {'':10s} | {'train (*_train diagnostics)':^29s} | {'held-out (holdout=m)':^29s} |")
    print(f"{'target':9s} {'divergence':10s} | {head} | {head} | s/run")
    settings = [("exact", 1)] + [("hutchinson", m) for m in args.probes]
    for name in args.targets:
        target, log_z = tg[name]
        for div, m in settings:
            rows = [one(target, log_z, div, m, s, args) for s in range(args.seeds)]
            label = "exact" if div == "exact" else f"hutch-{m}"
            sec = sum(r["sec"] for r in rows) / len(rows)
            print(f"{name:9s} {label:10s} | {summary(rows, '')} | {summary(rows, 'h_')} | {sec:5.1f}", flush=True)
    print("bias = mean over seeds of (log Z estimate − log Z), sd = its standard deviation over seeds, "
          "ESS fraction and KL = kl_plus_logz + log Z averaged over seeds; log Z: "
          + ", ".join(f"{k}={v[1]:g}" for k, v in tg.items()))


if __name__ == "__main__":
    main()
