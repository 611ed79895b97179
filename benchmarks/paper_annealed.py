"""Paper §5.1–5.4 numbers for the ODE (SBTM) vs SDE (ULA) comparison, printed as JSON lines.

    PYTHONPATH=. python benchmarks/paper_annealed.py [51 52 53 54]

Uses the same experiment functions as ``tests/test_annealed.py`` (``tests/paper_cases.py``)."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import paper_cases as P  # noqa: E402

import sbtm_flows as sf  # noqa: E402


def main(which):
    torch.set_num_threads(1)
    if "51" in which:
        print(json.dumps({"case": "5.1", **P.fokker_planck_51(n=2000)}), flush=True)
    if "52" in which:
        for m in ("sbtm", "ula"):
            out = P.mixture_52(m, n=5000)
            print(json.dumps({"case": "5.2", "method": m, "frac_pos": out["frac_pos"], "exact": P.exact_frac_52(),
                              "wall": out["wall"]}), flush=True)
    if "53" in which:
        for m in ("sbtm", "ula"):
            out = P.geometric_53(m, n=5000)
            print(json.dumps({"case": "5.3", "method": m, "frac_pos": out["frac_pos"], "exact_fokker_planck": P.geometric_53_exact(),
                              "wall": out["wall"]}), flush=True)
    if "54" in which:
        ws = {}
        for path_kind in ("dilation", "geometric"):
            for m in ("ula", "sbtm"):
                out = P.grid_54(m, path_kind=path_kind, n=4000, **(P.SBTM_54 if m == "sbtm" else {}))
                ws[path_kind, m] = out["weights"]
                print(json.dumps({"case": "5.4", "path": path_kind, "method": m, "min_weight": out["min_weight"],
                                  "tv_uniform": out["tv_uniform"], "wall": out["wall"], "n_steps": out["n_steps"]}), flush=True)
            print(json.dumps({"case": "5.4", "path": path_kind,
                              "tv_sbtm_ula": sf.metrics.tv_distance(ws[path_kind, "sbtm"], ws[path_kind, "ula"])}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["51", "52", "53", "54"])
