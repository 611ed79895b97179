"""One process of ``benchmarks/scale.py ranks``: the discrete training at n particles (d = 2),
10 steps, under torchrun with 1 or 2 processes; rank 0 prints the run's wall time (JSON)."""

import json
import sys

import torch

import sbtm_flows as sf
from sbtm_flows.distributed import init_from_env

torch.set_num_threads(1)
comm = init_from_env("gloo")
n = int(float(sys.argv[1]))
target = sf.Gaussian(torch.zeros(2), torch.eye(2))
init = sf.Gaussian(torch.zeros(2), 0.5 * torch.eye(2))
res = sf.sample(target, init=init, n=n, t_final=0.1, dt=0.01, save_every=10, training="steps", init_steps=200, seed=0)
if comm is None or comm.rank == 0:
    print(json.dumps({"ranks": res.info["ranks"], "wall": res.wall_time, "var": float(res.particles.var(0).mean())}))
