"""A hostile new user's sweep of ``sf.sample``: every method with its defaults on many targets,
every torchdiffeq solver on the flow, bad inputs, seeding and checkpoint/resume.

Run:  OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/robustness_sweep.py [GROUP ...] [--out FILE]
Groups: gaussians, benchmarks, posteriordb, solvers, bad_inputs, seeds (default: all, ≈ 10 min on
one core).  Writes a markdown table (default ``benchmarks/results/robustness_sweep.md``).

Each run is ``sf.sample(target, method=M, n=small, t_final=short, seed=0)`` with the method's
defaults otherwise, and must either give a sane answer or stop with a ValueError / SamplingError
naming the problem; the outcome column is one of

* ``ok``: finite particles, within the tolerance of the exact law (Gaussians, below);
* ``ran``: finite particles, no exact law to check against (the numbers are given);
* ``refused``: ValueError / SamplingError (its message, shortened);
* ``OFF``: finite particles outside the tolerance — a silently wrong answer;
* ``NaN``, ``CRASH`` (another exception type), ``HANG`` (over the time limit): failures.

Gaussian targets N(m, Σ) from the default init N(0, I) have a known law at time t: the flow
(SBTM, both trainings) follows the Fokker–Planck solution, N(m + e^{−tA}(0 − m), Σ +
e^{−tA}(I − Σ)e^{−tA}) with A = Σ⁻¹; ULA (Euler–Maruyama, step h) the recursion
μ_{k+1} = μ_k − hA(μ_k − m), C_{k+1} = (I − hA)C_k(I − hA) + 2hI exactly; MALA, PIS and DIS
target N(m, Σ).  Errors: mean = max_i |x̄_i − μ_i|/√C_ii, cov = ‖Ĉ − C‖_F/‖C‖_F, each also
for n exact draws (the floor, mean of 5 draws).  ``ok`` when both are ≤ 3·floor + 0.05
(PIS/DIS, trained for 100 iterations here: + 0.25, and their ESS/n is reported).
"""

from __future__ import annotations

import argparse
import math
import signal
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch

import sbtm_flows as sf
from sbtm_flows.targets.benchmarks import BENCHMARK_TARGETS

LIMIT_S = 240  # a run longer than this is a HANG
N = 300
T_FINAL = 1.0
METHODS = [("sbtm", {}), ("sbtm", {"training": "steps"}), ("ula", {}), ("mala", {}), ("pis", {}), ("dis", {})]
#: per-method sizes: MALA has iterations instead of t_final, PIS/DIS train for `iterations` steps
SIZES = {"mala": dict(steps=500, warmup=500), "pis": dict(iterations=100), "dis": dict(iterations=100)}
ROWS: list[tuple[str, ...]] = []


class Hang(Exception):
    pass


def _alarm(*_):
    raise Hang(f"over {LIMIT_S} s")


def label(method: str, kw: dict) -> str:
    """``sbtm (flow)``, ``sbtm (steps)``, ``sbtm solver=midpoint``, ``ula``, …"""
    if method != "sbtm":
        return method
    extra = " ".join(f"{k}={v}" for k, v in kw.items() if k != "training")
    return f"sbtm ({kw.get('training', 'flow')}){' ' + extra if extra else ''}"


def call(target, method: str, kw: dict, n: int = N, seed: int = 0, sizes: dict | None = None):
    """``(result or None, outcome, message, seconds)`` of one ``sf.sample`` call (``sizes``: the
    run's length options, default :data:`SIZES` or t_final = :data:`T_FINAL`)."""
    args = dict(n=n, seed=seed, **(SIZES.get(method, {"t_final": T_FINAL}) if sizes is None else sizes))
    args.update(kw)
    t = time.perf_counter()
    signal.alarm(LIMIT_S)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = sf.sample(target, method=method, **args)
        out, msg = ("ok", "") if torch.isfinite(res.particles).all() else ("NaN", "non-finite particles returned")
    except (ValueError, sf.SamplingError) as e:
        res, out, msg = None, "refused", f"{type(e).__name__}: {e}"
    except Hang as e:
        res, out, msg = None, "HANG", str(e)
    except Exception as e:  # noqa: BLE001 - the sweep records every failure
        res, out, msg = None, "CRASH", f"{type(e).__name__}: {e} @ {traceback.extract_tb(e.__traceback__)[-1].name}"
    finally:
        signal.alarm(0)
    return res, out, msg, time.perf_counter() - t


def short(msg: str, k: int = 150) -> str:
    msg = msg.replace("|", "\\|").replace("\n", " ")
    return msg if len(msg) <= k else msg[: k - 1] + "…"


def record(group: str, target: str, method: str, outcome: str, numbers: str, seconds: float) -> None:
    ROWS.append((group, target, method, outcome, numbers, f"{seconds:.1f}"))
    print(" | ".join(ROWS[-1]), flush=True)


# ---------------------------------------------------------------------------------------
# Gaussians: exact laws
# ---------------------------------------------------------------------------------------
def gaussian_law(method: str, kw: dict, m: torch.Tensor, S: torch.Tensor, t: float, dt: float = 0.01):
    """(mean, cov) of the law the method's particles follow at time t from N(0, I) (module doc)."""
    d = m.numel()
    eye = torch.eye(d, dtype=torch.float64)
    if method in ("mala", "pis", "dis"):
        return m, S
    A = torch.linalg.inv(S)
    if method == "ula":
        steps = round(t / dt)
        M = eye - dt * A
        mu, C = torch.zeros(d, dtype=torch.float64), eye.clone()
        for _ in range(steps):
            mu, C = mu - dt * A @ (mu - m), M @ C @ M.T + 2 * dt * eye
        return mu, C
    w, V = torch.linalg.eigh(A)
    E = V @ torch.diag(torch.exp(-t * w)) @ V.T
    return m - E @ m, S + E @ (eye - S) @ E.T


def errors(x: torch.Tensor, mu: torch.Tensor, C: torch.Tensor) -> tuple[float, float]:
    """(max standardized mean error, relative Frobenius covariance error) of particles x (n, d)."""
    x = x.double()
    xc = x - x.mean(0)
    cov = xc.T @ xc / (x.shape[0] - 1)
    return float(((x.mean(0) - mu).abs() / C.diagonal().sqrt()).max()), float((cov - C).norm() / C.norm())


def floors(mu: torch.Tensor, C: torch.Tensor, n: int, reps: int = 5) -> tuple[float, float]:
    """The errors of n exact draws of N(mu, C), averaged over ``reps`` draws."""
    g = torch.Generator().manual_seed(123)
    L = torch.linalg.cholesky(C)
    e = [errors(mu + torch.randn(n, mu.numel(), generator=g, dtype=torch.float64) @ L.T, mu, C) for _ in range(reps)]
    return sum(a for a, _ in e) / reps, sum(b for _, b in e) / reps


def ill_conditioned(d: int, cond: float = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A correlated covariance Q diag(logspace(0, log10 cond)) Qᵀ (random rotation Q, seed 1)."""
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return torch.zeros(d, dtype=torch.float64), (q * torch.logspace(0, math.log10(cond), d, dtype=torch.float64)) @ q.T


def gaussian_cases():
    for d in (1, 2, 10, 50):
        yield f"N(1, 2I) d={d}", torch.ones(d, dtype=torch.float64), 2 * torch.eye(d, dtype=torch.float64)
    for d in (2, 10):
        yield (f"correlated, cond 100, d={d}", *ill_conditioned(d))


def sweep_gaussians() -> None:
    for name, m, S in gaussian_cases():
        for dtype in (torch.float32, torch.float64):
            target = sf.Gaussian(m.to(dtype), S.to(dtype))
            for method, kw in METHODS:
                res, out, msg, sec = call(target, method, dict(kw, dtype=dtype))
                tname = f"{name} {str(dtype)[6:]}"
                if res is None or out != "ok":
                    record("gaussians", tname, label(method, kw), out, short(msg), sec)
                    continue
                mu, C = gaussian_law(method, kw, m, S, T_FINAL)
                em, ec = errors(res.particles, mu, C)
                fm, fc = floors(mu, C, res.particles.shape[0])
                slack = 0.05 + (0.25 if method in ("pis", "dis") else 0.0)
                verdict = "ok" if em <= 3 * fm + slack and ec <= 3 * fc + slack else "OFF"
                ess = f", ESS/n {res.info['ess']:.2f}" if "ess" in res.info else ""
                record("gaussians", tname, label(method, kw), verdict,
                       f"mean err {em:.3f} (floor {fm:.3f}), cov err {ec:.3f} (floor {fc:.3f}){ess}", sec)


# ---------------------------------------------------------------------------------------
# Benchmark targets and posteriordb: no closed form at time t; distances to π reported
# ---------------------------------------------------------------------------------------
def describe(res, target) -> str:
    """Energy distance of the particles to π (ratio to the noise floor) when π can be sampled."""
    x = res.particles.double()
    text = f"mean |x̄| {float(x.mean(0).abs().max()):.3g}, sd {float(x.std(0).min()):.3g}–{float(x.std(0).max()):.3g}"
    if getattr(target, "has_sample", False):
        cmp = sf.compare_laws(res.particles.double(), target.double(), floor_reps=3, draws=3)
        text += f"; energy to π {float(cmp.ratio[-1]):.3g}× floor"
    if "ess" in res.info:
        text += f", ESS/n {res.info['ess']:.2f}"
    return text


def sweep_benchmarks() -> None:
    for name, make in BENCHMARK_TARGETS.items():
        target = make()
        for method, kw in METHODS:
            res, out, msg, sec = call(target, method, kw)
            record("benchmarks", name, label(method, kw), "ran" if out == "ok" else out,
                   describe(res, target) if out == "ok" else short(msg), sec)


def sweep_posteriordb() -> None:
    for name in ("arK", "gp_pois_regr", "diamonds"):
        post = sf.posteriordb.load(name)
        for method, kw in METHODS:
            res, out, msg, sec = call(post, method, kw)
            if out != "ok":
                record("posteriordb", name, label(method, kw), out, short(msg), sec)
                continue
            c = post.compare(res.particles.double(), reps=2)
            record("posteriordb", name, label(method, kw), "ran",
                   f"max mean err {c['max_mean_error']:.3g} ref sd, max sd err {c['max_sd_error']:.3g}", sec)


# ---------------------------------------------------------------------------------------
# every torchdiffeq method on the flow, 1-D Gaussian (§5.1's laws, t = 1)
# ---------------------------------------------------------------------------------------
SOLVER_NAMES = ["euler", "midpoint", "rk4", "heun2", "heun3", "explicit_adams", "implicit_adams", "fixed_adams", "dopri5",
                "dopri8", "bosh3", "adaptive_heun", "fehlberg2", "scipy_solver", "rkc"]


def sweep_solvers() -> None:
    v0 = 1 - math.exp(-0.2)
    target = sf.Gaussian(torch.zeros(1), torch.eye(1))
    init = sf.Gaussian(torch.zeros(1), v0 * torch.eye(1))
    exact = 1 + math.exp(-2 * T_FINAL) * (v0 - 1)
    for dtype in (torch.float32, torch.float64):
        for solver in SOLVER_NAMES:
            name = f"N(0,1) from N(0,{v0:.3f}) {str(dtype)[6:]}"
            for eta in (None, 2.0):  # the default η = 5, and η = 2 where η = 5 stops as stiff
                kw = dict(init=init, solver=solver, dtype=dtype) if eta is None else dict(init=init, solver=solver, dtype=dtype, eta=eta)
                res, out, msg, sec = call(target, "sbtm", kw, n=500)
                method = f"sbtm solver={solver}" + ("" if eta is None else f" eta={eta:g}")
                if out != "ok":
                    record("solvers", name, method, out, short(msg), sec)
                    if "became stiff" in msg:
                        continue
                    break
                # n = 500: the sd of a sample variance is √(2/n) ≈ 6 %; 10 % is a miss
                err = float(res.particles.double().var()) / exact - 1
                record("solvers", name, method, "ok" if abs(err) < 0.10 else "OFF",
                       f"Var X_1 {float(res.particles.double().var()):.4f} (exact {exact:.4f}, {100 * err:+.1f} %), NFE {res.nfe}", sec)
                break


# ---------------------------------------------------------------------------------------
# bad inputs, for every method
# ---------------------------------------------------------------------------------------
class _NaNScore(sf.Gaussian):
    def score(self, x):
        return torch.full_like(x, float("nan"))


class _LateNaN(torch.nn.Module):
    """N(3, I) with log π, ∇log π NaN where x₀ > 2 (reached only along the run); duck-typed."""

    dim = 2

    def log_prob(self, x):
        return torch.where(x[:, 0] > 2.0, torch.nan, -0.5 * ((x - 3) ** 2).sum(-1))

    def score(self, x):
        return torch.where(x[:, :1] > 2.0, torch.nan, -(x - 3))


def bad_cases():
    t2 = sf.Gaussian(torch.zeros(2), torch.eye(2))
    good = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    nan_x, inf_x = good.clone(), good.clone()
    nan_x[3, 1], inf_x[0, 0] = float("nan"), float("inf")
    near = sf.Gaussian(torch.zeros(2), 0.1 * torch.eye(2))
    return {
        "init of shape (n, 3)": (t2, dict(init=torch.randn(50, 3))),
        "init of shape (n,)": (t2, dict(init=torch.randn(50))),
        "NaN in init": (t2, dict(init=nan_x)),
        "inf in init": (t2, dict(init=inf_x)),
        "score NaN everywhere": (_NaNScore(torch.zeros(2), torch.eye(2)), {}),
        "score NaN where x₀ > 2 (reached later)": (_LateNaN(), dict(init=near)),
        "dt = 0": (t2, dict(dt=0.0)),
        "dt < 0": (t2, dict(dt=-0.01)),
        "dt = 1e-12": (t2, dict(dt=1e-12)),
        "dt = 1e-300": (t2, dict(dt=1e-300)),
        "dt = nan": (t2, dict(dt=float("nan"))),
        "t_final < t0": (t2, dict(t_final=-1.0)),
        "t_final = inf": (t2, dict(t_final=float("inf"))),
        "n = 0": (t2, dict(n=0)),
        "n = 1": (t2, dict(n=1)),
        "n = 2.5": (t2, dict(n=2.5)),
        "unknown option foo=1": (t2, dict(foo=1)),
        "typo t_finall=1": (t2, dict(t_finall=1.0)),
        "seed = -1": (t2, dict(seed=-1)),
        "dtype = float16": (t2, dict(dtype=torch.float16)),
        "save_every = 0": (t2, dict(save_every=0)),
        "target = None": (None, {}),
    }


BAD_SIZES = {"mala": dict(steps=100, warmup=100, save_every=50), "pis": dict(iterations=5, batch_size=32),
             "dis": dict(iterations=5, batch_size=32)}


def sweep_bad_inputs() -> None:
    for name, (target, kw) in bad_cases().items():
        for method, mk in METHODS:
            kw2 = dict(kw)
            if method in ("pis", "dis") and name.startswith("score NaN where"):
                kw2.pop("init")  # they start from their reference's law (an init is refused above)
            n = kw2.pop("n", 50)
            seed = kw2.pop("seed", 0)
            sizes = BAD_SIZES.get(method, {"t_final": 0.1 if "init" not in kw2 else 1.0})
            res, out, msg, sec = call(target, method, {**kw2, **mk}, n=n, seed=seed, sizes=sizes)
            text = short(msg, 170) if out != "ok" else f"ran: max x₀ {float(res.particles[:, 0].max()):.3g}"
            record("bad input", name, label(method, mk), "ran" if out == "ok" else out, text, sec)


# ---------------------------------------------------------------------------------------
# same seed ⇒ same particles; checkpoint + interrupted resume is bitwise
# ---------------------------------------------------------------------------------------
def _interrupt(cls, after: int):
    """Patch ``cls.advance`` to raise KeyboardInterrupt at its ``after``-th call; returns the undo."""
    real, calls = cls.advance, []

    def advance(self, state, t0, t1):
        calls.append(t1)
        if len(calls) == after:
            raise KeyboardInterrupt
        return real(self, state, t0, t1)

    cls.advance = advance
    return lambda: setattr(cls, "advance", real)


def sweep_seeds() -> None:
    from sbtm_flows.learned.sampler import LearnedDiffusion
    from sbtm_flows.mala import MALA
    from sbtm_flows.sampling import SBTMSampler
    from sbtm_flows.sde import ULASampler

    target = sf.Gaussian(torch.ones(2), torch.eye(2))
    classes = {"sbtm": SBTMSampler, "ula": ULASampler, "mala": MALA, "pis": LearnedDiffusion, "dis": LearnedDiffusion}
    runs = [("sbtm", dict(t_final=0.2, save_every=5)), ("sbtm", dict(training="steps", t_final=0.2, save_every=5)),
            ("sbtm", dict(solver="dopri5", t_final=0.2, save_every=5)), ("sbtm", dict(solver="heun2", t_final=0.2, save_every=5)),
            ("ula", dict(t_final=0.2, save_every=5)), ("mala", dict(steps=40, warmup=40, save_every=10)),
            ("pis", dict(iterations=8, batch_size=32, save_every=2)), ("dis", dict(iterations=8, batch_size=32, save_every=2))]
    folder = Path(tempfile.mkdtemp())
    for i, (method, kw) in enumerate(runs):
        t = time.perf_counter()
        kw = dict(kw, n=40)
        a = sf.sample(target, method=method, seed=3, **kw)
        b = sf.sample(target, method=method, seed=3, **kw)
        c = sf.sample(target, method=method, seed=4, **kw)
        ck = folder / f"run{i}.ckpt"
        undo = _interrupt(classes[method], 3)
        try:
            sf.sample(target, method=method, seed=3, checkpoint=ck, checkpoint_every=1, **kw)
            resumed = "the interrupt did not fire"
        except KeyboardInterrupt:
            resumed = None
        finally:
            undo()
        if resumed is None:
            r = sf.sample(target, method=method, seed=3, checkpoint=ck, checkpoint_every=1, resume=True, **kw)
            resumed = torch.equal(r.particles, a.particles) and torch.equal(r.trajectory, a.trajectory)
        same, other = torch.equal(a.particles, b.particles), not torch.equal(a.particles, c.particles)
        ok = same and other and resumed is True
        record("seeds/resume", "N(1, I) d=2", label(method, {k: v for k, v in kw.items() if k in ("training", "solver")}),
               "ok" if ok else "FAIL", f"same seed equal {same}, other seed differs {other}, "
               f"interrupted at output 3 + resume bitwise {resumed}", time.perf_counter() - t)


GROUPS = {"gaussians": sweep_gaussians, "benchmarks": sweep_benchmarks, "posteriordb": sweep_posteriordb,
          "solvers": sweep_solvers, "bad_inputs": sweep_bad_inputs, "seeds": sweep_seeds}


def write(out: Path, seconds: float, groups: list[str]) -> None:
    counts: dict[str, int] = {}
    for row in ROWS:
        counts[row[3]] = counts.get(row[3], 0) + 1
    lines = ["# Robustness sweep", "",
             f"`OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/robustness_sweep.py {' '.join(groups)}` "
             f"({seconds / 60:.1f} min on this 2-core machine, torch {torch.__version__}). "
             f"n = {N}, t_final = {T_FINAL} (MALA {SIZES['mala']}, PIS/DIS {SIZES['pis']}), seed 0, other options default; "
             "outcomes and tolerances in the script's docstring.", "",
             "Outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), "",
             "| group | target | method | outcome | numbers / message | s |", "|---|---|---|---|---|---|"]
    merged: list[list[str]] = []  # rows differing only in the method (and seconds) share one line
    for r in ROWS:
        if merged and merged[-1][:2] == list(r[:2]) and merged[-1][3:5] == list(r[3:5]):
            merged[-1][2] += f" / {r[2]}"
            merged[-1][5] = f"{float(merged[-1][5]) + float(r[5]):.1f}"
        else:
            merged.append(list(r))
    lines += ["| " + " | ".join(r) + " |" for r in merged]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("groups", nargs="*", help=f"any of {', '.join(GROUPS)} (default: all)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "robustness_sweep.md")
    args = p.parse_args()
    for g in args.groups:
        if g not in GROUPS:
            p.error(f"unknown group {g!r}; valid: {', '.join(GROUPS)}")
    torch.set_num_threads(1)
    signal.signal(signal.SIGALRM, _alarm)
    groups = args.groups or list(GROUPS)
    t = time.perf_counter()
    for g in groups:
        GROUPS[g]()
    write(args.out, time.perf_counter() - t, args.groups)


if __name__ == "__main__":
    main()
