"""Paper §5.2: π = ¼N(−2,1) + ¾N(2,1) from f_0 = N(0,1), SBTM next to ULA (Figure 3).

Run: python examples/mixture_1d.py [--quick]       (full: n = 5000, t_final = 30, a few minutes)
"""

import sys

import torch

import sbtm_flows as sf
from sbtm_flows import plotting

quick = "--quick" in sys.argv
n, t_final = (500, 5.0) if quick else (5000, 30.0)
target = sf.GaussianMixture(torch.tensor([[-2.0], [2.0]]), 1.0, torch.tensor([0.25, 0.75]))
init = sf.Gaussian(torch.zeros(1), torch.eye(1))
kw = dict(init=init, n=n, t_final=t_final, dt=0.01, save_every=10, seed=0, progress=True)
sbtm = sf.sample(target, method="sbtm", training="steps", **kw)  # the coupled flow: training="flow"
ula = sf.sample(target, method="ula", **kw)

exact = 0.25 * 0.0227501 + 0.75 * 0.9772499  # P(x > 0) = ¼Φ(−2) + ¾Φ(2)
for name, res in (("SBTM", sbtm), ("ULA", ula)):
    print(f"{name}: P(x > 0) = {float((res.particles[:, 0] > 0).float().mean()):.4f} (exact {exact:.4f}), {res.wall_time:.1f} s")
fig, axs = plotting.panels(2)
plotting.plot_density_1d({"SBTM": sbtm, "SDE": ula}, target.log_prob, torch.linspace(-7, 7, 401), ax=axs[0])
plotting.plot_dissipation(sbtm, ula, target.score, ax=axs[1])
plotting.save(fig, "mixture_1d.png")
print("wrote mixture_1d.png")
