"""Same-seed runs of a set of SBTM/ULA setups, saved or compared bitwise (torch.equal).

A structural refactor must not change a single bit of a run.  Run this once with the code
before the change and once with the code after it, e.g.::

    git archive <base-commit> sbtm_flows | tar -x -C /tmp/base      # the code before
    PYTHONPATH=/tmp/base OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bitwise_refactor.py save /tmp/before.pt
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bitwise_refactor.py compare /tmp/before.pt

``compare`` prints one line per setup (particles, Θ trajectory, ℓ, held-out block, diagnostics
such as the η trace, the stored ``result.config``) and exits 1 when any differs.
"""

from __future__ import annotations

import json
import re
import sys

import torch

import sbtm_flows as sf

torch.set_num_threads(1)

G = sf.Gaussian(torch.zeros(1), torch.eye(1))
INIT = sf.Gaussian(torch.zeros(1), torch.tensor([[0.25]]))
BASE = dict(init=INIT, n=64, t_final=0.1, dt=0.01, seed=0, init_steps=200)

#: name -> (target, keyword arguments of sf.sample)
SETUPS = {
    "flow_heun2_eta5": (G, dict(BASE, solver="heun2", eta=5.0)),
    "flow_rkc_default": (G, dict(BASE, eta=10.0)),
    "flow_heun2_eta_auto": (G, dict(BASE, eta="auto")),
    "flow_heun2_eta_ntk": (G, dict(BASE, n=32, t_final=0.04, solver="heun2", eta="ntk", record_ntk_every=2)),
    "flow_heun2_eta_callable": (G, dict(BASE, solver="heun2", eta=lambda t: 2.0 + 10.0 * t)),
    "flow_dopri5": (G, dict(BASE, t_final=0.05, solver="dopri5", eta=5.0)),
    "flow_holdout_density": (G, dict(BASE, solver="heun2", eta=5.0, holdout=16, track_logdensity=True)),
    "flow_hutchinson_batch": (sf.Gaussian(torch.zeros(2), torch.eye(2)),
                              dict(BASE, init=sf.Gaussian(torch.zeros(2), 0.5 * torch.eye(2)), solver="heun2", eta=5.0,
                                   divergence="hutchinson", batch=32)),
    "steps": (G, dict(BASE, training="steps", inner_steps=3)),
    "steps_holdout_hutchinson": (G, dict(BASE, training="steps", holdout=8, track_logdensity=True, divergence="hutchinson")),
    "ula": (G, dict(init=INIT, n=64, t_final=0.1, dt=0.01, seed=0)),
}


def run_all() -> dict[str, dict[str, torch.Tensor]]:
    """name -> {field: tensor} for every setup."""
    out = {}
    for name, (target, kw) in SETUPS.items():
        method = "ula" if name == "ula" else "sbtm"
        res = sf.sample(target, method=method, **kw)
        fields = {"particles": res.particles, "trajectory": res.trajectory}
        for key in ("thetas", "log_density", "holdout_particles", "holdout_log_density"):
            if getattr(res, key, None) is not None:
                fields[key] = getattr(res, key)
        for key, val in sorted(res.diagnostics.items()):
            fields[f"diag:{key}"] = torch.as_tensor(val)
        text = json.dumps(res.config, sort_keys=True, default=str)  # the stored config, memory addresses blanked
        fields["config"] = re.sub(r" at 0x[0-9a-f]+", "", text)
        out[name] = fields
    return out


def _same(a, b) -> bool:
    """Bitwise equal tensors (NaN = NaN) or equal strings."""
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return a.shape == b.shape and torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))


def compare(before: dict, after: dict) -> bool:
    """Print one line per setup; True when every field is bitwise equal."""
    ok = True
    for name in SETUPS:
        a, b = before[name], after[name]
        diff = sorted(set(a) ^ set(b)) + [k for k in sorted(set(a) & set(b)) if not _same(a[k], b[k])]
        ok &= not diff
        print(f"{name:28s} {'bitwise equal' if not diff else 'DIFFERS: ' + ', '.join(diff)} ({len(a)} fields)")
    return ok


if __name__ == "__main__":
    mode, path = sys.argv[1], sys.argv[2]
    results = run_all()
    if mode == "save":
        torch.save(results, path)
    else:
        sys.exit(0 if compare(torch.load(path), results) else 1)
