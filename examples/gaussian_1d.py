"""Paper §5.1: π = N(0, 1), f_0 = N(0, 1 − e^{−0.2}); the exact law is N(0, 1 − e^{−2(t+0.1)}).

Run: python examples/gaussian_1d.py
"""

import math

import torch

import sbtm_flows as sf

target = sf.Gaussian(mean=torch.zeros(1), cov=torch.eye(1))
init = sf.Gaussian(mean=torch.zeros(1), cov=(1 - math.exp(-0.2)) * torch.eye(1))
res = sf.sample(target, method="sbtm", init=init, n=1000, t_final=2.0, dt=0.01, solver="heun2", seed=0, progress=True)

print(f"{'t':>5} {'var':>8} {'exact':>8} {'F^n':>8} {'exact F':>8}")
for t in (0.0, 0.5, 1.0, 2.0):
    k = int(torch.argmin((res.times - t).abs()))
    v = float(res.trajectory[k].var())
    ve = 1 - math.exp(-2 * (t + 0.1))
    print(f"{t:5.2f} {v:8.4f} {ve:8.4f} {float(res.diagnostics['fisher'][k]):8.4f} {(1 - ve) ** 2 / ve:8.4f}")
kl = lambda v: 0.5 * (v - 1 - math.log(v))  # noqa: E731
print(f"KL decrease over [0, 2]: estimated {float(res.diagnostics['kl_decrease'][-1]):.4f}, "
      f"exact {kl(1 - math.exp(-0.2)) - kl(1 - math.exp(-4.2)):.4f}; NFE {res.nfe}, {res.wall_time:.2f} s")
