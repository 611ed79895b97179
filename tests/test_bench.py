"""The benchmark harness (sbtm_flows.bench) and `sbtm-flows bench --quick` end to end."""

import csv
import math

import pytest
import torch

import sbtm_flows as sf
from sbtm_flows import bench
from sbtm_flows.cli import main


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_bench_quick_end_to_end(tmp_path, capsys):
    assert main(["bench", "--quick", "--out", str(tmp_path)]) == 0
    rows = _rows(tmp_path / "quick.csv")
    cfg = bench.BenchConfig(**bench.QUICK)
    # every (target, seed) has its floor and one row per sampler: nothing dropped
    assert len(rows) == len(cfg.targets) * cfg.seeds * (1 + len(bench.SAMPLERS))
    for r in rows:
        assert r["status"] in ("ok", "missed_modes", "diverged", "time_limit", "error")
        assert (r["status"] == "ok") == (r["reason"] == ""), r
        if r["sampler"] != "floor" and r["status"] in ("ok", "missed_modes"):
            # the matched budget: every sampler used B = 20 target-score evaluations per particle (ULA: +1)
            assert cfg.budget <= int(r["score_evals"]) <= cfg.budget + 1, r
            assert float(r["energy"]) > 0 and math.isfinite(float(r["energy"]))
        assert (int(r["net_evals"]) > 0) == r["sampler"].startswith("sbtm"), r
    # a 20-evaluation budget is far from converged: every sampler is farther from the reference than the floor
    for t in cfg.targets:
        floor = max(float(r["energy"]) for r in rows if r["target"] == t and r["sampler"] == "floor")
        worst = [float(r["energy"]) for r in rows if r["target"] == t and r["sampler"] == "ula"]
        assert min(worst) > floor, (t, worst, floor)
    md = (tmp_path / "quick.md").read_text()
    assert "| 25gmm | mala |" in md and "| eight_schools | floor |" in md and "± " in md
    assert "wrote" in capsys.readouterr().out


def test_failed_cells_are_rows_with_reasons(monkeypatch):
    cfg = bench.BenchConfig(targets=("25gmm",), samplers=("ula", "mala", "sbtm"), seeds=1, n=50, budget=4,
                            metrics=("energy",))

    def fake(sampler, target, spec, cfg, seed):
        if sampler == "ula":
            raise sf.SamplingError("target score is NaN/inf at 3 of 50 particles at t=0.1")
        if sampler == "mala":
            return torch.full((cfg.n, 2), float("nan")), 4, 0
        while True:  # runs past the time limit
            pass

    monkeypatch.setattr(bench, "run_sampler", fake)
    monkeypatch.setattr(cfg, "time_limit", 0.5)
    rows = bench.run_bench(cfg)
    by = {r["sampler"]: r for r in rows}
    assert by["ula"]["status"] == "diverged" and "NaN/inf" in by["ula"]["reason"]
    assert by["mala"]["status"] == "diverged" and "50 of 50 particles" in by["mala"]["reason"]
    assert by["sbtm"]["status"] == "time_limit" and 0.5 <= by["sbtm"]["wall_s"] < 5
    assert by["floor"]["status"] == "ok"


def test_missed_modes_flagged_and_floor_is_small():
    cfg = bench.BenchConfig(targets=("25gmm",), samplers=(), seeds=1, n=500, metrics=("energy",))
    target = sf.targets.gmm25()
    ref = bench.reference_pool("25gmm", target, 500, torch.Generator().manual_seed(0))
    one_mode = target.means[:1].double() + 0.1 * torch.randn(500, 2, generator=torch.Generator().manual_seed(1),
                                                              dtype=torch.float64)
    m = bench.cell_metrics(one_mode, ref, target, cfg, torch.Generator().manual_seed(2))
    assert m["missed"] == 24 and m["mode_tv"] == pytest.approx(1 - 1 / 25)
    floor = bench.cell_metrics(bench.reference_pool("25gmm", target, 500, torch.Generator().manual_seed(3)), ref, target,
                               cfg, torch.Generator().manual_seed(2))
    assert floor["missed"] == 0 and floor["mode_tv"] < 0.15 and floor["energy"] < m["energy"] / 20


@pytest.mark.parametrize("kw, match", [
    (dict(targets=("nope",)), "unknown benchmark targets"),
    (dict(samplers=("hmc",)), "unknown samplers"),
    (dict(budget=5), "budget"),
    (dict(metrics=("kl",)), "unknown metrics"),
])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        bench.BenchConfig(**kw)
