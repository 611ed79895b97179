"""DW-4 reference draws: a long, well-mixed MALA run (regenerate with one command).

Run:  OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/dw4_reference.py [--chains 256 --warmup 2000 --steps 100000]

256 chains from N(0, 2²I) restricted to E(x) < 20 (rejection; overdispersed over the low-energy
region: a chain started with two particles 10 apart sits where |∇E| ≈ 10³ and the step tuned on the
others is refused there forever), 2,000 warm-up iterations (step adapted to acceptance 0.574, then frozen),
100,000 frozen iterations, every 250th kept.  Mixing check on the kept draws: split-R̂ (Gelman et al.
2013, rank-free) and multi-chain ESS (Geyer's initial positive sequence on the chain-averaged
autocorrelation) for each coordinate, the energy E(x) and the mean pair distance.  Then every
kept draw gets a uniformly random relabelling of the 4 particles and a uniformly random rotation
about the origin: both are exact symmetries of the DW-4 law (the energy depends on pair distances
only, the centroid factor on |x̄|), so the symmetrised draws have the same law and no label or
orientation left from the chains' starts.  10,000 evenly spaced draws (float32, 320 kB) go to
``sbtm_flows/data/dw4_reference.pt`` with the run's settings and mixing numbers; a summary to
``benchmarks/results/dw4_reference.txt``.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import time

import torch

import sbtm_flows as sf

ROOT = pathlib.Path(__file__).resolve().parents[1]


def split_rhat(draws: torch.Tensor) -> torch.Tensor:
    """Split-R̂ of draws ``(m chains, n, k statistics)`` -> ``(k,)``: each chain halved, then
    sqrt(((n'−1)/n'·W + B/n')/W) with W the mean within-half variance and B/n' the variance of
    the half means (n' = n // 2)."""
    n2 = draws.shape[1] // 2
    halves = torch.cat([draws[:, :n2], draws[:, n2 : 2 * n2]])
    w = halves.var(1).mean(0)
    b_over_n = halves.mean(1).var(0)
    return (((n2 - 1) / n2 * w + b_over_n) / w).sqrt()


def multichain_ess(draws: torch.Tensor) -> torch.Tensor:
    """Effective sample size of draws ``(m, n, k)`` -> ``(k,)``: m·n / (−1 + 2Σ_{pairs} (ρ̂_{2t} + ρ̂_{2t+1}))
    summed while the pair sums stay positive (Geyer), with ρ̂_t = 1 − (W − mean-chain autocovariance_t)/var⁺."""
    m, n, k = draws.shape
    x = draws - draws.mean(1, keepdim=True)
    f = torch.fft.rfft(x, n=2 * n, dim=1)
    acov = torch.fft.irfft(f * f.conj(), n=2 * n, dim=1)[:, :n] / n  # (m, n, k)
    w = draws.var(1).mean(0)
    var_plus = (n - 1) / n * w + draws.mean(1).var(0)
    rho = 1 - (w - acov.mean(0)) / var_plus  # (n, k)
    ess = torch.empty(k, dtype=draws.dtype)
    for j in range(k):
        total = 0.0
        for t in range(0, n - 1, 2):
            pair = float(rho[t, j] + rho[t + 1, j])
            if pair < 0:
                break
            total += pair
        ess[j] = m * n / max(-1.0 + 2 * total, 1e-12)
    return ess


def statistics(target, x: torch.Tensor) -> torch.Tensor:
    """Per draw ``(..., 8)`` -> ``(..., 10)``: the 8 coordinates, E(x) and the mean pair distance."""
    flat = x.reshape(-1, x.shape[-1])
    with torch.no_grad():
        e = target.energy(flat)
        r = target.pair_distances(flat).mean(-1)
    return torch.cat([flat, e[:, None], r[:, None]], 1).reshape(*x.shape[:-1], x.shape[-1] + 2)


def symmetrise(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random particle relabelling and rotation about the origin of each draw ``(m, 8)``."""
    pos = x.reshape(x.shape[0], 4, 2)
    perm = torch.argsort(torch.rand(x.shape[0], 4, generator=generator), dim=1)
    pos = torch.gather(pos, 1, perm[:, :, None].expand(-1, -1, 2))
    a = 2 * math.pi * torch.rand(x.shape[0], generator=generator, dtype=x.dtype)
    rot = torch.stack([torch.stack([a.cos(), -a.sin()], -1), torch.stack([a.sin(), a.cos()], -1)], -2)  # (m, 2, 2)
    return torch.einsum("mij,mpj->mpi", rot, pos).reshape(x.shape)


def initial_chains(target, chains: int, generator: torch.Generator, max_energy: float = 20.0) -> torch.Tensor:
    """``chains`` draws ``(chains, 8)`` of N(0, 2²I) conditioned on E(x) < ``max_energy`` (rejection)."""
    out = torch.empty(0, 8, dtype=torch.float64)
    while out.shape[0] < chains:
        x = 2.0 * torch.randn(4 * chains, 8, generator=generator, dtype=torch.float64)
        out = torch.cat([out, x[target.energy(x) < max_energy]])
    return out[:chains]


def main(chains: int, warmup: int, steps: int, thin: int, keep: int, seed: int) -> None:
    torch.set_num_threads(1)
    target = sf.targets.dw4()
    init = initial_chains(target, chains, torch.Generator().manual_seed(seed + 2))
    t0 = time.perf_counter()
    res = sf.sample(target, method="mala", init=init, warmup=warmup, steps=steps, step_size=0.01,
                    save_every=thin, seed=seed)
    wall = time.perf_counter() - t0
    kept = res.trajectory[res.times > warmup].transpose(0, 1)  # (chains, draws, 8)
    stats = statistics(target, kept)
    rhat, ess = split_rhat(stats), multichain_ess(stats)
    names = [f"x{i}" for i in range(8)] + ["energy", "mean_pair_distance"]
    flat = kept.reshape(-1, 8)
    pick = torch.linspace(0, flat.shape[0] - 1, keep).round().long()
    sym = symmetrise(flat[pick], torch.Generator().manual_seed(seed + 1))
    info = {"chains": chains, "warmup": warmup, "steps": steps, "thin": thin, "seed": seed, "step_size": res.info["step_size"],
            "acceptance": res.info["acceptance"], "max_split_rhat": float(rhat.max()), "min_ess": float(ess.min()),
            "kept_draws": int(flat.shape[0]), "stored": keep, "wall_s": wall}
    out = ROOT / "sbtm_flows" / "data" / "dw4_reference.pt"
    torch.save({"samples": sym.to(torch.float32), "info": info, "rhat": rhat, "ess": ess, "statistics": names}, out)
    lines = [f"DW-4 reference: python benchmarks/dw4_reference.py --chains {chains} --warmup {warmup} --steps {steps} "
             f"--thin {thin} --keep {keep} --seed {seed}",
             f"MALA: frozen step {info['step_size']:.4g}, post-warm-up acceptance {info['acceptance']:.3f}, wall {wall:.0f} s",
             f"kept {flat.shape[0]} draws ({chains} chains x {kept.shape[1]}), stored {keep} symmetrised draws in {out.relative_to(ROOT)}",
             "statistic            split-Rhat   ESS"]
    lines += [f"{nm:<20} {float(r):10.4f} {float(e):8.0f}" for nm, r, e in zip(names, rhat, ess)]
    text = "\n".join(lines)
    (ROOT / "benchmarks" / "results" / "dw4_reference.txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chains", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=100000)
    ap.add_argument("--thin", type=int, default=250)
    ap.add_argument("--keep", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    main(a.chains, a.warmup, a.steps, a.thin, a.keep, a.seed)
