"""Peak memory per particle of a few steps at large n (issue 12, item 7).

Each configuration runs in its own subprocess (so the peak resident set size, ru_maxrss of
the child, is that run's alone): d = 2, target N(0, I), init N(0, 0.5 I), ``t_final = 3·dt``
(a few steps), ``init_steps = 20`` (the initial fit), float32, CPU.  Reported: peak RSS, the
RSS of a bare ``import sbtm_flows`` (the baseline), and (peak − baseline)/n in bytes per
particle.

Run:  PYTHONPATH=. python benchmarks/memory.py [--n 100000 1000000] [--configs ula sbtm-flow sbtm-steps]
Results: benchmarks/results/memory.txt
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads(1)
import sbtm_flows as sf
cfg, n = sys.argv[1], int(sys.argv[2])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kw = dict(init=sf.Gaussian(torch.zeros(2), 0.5 * torch.eye(2)), n=n, dt=0.01, t_final=0.03, seed=0)
t = time.perf_counter()
if cfg == "ula":
    sf.sample(sf.Gaussian(torch.zeros(2), torch.eye(2)), method="ula", **kw)
elif cfg == "none":
    pass
else:
    sf.sample(sf.Gaussian(torch.zeros(2), torch.eye(2)), training=cfg.split("-")[1], init_steps=20, **kw)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_kb": base, "peak_kb": peak, "wall_s": time.perf_counter() - t}))
"""


def measure(cfg: str, n: int) -> dict:
    """Peak RSS (bytes) of one run in a fresh process, its import baseline, and its wall time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    p = subprocess.run([sys.executable, "-c", CHILD, cfg, str(n)], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        return {"config": cfg, "n": n, "error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"rc {p.returncode}"}
    out = json.loads(p.stdout.strip().splitlines()[-1])
    return {"config": cfg, "n": n, "peak_bytes": out["peak_kb"] * 1024, "base_bytes": out["base_kb"] * 1024, "wall_s": out["wall_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--configs", nargs="+", default=["ula", "sbtm-flow", "sbtm-steps"])
    a = ap.parse_args()
    print(f"{'config':<12}{'n':>10}{'peak RSS (MB)':>15}{'bytes/particle':>16}{'wall (s)':>10}")
    for n in sorted(a.n):
        for cfg in a.configs:
            r = measure(cfg, n)
            if "error" in r:
                print(f"{cfg:<12}{n:>10}  failed: {r['error']}")
                continue
            per = (r["peak_bytes"] - r["base_bytes"]) / n
            print(f"{cfg:<12}{n:>10}{r['peak_bytes'] / 2**20:>15.0f}{per:>16.0f}{r['wall_s']:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
