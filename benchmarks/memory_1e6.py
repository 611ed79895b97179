"""Peak RSS of a few SBTM steps at n = 1e6, d = 2 (N(0, ½I) → N(0, I)): python benchmarks/memory_1e6.py flow|steps."""

import resource
import sys
import time

import torch

import sbtm_flows as sf

torch.set_num_threads(1)

training = sys.argv[1]
t = time.time()
res = sf.sample(sf.Gaussian(torch.zeros(2), torch.eye(2)), init=sf.Gaussian(torch.zeros(2), 0.5 * torch.eye(2)), n=1_000_000,
                t_final=0.03, dt=0.01, training=training, seed=0, save_every=3)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
var = float(res.particles.var(0).mean())
print(f"{training}: n=1e6 d=2 3 steps, solver={res.info.get('solver')}, peak RSS {rss:.2f} GB, {time.time() - t:.0f} s, var {var:.4f}")
