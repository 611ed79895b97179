"""Command line: ``sbtm-flows run | sample | list``.

    sbtm-flows run gaussian-1d --out runs/gaussian-1d      # a paper experiment (figures + metrics.json)
    sbtm-flows run gaussian-1d --quick                      # seconds, for smoke tests
    sbtm-flows run --config runs/gaussian-1d/config.json    # repeat a run exactly
    sbtm-flows sample --target gmm2d --method sbtm --solver dopri5 --n 2000 --t-final 5 --out runs/x
    sbtm-flows list                                         # experiments, targets, methods, solvers
    sbtm-flows sample --target dw4 --method mala --n 500 --steps 2000 --warmup 500 --out runs/dw4
    sbtm-flows bench --quick                                # the benchmark table, small (benchmarks/results/quick.*)

Errors (unknown names, bad numbers, unwritable folders, failed runs) exit with status 2
and one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pathlib
import shutil
import sys
import tempfile

__all__ = ["main"]


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise _CliError(f"{self.prog}: {message}")


class _CliError(Exception):
    pass


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s}")
    return v


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {s}")
    return v


def _eta(s: str):
    if s in ("auto", "ntk", "track"):
        return s
    return _positive_float(s)


def _valid_eta(v) -> bool:
    """An η a config file may hold: a positive finite number, "auto", "ntk", "track", or the keywords of a
    :class:`~sbtm_flows.eta.DecayingEta`."""
    if isinstance(v, dict):
        from .eta import DecayingEta

        try:
            DecayingEta(**v)
        except (TypeError, ValueError):
            return False
        return True
    if isinstance(v, str):
        return v in ("auto", "ntk", "track")
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=_positive_int, help="number of particles")
    p.add_argument("--t-final", type=_positive_float, help="final time")
    p.add_argument("--dt", type=_positive_float, help="time step")
    p.add_argument("--solver", help="torchdiffeq method for SBTM (heun2, dopri5, ...)")
    p.add_argument("--sde-solver", help="torchsde method for Langevin (euler, ...)")
    p.add_argument("--training", choices=["flow", "steps", "auto"],
                   help="SBTM training: coupled flow, K optimizer steps per step, or auto (steps on dilation paths)")
    p.add_argument("--eta", type=_eta, help="eta of the coupled flow: a positive number (default 5), 'auto', 'ntk' or 'track'")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--checkpoint", metavar="DIR",
                   help="folder for checkpoints (one file per method); written every 50 output times, at the end and on Ctrl-C")
    p.add_argument("--resume", action="store_true", help="continue the run whose checkpoints are in --checkpoint DIR")


def _parser() -> argparse.ArgumentParser:
    from .experiments import EXPERIMENTS, TARGETS

    ap = _OneLineParser(prog="sbtm-flows", description="Score-based transport modeling samplers and the paper's experiments.")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_OneLineParser)
    r = sub.add_parser("run", help="run a paper experiment")
    r.add_argument("experiment", nargs="?", help=f"one of: {', '.join(EXPERIMENTS)}")
    r.add_argument("--config", help="repeat the run described by a config.json written by an earlier run")
    r.add_argument("--out", help="output folder (default runs/EXPERIMENT, or the config's folder)")
    r.add_argument("--quick", action="store_true", help="small, fast variant (smoke test)")
    _add_run_options(r)
    s = sub.add_parser("sample", help="sample one target with one method")
    s.add_argument("--target", required=True, help=f"one of: {', '.join(TARGETS)}")
    s.add_argument("--method", default="sbtm", help="sbtm, ula, mala, pis or dis")
    s.add_argument("--loss", choices=["log_variance", "kl"], help="pis/dis training loss (default log_variance)")
    s.add_argument("--iterations", type=_positive_int, help="pis/dis training iterations")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--steps", type=_positive_int, help="MALA: iterations after warm-up (default 1000)")
    s.add_argument("--warmup", type=int, help="MALA: step-size adaptation iterations (default 500)")
    s.add_argument("--step-size", type=_positive_float, help="MALA: initial step size (default 0.1)")
    _add_run_options(s)
    sub.add_parser("list", help="list experiments, targets, methods and solvers")
    _add_bench_parser(sub)
    return ap


def _writable_dir(path: pathlib.Path, what: str = "output folder") -> pathlib.Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise _CliError(f"sbtm-flows: cannot write to {what} {str(path)!r}: {e.strerror or e}") from None
    return path


def _overrides(a) -> dict:
    keys = {"n": "n", "t_final": "t_final", "dt": "dt", "solver": "solver", "sde_solver": "sde_solver",
            "training": "training", "eta": "eta", "seed": "seed", "device": "device", "loss": "loss", "iterations": "iterations"}
    return {k: getattr(a, attr) for attr, k in keys.items() if getattr(a, attr, None) is not None}


def _read_config(path: str) -> dict:
    """The JSON object in ``path`` (one-line errors for unreadable files, bad JSON, non-objects)."""
    try:
        cfg = json.loads(pathlib.Path(path).read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise _CliError(f"sbtm-flows: cannot read config {path!r}: {getattr(e, 'strerror', None) or e}") from None
    except json.JSONDecodeError as e:
        raise _CliError(f"sbtm-flows: config {path!r} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise _CliError(f"sbtm-flows: config {path!r} must be a JSON object (name -> value), got a JSON {type(cfg).__name__}")
    return cfg


def _cmd_run(a) -> int:
    from .experiments import EXPERIMENTS, experiment_config, run_experiment, settle_eta

    if a.config:
        cfg = _read_config(a.config)
        name = cfg.get("experiment")
        if name not in EXPERIMENTS:
            raise _CliError(f"sbtm-flows: config {a.config!r} names no known experiment (\"experiment\": {name!r}); "
                            f"valid: {', '.join(EXPERIMENTS)}")
        if a.experiment and a.experiment != name:
            raise _CliError(f"sbtm-flows: the config is for {name!r}, not {a.experiment!r}")
        missing = sorted(set(EXPERIMENTS[name].defaults) - set(cfg))
        if missing:
            raise _CliError(f"sbtm-flows: config {a.config!r} is missing {', '.join(map(repr, missing))} (needed by {name})")
        cfg.update(_overrides(a))
        settle_eta(cfg, eta_given=a.eta is not None)  # a file's eta with training="steps" is not used: dropped
        out = pathlib.Path(a.out) if a.out else pathlib.Path(a.config).parent
    else:
        if not a.experiment:
            raise _CliError("sbtm-flows run: name an experiment or give --config (see `sbtm-flows list`)")
        cfg = experiment_config(a.experiment, quick=a.quick, **_overrides(a))
        out = pathlib.Path(a.out or os.path.join("runs", a.experiment))
    _validate(cfg, EXPERIMENTS[cfg["experiment"]].defaults)
    ckpt = _checkpoint_dir(a)
    _writable_dir(out)
    try:
        metrics = run_experiment(cfg, out, progress=not a.no_progress, checkpoint=ckpt, resume=a.resume)
    except KeyboardInterrupt as e:
        return _interrupted(e, out, ckpt)
    print(f"{cfg['experiment']}: wrote {out}/ (metrics.json, figures); wall time {metrics['total_wall_time_s']:.1f} s")
    return 0


def _interrupted(e: KeyboardInterrupt, out: pathlib.Path, ckpt: pathlib.Path | None) -> int:
    """Ctrl-C: write the partial Result the run loop attached (``e.result``: every output time
    reached) as ``partial_<method>.pt``, say where it and the last checkpoint are, in one line; 130."""
    res = getattr(e, "result", None)
    said = "sbtm-flows: interrupted"
    if res is not None:
        path = out / f"partial_{res.method or 'result'}.pt"
        res.save(path)
        said += f" at t={float(res.times[-1]):.6g}; partial results in {path}"
    if ckpt is not None:
        said += f"; checkpoint in {ckpt}/ (rerun with --resume to continue)"
    print(said, file=sys.stderr)
    return 130


def _checkpoint_dir(a) -> pathlib.Path | None:
    if a.resume and not a.checkpoint:
        raise _CliError("sbtm-flows: --resume needs --checkpoint DIR (the folder of the run to continue)")
    return _writable_dir(pathlib.Path(a.checkpoint), "checkpoint folder") if a.checkpoint else None


def _bad(key: str, v, what: str) -> _CliError:
    return _CliError(f"sbtm-flows: {key} must be {what}, got {v!r}")


def _validate(cfg: dict, defaults: dict | None = None) -> None:
    """Every argument of a run checked before any computation (names of both methods'
    solvers, numbers, device, and the types of the experiment's other options)."""
    import math

    from .loop import resolve_device
    from .sampling import SOLVERS, TRAININGS
    from .sde import SDE_SOLVERS

    names = {"solver": SOLVERS, "sde_solver": SDE_SOLVERS, "training": TRAININGS}
    for key, valid in names.items():
        if cfg.get(key) is not None and cfg[key] not in valid:
            raise _CliError(f"sbtm-flows: unknown {key.replace('_', '-')} {cfg[key]!r}; valid: {', '.join(sorted(valid))}")
    for key, v in cfg.items():
        if v is None or key in names:
            continue
        if key in ("n", "save_every") and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise _bad(key, v, "a positive integer")
        if key in ("holdout", "seed") and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise _bad(key, v, "a non-negative integer")
        if key in ("t_final", "dt", "lam0") and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0):
            raise _bad(key, v, "a positive finite number")
        if key == "eta" and not _valid_eta(v):
            raise _bad(key, v, "a positive number, 'auto', 'ntk', 'track' or a dict of DecayingEta's eta0, eta_inf, t_c")
        if defaults and key in defaults and defaults[key] is not None and key != "eta":
            kind = float if isinstance(defaults[key], float) else type(defaults[key])
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) if kind is float else isinstance(v, kind)
            if not ok:
                raise _bad(key, v, f"a {kind.__name__} (like the default {defaults[key]!r})")
    try:
        resolve_device(cfg.get("device"))
    except ValueError as e:
        raise _CliError(f"sbtm-flows: {e}") from None


def _cmd_sample(a) -> int:
    from .experiments import make_target
    from .files import save_torch, write_json
    from .sampling import METHODS, sample

    if a.method not in METHODS:
        raise _CliError(f"sbtm-flows: unknown method {a.method!r}; valid: {', '.join(sorted(METHODS))}")
    kw = _overrides(a)
    _validate(kw)
    ckpt = _checkpoint_dir(a)
    out = _writable_dir(pathlib.Path(a.out))
    target = make_target(a.target)
    kw = _method_kwargs(a, kw)
    if ckpt is not None:
        kw.update(checkpoint=ckpt / f"{a.method}.ckpt", resume=a.resume)
    try:
        res = sample(target, method=a.method, progress=not a.no_progress, **kw)
    except KeyboardInterrupt as e:
        return _interrupted(e, out, ckpt)
    res.save(out / "result.pt")
    save_torch(res.particles.cpu(), out / "particles.pt")
    summary = {"target": a.target, "method": a.method, "n": res.n, "t_final": float(res.times[-1]), "nfe": res.nfe,
               "wall_time_s": res.wall_time, "mean": res.particles.double().mean(0).tolist(),
               "final": {k: float(v[-1]) for k, v in res.diagnostics.items()}}
    if callable(getattr(target, "compare", None)):  # a posteriordb target: errors against its reference draws
        cmp = target.compare(res.particles)
        summary["reference"] = {k: v for k, v in cmp.items() if isinstance(v, (int, float))}
    write_json(out / "metrics.json", summary, indent=2)
    write_json(out / "config.json", {"target": a.target, "method": a.method, **res.config}, indent=2, default=str)
    print(f"{a.method} on {a.target}: {res.n} particles at t={float(res.times[-1]):g}, NFE {res.nfe}, "
          f"{res.wall_time:.1f} s; wrote {out}/")
    return 0


def _method_kwargs(a, kw: dict) -> dict:
    """Drop the options the method does not take (and refuse the MALA-only and learned-diffusion-only ones elsewhere)."""
    mala = {"steps": a.steps, "warmup": a.warmup, "step_size": a.step_size}
    if a.method != "mala":
        given = [k for k, v in mala.items() if v is not None]
        if given:
            raise _CliError(f"sbtm-flows: --{given[0].replace('_', '-')} is a MALA option (use --method mala)")
    if a.method not in ("pis", "dis") and ("loss" in kw or "iterations" in kw):
        raise _CliError("sbtm-flows: --loss and --iterations are options of the learned diffusions (--method pis or dis)")
    drop = {"ula": ("solver", "training", "eta"), "mala": ("solver", "training", "eta", "sde_solver", "t_final", "dt"),
            "pis": ("solver", "training", "eta", "sde_solver"), "dis": ("solver", "training", "eta", "sde_solver")}
    for k in drop.get(a.method, ("sde_solver",)):
        kw.pop(k, None)
    if a.method == "mala":
        if a.warmup is not None and a.warmup < 0:
            raise _CliError(f"sbtm-flows: --warmup must be a non-negative integer, got {a.warmup}")
        kw.update({k: v for k, v in mala.items() if v is not None})
    return kw


def _add_bench_parser(sub) -> None:
    from .bench import SAMPLERS, TARGET_SPECS

    b = sub.add_parser("bench", help="the benchmark table: samplers x targets x seeds at a matched score budget")
    b.add_argument("--quick", action="store_true", help="3 small targets, 2 seeds, n = 200, budget 20 (seconds; for tests)")
    b.add_argument("--name", help="results file stem (default bench, or quick with --quick)")
    b.add_argument("--out", default=os.path.join("benchmarks", "results"), help="folder for NAME.csv and NAME.md")
    b.add_argument("--targets", help=f"comma-separated, from: {', '.join(TARGET_SPECS)}")
    b.add_argument("--samplers", help=f"comma-separated, from: {', '.join(SAMPLERS)}")
    b.add_argument("--seeds", type=_positive_int, help="seeds 0..SEEDS-1 (default 3)")
    b.add_argument("--n", type=_positive_int, help="particles = evaluation samples (default 2000)")
    b.add_argument("--budget", type=_positive_int, help="target-score evaluations per particle (even; default 200)")
    b.add_argument("--time-limit", type=_positive_float, help="seconds per cell (default 60)")
    b.add_argument("--metrics", help="comma-separated distances of sbtm_flows.metrics.METRICS (default w2,mmd,energy)")


def _cmd_bench(a) -> int:
    from .bench import QUICK, BenchConfig, describe, run_bench, write_results

    kw = dict(QUICK) if a.quick else {}
    for key in ("targets", "samplers", "metrics"):
        if getattr(a, key):
            kw[key] = tuple(v.strip() for v in getattr(a, key).split(",") if v.strip())
    for key in ("seeds", "n", "budget", "time_limit"):
        if getattr(a, key) is not None:
            kw[key] = getattr(a, key)
    cfg = BenchConfig(**kw)
    name = a.name or ("quick" if a.quick else "bench")
    out = _writable_dir(pathlib.Path(a.out))
    rows: list[dict] = []

    def on_row(row: dict) -> None:  # rewrite the files after every cell: an interrupted table keeps its rows
        rows.append(row)
        write_results(rows, cfg, out, name, describe(cfg))

    run_bench(cfg, log=lambda line: print(line, flush=True), on_row=on_row)
    print(f"bench: {len(rows)} rows; wrote {out / (name + '.csv')} and {out / (name + '.md')}")
    return 0


def _cmd_list(a) -> int:
    from .experiments import EXPERIMENTS, TARGETS
    from .sampling import METHODS, SOLVERS

    print("experiments:")
    for e in EXPERIMENTS.values():
        print(f"  {e.name:<14} paper §{e.section}: {e.description}")
    print("targets:     " + ", ".join(TARGETS))
    print("methods:     " + ", ".join(sorted(METHODS)))
    print("solvers:     " + ", ".join(sorted(SOLVERS)))
    try:
        from .sde import SDE_SOLVERS

        print("sde solvers: " + ", ".join(sorted(SDE_SOLVERS)))
    except ImportError:
        pass
    return 0


@contextlib.contextmanager
def _ranks(a):
    """Under ``torchrun`` (``WORLD_SIZE`` > 1): join the process group; rank 0 writes ``--out``
    and prints, the other ranks compute their shards and write into a scratch folder that is
    removed at the end (so the ranks never race on the same files)."""
    from .distributed import init_from_env

    comm = init_from_env() if getattr(a, "cmd", None) in ("run", "sample") else None
    if comm is None or comm.rank == 0:
        yield
        return
    scratch = tempfile.mkdtemp(prefix=f"sbtm-rank{comm.rank}-")
    a.out, a.no_progress = scratch, True
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            yield
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sbtm-flows`` console script; returns the exit status."""
    from .errors import SamplingError

    try:
        a = _parser().parse_args(argv)
        with _ranks(a):
            return {"run": _cmd_run, "sample": _cmd_sample, "list": _cmd_list, "bench": _cmd_bench}[a.cmd](a)
    except _CliError as e:
        print(f"{e}", file=sys.stderr)
    except (ValueError, SamplingError, OSError, NotImplementedError) as e:
        print(f"sbtm-flows: error: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print("sbtm-flows: interrupted", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
