"""The benchmark table: SBTM, annealed SBTM, ULA, annealed ULA and MALA on 11 targets x 3 seeds at a
matched budget of target-score evaluations (see sbtm_flows.bench for every setting).

Run:  OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench.py [--quick] [any `sbtm-flows bench` option]
Writes benchmarks/results/bench.csv (one row per cell, failed cells with their reason) and
benchmarks/results/bench.md (mean ± sd over seeds next to each target's noise floor).
Needs the DW-4 reference (sbtm_flows/data/dw4_reference.pt; regenerate: python benchmarks/dw4_reference.py).
"""

from __future__ import annotations

import sys

import torch

from sbtm_flows.cli import main

if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main(["bench", *sys.argv[1:]]))
