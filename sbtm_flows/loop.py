r"""The one run loop every sampler goes through, and the set-up every run shares.

A sampler is a small object with five methods (:class:`Sampler`)::

    state = sampler.init(x0, t0, generator)     # X₀ (n, d) -> the sampler's State
    state = sampler.advance(state, t0, t1)      # move from output time t0 to t1
    blob  = sampler.state_dict(state)           # tensors and plain data (weights-only loadable)
    state = sampler.load_state_dict(blob)
    x     = sampler.particles(state)            # (n, d)

and :func:`run` does the rest, once for all samplers: the progress bar, checkpoints (a resumed
run is bitwise the uninterrupted one, since a State holds everything the sampler needs —
particles, network, optimizer and generator states), observers (diagnostics computed at each
output time), stop rules, and packing the :class:`~sbtm_flows.result.Result`.

Optional sampler hooks, used when present: ``observe(state, t, k) -> dict`` (what the sampler
itself records at output time t_k: floats become diagnostics, tensors ``(…)`` become series
stacked over the output times), ``nfe(state) -> int`` and ``finish(state, packed, info) -> dict``
(extra :class:`Result` fields from the packed record; may add facts to ``info``).

The set-up shared by the samplers' front doors is here too: :func:`prepare_run` (validation,
dtype/device, the seeded generator and X₀), :func:`output_grid` (output times on the solver's
time grid) and :func:`config_of` (a run's arguments as JSON-able values).
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol, runtime_checkable

import torch
from torch import Tensor

from .errors import SamplingError
from .paths import Path, as_path
from .result import Result
from .targets import Gaussian, Target, check_particles

__all__ = [
    "Sampler", "Observer", "Recorder", "run", "prepare_run", "make_generator", "output_grid", "config_of", "splitmix64",
    "check_step_count", "MAX_STEPS",
]


@runtime_checkable
class Sampler(Protocol):
    """What :func:`run` needs from a sampler (see the module docstring)."""

    def init(self, x0: Tensor, t0: float, generator: torch.Generator) -> Any:
        """The State at t0 from the particles X₀ ``(n, d)`` (further draws from ``generator``)."""

    def advance(self, state: Any, t0: float, t1: float) -> Any:
        """The State at output time t1 from the State at output time t0 < t1."""

    def state_dict(self, state: Any) -> dict:
        """A State as tensors and plain data (for checkpoints)."""

    def load_state_dict(self, blob: dict) -> Any:
        """Inverse of :meth:`state_dict`."""

    def particles(self, state: Any) -> Tensor:
        """The particles ``(n, d)`` of a State."""


class Observer(Protocol):
    """Called at every output time t_k with the sampler's State; returns diagnostics (floats)
    and series (tensors) to record.  Optional ``finish(packed: dict) -> None`` adds derived
    series to the packed record (e.g. cumulative integrals); optional ``state_dict()`` /
    ``load_state_dict(blob)`` carry an observer's own state through checkpoints."""

    def __call__(self, sampler: Any, state: Any, t: float, k: int) -> dict:
        ...


# ----------------------------------------------------------------------------------------
# The record of a run
# ----------------------------------------------------------------------------------------
@dataclass
class Recorder:
    """What is saved at each output time: the time, the particles ``(n, d)``, named series of
    tensors (e.g. Θ ``(P,)``, log-densities ``(n,)``) and scalar diagnostics."""

    times: list = field(default_factory=list)
    xs: list = field(default_factory=list)
    series: dict = field(default_factory=dict)
    diags: dict = field(default_factory=dict)

    def add(self, t: float, x: Tensor, record: dict | None = None) -> None:
        """Record one output time; ``record``: name -> float (a diagnostic), tensor (a series
        entry) or ``None`` (skipped)."""
        self.times.append(float(t))
        self.xs.append(x.detach().clone())
        for k, v in (record or {}).items():
            if v is None:
                continue
            if isinstance(v, Tensor):
                self.series.setdefault(k, []).append(v.detach().clone())
            else:
                self.diags.setdefault(k, []).append(float(v))

    def lengths(self) -> dict:
        """How many entries each list holds (to :meth:`truncate` back to after an interrupt)."""
        return {"times": len(self.times), "xs": len(self.xs), "series": {k: len(v) for k, v in self.series.items()},
                "diags": {k: len(v) for k, v in self.diags.items()}}

    def truncate(self, lengths: dict) -> None:
        """Drop what was added after :meth:`lengths` returned ``lengths`` (a half-recorded time)."""
        self.times, self.xs = self.times[: lengths["times"]], self.xs[: lengths["xs"]]
        self.series = {k: v[: lengths["series"][k]] for k, v in self.series.items() if lengths["series"].get(k)}
        self.diags = {k: v[: lengths["diags"][k]] for k, v in self.diags.items() if lengths["diags"].get(k)}

    def state_dict(self) -> dict:
        """Plain contents (for checkpoints)."""
        return {"times": self.times, "xs": self.xs, "series": self.series, "diags": self.diags}

    @classmethod
    def from_state_dict(cls, blob: dict, device: torch.device | None = None) -> "Recorder":
        """Inverse of :meth:`state_dict` (tensors moved to ``device``)."""
        return cls(times=list(blob["times"]), xs=[v.to(device) for v in blob["xs"]],
                   series={k: [v.to(device) for v in vs] for k, vs in blob["series"].items()},
                   diags={k: list(v) for k, v in blob["diags"].items()})

    def pack(self) -> dict:
        """``times (T,)``, ``trajectory (T, n, d)``, ``diagnostics`` (name -> ``(T,)``) and each
        series stacked to ``(T, …)`` under its name."""
        return {
            "times": torch.tensor(self.times, dtype=torch.float64),
            "trajectory": torch.stack(self.xs),
            "diagnostics": {k: torch.tensor(v, dtype=torch.float64) for k, v in self.diags.items()},
            **{k: torch.stack(v) for k, v in self.series.items()},
        }


# ----------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------
def run(
    sampler: Sampler,
    start: Any,
    times: Tensor,
    *,
    observers: Iterable[Observer] = (),
    stop: Callable[[float, dict], str | None] | None = None,
    checkpoint: Any = None,
    checkpoint_every: int = 50,
    resume: bool = False,
    progress: bool = False,
    method: str = "",
    config: dict | None = None,
    info: dict | None = None,
) -> Result:
    """Run ``sampler`` over the output times ``times (T,)`` (increasing; ``times[0]`` = t0).

    Args:
        start: the State at ``times[0]``, or a callable returning it (called only when the run
            does not resume from a checkpoint, so a resume skips the sampler's initial work).
        observers: called at every output time after the sampler's own ``observe``.
        stop: ``stop(t, diagnostics) -> reason or None``; the run ends at the first output time
            with a reason (recorded as ``info["stopped"]``).
        checkpoint: a :class:`~sbtm_flows.checkpoint.Checkpoint` (or ``None``): written every
            ``checkpoint_every`` output intervals, at an early stop and after the last one;
            with ``resume`` (True or ``"force"``) an existing one is continued, bitwise as if
            uninterrupted.  The loop closes it (releases its lock) when it returns or raises.
        progress: show a tqdm bar (t, evaluations, F^n when recorded).
        method, config, info: copied into the Result (``info`` is updated by the sampler).

    Returns:
        a :class:`~sbtm_flows.result.Result` (``wall_time``: seconds in this loop, summed over
        resumes; the sampler's initial work is excluded).
    """
    try:
        return _run(sampler, start, times, list(observers), stop, checkpoint, checkpoint_every, resume, progress, method,
                    config, info)
    finally:
        if checkpoint is not None and hasattr(checkpoint, "close"):
            checkpoint.close()  # release its lock


def _run(sampler, start, times, observers, stop, checkpoint, checkpoint_every, resume, progress, method, config, info):
    times = torch.as_tensor(times, dtype=torch.float64)
    blob = checkpoint.load() if (checkpoint is not None and resume) else None
    if blob is None:
        state = start() if callable(start) else start
        rec, k0, wall0, info, stopped = Recorder(), 0, 0.0, dict(info or {}), False
        stopped = _observe(sampler, observers, stop, rec, state, float(times[0]), 0, info)
    else:
        state = sampler.load_state_dict(blob["sampler"])
        rec = Recorder.from_state_dict(blob["record"], sampler.particles(state).device)
        k0, wall0, info, stopped = int(blob["k"]), float(blob["wall"]), json.loads(blob["info"]), bool(blob["stopped"])
        for obs, s in zip(observers, blob.get("observers", [])):
            if s is not None:
                obs.load_state_dict(s)
    t_start = time.perf_counter()

    def save(state, k: int, stopped: bool, parts: dict | None = None) -> None:
        parts = parts if parts is not None else snapshot(state)
        checkpoint.save({"k": k, "stopped": stopped, "record": rec.state_dict(), "wall": time.perf_counter() - t_start + wall0,
                         "info": json.dumps(info), **parts})

    def snapshot(state) -> dict:
        return {"sampler": sampler.state_dict(state),
                "observers": [o.state_dict() if hasattr(o, "state_dict") else None for o in observers]}

    n_out = times.numel() - 1
    if not stopped and k0 < n_out:
        try:
            state = _drive(sampler, observers, stop, rec, state, times, k0, info, progress, method,
                           save if checkpoint is not None else None, int(checkpoint_every),
                           snapshot if checkpoint is not None else None)
        except KeyboardInterrupt as e:  # Ctrl-C: the Result up to the last output time reached rides on the exception
            info["interrupted"] = f"at t = {rec.times[-1]:.6g} (output time {e.k} of {n_out})"
            e.result = _pack(sampler, observers, rec, e.state, time.perf_counter() - t_start + wall0, method, config, info)
            raise
    elif blob is None and checkpoint is not None:
        save(state, k0, stopped)
    return _pack(sampler, observers, rec, state, time.perf_counter() - t_start + wall0, method, config, info)


def _observe(sampler, observers, stop, rec: Recorder, state, t: float, k: int, info: dict) -> bool:
    """Record output time t_k (the sampler's own record, then the observers'); True to stop."""
    record = dict(sampler.observe(state, t, k)) if hasattr(sampler, "observe") else {}
    for obs in observers:
        record.update(obs(sampler, state, t, k))
    rec.add(t, sampler.particles(state), record)
    reason = stop(t, {k_: v for k_, v in record.items() if not isinstance(v, Tensor)}) if stop is not None else None
    if reason:
        info["stopped"] = reason
    return bool(reason)


def _drive(sampler, observers, stop, rec, state, times, k0, info, progress, method, save, every, snapshot=None):
    """The output intervals k0 → k0+1 → … (advance, observe, checkpoint, stop).

    On KeyboardInterrupt the record is cut back to the last output time fully recorded, a
    checkpoint of that time is written (from a copy of the sampler's state taken then: a
    sampler may have changed its network mid-interval), and the interrupt propagates with the
    state and index of that time as ``.state``, ``.k``."""
    from tqdm.auto import tqdm

    n_out = times.numel() - 1
    bar = tqdm(total=n_out, initial=k0, desc=method, disable=not progress, leave=False, dynamic_ncols=True)
    done = (state, k0, rec.lengths(), None if snapshot is None else copy.deepcopy(snapshot(state)))
    try:
        for k in range(k0, n_out):
            state = sampler.advance(state, float(times[k]), float(times[k + 1]))
            stopped = _observe(sampler, observers, stop, rec, state, float(times[k + 1]), k + 1, info)
            done = (state, k + 1, rec.lengths(), None if snapshot is None else copy.deepcopy(snapshot(state)))
            bar.update(1)
            if progress:
                bar.set_postfix(_postfix(sampler, state, rec), refresh=False)
            last = stopped or k + 1 == n_out
            if save is not None and (last or (every and (k + 1) % every == 0)):
                save(state, k + 1, stopped)
            if stopped:
                break
    except KeyboardInterrupt as e:
        e.state, e.k = done[0], done[1]
        rec.truncate(done[2])
        if save is not None:
            save(done[0], done[1], False, done[3])
        raise
    finally:
        bar.close()
    return state


def _postfix(sampler, state, rec: Recorder) -> dict:
    out = {"t": f"{rec.times[-1]:.3g}"}
    if hasattr(sampler, "nfe"):
        out["nfe"] = sampler.nfe(state)
    if "fisher" in rec.diags:
        out["F"] = f"{rec.diags['fisher'][-1]:.3g}"
    return out


def _pack(sampler, observers, rec: Recorder, state, wall: float, method: str, config, info: dict) -> Result:
    packed = rec.pack()
    for obs in observers:
        if hasattr(obs, "finish"):
            obs.finish(packed)
    extra = sampler.finish(state, packed, info) if hasattr(sampler, "finish") else {}
    return Result(
        particles=packed["trajectory"][-1],
        times=packed["times"],
        trajectory=packed["trajectory"],
        diagnostics=packed["diagnostics"],
        nfe=int(sampler.nfe(state)) if hasattr(sampler, "nfe") else 0,
        wall_time=wall,
        method=method,
        config=dict(config or {}),
        info=info,
        **extra,
    )


# ----------------------------------------------------------------------------------------
# Set-up shared by the samplers' front doors: seeding, X₀, output times
# ----------------------------------------------------------------------------------------
def splitmix64(z: int) -> int:
    """The splitmix64 finaliser: a well-mixed 64-bit integer from ``z`` (derived seeds)."""
    z %= 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return z ^ (z >> 31)


def resolve_device(device) -> torch.device:
    """``torch.device`` from a name or device (default CPU); raises ValueError for an unknown
    device or one this machine does not have (e.g. ``"cuda"`` without a GPU)."""
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r} ({e})") from e
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be 'cpu', 'cuda[:i]' or 'mps', got {device!r} (a {dev.type!r} device holds no data to sample)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine (use device='cpu')")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} requested but MPS is not available on this machine (use device='cpu')")
    return dev


_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_dtype(dtype) -> torch.dtype:
    """``torch.float32`` / ``torch.float64`` from a dtype or its name; ValueError otherwise."""
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(_DTYPES)}")
        return _DTYPES[dtype]
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed`` (all randomness is drawn on the CPU
    and moved, so a seed gives the same numbers on every device)."""
    g = torch.Generator()
    if seed is None:
        g.seed()
        return g
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [0, 2**64) or None, got {seed!r}")
    g.manual_seed(int(seed))
    return g


def check_positive(name: str, v, integer: bool = False, allow_none: bool = False) -> None:
    """Raise ValueError naming ``name`` unless ``v`` is a positive finite number (an integer
    when ``integer``; ``None`` allowed when ``allow_none``)."""
    if v is None and allow_none:
        return
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
    if integer:
        ok = ok and float(v).is_integer()
    if not ok:
        kind = "a positive integer" if integer else "a positive finite number"
        raise ValueError(f"{name} must be {kind}, got {v!r}")


#: The most time steps a run may take: a dt that small (≥ 10⁷ steps) is a typo or an underflow,
#: and the grid alone would take ≥ 80 MB (at 10¹² steps torch fails allocating 8 TB).
MAX_STEPS = 10**7


def check_step_count(t0: float, t_final: float, dt: float) -> None:
    """Raise ValueError unless the grid t0, t0 + dt, …, t_final has at most :data:`MAX_STEPS`
    steps and a step of ``dt`` moves t at t0 and at t_final in float64 (t + dt ≠ t)."""
    steps = (t_final - t0) / dt
    if steps > MAX_STEPS:
        raise ValueError(f"dt={dt!r} gives {steps:.3g} steps over [{t0:g}, {t_final:g}] (more than {MAX_STEPS:.0e}): "
                         "dt is too small for this interval (a typo or an underflow?); raise dt or shorten [t0, t_final]")
    for t in (t0, t_final):
        if t + dt == t:
            raise ValueError(f"dt={dt!r} underflows at t={t:g} (t + dt == t in float64); raise dt or shift t0 toward 0")


def moved(obj, dtype, device):
    """A copy of a target/path module on (dtype, device); other objects unchanged."""
    if isinstance(obj, torch.nn.Module):
        return copy.deepcopy(obj).to(dtype=dtype, device=device)
    return obj


def _as_particles(init) -> Tensor:
    """An array-like (numpy array, nested lists) of particles as a floating tensor."""
    try:
        init = torch.as_tensor(init)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"init must be a tensor (or array) of particles (n, d) or a law with sample; got {type(init).__name__}") from e
    return init if init.is_floating_point() else init.double()


def initial_particles(init, n: int | None, dim: int, generator: torch.Generator, dtype, device) -> tuple[Tensor, Target | None]:
    """X₀ ``(n, d)`` from ``init``: a target with ``sample`` (drawn with ``generator``), a
    tensor of particles, or ``None`` (standard Gaussian).  Returns ``(X₀, init_target)``."""
    if init is None:
        init = Gaussian(torch.zeros(dim, dtype=torch.float64), torch.eye(dim, dtype=torch.float64))
    if not isinstance(init, Tensor) and not hasattr(init, "sample") and hasattr(init, "__len__"):
        init = _as_particles(init)
    if isinstance(init, Tensor):
        x0 = check_particles(init, dim, "init")
        if n is not None and n != x0.shape[0]:
            raise ValueError(f"n={n} disagrees with the {x0.shape[0]} initial particles given in init")
        init_target = None
        x0 = x0.detach().to(dtype=dtype, device=device).clone()
    else:
        if getattr(init, "dim", None) != dim:
            raise ValueError(f"init has dimension {getattr(init, 'dim', None)}, the target has dimension {dim}")
        samples = callable(getattr(init, "sample", None)) and ("sample" in getattr(init, "__dict__", {}) or getattr(init, "has_sample", True))
        if not samples:
            raise ValueError(
                f"init must be a tensor of particles (n, d) or a law with sample(n, generator); {type(init).__name__} "
                "cannot be sampled exactly (draw initial particles yourself and pass them as a tensor)"
            )
        n = 1000 if n is None else n
        check_positive("n", n, integer=True)
        x0 = init.sample(int(n), generator=generator)
        x0 = check_particles(x0, dim, "init.sample(n)").to(dtype=dtype, device=device)
        init_target = moved(init, dtype, device)
    if x0.shape[0] < 2:
        raise ValueError(f"need n >= 2 particles, got n={x0.shape[0]}")
    bad = ~torch.isfinite(x0).all(-1)
    if bad.any():
        raise ValueError(f"initial particles contain NaN/inf in {int(bad.sum())} of {x0.shape[0]} rows")
    return x0, init_target


def check_initial_score(path: Path, x0: Tensor, t0: float) -> None:
    """Raise if ∇log π_{t0} is NaN/inf or has the wrong shape at the initial particles."""
    g = path.score(x0, t0)
    if not isinstance(g, Tensor):
        raise ValueError(f"target score must return a torch tensor of shape {tuple(x0.shape)}, got a {type(g).__name__}"
                         f"{' of shape ' + str(tuple(g.shape)) if hasattr(g, 'shape') else ''} (convert with torch.as_tensor)")
    if g.shape != x0.shape:
        raise ValueError(f"target score must return shape {tuple(x0.shape)}, got {tuple(g.shape)}")
    bad = ~torch.isfinite(g).all(-1)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise SamplingError(
            f"target score is NaN/inf at {int(bad.sum())} of {x0.shape[0]} initial particles at t={t0:g} "
            f"(first at x={x0[i].tolist()}); check the target or the initial law",
            t=t0,
        )


def prepare_run(target, init, n, t0: float, t_final: float, dt: float, save_every: int, seed, dtype, device):
    """Validation and set-up shared by every method: checks ``dt``, ``t_final > t0`` and
    ``save_every``; resolves dtype/device; builds the path (moved to them), the seeded
    generator and X₀ (drawn first from it), and checks ∇log π_{t0} at X₀.

    Returns ``(path, generator, x0 (n, d), init_target, dtype, device)``."""
    for name, v in (("dt", dt), ("t_final", t_final), ("t0", t0)):
        if not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
    if not dt > 0:
        raise ValueError(f"dt must be > 0, got {dt}")
    if not t_final > t0:
        raise ValueError(f"t_final must be > t0, got t_final={t_final}, t0={t0}")
    check_step_count(t0, t_final, dt)
    check_positive("save_every", save_every, integer=True)
    dtype = resolve_dtype(dtype)
    device = resolve_device(device)
    path = moved(as_path(target), dtype, device)
    gen = make_generator(seed)
    x0, init_target = initial_particles(init, n, path.dim, gen, dtype, device)
    check_initial_score(path, x0, t0)
    return path, gen, x0, init_target, dtype, device


def _check_times(times, t0: float, t_final: float) -> Tensor:
    times = torch.as_tensor(times, dtype=torch.float64)
    if times.ndim != 1:
        raise ValueError(f"times must be a 1-D sequence of output times, got shape {tuple(times.shape)}")
    if times.numel() < 2 or not (times[1:] > times[:-1]).all():
        raise ValueError("times must be increasing with at least 2 entries")
    if abs(float(times[0]) - t0) > 1e-12 or abs(float(times[-1]) - t_final) > 1e-12:
        raise ValueError(f"times must start at t0={t0} and end at t_final={t_final}")
    return times


def output_grid(path: Path, t0: float, t_final: float, dt: float, save_every: int, fixed: bool, times=None):
    """``(grid, out_idx)``: the integration grid (fixed-step solvers) and the indices of the
    output times in it.  For adaptive solvers the grid is the output times themselves."""
    if times is not None:
        times = _check_times(times, t0, t_final)
    if fixed:
        grid = path.time_grid(t0, t_final, dt).to(torch.float64)
        if times is not None:
            # a requested time that is a grid point up to rounding (0.3 vs 0.1·3) is that point,
            # not a second point 1e-17 away (a step that small stalls the solvers)
            near = torch.searchsorted(grid, times).clamp(1, grid.numel() - 1)
            near = torch.where((grid[near - 1] - times).abs() <= (grid[near] - times).abs(), near - 1, near)
            snap = (grid[near] - times).abs() <= 1e-9 * times.abs().clamp_min(1.0)
            times = torch.where(snap, grid[near], times)
            grid = torch.unique(torch.cat([grid, times]))
            idx = torch.searchsorted(grid, times)
        else:
            idx = torch.arange(0, grid.numel(), save_every)
            if idx[-1] != grid.numel() - 1:
                idx = torch.cat([idx, torch.tensor([grid.numel() - 1])])
        return grid, idx
    if times is None:
        times = output_times_uniform(t0, t_final, dt * save_every)
    return times, torch.arange(times.numel())


def output_times_uniform(t0: float, t_final: float, spacing: float) -> Tensor:
    """Equally spaced output times from t0 to t_final with spacing at most ``spacing``."""
    m = max(1, math.ceil((t_final - t0) / spacing - 1e-9))
    return torch.linspace(t0, t_final, m + 1, dtype=torch.float64)


def grid_index(grid: Tensor) -> dict[float, int]:
    """``{float(grid[i]): i}``: where an output time passed to ``advance`` lies on the grid."""
    return {float(t): i for i, t in enumerate(grid.tolist())}


def config_of(args: dict) -> dict:
    """A run's arguments as JSON-able values (dtypes and devices as names, tensors as their
    shape, other objects as their repr)."""

    def conv(v):
        if isinstance(v, (str, int, float, bool)) or v is None:
            return v
        if isinstance(v, (list, tuple)):
            return [conv(u) for u in v]
        if isinstance(v, torch.dtype):
            return str(v).replace("torch.", "")
        if isinstance(v, torch.device):
            return str(v)
        if isinstance(v, Tensor):
            return f"tensor{tuple(v.shape)}"
        return repr(v)

    return {k: conv(v) for k, v in args.items()}
