"""Learned diffusions (PIS / DIS): log-variance vs reverse KL on 25GMM, and Funnel / ManyWell rows.

Run:  OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/learned_diffusions.py gmm [--seeds 0 1 2] [--iterations 600]
      OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/learned_diffusions.py funnel manywell
Each run appends one JSON line to benchmarks/results/learned_diffusions.jsonl: target, method, loss,
seed, ΔlogZ (IS estimate − true log Z), ELBO − log Z, ESS, EMC (entropy of the nearest-mode
fractions / log K; 1 = all modes equally), the smallest mode fraction, Sinkhorn to exact
samples (POT, ε = reg, same n), training seconds and target-score evaluations (per point).
Settings: float32, seed s, one thread on this shared 2-core CPU (times are noisy).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import sbtm_flows as sf

OUT = Path(__file__).parent / "results" / "learned_diffusions.jsonl"


# ---- targets: the issue-14 benchmark targets when installed, else local equivalents ----------
def gmm25() -> sf.GaussianMixture:
    """25 equal-weight N(m, 0.3 I), m ∈ {−10, −5, 0, 5, 10}² (the DGFS / learned-diffusion 25GMM)."""
    g = torch.tensor([-10.0, -5.0, 0.0, 5.0, 10.0])
    return sf.GaussianMixture(torch.cartesian_prod(g, g), math.sqrt(0.3))


class LocalFunnel(sf.Target):
    """x₀ ~ N(0, 9), xᵢ | x₀ ~ N(0, e^{x₀}) (d = 10), normalised."""

    def __init__(self, dim: int = 10):
        super().__init__()
        self.dim, self.log_Z = dim, 0.0

    def log_prob(self, x):
        v, z = x[:, 0], x[:, 1:]
        lp0 = -0.5 * v * v / 9.0 - 0.5 * math.log(2 * math.pi * 9.0)
        return lp0 - 0.5 * (z * z).sum(1) * torch.exp(-v) - 0.5 * (self.dim - 1) * (v + math.log(2 * math.pi))

    def sample(self, n, generator=None):
        e = torch.randn(n, self.dim, generator=generator)
        return torch.cat([3 * e[:, :1], e[:, 1:] * torch.exp(1.5 * e[:, :1])], 1)


class LocalManyWell(sf.Target):
    """16 independent 2-D double wells, log π̃ = −Σ (a⁴ − 6a² − ½a + ½b²) (d = 32)."""

    def __init__(self, dim: int = 32):
        super().__init__()
        self.dim = dim
        a = torch.linspace(-6, 6, 200001, dtype=torch.float64)
        lw = -(a**4) + 6 * a**2 + 0.5 * a
        cdf = torch.cumsum(torch.exp(lw - lw.max()), 0)
        self.grid, self.cdf = a, cdf / cdf[-1]
        log_z1 = float(lw.max() + torch.log(torch.exp(lw - lw.max()).sum() * (a[1] - a[0])))
        self.log_Z = dim // 2 * (log_z1 + 0.5 * math.log(2 * math.pi))

    def log_prob(self, x):
        a, b = x[:, 0::2], x[:, 1::2]
        return -(a**4 - 6 * a**2 - 0.5 * a + 0.5 * b * b).sum(1)

    def sample(self, n, generator=None):
        u = torch.rand(n, self.dim // 2, generator=generator, dtype=torch.float64)
        a = self.grid[torch.searchsorted(self.cdf, u).clamp(max=self.grid.numel() - 1)]
        b = torch.randn(n, self.dim // 2, generator=generator, dtype=torch.float64)
        return torch.stack([a, b], -1).reshape(n, self.dim).float()


def make(name: str):
    try:  # issue 14's targets, once on main
        from sbtm_flows.targets import benchmarks as tb  # type: ignore[attr-defined]

        return {"gmm25": tb.gmm25, "funnel": lambda: tb.Funnel(10), "manywell": lambda: tb.ManyWell(32)}[name]()
    except (ImportError, AttributeError):
        return {"gmm25": gmm25, "funnel": LocalFunnel, "manywell": LocalManyWell}[name]()


# ---- one run ----------------------------------------------------------------------------------
def mode_stats(x, means) -> tuple[float, float]:
    """(EMC, smallest mode fraction) of the samples ``x (n, d)`` for the modes ``means (k, d)``."""
    w = sf.mode_weights(x, means)
    nz = w[w > 0]
    return float(-(nz * nz.log()).sum() / math.log(means.shape[0])), float(w.min())


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
        row["emc"], row["min_mode"] = mode_stats(r.particles, target.means)
    if name == "manywell":  # 2¹⁶ modes: the sign pattern of the a-coordinates
        signs = (r.particles[:, 0::2] > 0).double()
        row["a_positive_fraction"] = float(signs.mean())
    ref = target.sample(r.n, generator=torch.Generator().manual_seed(10_000 + seed)).to(r.particles)
    row["sinkhorn"] = sf.sinkhorn(r.particles.double(), ref.double(), reg=reg)
    row["hidden"] = list(row["hidden"])
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    with OUT.open("a") as f:
        f.write(json.dumps(row) + "\n")
    return row


SETTINGS = {
    "gmm25": dict(n=2000, batch_size=256, dt=0.02, lr=5e-3, hidden=(64, 64), sigma=4.0),
    "funnel": dict(n=2000, batch_size=256, dt=0.02, lr=5e-3, hidden=(64, 64), sigma=1.0),
    "manywell": dict(n=2000, batch_size=256, dt=0.02, lr=5e-3, hidden=(64, 64), sigma=1.0),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("targets", nargs="+", choices=["gmm", "funnel", "manywell"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--losses", nargs="+", default=["log_variance", "kl"])
    ap.add_argument("--method", default="pis")
    ap.add_argument("--iterations", type=int, default=600)
    ap.add_argument("--reg", type=float, default=1.0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    for t in a.targets:
        name = "gmm25" if t == "gmm" else t
        for seed in a.seeds:
            for loss in a.losses:
                run_one(name, a.method, loss, seed, a.iterations, SETTINGS[name], a.reg)


if __name__ == "__main__":
    main()
