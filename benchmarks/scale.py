"""Scale benchmark (issue 13): per-step cost and peak memory of SBTM as n grows, d = 2.

Every measurement runs in its own process (peak RSS = that process's ``ru_maxrss``), one thread,
and the configurations are alternated over the repeats, so that load on a shared machine hits
them alike; medians are printed.

    PYTHONPATH=. python benchmarks/scale.py steps  [--ns 1e3 1e4 1e5 1e6] [--repeats 3]
    PYTHONPATH=. python benchmarks/scale.py paper  [--repeats 3]     # n = 1e5, tanh 128×128, discrete training
    PYTHONPATH=. python benchmarks/scale.py profile [--n 1e5]        # cProfile of one discrete step and one flow step
    PYTHONPATH=. python benchmarks/scale.py dtype                    # float32 vs float64 on §5.1
    PYTHONPATH=. python benchmarks/scale.py compile                  # torch.compile trial on the RHS's network
    PYTHONPATH=. python benchmarks/scale.py ranks [--n 1e5]          # 1 vs 2 gloo processes (torchrun), wall time

Per step = the time spent in the solver (torchdiffeq's steps, the discrete training's optimizer
steps included) over S steps of a run that saves only at t0 and at the end, divided by S;
``per_step_with_outputs`` = the run's wall time / S also includes the two output times
(diagnostics over up to 65536 particles, the stiffness pre-check of the flow).  The initial fit
is excluded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": ROOT}


def child_run(n: int, training: str, steps: int, hidden: tuple, activation: str, batch, dtype: str) -> dict:
    """One SBTM run in this process: §5.1-like Gaussian in d = 2; per-step wall and peak RSS."""
    import sbtm_flows as sf

    torch.set_num_threads(1)
    target = sf.targets.Gaussian(mean=torch.zeros(2, dtype=torch.float64), cov=torch.eye(2, dtype=torch.float64))
    init = sf.targets.Gaussian(mean=torch.zeros(2, dtype=torch.float64), cov=0.5 * torch.eye(2, dtype=torch.float64))
    dt = 0.01
    import sbtm_flows.sampling as sampling

    inner, spent = sampling.odeint_chunk, [0.0]

    def timed(*a, **k):  # the solver's steps (training included), not the output times
        t0 = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            spent[0] += time.perf_counter() - t0

    sampling.odeint_chunk = timed
    res = sf.sample(target, init=init, n=n, t_final=steps * dt, dt=dt, save_every=steps, training=training,
                    hidden=hidden, activation=activation, batch=batch, init_steps=200, dtype=dtype, seed=0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    var = float(res.particles.double().var(0).mean())
    return {"n": n, "training": training, "steps": steps, "per_step": spent[0] / steps,
            "per_step_with_outputs": res.wall_time / steps, "peak_rss": rss,
            "batch": res.info.get("batch"), "var": var, "hidden": list(hidden), "activation": activation}


def spawn(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "child", *args], env=ENV, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def steps_for(n: int) -> int:
    return 20 if n <= 1e4 else (10 if n <= 1e5 else 4)


def bench_steps(ns: list[int], repeats: int, trainings=("steps", "flow"), hidden="64,64", activation="silu") -> list[dict]:
    """Median per-step time and peak RSS for each (n, training), alternating over repeats."""
    runs: dict[tuple, list[dict]] = {}
    for r in range(repeats):
        for n in ns:
            for tr in trainings:
                rec = spawn([str(n), tr, str(steps_for(n)), hidden, activation])
                runs.setdefault((n, tr), []).append(rec)
                print(f"  repeat {r}: n={n:.0e} {tr}: {rec}", file=sys.stderr, flush=True)
    rows = []
    for (n, tr), recs in runs.items():
        ok = [x for x in recs if "error" not in x]
        if not ok:
            rows.append({"n": n, "training": tr, "error": recs[0]["error"][-300:]})
            continue
        rows.append({"n": n, "training": tr, "batch": ok[0]["batch"], "hidden": hidden, "activation": activation,
                     "per_step_median": statistics.median(x["per_step"] for x in ok),
                     "per_step_all": [round(x["per_step"], 4) for x in ok],
                     "peak_rss_gb": statistics.median(x["peak_rss"] for x in ok) / 1e9,
                     "bytes_per_particle": statistics.median(x["peak_rss"] for x in ok) / n})
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'n':>9} {'training':>8} {'batch':>6} {'s/step (median)':>16} {'peak RSS GB':>12} {'B/particle':>11}")
    for r in rows:
        if "error" in r:
            print(f"{r['n']:>9.0e} {r['training']:>8} ERROR {r['error']}")
            continue
        print(f"{r['n']:>9.0e} {r['training']:>8} {r['batch']:>6} {r['per_step_median']:>16.4f} {r['peak_rss_gb']:>12.3f} "
              f"{r['bytes_per_particle']:>11.0f}")
    by = {(r["n"], r["training"]): r.get("per_step_median") for r in rows}
    for tr in ("steps", "flow"):
        a, b = by.get((int(1e5), tr)), by.get((int(1e4), tr))
        if a and b:
            print(f"t(1e5)/t(1e4), {tr}: {a / b:.2f}")


def profile(n: int) -> None:
    """cProfile of one discrete-training step (K = 5 inner steps + heun2) and one flow RHS."""
    import cProfile
    import pstats

    import sbtm_flows as sf

    torch.set_num_threads(1)
    target = sf.targets.Gaussian(mean=torch.zeros(2), cov=torch.eye(2))
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(0)) * math.sqrt(0.5)
    for name in ("steps", "flow"):
        model = sf.ScoreMLP(2)
        dyn = sf.SBTMSteps(target, model) if name == "steps" else sf.SBTMFlow(target, model)
        dyn.configure_scale(batch=4096)
        y = dyn.initial_state(x)
        if name == "flow":
            dyn.choose_batch(n, 0)

        def one_step():
            if name == "steps":
                dyn.callback_step(torch.tensor(0.0), y, torch.tensor(0.01))
            k1 = dyn(torch.tensor(0.0), y)
            dyn(torch.tensor(0.01), y + 0.01 * k1)

        one_step()
        pr = cProfile.Profile()
        t0 = time.perf_counter()
        pr.enable()
        one_step()
        pr.disable()
        print(f"== {name}, n = {n:.0e}, batch 4096: one heun2 step {time.perf_counter() - t0:.3f} s")
        pstats.Stats(pr).sort_stats("tottime").print_stats(8)


def dtype_compare(repeats: int) -> None:
    """§5.1 (n = 1000, t = 2, flow, heun2): wall time and variance error, float32 vs float64."""
    import sbtm_flows as sf

    torch.set_num_threads(1)
    target = sf.targets.Gaussian(mean=torch.zeros(1), cov=torch.eye(1))
    init = sf.targets.Gaussian(mean=torch.zeros(1), cov=(1 - math.exp(-0.2)) * torch.eye(1))
    exact = 1 - math.exp(-2 * (2.0 + 0.1))
    walls: dict[str, list[float]] = {"float32": [], "float64": []}
    errs: dict[str, float] = {}
    for _ in range(repeats):
        for dt in ("float32", "float64"):
            res = sf.sample(target, init=init, n=1000, t_final=2.0, dt=0.01, training="flow", dtype=dt, seed=0)
            walls[dt].append(res.wall_time)
            errs[dt] = float(res.particles.double().var()) / exact - 1
    for dt in walls:
        print(f"{dt}: wall median {statistics.median(walls[dt]):.3f} s {[round(w, 3) for w in walls[dt]]}, "
              f"variance error at t=2 {100 * errs[dt]:+.3f} %")
    print(f"float64/float32 wall: {statistics.median(walls['float64']) / statistics.median(walls['float32']):.2f}")


def compile_trial() -> None:
    """torch.compile on the network the RHS evaluates: the no-grad forward that moves particles
    (n = 1e5, tanh 128×128) and the loss with its double backward."""
    import sbtm_flows as sf
    from sbtm_flows.losses import score_matching_terms

    torch.set_num_threads(1)
    m = sf.ScoreMLP(2, (128, 128), "tanh")
    x = torch.randn(100000, 2)
    fwd = torch.compile(lambda z: m(z))
    with torch.no_grad():
        t0 = time.perf_counter()
        fwd(x)
        print(f"compile time: {time.perf_counter() - t0:.1f} s")
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(3):
            for name, f in (("eager", m), ("compiled", fwd)):
                t0 = time.perf_counter()
                f(x)
                times[name].append(time.perf_counter() - t0)
    e, c = statistics.median(times["eager"]), statistics.median(times["compiled"])
    print(f"no-grad forward n=1e5: eager {e:.3f} s, compiled {c:.3f} s, ratio {c / e:.2f}")
    try:
        terms = score_matching_terms(torch.compile(m), x[:4096])[0]
        torch.autograd.grad(terms.mean(), list(m.parameters()))
        print("loss + double backward: compiled OK")
    except Exception as err:  # noqa: BLE001 — the trial reports whatever torch raises
        print(f"loss + double backward: does not compile ({type(err).__name__}: {str(err)[:160]})")


def ranks(n: int, repeats: int) -> None:
    """Wall time of the same discrete-training run in 1 process and in 2 gloo processes."""
    script = os.path.join(HERE, "scale_ranks.py")
    walls: dict[int, list[float]] = {1: [], 2: []}
    runs: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(repeats):
        for p in (1, 2):
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(p), "--master-port", "29533",
                   script, str(n)]
            t0 = time.perf_counter()
            out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, check=False)
            walls[p].append(time.perf_counter() - t0)
            if out.returncode != 0:
                print(out.stderr[-1500:])
                continue
            runs[p].append(json.loads(out.stdout.strip().splitlines()[-1])["wall"])
            print(f"  {p} process(es): {out.stdout.strip()}", file=sys.stderr)
    for p in walls:
        print(f"{p} process(es), n={n:.0e}, 10 discrete-training steps: run wall median {statistics.median(runs[p]):.2f} s "
              f"{[round(w, 2) for w in runs[p]]}; whole command (start-up, initial fit) {statistics.median(walls[p]):.2f} s")
    print(f"speed-up 1 -> 2 processes (run wall): {statistics.median(runs[1]) / statistics.median(runs[2]):.2f}")


def main() -> None:
    if sys.argv[1] == "child":
        n, tr, steps, hidden, act = sys.argv[2:7]
        batch = None if len(sys.argv) > 7 and sys.argv[7] == "all" else (int(sys.argv[7]) if len(sys.argv) > 7 else 4096)
        print(json.dumps(child_run(int(float(n)), tr, int(steps), tuple(int(h) for h in hidden.split(",")), act, batch, "float32")))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["steps", "paper", "profile", "dtype", "compile", "ranks"])
    ap.add_argument("--ns", nargs="+", type=float, default=[1e3, 1e4, 1e5, 1e6])
    ap.add_argument("--n", type=float, default=1e5)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}, 1 thread per process, "
          f"{os.cpu_count()} cores (shared)")
    if a.what == "steps":
        print_table(bench_steps([int(n) for n in a.ns], a.repeats))
    elif a.what == "paper":
        print_table(bench_steps([int(1e5)], a.repeats, trainings=("steps",), hidden="128,128", activation="tanh"))
    elif a.what == "profile":
        profile(int(a.n))
    elif a.what == "dtype":
        dtype_compare(a.repeats)
    elif a.what == "compile":
        compile_trial()
    else:
        ranks(int(a.n), a.repeats)


if __name__ == "__main__":
    main()
