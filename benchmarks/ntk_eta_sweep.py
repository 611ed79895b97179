"""Paper 5.1 at t = 0.5 (n = 1000, heun2, dt = 0.01): constant η sweep vs eta="ntk".

Run: PYTHONPATH=. python benchmarks/ntk_eta_sweep.py
"""

import math

import torch

import sbtm_flows as sf
from sbtm_flows.ntk import NTKEta

torch.set_num_threads(1)
target = sf.Gaussian(mean=torch.zeros(1), cov=torch.eye(1))
init = sf.Gaussian(mean=torch.zeros(1), cov=(1 - math.exp(-0.2)) * torch.eye(1))
ve = 1 - math.exp(-2 * 0.6)
fe = (1 - ve) ** 2 / ve


def exact_score(x, t):
    return -x / (1 - torch.exp(-2 * (t + 0.1)))


runs = [("η = 1", 1.0), ("η = 2", 2.0), ("η = 5", 5.0), ("η = 8", 8.0), ('eta="ntk"', "ntk"),
        ("NTKEta(reference = exact score)", NTKEta(reference_score=exact_score)),
        ('eta="ntk", dopri5', "ntk")]
print(f"{'run':34s} {'var':>7} {'err %':>6} {'F^n':>7} {'err %':>6} {'NFE':>5} {'wall s':>7} {'ceiling':>8}")
for name, eta in runs:
    solver = "dopri5" if "dopri5" in name else "heun2"
    kw = dict(init=init, n=1000, t_final=0.5, dt=0.01, solver=solver, seed=0, eta=eta)
    r = sf.sample(target, **kw)  # timed run, no NTK recording
    v, f = float(r.particles.var()), float(r.diagnostics["fisher"][-1])
    used = sf.sample(target, **kw, record_ntk_every=10).diagnostics["ntk_eta"]
    used = used[~torch.isnan(used)]
    print(f"{name:34s} {v:7.4f} {100 * abs(v / ve - 1):6.2f} {f:7.4f} {100 * abs(f / fe - 1):6.1f} {r.nfe:5d} "
          f"{r.wall_time:7.2f} {r.info.get('ntk_eta_ceiling', float('nan')):8.3g}  η used at t=0,.1,..: "
          + " ".join(f"{float(e):.3g}" for e in used))
print(f"exact: var {ve:.4f}, F {fe:.4f}")
