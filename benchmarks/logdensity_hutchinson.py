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

* ``train``: the run's own numbers (``result.diagnostics``), on the n particles s_Θ was
  trained on;
* ``held-out``: m fresh particles from the initial law pushed through the *same* flow
  (Heun on the stored Θ(t) at every output time, same divergence method and probe count),
  which the network never saw.  The gap between the two is the bias of re-using the
  training particles (implicit score matching makes ∇·s_Θ too negative at them).

Run:  PYTHONPATH=. python benchmarks/logdensity_hutchinson.py [--seeds 3] [--n 500] [--t-final 2]
Results: benchmarks/results/logdensity_hutchinson.txt
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import sbtm_flows as sf
from sbtm_flows.dynamics import particle_rates
from sbtm_flows.losses import divergence as divergence_of
from sbtm_flows.losses import make_probes
from sbtm_flows.score import unflatten_params


def targets(d: int):
    g = sf.Gaussian(0.5 * torch.ones(d), torch.diag(torch.linspace(0.5, 2.0, d)))
    return {"analytic": (g, 0.0), "autograd": (sf.from_log_prob(lambda x: g.log_prob(x) + 3.0, d), 3.0)}


@torch.no_grad()
def held_out(res: sf.Result, target, divergence: str, probes: int, m: int, seed: int) -> torch.Tensor:
    """Log weights ``(m,)`` of m fresh N(0, I) particles pushed through the run's flow: Heun
    between output times with s = s_{Θ(t_k)} at the start and s_{Θ(t_{k+1})} at the end of a
    step (flow-mode runs with an output at every step), ℓ integrated alongside."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    x = torch.randn(m, res.dim, generator=gen)
    ell = -0.5 * (x**2).sum(-1) - 0.5 * res.dim * math.log(2 * math.pi)
    v = make_probes(probes, m, res.dim, "rademacher", gen) if divergence == "hutchinson" else None
    path = sf.as_path(target)
    model = res.score_model(0)

    def rate(x, t, theta):
        s, div = divergence_of(lambda z: torch.func.functional_call(model, unflatten_params(model, theta), (z,)), x, divergence, v)
        return particle_rates(path, t, x, s, div, True, v)

    for k in range(len(res.times) - 1):
        t0, t1 = float(res.times[k]), float(res.times[k + 1])
        v1, l1 = rate(x, t0, res.thetas[k])
        v2, l2 = rate(x + (t1 - t0) * v1, t1, res.thetas[k + 1])
        x, ell = x + 0.5 * (t1 - t0) * (v1 + v2), ell + 0.5 * (t1 - t0) * (l1 + l2)
    return path.target.log_prob(x).double() - ell.double()


def one(target, log_z: float, divergence: str, probes: int, seed: int, args) -> dict:
    t0 = time.perf_counter()
    res = sf.sample(
        target, n=args.n, t_final=args.t_final, dt=args.dt, eta=args.eta, divergence=divergence,
        probes=probes, track_logdensity=True, seed=seed,
    )
    d = res.diagnostics
    lw = held_out(res, target, divergence, probes, args.m, seed)
    return {
        "err": float(d["log_z"][-1]) - log_z,
        "ess": float(d["ess"][-1]),
        "kl": float(d["kl_plus_logz"][-1]) + log_z,
        "h_err": sf.log_z_estimate(lw) - log_z,
        "h_ess": sf.effective_sample_size(lw),
        "h_kl": float(-lw.mean()) + log_z,
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
    print(f"{'':9s} {'':10s} | {'train (run diagnostics)':^29s} | {'held-out':^29s} |")
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
