"""Cost of the NTK tools (1 CPU thread): empirical_ntk and λ_min for n = 1000, d = 2 with the
default ScoreMLP (64, 64); the matrix-free path at n·d = 20,000.

Run: PYTHONPATH=. python benchmarks/ntk_cost.py
"""

import resource
import time

import torch

from sbtm_flows import ntk
from sbtm_flows.score import ScoreMLP

torch.set_num_threads(1)


def timed(f):
    t = time.perf_counter()
    out = f()
    return out, time.perf_counter() - t


g = torch.Generator().manual_seed(0)
for dtype in (torch.float32, torch.float64):
    x = torch.randn(1000, 2, generator=g).to(dtype)
    m = ScoreMLP(2, generator=g, dtype=dtype)
    p = sum(q.numel() for q in m.parameters())
    h, t_h = timed(lambda: ntk.empirical_ntk(m, x))
    _, t_e = timed(lambda: torch.linalg.eigvalsh(h.double()))
    lam, t_l = timed(lambda: ntk.ntk_min_eigenvalue(m, x))
    mv = ntk.ntk_matvec(m, x)
    v = torch.randn(2000, dtype=dtype)
    _, t_mv = timed(lambda: mv(v))
    print(f"n=1000 d=2 P={p} {dtype}: empirical_ntk {t_h:.2f} s, eigvalsh {t_e:.2f} s, "
          f"ntk_min_eigenvalue (dense, float64) {t_l:.2f} s -> {lam:.3g}; one H·v {1e3 * t_mv:.1f} ms")

# n·d = 20,000: H (1.6 GB in float32) and, for a network with P > n·d, J (≥ 5 GB) are never formed
x = torch.randn(10000, 2, generator=g)
for hidden in ((64, 64), (256, 256)):
    m = ScoreMLP(2, hidden=hidden, generator=g)
    p = sum(q.numel() for q in m.parameters())
    mv = ntk.ntk_matvec(m, x)
    _, t_mv = timed(lambda: mv(torch.randn(20000)))
    _, t_blk = timed(lambda: mv(torch.randn(20000, 8)))
    lam, t_l = timed(lambda: ntk.ntk_min_eigenvalue(m, x, method="lobpcg", tol=1e-4, maxiter=30))
    how = "rank bound" if 20000 > p else "lobpcg, 30 iterations, upper bound"
    print(f"n=10000 d=2 P={p}: one H·v {t_mv:.2f} s, block of 8 {t_blk:.2f} s, λ_min ({how}) "
          f"{t_l:.1f} s -> {lam:.3g}; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")
