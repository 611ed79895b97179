r"""The benchmark harness (``sbtm-flows bench``, ``benchmarks/bench.py``): samplers × targets ×
seeds at a matched budget of target-score evaluations, against exact or reference samples.

Samplers (:data:`SAMPLERS`), all through ``sf.sample`` with its defaults except where stated:

* ``sbtm`` — SBTM on the target, heun2 steps of 2·dt (2 score evaluations per step), ``eta="auto"``
  (the largest η the solver keeps stable: the default η = 5 is refused as stiff on most of these
  targets), ``init_steps=100`` for the initial fit of s_Θ to the initial law's score;
* ``sbtm-annealed`` — the same on the geometric path π_t ∝ f₀^{1−t/T} π^{t/T} (paper §5.3);
* ``ula`` — Euler–Maruyama steps of dt; ``ula-annealed`` — the same on the geometric path;
* ``mala`` — B/2 warm-up iterations adapting h toward acceptance 0.574, then B/2 − 1 frozen ones.

**Matched budget.** Every sampler gets B target-score evaluations per particle (``budget``): ULA
B steps of dt over the horizon T = B·dt, SBTM B/2 heun2 steps of 2·dt over the same T, MALA B
iterations including the initial evaluation (it also evaluates log π once per iteration).  SBTM's
network work (the initial fit's optimizer steps and one s_Θ / ∇_Θ-loss evaluation per right-hand
side) is reported separately (``net_evals``).  All start from the same initial law N(0, σ₀²I) of
the target's :class:`TargetSpec` with n = 2,000 particles (one per chain for MALA).

**Metrics** (on 2,000 evaluation samples against 2,000 reference samples; posteriors in
unconstrained coordinates standardized by the reference mean and sd, the others raw): W₂ (exact,
POT ``emd2``), MMD² (RBF, median-heuristic bandwidth), energy distance, the largest per-coordinate
mean and sd error in reference-sd units, and for mixtures the mode-weight TV and the entropic mode
coverage (EMC).  Each has its **noise floor**: the same metric between two independent
reference samples of the same size (one pair per seed).  The debiased Sinkhorn divergence is
optional (``metrics=`` with ``"sinkhorn"``; ~20 s a call at n = 2,000, so not in the default set).

**Failures** are rows, never dropped: ``status`` is ``ok``, ``missed_modes`` (a mixture component
expected to hold ≥ 5 particles holds none; metrics kept), ``diverged`` (a :class:`SamplingError`
or non-finite particles), ``time_limit`` (the cell's sampler ran past ``time_limit`` seconds,
measured by SIGALRM) or ``error`` (any other exception), with the reason in ``reason``.
"""

from __future__ import annotations

import csv
import signal
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path as FsPath
from typing import Callable

import torch
from torch import Tensor

from . import metrics as M
from .errors import SamplingError
from .paths import Geometric
from .sampling import sample
from .targets import Gaussian

__all__ = ["SAMPLERS", "TargetSpec", "TARGET_SPECS", "BenchConfig", "run_bench", "write_results", "reference_pool",
           "QUICK", "aggregate"]

SAMPLERS = ("sbtm", "sbtm-annealed", "ula", "ula-annealed", "mala")
#: the default distances (names in :data:`sbtm_flows.metrics.METRICS`).
DISTANCES = ("w2", "mmd", "energy")


@dataclass(frozen=True)
class TargetSpec:
    """A benchmark target and its per-target settings.

    Attributes:
        name: registry name (``sbtm-flows list``).
        init_sd: σ₀ of the initial law N(0, σ₀²I) of every sampler.
        dt: ULA step (SBTM steps 2·dt); the horizon is T = budget·dt.
        standardize: compute metrics on coordinates standardized by the reference (posteriors).
        float64: run the samplers in float64 (posteriors: large |log π|).
    """

    name: str
    init_sd: float
    dt: float
    standardize: bool = False
    float64: bool = False


#: the full suite: 7 benchmark targets and the 4 posteriordb posteriors.  Steps: a fraction of the
#: stability limit 2/L of the Hessian's largest eigenvalue where the mass is (posteriors: ½·the
#: smallest eigenvalue of the reference covariance), initial laws roughly covering the support.
TARGET_SPECS: dict[str, TargetSpec] = {s.name: s for s in (
    TargetSpec("funnel", 1.0, 0.02),
    TargetSpec("manywell", 1.0, 0.02),
    TargetSpec("gmm40-2d", 20.0, 0.1),
    TargetSpec("gmm40-50d", 20.0, 0.1),
    TargetSpec("25gmm", 6.0, 0.05),
    TargetSpec("mos-50d", 6.0, 0.1),
    TargetSpec("dw4", 1.0, 0.01),
    TargetSpec("eight_schools", 1.0, 0.03, standardize=True, float64=True),
    TargetSpec("arK", 0.1, 5e-5, standardize=True, float64=True),
    TargetSpec("gp_pois_regr", 1.0, 4e-4, standardize=True, float64=True),
    TargetSpec("diamonds", 0.1, 5e-7, standardize=True, float64=True),
)}


@dataclass
class BenchConfig:
    """One benchmark run: ``targets`` × ``samplers`` × ``seeds`` (0..seeds−1), ``n`` particles and
    evaluation samples, ``budget`` score evaluations per particle (even), ``time_limit`` seconds per
    cell, the distances ``metrics`` (of :data:`sbtm_flows.metrics.METRICS`)."""

    targets: tuple[str, ...] = tuple(TARGET_SPECS)
    samplers: tuple[str, ...] = SAMPLERS
    seeds: int = 3
    n: int = 2000
    budget: int = 160
    time_limit: float = 60.0
    metrics: tuple[str, ...] = DISTANCES
    sbtm_kwargs: dict = field(default_factory=lambda: {"eta": "auto", "init_steps": 100})

    def __post_init__(self):
        bad = [t for t in self.targets if t not in TARGET_SPECS]
        if bad:
            raise ValueError(f"unknown benchmark targets {bad}; valid: {', '.join(TARGET_SPECS)}")
        bad = [s for s in self.samplers if s not in SAMPLERS]
        if bad:
            raise ValueError(f"unknown samplers {bad}; valid: {', '.join(SAMPLERS)}")
        bad = [m for m in self.metrics if m not in M.METRICS]
        if bad:
            raise ValueError(f"unknown metrics {bad}; valid: {', '.join(M.METRICS)}")
        if not (isinstance(self.budget, int) and self.budget >= 4 and self.budget % 2 == 0):
            raise ValueError(f"budget must be an even int >= 4 (score evaluations per particle), got {self.budget!r}")
        if not (isinstance(self.seeds, int) and self.seeds >= 1 and isinstance(self.n, int) and self.n >= 10):
            raise ValueError(f"seeds must be >= 1 and n >= 10, got seeds={self.seeds!r}, n={self.n!r}")
        if not self.time_limit > 0:
            raise ValueError(f"time_limit must be > 0 seconds, got {self.time_limit!r}")


#: ``--quick``: 2 targets (a mixture, a posterior), every sampler, 1 seed, 200 particles, budget 20.
QUICK = dict(targets=("25gmm", "eight_schools"), seeds=1, n=200, budget=20, time_limit=30.0,
             metrics=("w2", "energy"), sbtm_kwargs={"eta": "auto", "init_steps": 50})


# ----------------------------------------------------------------------------------------
# Targets and references
# ----------------------------------------------------------------------------------------
def make_bench_target(name: str):
    """The target called ``name`` (the CLI registry of :mod:`sbtm_flows.experiments`)."""
    from .experiments import make_target

    return make_target(name)


def dw4_reference() -> Tensor:
    """The DW-4 reference draws ``(m, 8)`` shipped in ``sbtm_flows/data/dw4_reference.pt`` (a long
    MALA run, regenerated by ``python benchmarks/dw4_reference.py``)."""
    with resources.as_file(resources.files("sbtm_flows") / "data" / "dw4_reference.pt") as p:
        blob = torch.load(p, weights_only=True)
    return blob["samples"].to(torch.float64)


def reference_pool(name: str, target, m: int, generator: torch.Generator) -> Tensor:
    """``m`` reference draws ``(m, d)`` float64 of target ``name``: exact draws where the target has
    ``sample``, else a random subset (without replacement) of its stored reference draws
    (posteriordb: the NUTS draws mapped to unconstrained coordinates; DW-4: the MALA reference).

    Raises:
        ValueError: the stored reference has fewer than ``m`` draws."""
    if callable(getattr(target, "reference_draws", None)):
        pool = target.unconstrain(target.reference_draws())
    elif name == "dw4":
        pool = dw4_reference()
    else:
        return target.sample(m, generator=generator).detach().cpu().to(torch.float64)
    if pool.shape[0] < m:
        raise ValueError(f"{name}: the stored reference has {pool.shape[0]} draws, {m} needed (lower n)")
    return pool[torch.randperm(pool.shape[0], generator=generator)[:m]].to(torch.float64)


# ----------------------------------------------------------------------------------------
# One cell
# ----------------------------------------------------------------------------------------
class CellTimeout(Exception):
    """A cell's sampler ran past its time limit."""


def _alarm(signum, frame):
    raise CellTimeout


def run_sampler(sampler: str, target, spec: TargetSpec, cfg: BenchConfig, seed: int) -> tuple[Tensor, int, int]:
    """Run one sampler on one target at the matched budget; returns ``(particles (n, d), score
    evaluations per particle, network evaluations)``."""
    dtype = torch.float64 if spec.float64 else torch.float32
    d = target.dim
    init = Gaussian(torch.zeros(d, dtype=dtype), spec.init_sd**2 * torch.eye(d, dtype=dtype))
    B, T = cfg.budget, cfg.budget * spec.dt
    common = dict(init=init, n=cfg.n, seed=seed, dtype=dtype)
    path = Geometric(init, target, t_final=T) if sampler.endswith("-annealed") else target
    if sampler == "mala":
        res = sample(target, method="mala", warmup=B // 2, steps=B // 2 - 1, step_size=spec.dt, save_every=B, **common)
        return res.particles, res.nfe, 0
    if sampler.startswith("ula"):
        res = sample(path, method="ula", t_final=T, dt=spec.dt, save_every=B, **common)
        return res.particles, res.nfe, 0
    kw = dict(cfg.sbtm_kwargs)
    res = sample(path, method="sbtm", t_final=T, dt=2 * spec.dt, save_every=B // 2, max_nfe=B, **kw, **common)
    fit = res.info.get("init_fit") or {}
    return res.particles, res.nfe, res.nfe + int(fit.get("steps", 0))


def _standardizer(pool: Tensor, spec: TargetSpec) -> Callable[[Tensor], Tensor]:
    if not spec.standardize:
        return lambda x: x.detach().cpu().to(torch.float64)
    mu, sd = pool.mean(0), pool.std(0)
    return lambda x: (x.detach().cpu().to(torch.float64) - mu) / sd


def mixture_of(target):
    """The target itself when it is a mixture with ``means (k, d)`` and ``weights (k,)``, else None."""
    return target if hasattr(target, "means") and hasattr(target, "weights") else None


def cell_metrics(x: Tensor, ref: Tensor, target, cfg: BenchConfig, gen: torch.Generator) -> dict:
    """The metrics of samples ``x (n, d)`` against reference draws ``ref (m, d)`` (same coordinates):
    the distances of ``cfg.metrics``, ``mean_err`` / ``sd_err`` (largest per-coordinate error in
    reference-sd units) and, for mixtures (raw coordinates), ``mode_tv``, ``emc`` and ``missed``."""
    out = {m: M.METRICS[m](x, ref, gen) for m in cfg.metrics}
    mu, sd = ref.mean(0), ref.std(0)
    out["mean_err"] = float(((x.mean(0) - mu).abs() / sd).max())
    out["sd_err"] = float((x.std(0) / sd - 1).abs().max())
    mix = mixture_of(target)
    if mix is not None:
        w = M.component_weights(x, mix)
        out["mode_tv"] = M.tv_distance(w, mix.weights.double().cpu())
        out["emc"] = M.entropic_mode_coverage(x, mix)
        expected = mix.weights.double().cpu() * x.shape[0] >= 5
        out["missed"] = int(((w == 0) & expected).sum())
    return out


def run_cell(sampler: str, name: str, target, spec: TargetSpec, cfg: BenchConfig, seed: int, ref: Tensor,
             to_metric: Callable[[Tensor], Tensor]) -> dict:
    """One (sampler, target, seed) row: status, reason, wall time, evaluations and metrics."""
    row = {"target": name, "sampler": sampler, "seed": seed, "status": "ok", "reason": "", "wall_s": float("nan"),
           "score_evals": 0, "net_evals": 0}
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, cfg.time_limit)
    t0 = time.perf_counter()
    try:
        x, row["score_evals"], row["net_evals"] = run_sampler(sampler, target, spec, cfg, seed)
    except CellTimeout:
        row.update(status="time_limit", reason=f"sampler ran past the {cfg.time_limit:g} s limit")
    except SamplingError as e:
        row.update(status="diverged", reason=str(e).split("\n")[0][:200])
    except Exception as e:  # noqa: BLE001 - a failed cell is a row with its reason, never a crash of the table
        row.update(status="error", reason=f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    row["wall_s"] = time.perf_counter() - t0
    if row["status"] != "ok":
        return row
    bad = int((~torch.isfinite(x)).any(1).sum())
    if bad:
        row.update(status="diverged", reason=f"{bad} of {x.shape[0]} particles are NaN/inf")
        return row
    gen = torch.Generator().manual_seed(1000 + seed)
    xm = to_metric(x)
    row.update(cell_metrics(xm, ref, target if not spec.standardize else None, cfg, gen))
    if row.get("missed", 0) > 0:
        row.update(status="missed_modes", reason=f"{row['missed']} mixture components expected to hold ≥ 5 particles hold none")
    return row


# ----------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------
def run_bench(cfg: BenchConfig, log: Callable[[str], None] | None = None, on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Every cell of ``cfg`` and, per target and seed, the noise floor (``sampler="floor"``: the
    metrics between two independent reference samples of size n).  Returns the rows."""
    rows = []
    for name in cfg.targets:
        spec = TARGET_SPECS[name]
        target = make_bench_target(name)
        for seed in range(cfg.seeds):
            gen = torch.Generator().manual_seed(7919 * (seed + 1))
            both = reference_pool(name, target, 2 * cfg.n, gen)
            to_metric = _standardizer(both, spec)
            ref, other = to_metric(both[: cfg.n]), to_metric(both[cfg.n :])
            floor = {"target": name, "sampler": "floor", "seed": seed, "status": "ok", "reason": "", "wall_s": 0.0,
                     "score_evals": 0, "net_evals": 0}
            floor.update(cell_metrics(other, ref, target if not spec.standardize else None, cfg,
                                      torch.Generator().manual_seed(1000 + seed)))
            cells = (run_cell(s, name, target, spec, cfg, seed, ref, to_metric) for s in cfg.samplers)
            for row in (floor, *cells):
                rows.append(row)
                if on_row is not None:
                    on_row(row)
                if log is not None:
                    log(_row_line(row))
    return rows


def _row_line(row: dict) -> str:
    vals = " ".join(f"{k}={row[k]:.4g}" for k in (*DISTANCES, "mean_err", "mode_tv") if isinstance(row.get(k), float))
    return (f"{row['target']:<14} {row['sampler']:<14} seed {row['seed']} {row['status']:<12} {row['wall_s']:6.1f}s "
            f"evals {row['score_evals']:>4} {vals} {row['reason'][:80]}")


COLUMNS = ("target", "sampler", "seed", "status", "reason", "wall_s", "score_evals", "net_evals", *DISTANCES, "sinkhorn",
           "sliced_w2", "mean_err", "sd_err", "mode_tv", "emc", "missed")


def aggregate(rows: list[dict], metrics: tuple[str, ...]) -> list[dict]:
    """Per (target, sampler): mean and sd over the successful seeds of each metric, the wall time
    and evaluations, and ``ok`` = successful/total plus the failure reasons."""
    out = []
    keys = [*metrics, "mean_err", "sd_err", "mode_tv", "emc", "wall_s", "score_evals", "net_evals"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["target"], r["sampler"]), []).append(r)
    for (tname, sname), rs in groups.items():
        good = [r for r in rs if r["status"] in ("ok", "missed_modes")]
        agg = {"target": tname, "sampler": sname, "ok": f"{sum(r['status'] == 'ok' for r in rs)}/{len(rs)}",
               "reasons": "; ".join(sorted({f"{r['status']}: {r['reason']}" for r in rs if r["status"] != "ok"}))}
        for k in keys:
            vals = torch.tensor([float(r[k]) for r in good if isinstance(r.get(k), (int, float))], dtype=torch.float64)
            agg[k] = (float(vals.mean()), float(vals.std()) if vals.numel() > 1 else 0.0) if vals.numel() else None
        out.append(agg)
    return out


def _fmt(v) -> str:
    if v is None:
        return "—"
    m, s = v
    return f"{m:.3g} ± {s:.2g}"


def write_results(rows: list[dict], cfg: BenchConfig, out: str | FsPath, name: str, header: str = "") -> tuple[FsPath, FsPath]:
    """Write the per-cell rows to ``out/name.csv`` and the aggregated table (mean ± sd over seeds,
    next to each target's noise floor) to ``out/name.md``; returns both paths."""
    out = FsPath(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / f"{name}.csv", out / f"{name}.md"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    cols = [*cfg.metrics, "mean_err", "sd_err", "mode_tv", "emc"]
    lines = [header, "", "| target | sampler | ok | " + " | ".join(cols) + " | wall s | score evals | net evals |",
             "|" + "---|" * (len(cols) + 6)]
    for a in aggregate(rows, cfg.metrics):
        cells = [_fmt(a[c]) for c in cols]
        ev = "—" if a["score_evals"] is None else f"{a['score_evals'][0]:.0f}"
        ne = "—" if a["net_evals"] is None else f"{a['net_evals'][0]:.0f}"
        lines.append(f"| {a['target']} | {a['sampler']} | {a['ok']} | " + " | ".join(cells)
                     + f" | {_fmt(a['wall_s'])} | {ev} | {ne} |")
    fails = [f"- {a['target']} / {a['sampler']}: {a['reasons']}" for a in aggregate(rows, cfg.metrics) if a["reasons"]]
    if fails:
        lines += ["", "Failed cells (status: reason):", *fails]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def describe(cfg: BenchConfig) -> str:
    """A header stating the settings of a run (budget, n, seeds, per-target σ₀, dt, horizon)."""
    specs = ", ".join(f"{t} (σ₀ {TARGET_SPECS[t].init_sd:g}, dt {TARGET_SPECS[t].dt:g}, T {cfg.budget * TARGET_SPECS[t].dt:g})"
                      for t in cfg.targets)
    return (f"Budget: {cfg.budget} target-score evaluations per particle for every sampler; n = {cfg.n} particles "
            f"(= evaluation samples, against {cfg.n} reference samples); seeds 0–{cfg.seeds - 1}; cell time limit "
            f"{cfg.time_limit:g} s; SBTM options {cfg.sbtm_kwargs}. Targets: {specs}. Each metric: mean ± sd over the "
            "successful seeds; the `floor` rows are the same metric between two independent reference samples.")
