"""Learned diffusions (PIS / DIS): log-variance vs reverse KL on 25GMM, and Funnel / ManyWell rows.

Run:  OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/learned_diffusions.py gmm [--seeds 0 1 2] [--iterations 600]
      OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/learned_diffusions.py funnel manywell --seeds 0
      OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/learned_diffusions.py gmm --sbtm --seeds 0   # SBTM beside them
Each run appends one JSON line to benchmarks/results/learned_diffusions.jsonl: target, method, loss,
seed, ΔlogZ (IS estimate − true log Z), ELBO − log Z, ESS, EMC (entropy of the nearest-mode
fractions / log K; 1 = all modes equally), the smallest mode fraction, Sinkhorn to exact
samples (POT, ε = reg, same n), training seconds and target-score evaluations (per point).
Settings: float32, seed s, one thread on this shared 2-core CPU (times are noisy).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import sbtm_flows as sf

OUT = Path(__file__).parent / "results" / "learned_diffusions.jsonl"


def make(name: str):
    """The benchmark targets of :mod:`sbtm_flows.targets.benchmarks`."""
    from sbtm_flows.targets import Funnel, ManyWell, gmm25

    return {"gmm25": gmm25, "funnel": lambda: Funnel(10), "manywell": lambda: ManyWell(32)}[name]()


# ---- one run ----------------------------------------------------------------------------------
def mode_stats(x, mixture) -> tuple[float, float]:
    """(EMC, smallest mode fraction) of the samples ``x (n, d)`` in the mixture's components."""
    return sf.metrics.entropic_mode_coverage(x, mixture), float(sf.metrics.component_weights(x, mixture).min())


def sinkhorn_to_target(x, target, seed: int, reg: float) -> tuple[float, int]:
    """(Sinkhorn divergence between ``x (n, d)`` and as many exact target draws, n): the log-domain
    solver on the first 500 points for the funnel (its scales overflow the plain one, and the
    log-domain one is slow at n = 2000), the plain solver on all n otherwise."""
    m = min(500, x.shape[0]) if isinstance(target, sf.targets.Funnel) else x.shape[0]
    ref = target.sample(m, generator=torch.Generator().manual_seed(10_000 + seed)).to(x)
    method = "sinkhorn_log" if m < x.shape[0] else "sinkhorn"
    return sf.metrics.sinkhorn(x[:m].double(), ref.double(), reg=reg, method=method), m


def run_one(name: str, method: str, loss: str, seed: int, iterations: int, settings: dict, reg: float) -> dict:
    target = make(name)
    if method == "dis":  # the OU prior's scale plays PIS's σ√T
        settings = {**{k: v for k, v in settings.items() if k != "sigma"}, "scale": settings.get("sigma", 1.0)}
    t0 = time.perf_counter()
    r = sf.sample(target, method=method, loss=loss, iterations=iterations, seed=seed, save_every=iterations, **settings)
    row = {"target": name, "method": method, "loss": loss, "seed": seed, "iterations": iterations, **settings,
           "dlogZ": r.info["log_z"] - target.log_Z, "elbo_gap": r.info["elbo"] - target.log_Z, "ess": r.info["ess"],
           "train_s": r.info["train_seconds"], "wall_s": time.perf_counter() - t0, "score_evals": r.info["score_evals"],
           "nfe": r.nfe}
    if hasattr(target, "means"):
        row["emc"], row["min_mode"] = mode_stats(r.particles, target)
    if name == "manywell":  # 2¹⁶ modes: the sign pattern of the a-coordinates
        signs = (r.particles[:, 0::2] > 0).double()
        row["a_positive_fraction"] = float(signs.mean())
    row["sinkhorn"], row["sinkhorn_n"] = sinkhorn_to_target(r.particles, target, seed, reg)
    row["hidden"] = list(row["hidden"])
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    with OUT.open("a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def run_sbtm_row(name: str, seed: int, n: int, t_final: float, reg: float) -> dict:
    """SBTM on a dilation path (λ₀ = 0.1, the paper's 5.4 set-up) from N(0, I): time and score evaluations."""
    target = make(name)
    init = sf.Gaussian(torch.zeros(target.dim), 1.0)
    path = sf.Dilation(target, t_final=t_final, lam0=0.1)
    t0 = time.perf_counter()
    r = sf.sample(path, method="sbtm", init=init, n=n, t_final=t_final, dt=0.01, seed=seed, save_every=100)
    row = {"target": name, "method": "sbtm", "loss": "ism (steps)", "seed": seed, "n": n, "t_final": t_final,
           "wall_s": time.perf_counter() - t0, "nfe": r.nfe, "score_evals": r.nfe * n}
    if hasattr(target, "means"):
        row["emc"], row["min_mode"] = mode_stats(r.particles, target)
    row["sinkhorn"], row["sinkhorn_n"] = sinkhorn_to_target(r.particles, target, seed, reg)
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    with OUT.open("a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def table(path: Path = OUT) -> str:
    """A markdown table of the JSON lines: one row per (target, method, loss), mean ± sd over seeds."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["target"], r["method"], r["loss"]), []).append(r)
    cols = ["dlogZ", "elbo_gap", "ess", "emc", "min_mode", "sinkhorn", "train_s", "score_evals"]
    out = ["| target | method | loss | seeds | " + " | ".join(cols) + " |", "|" + "---|" * (4 + len(cols))]
    for (t, m, loss), rs in groups.items():
        cells = []
        for c in cols:
            v = torch.tensor([float(r[c]) for r in rs if r.get(c) is not None], dtype=torch.float64)
            if c == "train_s" and v.numel() == 0:
                v = torch.tensor([float(r["wall_s"]) for r in rs], dtype=torch.float64)
            if v.numel() == 0:
                cells.append("–")
            elif c == "score_evals":
                cells.append(f"{float(v.mean()):.3g}")
            elif v.numel() == 1:
                cells.append(f"{float(v[0]):.3g}")
            else:
                cells.append(f"{float(v.mean()):.3g} ± {float(v.std()):.2g}")
        out.append(f"| {t} | {m} | {loss} | {','.join(str(r['seed']) for r in rs)} | " + " | ".join(cells) + " |")
    return "\n".join(out)


SETTINGS = {
    "gmm25": dict(n=2000, batch_size=256, dt=0.02, lr=5e-3, hidden=(64, 64), sigma=4.0),
    "funnel": dict(n=2000, batch_size=256, dt=0.02, lr=5e-3, hidden=(64, 64), sigma=1.0),
    "manywell": dict(n=2000, batch_size=256, dt=0.02, lr=5e-3, hidden=(64, 64), sigma=1.0),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("targets", nargs="*", help="gmm, funnel, manywell")
    ap.add_argument("--table", action="store_true", help="print the markdown table of the results file and exit")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--losses", nargs="+", default=["log_variance", "kl"])
    ap.add_argument("--method", default="pis")
    ap.add_argument("--iterations", type=int, default=600)
    ap.add_argument("--reg", type=float, default=1.0)
    ap.add_argument("--sbtm", action="store_true", help="SBTM rows instead (dilation path, n = 1000, T = 10)")
    a = ap.parse_args()
    if a.table:
        print(table())
        return
    bad = set(a.targets) - {"gmm", "funnel", "manywell"}
    if bad or not a.targets:
        ap.error(f"targets must be among gmm, funnel, manywell, got {a.targets}")
    torch.set_num_threads(1)
    if a.sbtm:
        for t in a.targets:
            run_sbtm_row("gmm25" if t == "gmm" else t, a.seeds[0], 1000, 10.0, a.reg)
        return
    for t in a.targets:
        name = "gmm25" if t == "gmm" else t
        for seed in a.seeds:
            for loss in a.losses:
                run_one(name, a.method, loss, seed, a.iterations, SETTINGS[name], a.reg)


if __name__ == "__main__":
    main()
