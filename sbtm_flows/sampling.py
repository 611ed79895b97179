r"""``sample()``: the front door.

It validates the arguments, seeds, builds the dynamics (:mod:`sbtm_flows.dynamics`),
integrates them with torchdiffeq between consecutive output times, records particles and
diagnostics at each output time, and packs a :class:`~sbtm_flows.result.Result`.

Integration runs output time by output time (a "chunk"), so that a run can show
progress, stop on the relative Fisher information (Remark 3.8), checkpoint and resume.
Fixed-step solvers step on the path's time grid (``path.time_grid``); adaptive solvers
get ``rtol``/``atol`` and restart their step-size control at each output time.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torchdiffeq
from torch import Tensor
from torchdiffeq._impl.odeint import SOLVERS as _TORCHDIFFEQ_SOLVERS

from .checkpoint import Checkpoint, check_resume, target_fingerprint
from .diagnostics import cumulative_trapezoid, score_diagnostics
from .distributed import current as current_comm
from .distributed import is_main_process, shard_rows
from .dynamics import DEFAULT_BATCH, AutoEta, SBTMFlow, SBTMSteps, StiffnessMonitor, check_batch, check_holdout, hessian_max_eigenvalue
from .errors import SamplingError
from .guards import check_target_finite, holdout_outliers
from .logdensity import density_diagnostics, initial_log_density, target_log_prob
from .losses import CHUNK
from .paths import Path, as_path
from .result import Result
from .score import ScaledScore, ScoreMLP, at_time, fit_score, flatten_params
from .targets import Gaussian, Target, check_particles

__all__ = [
    "sample", "SOLVERS", "FIXED_GRID_SOLVERS", "METHODS", "TRAININGS", "Recorder", "drive", "make_generator", "prepare_run",
]

#: torchdiffeq's registry: method name -> solver class.
SOLVERS: dict[str, type] = {k: v for k, v in _TORCHDIFFEQ_SOLVERS.items() if k != "scipy_solver"}
FIXED_GRID_SOLVERS = frozenset(
    {"euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams", "fixed_adams"}
)
#: Real stability interval [−c, 0] of each fixed-step method (for the stiffness check).
_STABILITY = {"euler": 2.0, "midpoint": 2.0, "heun2": 2.0, "heun3": 2.51, "rk4": 2.78}
TRAININGS = ("flow", "steps", "auto")
#: Default number of particles the score diagnostics (F^n, loss, dissipation) average over.
DIAGNOSTICS_SAMPLE = 65536
#: method name -> runner; ``sample`` dispatches on it (other modules add entries).
METHODS: dict[str, Callable[..., Result]] = {}


def resolve_device(device) -> torch.device:
    """``torch.device`` from a name or device (default CPU); raises ValueError for an unknown
    device or one this machine does not have (e.g. ``"cuda"`` without a GPU)."""
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r} ({e})") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine (use device='cpu')")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} requested but MPS is not available on this machine (use device='cpu')")
    return dev


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed`` (all randomness is drawn on the CPU
    and moved, so a seed gives the same numbers on every device)."""
    g = torch.Generator()
    if seed is None:
        g.seed()
        return g
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
    g.manual_seed(int(seed))
    return g


def _check_positive(name: str, v, integer: bool = False, allow_none: bool = False) -> None:
    if v is None and allow_none:
        return
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
    if integer:
        ok = ok and float(v).is_integer()
    if not ok:
        kind = "a positive integer" if integer else "a positive finite number"
        raise ValueError(f"{name} must be {kind}, got {v!r}")


def _check_solver(solver: str) -> None:
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; valid torchdiffeq methods: {', '.join(sorted(SOLVERS))}")


# ----------------------------------------------------------------------------------------
# Initial particles
# ----------------------------------------------------------------------------------------
def initial_particles(init, n: int | None, dim: int, generator: torch.Generator, dtype, device) -> tuple[Tensor, Target | None]:
    """X₀ ``(n, d)`` from ``init``: a target with ``sample`` (drawn with ``generator``), a
    tensor of particles, or ``None`` (standard Gaussian).  Returns ``(X₀, init_target)``."""
    if init is None:
        init = Gaussian(torch.zeros(dim, dtype=torch.float64), torch.eye(dim, dtype=torch.float64))
    if not isinstance(init, Tensor) and not hasattr(init, "sample") and hasattr(init, "__len__"):
        try:  # array-likes (numpy arrays, nested lists) of particles
            init = torch.as_tensor(init)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"init must be a tensor (or array) of particles (n, d) or a law with sample; got {type(init).__name__}") from e
        if not init.is_floating_point():
            init = init.double()
    if isinstance(init, Tensor):
        x0 = check_particles(init, dim, "init")
        if n is not None and n != x0.shape[0]:
            raise ValueError(f"n={n} disagrees with the {x0.shape[0]} initial particles given in init")
        init_target = None
        x0 = x0.detach().to(dtype=dtype, device=device).clone()
    else:
        if getattr(init, "dim", None) != dim:
            raise ValueError(f"init has dimension {getattr(init, 'dim', None)}, the target has dimension {dim}")
        samples = callable(getattr(init, "sample", None)) and ("sample" in vars(init) or getattr(init, "has_sample", True))
        if not samples:
            raise ValueError(
                f"init must be a tensor of particles (n, d) or a law with sample(n, generator); {type(init).__name__} "
                "cannot be sampled exactly (draw initial particles yourself and pass them as a tensor)"
            )
        n = 1000 if n is None else n
        _check_positive("n", n, integer=True)
        x0 = init.sample(int(n), generator=generator)
        x0 = check_particles(x0, dim, "init.sample(n)").to(dtype=dtype, device=device)
        init_target = _moved(init, dtype, device)
    if x0.shape[0] < 2:
        raise ValueError(f"need n >= 2 particles, got n={x0.shape[0]}")
    bad = ~torch.isfinite(x0).all(-1)
    if bad.any():
        raise ValueError(f"initial particles contain NaN/inf in {int(bad.sum())} of {x0.shape[0]} rows")
    return x0, init_target


def _moved(obj, dtype, device):
    """A copy of a target/path module on (dtype, device); other objects unchanged."""
    if isinstance(obj, torch.nn.Module):
        return copy.deepcopy(obj).to(dtype=dtype, device=device)
    return obj


def check_initial_score(path: Path, x0: Tensor, t0: float) -> None:
    """Raise if ∇log π_{t0} is NaN/inf or has the wrong shape at the initial particles."""
    g = path.score(x0, t0)
    if not isinstance(g, Tensor) or g.shape != x0.shape:
        raise ValueError(f"target score must return shape {tuple(x0.shape)}, got {getattr(g, 'shape', type(g))}")
    bad = ~torch.isfinite(g).all(-1)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise SamplingError(
            f"target score is NaN/inf at {int(bad.sum())} of {x0.shape[0]} initial particles at t={t0:g} "
            f"(first at x={x0[i].tolist()}); check the target or the initial law",
            t=t0,
        )


# ----------------------------------------------------------------------------------------
# Output grid and the chunked driver
# ----------------------------------------------------------------------------------------
def output_grid(path: Path, t0: float, t_final: float, dt: float, save_every: int, fixed: bool, times=None):
    """``(grid, out_idx)``: the integration grid (fixed-step solvers) and the indices of the
    output times in it.  For adaptive solvers the grid is the output times themselves."""
    if times is not None:
        times = torch.as_tensor(times, dtype=torch.float64).flatten()
        if times.numel() < 2 or not (times[1:] > times[:-1]).all():
            raise ValueError("times must be increasing with at least 2 entries")
        if abs(float(times[0]) - t0) > 1e-12 or abs(float(times[-1]) - t_final) > 1e-12:
            raise ValueError(f"times must start at t0={t0} and end at t_final={t_final}")
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


@dataclass
class Recorder:
    """Accumulates what is saved at each output time."""

    times: list = field(default_factory=list)
    xs: list = field(default_factory=list)
    thetas: list = field(default_factory=list)
    logds: list = field(default_factory=list)
    diags: dict = field(default_factory=dict)
    holdout_xs: list = field(default_factory=list)
    holdout_logds: list = field(default_factory=list)

    def add(
        self,
        t: float,
        x: Tensor,
        theta: Tensor | None = None,
        logd: Tensor | None = None,
        diag: dict | None = None,
        holdout: tuple[Tensor | None, Tensor | None] = (None, None),
    ):
        """Record one output time (``holdout``: held-out particles ``(m, d)`` and their
        log-density ``(m,)``, either may be ``None``)."""
        self.times.append(float(t))
        self.xs.append(x.detach().clone())
        if theta is not None:
            self.thetas.append(theta.detach().clone())
        if logd is not None:
            self.logds.append(logd.detach().clone())
        if holdout[0] is not None:
            self.holdout_xs.append(holdout[0].detach().clone())
        if holdout[1] is not None:
            self.holdout_logds.append(holdout[1].detach().clone())
        for k, v in (diag or {}).items():
            self.diags.setdefault(k, []).append(float(v))

    def state_dict(self) -> dict:
        """Plain contents (for checkpoints)."""
        return {"times": self.times, "xs": self.xs, "thetas": self.thetas, "logds": self.logds, "diags": self.diags,
                "holdout_xs": self.holdout_xs, "holdout_logds": self.holdout_logds}

    def pack(self) -> dict:
        """Stacked tensors: ``times (T,)``, ``trajectory (T, n, d)``, ``thetas``,
        ``holdout_trajectory (T, m, d)``, their log-densities, diagnostics."""
        times = torch.tensor(self.times, dtype=torch.float64)
        diags = {k: torch.tensor(v, dtype=torch.float64) for k, v in self.diags.items()}
        if "dissipation" in diags:
            diags["kl_decrease"] = cumulative_trapezoid(diags["dissipation"], times)
        if "dissipation_learned" in diags:
            diags["kl_decrease_learned"] = cumulative_trapezoid(diags["dissipation_learned"], times)
        return {
            "times": times,
            "trajectory": torch.stack(self.xs),
            "thetas": torch.stack(self.thetas) if self.thetas else None,
            "log_density_trajectory": torch.stack(self.logds) if self.logds else None,
            "holdout_trajectory": torch.stack(self.holdout_xs) if self.holdout_xs else None,
            "holdout_log_density_trajectory": torch.stack(self.holdout_logds) if self.holdout_logds else None,
            "diagnostics": diags,
        }


def drive(
    advance: Callable[[Any, int, int], Any],
    record: Callable[[Any, int], bool],
    y: Any,
    out_idx: Tensor,
    grid: Tensor,
    *,
    start: int = 0,
    progress: bool = False,
    checkpoint: Callable[[Any, int, bool], None] | None = None,
    checkpoint_every: int = 0,
    desc: str = "",
    postfix: Callable[[], dict] | None = None,
):
    """The one integration loop: for each output interval k → k+1, ``y = advance(y, i0, i1)``
    (grid indices), then ``record(y, k+1)``; stop early when ``record`` returns True.
    ``checkpoint(y, k+1, stopped)`` runs every ``checkpoint_every`` intervals, at an early stop
    and after the last interval.

    Returns ``(y, last_k, stopped)``."""
    from tqdm.auto import tqdm

    n_chunks = len(out_idx) - 1
    bar = tqdm(total=n_chunks, initial=start, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    k, stopped = start, False
    try:
        for k in range(start, n_chunks):
            y = advance(y, int(out_idx[k]), int(out_idx[k + 1]))
            stopped = bool(record(y, k + 1))
            bar.update(1)
            if progress and postfix is not None:
                bar.set_postfix(postfix(), refresh=False)
            last = stopped or k + 1 == n_chunks
            if checkpoint is not None and (last or (checkpoint_every and (k + 1) % checkpoint_every == 0)):
                checkpoint(y, k + 1, stopped)
            if stopped:
                break
        else:
            k = n_chunks - 1
    finally:
        bar.close()
    return y, k + 1, stopped


def odeint_chunk(func, y: Tensor, ts: Tensor, solver: str, rtol: float, atol: float, options: dict | None) -> Tensor:
    """``torchdiffeq.odeint`` over the times ``ts`` returning the state at ``ts[-1]``, with
    torchdiffeq's assertion failures (step-size underflow, too many steps) turned into
    :class:`SamplingError` s that name the time."""
    t = ts.to(device=y.device)
    try:
        return torchdiffeq.odeint(func, y, t, method=solver, rtol=rtol, atol=atol, options=options)[-1]
    except AssertionError as e:
        msg = str(e)
        t0, t1 = float(ts[0]), float(ts[-1])
        if "underflow" in msg:
            raise SamplingError(
                f"adaptive solver {solver!r}: step size underflow between t={t0:.6g} and t={t1:.6g} ({msg}); "
                "the system is stiff or has blown up: lower eta, loosen rtol/atol, or check the target",
                t=t0,
            ) from e
        if "max_num_steps" in msg:
            raise SamplingError(
                f"solver {solver!r} exceeded its step limit between t={t0:.6g} and t={t1:.6g}: the coupled "
                "system is stiff (large eta); lower eta or raise max_nfe",
                t=t0,
            ) from e
        if "non-finite" in msg:
            raise SamplingError(f"solver {solver!r}: the state became NaN/inf between t={t0:.6g} and t={t1:.6g}", t=t0) from e
        raise


def _config_of(args: dict) -> dict:
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


_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(_DTYPES)}")
        return _DTYPES[dtype]
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


# ----------------------------------------------------------------------------------------
# sample()
# ----------------------------------------------------------------------------------------
def prepare_run(target, init, n, t0: float, t_final: float, dt: float, save_every: int, seed, dtype, device):
    """Validation and set-up shared by every method: checks ``dt``, ``t_final > t0`` and
    ``save_every``; resolves dtype/device; builds the path (moved to them), the seeded
    generator and X₀ (drawn first from it), and checks ∇log π_{t0} at X₀.

    Returns ``(path, generator, x0 (n, d), init_target, dtype, device)``."""
    for name, v in (("dt", dt), ("t_final", t_final), ("t0", t0)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
    if not dt > 0:
        raise ValueError(f"dt must be > 0, got {dt}")
    if not t_final > t0:
        raise ValueError(f"t_final must be > t0, got t_final={t_final}, t0={t0}")
    _check_positive("save_every", save_every, integer=True)
    dtype = _resolve_dtype(dtype)
    device = resolve_device(device)
    path = _moved(as_path(target), dtype, device)
    gen = make_generator(seed)
    x0, init_target = initial_particles(init, n, path.dim, gen, dtype, device)
    check_initial_score(path, x0, t0)
    return path, gen, x0, init_target, dtype, device


def sample(target, method: str = "sbtm", **kwargs) -> Result:
    r"""Sample from ``target`` (a target or an annealing path) with ``method``.

    Methods: ``"sbtm"`` (the coupled particle/network flow; see :func:`run_sbtm` for its
    arguments) and ``"ula"`` (overdamped Langevin as a torchsde SDE, registered by
    :mod:`sbtm_flows.sde`; see :func:`~sbtm_flows.sde.run_ula`). On an annealing path they are
    annealed SBTM and annealed ULA.
    Common keyword arguments: ``init`` (a target with ``sample`` or a tensor ``(n, d)``),
    ``n``, ``t0``, ``t_final``, ``dt``, ``save_every``, ``seed``, ``device``, ``dtype``,
    ``progress``, ``checkpoint``, ``resume``.

    Returns:
        a :class:`~sbtm_flows.result.Result`.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(sorted(METHODS))}")
    return METHODS[method](target, **kwargs)


def run_sbtm(
    target,
    *,
    init=None,
    n: int | None = None,
    t0: float = 0.0,
    t_final: float = 1.0,
    dt: float = 0.01,
    solver: str = "heun2",
    rtol: float = 1e-5,
    atol: float = 1e-6,
    solver_options: dict | None = None,
    training: str = "auto",
    eta: float | str | Callable[[float], float] = 5.0,
    score_model: torch.nn.Module | None = None,
    hidden: tuple[int, ...] = (64, 64),
    activation: str = "silu",
    divergence: str = "auto",
    probes: int = 1,
    inner_steps: int = 5,
    optimizer: str = "adam",
    lr: float = 1e-3,
    init_steps: int = 3000,
    init_tol: float = 1e-2,
    save_every: int = 1,
    times=None,
    stop_fisher: float | None = None,
    track_logdensity: bool = False,
    holdout: int = 0,
    batch: int | None = DEFAULT_BATCH,
    chunk: int | None = CHUNK,
    diagnostics_sample: int | None = DIAGNOSTICS_SAMPLE,
    max_nfe: int | None = None,
    stiffness_check: bool = True,
    record_ntk_every: int | None = None,
    ntk_reference: Callable | None = None,
    seed: int | None = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str = torch.float32,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 50,
    resume: bool | str = False,
) -> Result:
    r"""Run SBTM: dX/dt = ∇log π_t(X) − s_Θ(X) with s_Θ trained online on the particles.

    Args:
        target: a :class:`~sbtm_flows.targets.Target`, a :class:`~sbtm_flows.paths.Path`,
            or any object with ``dim`` and ``score(x)`` / ``score(x, t)``.
        init: initial law (a target with ``sample``; default N(0, I)) or particles ``(n, d)``.
        n: number of particles (default 1000 when ``init`` is a law).
        t0, t_final: time interval; dt: step of fixed-step solvers (and the output spacing
            unit: outputs every ``save_every`` steps, or at ``times``).
        solver: any torchdiffeq method (``heun2`` — the paper's —, ``euler``, ``rk4``,
            ``dopri5``, ``adaptive_heun``, ``bosh3``, ``dopri8``, …); rtol/atol for adaptive ones;
            ``solver_options`` passed through to torchdiffeq.
        training: ``"flow"`` (dΘ/dt = −η ∇_Θ L in the ODE state), ``"steps"`` (the paper's
            K = ``inner_steps`` optimizer steps of ``optimizer``/``lr`` before each time step;
            fixed-step solvers only) or ``"auto"`` (default: ``"steps"`` on a dilation path with a
            fixed-step solver, ``"flow"`` otherwise; see :func:`resolve_training`).
        eta: η of the flow: a number (default 5), a callable of t, ``"auto"``
            (:class:`~sbtm_flows.dynamics.AutoEta`: the largest η the solver keeps stable at
            step dt, η = 0.6·c/(λ_max(∇²_Θ L)·dt), re-estimated along the run), ``"ntk"`` or an
            :class:`~sbtm_flows.ntk.NTKEta` (η from Theorem 3.5's condition at the current
            state; ``"ntk"`` = ``NTKEta()``; a ``ceiling=None`` is set to the stiffness limit
            ½·c/(λ_max(∇²_Θ L)·dt) after the initial fit).
        score_model: a network ``(n, d) -> (n, d)``, or a time-conditioned one ``(x, t)``
            (``model.time_conditioned``, e.g. :class:`~sbtm_flows.score.ScaledScore`); default
            :class:`ScoreMLP(hidden, activation)`, wrapped in ``ScaledScore(net, path.scale)``
            when ``training="steps"`` and the path has a ``scale(t)`` (:class:`~sbtm_flows.paths.Dilation`).
        divergence: ``"exact"``, ``"hutchinson"`` (``probes`` probes) or ``"auto"``.
        init_steps, init_tol: the initial fit of s_Θ to ∇log f_0 (explicit score matching if
            ``init`` has a score, else implicit); its relative error is in ``result.info``.
        stop_fisher: stop at the first output time with F^n < stop_fisher (Remark 3.8).
        track_logdensity: integrate ℓ = log f_t(X) along each particle (needs ``init`` to be a
            law with an exact ``log_prob``); adds ``result.log_density``, ``result.log_target``
            and the diagnostics ``kl_plus_logz``, ``log_z``, ``ess`` (``kl`` when the target
            knows ``log_Z``) of :mod:`sbtm_flows.logdensity` when the (final) target has ``log_prob``.
        holdout: m ≥ 0 held-out ("passive") particles, drawn from ``init`` (which must then be a
            law) with a generator derived from ``seed`` (the training particles, Θ₀ and probes of
            a seed do not change), moved by the same velocity ∇log π_t − s_Θ but never trained
            on.  Adds ``result.holdout_particles (m, d)``, ``holdout_trajectory (T, m, d)`` and,
            with ``track_logdensity``, ``holdout_log_density (m,)``, ``holdout_log_target``;
            the density diagnostics are then computed on them (unbiased by the self-training of
            s_Θ, see :mod:`sbtm_flows.logdensity`), the training-particle ones are kept as
            ``log_z_train``, ``ess_train``, ``kl_plus_logz_train``, ``kl_train``.  With a
            fixed-step solver the training particles and Θ are bitwise those of ``holdout=0``;
            adaptive solvers include the held-out block in their error norm, so their steps (and
            the training trajectory, within the tolerance) change.  A held-out particle whose
            position or rates stop being finite (the target's score overflows where it wandered)
            is frozen there, left out of the density diagnostics and counted in the diagnostic
            ``holdout_lost``: held-out particles never stop a run.  One that escaped far outside
            the training cloud (x or ℓ beyond its range by a range-width,
            :func:`~sbtm_flows.guards.holdout_outliers`: s_Θ is untrained there, so its ℓ is
            meaningless) is left out of the density diagnostics too and counted in ``holdout_escaped``.
        batch: m, the number of particles in the score loss (default :data:`DEFAULT_BATCH` = 4096;
            None: all).  ``training="steps"`` draws a fresh mini-batch of m of the n particles for
            every optimizer step; the flow trains on a fixed random subset per output interval (so
            the right-hand side is a deterministic function of the state).  Every particle moves;
            those outside the batch with the velocity of the held-out ones (see
            :meth:`~sbtm_flows.dynamics.SBTMFlow.configure_scale`).  The initial fit uses m random
            particles.  m ≥ n is the full-batch algorithm, unchanged.
        chunk: block size (particles) of every per-particle computation: memory grows with it,
            not with n (None: no blocking).
        diagnostics_sample: the score diagnostics (``fisher``, ``loss``, ``dissipation``…) are
            means over a fixed random subset of this many particles (default 65536; None: all);
            the density diagnostics (log Z, ESS) use every particle.
        max_nfe: raise :class:`SamplingError` once the solver has used this many RHS calls.
        stiffness_check: before a fixed-step flow run, estimate η·λ_max(∇²_Θ L)·dt and refuse
            a run that the solver cannot keep stable.
        record_ntk_every: every this many output times (0 included) record
            :func:`~sbtm_flows.ntk.eta_condition` — λ_min(H), the η bound, the η used, the
            losses — as the diagnostics ``ntk_*`` (``NTK_DIAGNOSTICS``), NaN at the other
            output times (``training="flow"`` only).
        ntk_reference: g(x, t) ≈ ∇log f_t for those records (default: the NTKEta's own
            ``reference_score``, else the implicit loss; see ``eta_condition``).
        seed: seeds X₀, Θ₀ and Hutchinson probes (same seed ⇒ same particles).
        device, dtype: where and in which precision to run (float32 default).
        progress: show a tqdm progress bar.
        checkpoint, checkpoint_every, resume: write a checkpoint every ``checkpoint_every``
            output times; with ``resume=True`` an existing checkpoint of the same run (same
            content fingerprint, see :mod:`sbtm_flows.checkpoint`) is continued;
            ``resume="force"`` also accepts arguments that cannot be fingerprinted, with a warning.

    Raises:
        ValueError: bad arguments (names the argument and the valid values).
        SamplingError: a run that went non-finite, or a stiff system the solver cannot handle.
    """
    args = dict(locals())
    args.pop("target")
    args.pop("score_model")
    # ---- validation ---------------------------------------------------------------
    _check_solver(solver)
    if training not in TRAININGS:
        raise ValueError(f"unknown training {training!r}; valid: {', '.join(TRAININGS)}")
    if training == "auto":
        training = resolve_training(target, solver, record_ntk_every)
    if training == "steps" and solver not in FIXED_GRID_SOLVERS:
        raise ValueError(
            f"training='steps' needs a fixed-step solver ({', '.join(sorted(FIXED_GRID_SOLVERS))}), got {solver!r}: the network "
            "is trained between steps, and an adaptive solver reuses the previous step's last derivative (computed before "
            "that training), so its error estimate sees the training jump and the step size collapses. Use training='flow' "
            "(Θ in the ODE state) with adaptive solvers"
        )
    for name, v in (("rtol", rtol), ("atol", atol)):
        _check_positive(name, v)
    _check_positive("checkpoint_every", checkpoint_every, integer=True)
    check_resume(resume)
    _check_positive("stop_fisher", stop_fisher, allow_none=True)
    _check_positive("max_nfe", max_nfe, integer=True, allow_none=True)
    _check_positive("record_ntk_every", record_ntk_every, integer=True, allow_none=True)
    if record_ntk_every is not None and training != "flow":
        raise ValueError(f"record_ntk_every needs training='flow', got training={training!r}")
    eta = _resolve_eta(eta)
    holdout = check_holdout(holdout)
    batch = check_batch(batch)
    _check_positive("chunk", chunk, integer=True, allow_none=True)
    _check_positive("diagnostics_sample", diagnostics_sample, integer=True, allow_none=True)
    fixed = solver in FIXED_GRID_SOLVERS
    comm = current_comm()
    if comm is not None:
        _check_distributed(solver, fixed, record_ntk_every, eta)
    path, gen, x0, init_target, dtype, device = prepare_run(target, init, n, t0, t_final, dt, save_every, seed, dtype, device)
    dim = path.dim
    n = x0.shape[0]
    log_f0 = initial_log_density(init_target, x0) if track_logdensity else None
    log_target = target_log_prob(path) if track_logdensity else None
    hgen = holdout_generator(gen)
    xh0, log_fh0 = holdout_particles(init_target, holdout, hgen, x0, track_logdensity)

    # ---- the score network and its initial fit ------------------------------------------
    if score_model is None:
        score_model = ScoreMLP(dim, hidden, activation, generator=gen, dtype=dtype)
        if training == "steps" and callable(getattr(path, "scale", None)):
            # a path that dilates space: learn in its coordinates (see ScaledScore; with
            # training="flow" the loss curvature in Θ would grow like 1/c(t)², so not by default)
            score_model = ScaledScore(score_model, path.scale)
    score_model = score_model.to(device=device, dtype=dtype)
    _check_score_model(score_model, x0, t0)
    if training == "flow":
        dyn = SBTMFlow(path, score_model, eta=eta, divergence=divergence, probes=probes, generator=gen, track_logdensity=track_logdensity,
                       holdout=holdout, holdout_generator=hgen)
    else:
        dyn = SBTMSteps(path, score_model, inner_steps=inner_steps, optimizer=optimizer, lr=lr, divergence=divergence,
                        probes=probes, generator=gen, track_logdensity=track_logdensity, holdout=holdout, holdout_generator=hgen)
    dyn.max_nfe = max_nfe
    dyn.reject_nonfinite = not fixed
    rank = 0 if comm is None else comm.rank
    dyn.configure_scale(batch, chunk, comm, batch_seed=splitmix64(gen.initial_seed() + 0x5BD1E995 + rank))
    rows = slice(0, n) if comm is None else shard_rows(n, comm.rank, comm.world)
    if comm is not None:  # each rank's own Hutchinson probes (the shared stream `gen` stays equal on all ranks)
        dyn.generator = torch.Generator().manual_seed(splitmix64(gen.initial_seed() + 0x27D4EB2F + rank))
    grid, out_idx = output_grid(path, t0, t_final, dt, int(save_every), fixed, times)
    diag_rows = _diagnostic_rows(rows.stop - rows.start, n, diagnostics_sample, gen, rank, device)
    if checkpoint is not None and comm is not None:  # one file per rank: its shard of the state
        checkpoint = f"{os.fspath(checkpoint)}.rank{comm.rank}of{comm.world}"
    ckpt = Checkpoint(checkpoint, {**args, "score_model": score_model}, target_fingerprint(path, x0, t0, t_final)) if checkpoint is not None else None
    resumed = ckpt.load() if (ckpt is not None and resume) else None

    info: dict = {"training": training, "batch": n if batch is None else min(batch, n), "ranks": 1 if comm is None else comm.world}
    if resumed is None:
        t_fit = time.perf_counter()
        if init_steps > 0:  # on `batch` random particles, the same on every rank
            x_fit = x0 if dyn.local_batch(n) >= n else x0[_fit_rows(n, batch, gen)]
            init_score = init_target.score(x_fit) if init_target is not None else None
            fit_probes = None
            if dyn.divergence == "hutchinson":
                dyn._draw_probes(x_fit.shape[0], x_fit)
                fit_probes = dyn.probes
            info["init_fit"] = fit_score(score_model, x_fit, init_score, steps=int(init_steps), tol=init_tol,
                                         divergence=dyn.divergence, probes=fit_probes, t=t0)
        info["init_fit_seconds"] = time.perf_counter() - t_fit
        y = dyn.initial_state(x0[rows], log_density0=None if log_f0 is None else log_f0[rows], holdout_x0=xh0,
                              holdout_log_density0=log_fh0)
        rec = Recorder()
        start, nfe0, wall0 = 0, 0, 0.0
    else:
        y, rec, start, nfe0, wall0, info = _restore(resumed, dyn, training, device, dtype)
    dyn.nfe = nfe0

    if training == "flow" and getattr(dyn.eta, "needs_state", False) and getattr(dyn.eta, "ceiling", 0) is None:
        from .ntk import stability_ceiling

        dyn.eta.ceiling = stability_ceiling(dyn, y, float((grid[1:] - grid[:-1]).max()) if fixed else dt,
                                            _STABILITY.get(solver, 2.0), generator=gen, t=t0)
        info["ntk_eta_ceiling"] = dyn.eta.ceiling
    monitor = None
    if training == "flow":
        # the pre-run check is at t0, so it takes the step at t0 (a λ-aware grid starts with
        # small steps where the curvature is large; the monitor checks each later step's own h)
        h = float(grid[1] - grid[0]) if fixed else dt
        if isinstance(eta, AutoEta):
            monitor = StiffnessMonitor(dyn, solver, _STABILITY.get(solver, 2.0), every=20, iters=3, generator=gen, auto=eta)
        elif stiffness_check and solver in _STABILITY:
            monitor = StiffnessMonitor(dyn, solver, _STABILITY[solver], generator=gen)
        if resumed is not None and monitor is not None:
            monitor.load_state_dict(resumed["monitor"])
        elif resumed is None and (stiffness_check or monitor is not None):
            dyn.choose_batch(dyn.n_particles(y), int(start))
            _stiffness_check(dyn, y, solver, h, t0, t_final, gen, monitor)

    def state_parts(y, t):
        if training == "flow":
            x, theta = dyn.split(y)
            return x, theta, dyn.score_fn(theta, t)
        x = dyn.split(y)
        return x, flatten_params(score_model), at_time(score_model, t)

    def record(y, k) -> bool:
        t = float(grid[out_idx[k]])
        x, theta, fn = state_parts(y, t)
        check_target_finite(path, x, t)
        xd, pd = x, dyn._need_probes(x)
        if diag_rows is not None:  # the score diagnostics are means: a fixed random subset estimates them
            xd, pd = x[diag_rows], (None if pd is None else pd[:, diag_rows])
        diag = score_diagnostics(path, fn, xd, t, dyn.divergence, pd, chunk, comm)
        logd = dyn.log_density(y)
        # every rank records all particles (in rank order = the single-process order)
        x_all = x if comm is None else comm.gather_rows(x)
        logd_all = logd if comm is None or logd is None else comm.gather_rows(logd)
        xh, logdh = dyn.split_holdout(y) if holdout else (None, None)
        if holdout:
            lost = dyn.holdout_velocity(t, y, fn)[2]
            diag["holdout_lost"] = float(lost.sum())
            escaped = holdout_outliers(x_all, xh, logd_all, logdh) & ~lost
            diag["holdout_escaped"] = float(escaped.sum())
        if logd is not None and log_target is not None:
            log_Z = getattr(path.target, "log_Z", None)
            dens = density_diagnostics(log_target(x), logd, log_Z, comm)
            if holdout:
                diag.update({f"{k}_train": v for k, v in dens.items()})
                keep = ~(lost | escaped)
                dens = density_diagnostics(log_target(xh[keep]), logdh[keep], log_Z)
            diag.update(dens)
        if training == "flow" and not getattr(dyn.eta, "needs_state", False):
            diag["eta"] = dyn.eta_at(t)
        if record_ntk_every is not None:
            diag.update(_ntk_record(dyn, x, t, theta, k % int(record_ntk_every) == 0, ntk_reference))
        rec.add(t, x_all, theta, logd_all, diag, holdout=(xh, logdh))
        if monitor is not None and k < len(out_idx) - 1:
            i = int(out_idx[k])
            if fixed:
                monitor.check(y, t, float(grid[i + 1] - grid[i]), i)
            else:
                monitor.check(y, t, dt, i * int(save_every))
        return stop_fisher is not None and diag["fisher"] < stop_fisher

    def advance(y, i0, i1):
        ts = grid[i0 : i1 + 1] if fixed else grid[[i0, i1]]
        if training == "flow":  # the training subset of this output interval
            dyn.choose_batch(dyn.n_particles(y), int(torch.searchsorted(out_idx, torch.tensor(i0))))
        options = dict(solver_options or {})
        return odeint_chunk(dyn, y, ts, solver, rtol, atol, options)

    def save_ckpt(y, k, stopped):
        ckpt.save(y, k, rec, dyn.nfe, time.perf_counter() - t_start + wall0, info, stopped=stopped,
                  **_sbtm_state(dyn, training, monitor))

    t_start = time.perf_counter()
    if resumed is None:
        stopped = record(y, 0)
    else:  # a checkpoint written at an early stop (stop_fisher) is the end of the run
        stopped = bool(resumed.get("stopped", False))
    k_end = start
    if not stopped:
        y, k_end, stopped = drive(
            advance, record, y, out_idx, grid, start=start, progress=progress and is_main_process(),
            checkpoint=save_ckpt if ckpt is not None else None, checkpoint_every=int(checkpoint_every),
            desc="sbtm", postfix=lambda: {"t": f"{rec.times[-1]:.3g}", "nfe": dyn.nfe, "F": f"{rec.diags['fisher'][-1]:.3g}"},
        )
    wall = time.perf_counter() - t_start + wall0
    if stopped:
        info["stopped"] = f"F^n = {rec.diags['fisher'][-1]:.4g} < stop_fisher = {stop_fisher} at t = {rec.times[-1]:.6g}"
    if training == "steps":
        info["train_steps"] = dyn.train_steps
    if monitor is not None and monitor.max_z > 0:
        info["stiffness"] = {"max_eta_lambda_dt": monitor.max_z, "at_t": monitor.t_max_z, "solver_limit": monitor.limit}
    if track_logdensity and log_target is None:
        info["density_diagnostics"] = "unavailable: the target has no log_prob (kl_plus_logz, log_z, ess need log π̃)"
    elif track_logdensity and holdout:
        info["density_diagnostics"] = (f"on the {holdout} held-out particles (never trained on); the training particles' "
                                       "values are the *_train diagnostics (biased, see sbtm_flows.logdensity)")
    packed = rec.pack()
    last = {k: (v[-1] if v is not None else None) for k, v in packed.items() if k.endswith("trajectory")}
    final_logd = last["log_density_trajectory"]
    final_logdh = last["holdout_log_density_trajectory"]
    return Result(
        particles=packed["trajectory"][-1],
        times=packed["times"],
        trajectory=packed["trajectory"],
        diagnostics=packed["diagnostics"],
        nfe=int(dyn.nfe),
        wall_time=wall,
        method="sbtm",
        config=_config_of(args),
        thetas=packed["thetas"],
        score_config=_score_config(score_model, packed["times"]),
        log_density=final_logd,
        log_density_trajectory=packed["log_density_trajectory"],
        log_target=log_target(packed["trajectory"][-1]) if final_logd is not None and log_target is not None else None,
        info=info,
        holdout_particles=last["holdout_trajectory"],
        holdout_trajectory=packed["holdout_trajectory"],
        holdout_log_density=final_logdh,
        holdout_log_density_trajectory=packed["holdout_log_density_trajectory"],
        holdout_log_target=log_target(last["holdout_trajectory"]) if final_logdh is not None and log_target is not None else None,
        holdout_lost=dyn.holdout_velocity(rec.times[-1], y, state_parts(y, rec.times[-1])[2])[2].cpu() if holdout else None,
    )


METHODS["sbtm"] = run_sbtm


def _diagnostic_rows(n_local: int, n: int, sample: int | None, gen: torch.Generator, rank: int, device) -> Tensor | None:
    """The rows of this process's particles on which the score diagnostics are computed: None
    (all) when ``sample`` is None or ≥ n, else a fixed random subset of the local share
    ⌈sample·n_local/n⌉ (drawn once, from a generator derived from ``gen``'s seed and the rank)."""
    if sample is None or sample >= n:
        return None
    k = min(n_local, -(-sample * n_local // n))
    g = torch.Generator().manual_seed(splitmix64(gen.initial_seed() + 0x68E31DA4 + rank))
    return torch.randperm(n_local, generator=g)[:k].sort().values.to(device)


def _fit_rows(n: int, m: int, gen: torch.Generator) -> Tensor:
    """m of n rows for the initial fit, drawn by a generator derived from ``gen``'s seed (the
    same on every rank, and without consuming ``gen``)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(splitmix64(gen.initial_seed() + 0x1B873593)))[:m]


def _check_distributed(solver: str, fixed: bool, record_ntk_every, eta) -> None:
    """Refuse what a data-parallel (sharded) SBTM run does not support, naming the way out.
    (Held-out particles are not sharded but replicated: every rank moves all of them alike.)"""
    if not fixed:
        raise ValueError(
            f"solver {solver!r} is adaptive: under torch.distributed each rank would choose its own step sizes from its "
            "own shard's error norm, and the ranks' Θ would drift apart. Use a fixed-step solver (heun2, rk4, ...) for "
            "data-parallel runs, or run in one process")
    if record_ntk_every is not None or getattr(eta, "needs_state", False):
        raise ValueError("the NTK tools (record_ntk_every, eta='ntk') need all particles in one process: run without "
                         "torch.distributed")


def resolve_training(target, solver: str, record_ntk_every: int | None = None) -> str:
    """``training="auto"``: ``"steps"`` on a path that dilates space (one with ``scale(t)``, e.g.
    :class:`~sbtm_flows.paths.Dilation`) with a fixed-step solver — there the coupled flow's
    Θ-curvature grows by orders of magnitude and a fixed η goes unstable, and the default
    network is a :class:`ScaledScore` — else ``"flow"``."""
    dilates = callable(getattr(as_path(target), "scale", None))
    return "steps" if dilates and solver in FIXED_GRID_SOLVERS and record_ntk_every is None else "flow"


def _check_score_model(model, x0: Tensor, t0: float) -> None:
    """Raise ValueError unless the score model maps particles ``(k, d)`` to ``(k, d)``."""
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"score_model must be a torch.nn.Module, got {type(model).__name__}")
    d = x0.shape[1]
    try:
        with torch.no_grad():
            out = at_time(model, t0)(x0[:2])
    except (RuntimeError, TypeError, ValueError) as e:
        raise ValueError(f"score_model fails on particles of shape (2, {d}): {e}") from e
    if not isinstance(out, Tensor) or out.shape != (2, d):
        raise ValueError(f"score_model must map particles (k, {d}) to scores (k, {d}); on (2, {d}) it returned "
                         f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}")


def _score_config(model, times: Tensor) -> dict | None:
    """What :meth:`Result.score_model` needs to rebuild the network: its ``config()`` and, for
    a :class:`ScaledScore`, its scale c(t) at each output time; ``None`` for a custom network."""
    if not hasattr(model, "config"):
        return None
    cfg = model.config()
    if isinstance(model, ScaledScore):
        if cfg.get("net") is None:
            return None
        cfg["scales"] = [model.scale_at(t) for t in times.tolist()]
    return cfg


def _resolve_eta(eta):
    """``"auto"`` -> a fresh :class:`AutoEta`, ``"ntk"`` -> a fresh ``NTKEta()``; an ``AutoEta``
    or ``NTKEta`` is copied (``sample`` sets its value / ceiling)."""
    from .ntk import NTKEta

    if isinstance(eta, str):
        if eta == "auto":
            return AutoEta()
        if eta == "ntk":
            return NTKEta()
        raise ValueError(f"eta must be a number, a callable of t, 'auto', 'ntk' or an NTKEta, got {eta!r}")
    if isinstance(eta, (NTKEta, AutoEta)):
        return copy.copy(eta)
    return eta


def _ntk_record(dyn: SBTMFlow, x: Tensor, t: float, theta: Tensor, now: bool, reference) -> dict:
    """The ``ntk_*`` diagnostics at one output time (NaN when ``now`` is False)."""
    from .ntk import NTK_DIAGNOSTICS, eta_condition

    if not now:
        return dict.fromkeys(NTK_DIAGNOSTICS, float("nan"))
    ref = reference if reference is not None else getattr(dyn.eta, "reference_score", None)
    return eta_condition(dyn, x, t, theta, reference_score=ref).as_diagnostics()


def holdout_generator(gen: torch.Generator) -> torch.Generator:
    """The generator of the held-out particles and their probes: a CPU generator seeded with a
    fixed (splitmix64) function of ``gen``'s seed, so that held-out draws are reproducible
    from the run's seed without consuming the training stream (X₀, Θ₀, probes)."""
    return torch.Generator().manual_seed(splitmix64(gen.initial_seed() + 0x9E3779B97F4A7C15))


def splitmix64(z: int) -> int:
    """The splitmix64 finaliser: a well-mixed 64-bit integer from ``z`` (derived seeds)."""
    z %= 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return z ^ (z >> 31)


def holdout_particles(init_target, m: int, gen: torch.Generator, x0: Tensor, track_logdensity: bool):
    """``(X̃₀ (m, d), log f_0(X̃₀) (m,) or None)``: m held-out particles from the initial law
    ``init_target``, on the dtype/device of the training particles ``x0 (n, d)``;
    ``(None, None)`` when m = 0.

    Raises:
        ValueError: m > 0 and the initial particles were given as a tensor (no law to draw from)."""
    if m == 0:
        return None, None
    if init_target is None:
        raise ValueError(
            f"holdout={m} draws fresh particles from the initial law, but init was given as a tensor of particles; "
            "pass init as a law with sample (e.g. sf.Gaussian(mean, cov)) and n"
        )
    x = check_particles(init_target.sample(m, generator=gen), x0.shape[1], "init.sample(holdout)").to(x0)
    if not torch.isfinite(x).all():
        raise ValueError(f"init.sample(holdout={m}) returned NaN/inf")
    return x, (initial_log_density(init_target, x) if track_logdensity else None)


def _stiffness_check(flow: SBTMFlow, y: Tensor, solver: str, h: float, t0: float, t_final: float, gen,
                     monitor: StiffnessMonitor | None = None) -> None:
    """Estimate z = η·λ_max(∇²_Θ L)·h at the start.  Fixed-step solvers with z beyond their
    real stability limit are refused (they would diverge); adaptive solvers get a warning
    with the step size and the RHS evaluations they will need.  The converged power-iteration
    vector seeds ``monitor``, which keeps watching during the run."""
    if monitor is not None:
        lam = monitor.estimate(y, iters=30, t=t0)
        if monitor.auto is not None:
            monitor.auto.update(lam, monitor.limit, h)
            monitor.last_step = 0
    else:
        lam = hessian_max_eigenvalue(flow, y, generator=gen, t=t0)
    eta = flow.eta_at(t0)
    if solver in _STABILITY:
        c = _STABILITY[solver]
        z = eta * lam * h
        if z > c:
            raise SamplingError(
                f"the coupled X/Θ system is stiff for {solver!r}: eta·λ_max(∇²_Θ L)·dt = {eta:g}·{lam:.4g}·{h:g} = {z:.3g} "
                f"> {c:g} (the solver's stability limit), so fixed steps would diverge. Use eta <= {c / (lam * h):.3g}, "
                f"dt <= {c / (eta * lam):.3g}, or an adaptive solver (solver='dopri5'); pass stiffness_check=False to run anyway",
                t=t0,
            )
    elif solver not in FIXED_GRID_SOLVERS:
        h_stable = 3.0 / max(eta * lam, 1e-30)  # explicit RK methods: real stability limit ≈ 2–3.3
        if h_stable < h / 10:
            warnings.warn(
                f"the coupled X/Θ system is stiff: eta·λ_max(∇²_Θ L) = {eta * lam:.4g}, so {solver!r} will be limited "
                f"to steps of about {h_stable:.2g} (≈ {(t_final - t0) / h_stable:.3g} steps over the run) whatever "
                "rtol/atol are; lower eta for speed, or bound the cost with max_nfe",
                RuntimeWarning,
                stacklevel=4,
            )


# ----------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------
def _sbtm_state(dyn, training: str, monitor=None) -> dict:
    """What an SBTM checkpoint needs beyond the state vector: probes, generators, the
    stiffness monitor and, for ``training="steps"``, the network and its optimizer."""
    state = {
        "monitor": None if monitor is None else monitor.state_dict(),
        "probes": None if dyn.probes is None else dyn.probes.cpu(),
        "generator": dyn.generator.get_state() if dyn.generator is not None else None,
        "holdout_probes": None if dyn.holdout_probes is None else dyn.holdout_probes.cpu(),
        "holdout_generator": dyn.holdout_generator.get_state() if dyn.holdout_generator is not None else None,
        "batch_generator": dyn.batch_generator.get_state(),
    }
    if training == "steps":
        state["model"] = {k: v.detach().cpu() for k, v in dyn.model.state_dict().items()}
        state["optimizer"] = dyn.optimizer.state_dict()
        state["train_steps"] = dyn.train_steps
    return state


def restore_record(blob: dict, device, dtype) -> tuple[Tensor, Recorder, int, int, float, dict]:
    """``(y, recorder, k, nfe, wall, info)`` from a checkpoint written by :class:`Checkpoint`."""
    y = blob["y"].to(device=device, dtype=dtype)
    r = blob["record"]
    rec = Recorder(times=r["times"], diags=r["diags"],
                   **{k: [v.to(device) for v in r.get(k, [])] for k in ("xs", "thetas", "logds", "holdout_xs", "holdout_logds")})
    return y, rec, blob["k"], blob["nfe"], blob["wall"], json.loads(blob["info"])


def _restore(blob, dyn, training, device, dtype):
    y, rec, k, nfe, wall, info = restore_record(blob, device, dtype)
    for name in ("probes", "holdout_probes"):
        if blob.get(name) is not None:
            setattr(dyn, name, blob[name].to(device=device, dtype=dtype))
    for name in ("generator", "holdout_generator", "batch_generator"):
        if blob.get(name) is not None and getattr(dyn, name) is not None:
            getattr(dyn, name).set_state(blob[name])
    if training == "steps":
        dyn.model.load_state_dict(blob["model"])
        dyn.optimizer.load_state_dict(blob["optimizer"])
        dyn.train_steps = blob["train_steps"]
    return y, rec, k, nfe, wall, info
