r"""``sample()``: the front door, and SBTM as a sampler of the generic run loop.

``sample(target, method, **kwargs)`` maps its keywords onto the method's typed configuration
(:mod:`sbtm_flows.config`) and calls the method's runner.  :func:`run_sbtm` is wiring: it
builds the path, X₀, the score network and an :class:`SBTMSampler` (the dynamics of
:mod:`sbtm_flows.dynamics` integrated with torchdiffeq between output times), and hands them
to :func:`sbtm_flows.loop.run`, which owns progress, checkpoints, stop rules and the Result.
The sampler's :class:`SBTMState` holds particles, Θ, ℓ and the held-out block; the flat vector
torchdiffeq integrates is built from it only inside :meth:`SBTMSampler.advance`.

Fixed-step solvers step on the path's time grid (``path.time_grid``); adaptive solvers get
``rtol``/``atol`` and restart their step-size control at each output time.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torchdiffeq
from torch import Tensor

from .checkpoint import Checkpoint, target_fingerprint
from .compat import TORCHDIFFEQ_SOLVERS
from .config import ADAPTIVE_OPTIONS, SBTMConfig, build_config
from .distributed import current as current_comm
from .distributed import is_main_process, rank_path, shard_rows
from .dynamics import SBTMFlow, SBTMSteps
from .errors import SamplingError
from .eta import as_eta
from .guards import CollapsedScoreGuard, FiniteTargetGuard, ParticleStiffness, holdout_outliers
from .logdensity import initial_log_density, target_log_prob
from .loop import Recorder, grid_index, make_generator, output_grid, prepare_run, run, splitmix64
from .paths import Path, as_path
from .result import Result
from .rkc import SpectralRadius
from .score import ResidualScore, ScaledScore, ScoreMLP, at_time, fit_score, flatten_params
from .stiffness import FIXED_GRID_SOLVERS, SOLVER_FACTS, StiffnessMonitor, eta_limit, prerun_check
from .targets import check_particles

__all__ = [
    "sample", "run_sbtm", "SBTMSampler", "SBTMState", "SOLVERS", "FIXED_GRID_SOLVERS", "METHODS", "TRAININGS",
    "Recorder", "make_generator", "prepare_run", "output_grid",
]

#: torchdiffeq's registry: method name -> solver class.
SOLVERS: dict[str, type] = dict(TORCHDIFFEQ_SOLVERS)
TRAININGS = ("flow", "steps", "auto")
#: method name -> runner; ``sample`` dispatches on it (other modules add entries).
METHODS: dict[str, Callable[..., Result]] = {}


def sample(target, method: str = "sbtm", **kwargs) -> Result:
    r"""Sample from ``target`` (a target or an annealing path) with ``method``.

    Methods: ``"sbtm"`` (the coupled particle/network flow or the paper's discrete training;
    options: :class:`~sbtm_flows.config.SBTMConfig`) and ``"ula"`` (overdamped Langevin as a
    torchsde SDE; options: :class:`~sbtm_flows.config.ULAConfig`). On an annealing path they are
    annealed SBTM and annealed ULA.  Common keyword arguments (:class:`~sbtm_flows.config.RunConfig`):
    ``init`` (a target with ``sample`` or a tensor ``(n, d)``), ``n``, ``t0``, ``t_final``, ``dt``,
    ``save_every``, ``times``, ``seed``, ``device``, ``dtype``, ``progress``, ``max_nfe``,
    ``checkpoint``, ``checkpoint_every``, ``resume``.

    Returns:
        a :class:`~sbtm_flows.result.Result`.

    Raises:
        ValueError: an unknown method, an option the method (or the chosen configuration) does
            not use — the message names the method or configuration that would use it —, or a
            bad value.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(sorted(METHODS))}")
    return METHODS[method](target, **kwargs)


def run_sbtm(target, config: SBTMConfig | None = None, **kwargs) -> Result:
    r"""Run SBTM: dX/dt = ∇log π_t(X) − s_Θ(X) with s_Θ trained online on the particles.

    Args:
        target: a :class:`~sbtm_flows.targets.Target`, a :class:`~sbtm_flows.paths.Path`,
            or any object with ``dim`` and ``score(x)`` / ``score(x, t)``.
        config: an :class:`~sbtm_flows.config.SBTMConfig`, or ``None`` to build one from
            ``kwargs`` (its fields; see its docstring for each option).

    Raises:
        ValueError: bad arguments (names the argument and the valid values, or the
            configuration that would use an option this one does not).
        SamplingError: a run that went non-finite, or a stiff system the solver cannot handle.
    """
    cfg = build_config("sbtm", kwargs, config)
    path, gen, x0, init_target, dtype, device = prepare_run(target, cfg.init, cfg.n, cfg.t0, cfg.t_final, cfg.dt,
                                                            cfg.save_every, cfg.seed, cfg.dtype, cfg.device)
    cfg = cfg.resolved(path)
    eta = copy.copy(as_eta(cfg.flow.eta, cfg.t0)) if cfg.training == "flow" else None  # the run sets its value / ceiling
    hgen = holdout_generator(gen)
    xh0 = holdout_particles(init_target, cfg.density.holdout, hgen, x0, cfg.density.track_logdensity)
    model = _score_network(cfg, path, x0, gen, dtype, device, scaled=eta is not None and eta.absorbs_loss_scale)
    grid, out_idx = output_grid(path, cfg.t0, cfg.t_final, cfg.dt, int(cfg.save_every), cfg.solver.method in FIXED_GRID_SOLVERS, cfg.times)
    sampler = SBTMSampler(cfg, path, model, eta, grid, grid[out_idx], gen, hgen, init_target, device)
    config_dict = cfg.to_dict()
    ckpt = None
    if cfg.checkpoint is not None:  # the network is fingerprinted by content before the run trains it
        ckpt = Checkpoint(rank_path(cfg.checkpoint, sampler.comm), {**cfg.fields(), "score_model": model},
                          target_fingerprint(path, x0, cfg.t0, cfg.t_final))
    stop = None
    if cfg.stop_fisher is not None:
        def stop(t: float, diag: dict) -> str | None:
            if diag["fisher"] < cfg.stop_fisher:
                return f"F^n = {diag['fisher']:.4g} < stop_fisher = {cfg.stop_fisher} at t = {t:.6g}"
            return None
    return run(sampler, lambda: sampler.init(x0, cfg.t0, gen, holdout=xh0), grid[out_idx], observers=sampler.observers(),
               stop=stop, checkpoint=ckpt,
               checkpoint_every=cfg.checkpoint_every, resume=cfg.resume, progress=cfg.progress and is_main_process(), method="sbtm",
               config=config_dict, info={"training": cfg.training})


METHODS["sbtm"] = run_sbtm


def _score_network(cfg, path: Path, x0: Tensor, gen: torch.Generator, dtype, device, scaled: bool = False) -> torch.nn.Module:
    """The configured score network (default: :class:`ScoreMLP` drawn from ``gen``, in
    ``ScaledScore(net, path.scale)`` on a dilation path for the discrete training and, when
    ``scaled`` (an η schedule that ``absorbs_loss_scale``), for the flow; for the flow on a target
    with ``anchored_score``, a :class:`ResidualScore` around it), checked on X₀."""
    model = cfg.score.model
    if model is None:
        model = ScoreMLP(path.dim, cfg.score.hidden, cfg.score.activation, generator=gen, dtype=dtype)
        if (cfg.training == "steps" or scaled) and callable(getattr(path, "scale", None)):
            # a path that dilates space: learn in its coordinates (see ScaledScore; with a fixed η
            # the flow's loss curvature in Θ would grow like 1/c(t)², which a TrackingEta absorbs)
            model = ScaledScore(model, path.scale)
        elif cfg.training == "flow" and getattr(getattr(path, "target", None), "anchored_score", False):
            model = ResidualScore(model, path)  # the target asks for it (Target.anchored_score)
    model = model.to(device=device, dtype=dtype)
    _check_score_model(model, x0, cfg.t0)
    return model


@dataclass
class SBTMState:
    """SBTM's State: the training particles ``x (n, d)`` (this process's rows), Θ ``theta (P,)``
    (the coupled flow; ``None`` for the discrete training, whose network and optimizer live in the
    sampler), the Θ dynamics' auxiliary state ``theta_aux (A,)`` (``theta_flow="rmsprop"``: second
    moments; ``None`` for ``"gd"``), ℓ = log f_t(X) ``log_density (n,)``, the held-out particles ``holdout_x (m, d)`` and
    their ℓ̃ ``holdout_log_density (m,)`` (``None`` when absent).  The Hutchinson probes, the
    generators, the network and optimizer of the discrete training and the stiffness monitors are
    the sampler's and travel through :meth:`SBTMSampler.state_dict`.

    The flat vector y = vec(X) ⊕ Θ [⊕ A] [⊕ ℓ] [⊕ vec(X̃) [⊕ ℓ̃]] that torchdiffeq integrates is built
    only at that boundary: :meth:`pack` and :meth:`unpack`."""

    x: Tensor
    theta: Tensor | None = None
    theta_aux: Tensor | None = None
    log_density: Tensor | None = None
    holdout_x: Tensor | None = None
    holdout_log_density: Tensor | None = None

    def pack(self) -> Tensor:
        """y, the blocks flattened and concatenated in the dynamics' layout, ``(N,)``."""
        blocks = (self.x, self.theta, self.theta_aux, self.log_density, self.holdout_x, self.holdout_log_density)
        return torch.cat([b.reshape(-1) for b in blocks if b is not None])

    @classmethod
    def unpack(cls, y: Tensor, dyn) -> "SBTMState":
        """The State whose :meth:`pack` is y (views of y), in the layout of the dynamics ``dyn``."""
        return cls(**dyn.blocks(y))


@dataclass
class SBTMView:
    """A state read at output time t: training particles ``x (n, d)``, Θ ``(P,)``, the score
    function x ↦ s_Θ(x, t), ℓ ``(n,)`` and the held-out block ``(m, d)``, ``(m,)`` (``None`` when
    absent); ``holdout_lost (m,)`` bool is computed on first use (one held-out velocity per time)."""

    sampler: Any
    state: SBTMState
    t: float
    x: Tensor
    theta: Tensor
    score_fn: Callable[[Tensor], Tensor]
    log_density: Tensor | None
    holdout_x: Tensor | None
    holdout_log_density: Tensor | None
    x_all: Tensor | None = None
    log_density_all: Tensor | None = None
    _lost: Tensor | None = None
    _escaped: Tensor | None = None

    @property
    def holdout_lost(self) -> Tensor:
        """Held-out particles frozen because their position or rates stopped being finite, ``(m,)`` bool."""
        if self._lost is None:
            self._lost = self.sampler.dyn.holdout_velocity(self.t, self.state.pack(), self.score_fn)[2]
        return self._lost

    @property
    def holdout_escaped(self) -> Tensor:
        """Held-out particles (not lost) far outside the training cloud, in x or ℓ, ``(m,)`` bool
        (:func:`~sbtm_flows.guards.holdout_outliers`)."""
        if self._escaped is None:
            self._escaped = holdout_outliers(self.x_all, self.holdout_x, self.log_density_all,
                                             self.holdout_log_density) & ~self.holdout_lost
        return self._escaped


class SBTMSampler:
    r"""SBTM as a :class:`~sbtm_flows.loop.Sampler`: the coupled flow (:class:`SBTMFlow`) or the
    discrete training (:class:`SBTMSteps`) integrated by torchdiffeq between output times.

    :meth:`init` fits s_Θ to ∇log f_0 and runs the pre-run stiffness check; :meth:`advance`
    lets the stiffness monitor look at the state (fixed-step flow runs) and integrates;
    :meth:`observe` records the score diagnostics, the density diagnostics, η, the NTK
    condition, Θ, ℓ and the held-out block at each output time.

    Args:
        cfg: a resolved :class:`~sbtm_flows.config.SBTMConfig` (``training`` is ``"flow"`` or ``"steps"``).
        path: the (moved) path; model: the score network; eta: the flow's
            :class:`~sbtm_flows.eta.EtaSchedule` (``None`` for the discrete training).
        grid: the integration grid ``(m,)`` (the output times ``times (T,)`` for adaptive solvers).
        generator, holdout_generator: the run's generator and the held-out particles' one.
        init_target: the initial law (``None`` when X₀ was given as a tensor).
    """

    def __init__(self, cfg, path: Path, model: torch.nn.Module, eta, grid: Tensor, times: Tensor,
                 generator: torch.Generator, holdout_generator: torch.Generator, init_target, device):
        self.cfg, self.path, self.model, self.init_target, self.device = cfg, path, model, init_target, device
        self.fixed = cfg.solver.method in FIXED_GRID_SOLVERS
        self.grid, self._where, self._k = grid, grid_index(grid), grid_index(times)
        common = dict(divergence=cfg.score.divergence, probes=cfg.score.probes, generator=generator,
                      track_logdensity=cfg.density.track_logdensity, holdout=cfg.density.holdout, holdout_generator=holdout_generator)
        common.update(max_nfe=cfg.max_nfe, reject_nonfinite=not self.fixed)
        if cfg.training == "flow":
            self.dyn = SBTMFlow(path, model, eta=eta, theta_flow=cfg.theta_flow, **common)
        else:
            self.dyn = SBTMSteps(path, model, inner_steps=cfg.steps.inner_steps, optimizer=cfg.steps.optimizer, lr=cfg.steps.lr, **common)
        self._scale(generator, eta)
        self.log_target = target_log_prob(path) if cfg.density.track_logdensity else None
        self.monitor = None
        self.spectral = spectral_estimator(cfg.solver.method, cfg.solver.options, generator)
        if cfg.training == "flow" and self.spectral is None:
            if eta.follows_curvature:
                self.monitor = StiffnessMonitor(self.dyn, cfg.solver.method, eta_limit(cfg.solver.method), every=20, iters=3,
                                                generator=generator)
            elif cfg.stiffness_check and getattr(SOLVER_FACTS.get(cfg.solver.method), "stability", None) is not None:
                self.monitor = StiffnessMonitor(self.dyn, cfg.solver.method, eta_limit(cfg.solver.method), every=20, generator=generator)
        self.tracker = eta if cfg.training == "flow" and eta.refresh_every else None
        self.info: dict = {}
        self._view = None
        stable = getattr(SOLVER_FACTS.get(cfg.solver.method), "stability", None)
        self.xstiff = None  # the particle block X (both trainings, fixed one-step solvers)
        if cfg.stiffness_check and self.fixed and stable is not None:
            self.xstiff = ParticleStiffness(path, cfg.solver.method, stable, "sbtm", generator=torch.Generator().manual_seed(0))

    def _scale(self, generator: torch.Generator, eta) -> None:
        """Batch, chunk and, under torch.distributed, the communicator (checked: fixed-step
        solvers, no NTK tools), with the rank's own mini-batch and Hutchinson-probe generators
        (the shared stream ``generator`` stays equal on all ranks)."""
        cfg, self.comm, self.gen = self.cfg, current_comm(), generator
        if self.comm is not None:
            _check_distributed(cfg.solver.method, self.fixed, cfg.record_ntk_every, eta)
        self.rank = 0 if self.comm is None else self.comm.rank
        rank_probes = None if self.comm is None else torch.Generator().manual_seed(
            splitmix64(generator.initial_seed() + 0x27D4EB2F + self.rank))
        self.dyn.configure_scale(cfg.batch, cfg.chunk, self.comm,
                                 batch_seed=splitmix64(generator.initial_seed() + 0x5BD1E995 + self.rank), generator=rank_probes)
        self.rows, self.diag_rows = None, None

    def shard(self, n: int) -> slice:
        """This process's rows of the n particles (all of them in one process) and the fixed
        subset of them the score diagnostics average over (``diagnostics_sample``)."""
        self.rows = slice(0, n) if self.comm is None else shard_rows(n, self.comm.rank, self.comm.world)
        self.diag_rows = _diagnostic_rows(self.rows.stop - self.rows.start, n, self.cfg.diagnostics_sample, self.gen,
                                          self.rank, self.device)
        self.info.update({"batch": n if self.cfg.batch is None else min(self.cfg.batch, n),
                          "ranks": 1 if self.comm is None else self.comm.world})
        return self.rows

    # ---- the Sampler protocol ---------------------------------------------------------
    def init(self, x0: Tensor, t0: float, generator: torch.Generator, holdout=(None, None)) -> SBTMState:
        """Fit s_Θ to ∇log f_0 at X₀ ``(n, d)`` (``info["init_fit"]``), build the state (with the
        held-out block ``holdout`` = (X̃₀ (m, d), ℓ̃₀ (m,) or None)), set an NTKEta's ceiling and
        run the pre-run stiffness check."""
        cfg, dyn = self.cfg, self.dyn
        if self.xstiff is not None:  # before the fit: a step the particles cannot take is refused at once
            self.xstiff.start(x0, t0, float(self.grid[1] - self.grid[0]))
        log_f0 = initial_log_density(self.init_target, x0) if cfg.density.track_logdensity else None
        n = x0.shape[0]
        rows = self.shard(n)
        t_fit = time.perf_counter()
        if cfg.score.init_steps > 0:  # on `batch` random particles, the same on every rank
            x_fit = x0 if dyn.local_batch(n) >= n else x0[_fit_rows(n, cfg.batch, generator)]
            fit_probes = dyn.draw_probes(x_fit.shape[0], x_fit)
            init_score = self.init_target.score(x_fit) if self.init_target is not None else None
            self.info["init_fit"] = fit_score(self.model, x_fit, init_score, steps=int(cfg.score.init_steps), tol=cfg.score.init_tol,
                                              divergence=dyn.divergence, probes=fit_probes, t=t0)
        self.info["init_fit_seconds"] = time.perf_counter() - t_fit
        flow_t0 = {"t0": t0} if cfg.training == "flow" else {}
        y = dyn.initial_state(x0[rows], log_density0=None if log_f0 is None else log_f0[rows],
                              holdout_x0=holdout[0], holdout_log_density0=holdout[1], **flow_t0)
        if self.spectral is not None:  # the training block only: held-out particles leave the steps unchanged
            self.spectral.restrict(dyn.training_length(y))
            self.spectral.name_blocks(self._blocks(y))
        self._track(y, t0, 0)
        if cfg.training == "flow" and self.spectral is None:
            self._start_flow(y, t0, generator)
        return SBTMState.unpack(y, dyn)

    def _start_flow(self, y: Tensor, t0: float, generator: torch.Generator) -> None:
        """An NTKEta's stability ceiling and the pre-run stiffness check (the check is at t0, so it
        takes the step at t0: a λ-aware grid starts with small steps where the curvature is large)."""
        cfg, dyn = self.cfg, self.dyn
        h = float(self.grid[1] - self.grid[0]) if self.fixed else cfg.dt
        if dyn.eta.wants_ceiling:
            from .stiffness import stability_ceiling

            h_max = float((self.grid[1:] - self.grid[:-1]).max()) if self.fixed else cfg.dt
            self.info["ntk_eta_ceiling"] = stability_ceiling(dyn, y, h_max, eta_limit(cfg.solver.method), generator=generator, t=t0)
            dyn.eta.set_ceiling(self.info["ntk_eta_ceiling"])
        if cfg.stiffness_check or self.monitor is not None:
            dyn.choose_batch(dyn.n_particles(y), 0)
            prerun_check(dyn, y, cfg.solver.method, h, t0, cfg.t_final, generator, self.monitor)

    def _blocks(self, y: Tensor) -> dict[str, int]:
        """Lengths of the training part's blocks of the state, in order (``x``, ``theta``,
        ``theta_aux``, ``log_density`` — those present; :meth:`SBTMFlow.blocks`)."""
        return {name: b.numel() for name, b in self.dyn.blocks(y).items() if b is not None and not name.startswith("holdout")}

    def _track(self, y: Tensor, t: float, k: int) -> None:
        """Let an η schedule with ``refresh_every`` re-size η from the state y at t (``k``: the
        output interval whose training subset the loss uses)."""
        if self.tracker is not None:
            self.dyn.choose_batch(self.dyn.n_particles(y), k)
            self.tracker.refresh(self.dyn, y, t)

    def _aux_every(self) -> int | None:
        """Steps between refreshes of the Θ dynamics' auxiliary state (``None``: never)."""
        if self.cfg.training != "flow":
            return None
        return self.dyn.theta_flow.refresh_every

    def _refresh_aux(self, y: Tensor, t: float, k: int) -> Tensor:
        """y with a piecewise-refreshed Θ-dynamics preconditioner (``"diag"``'s D, ``"kfac"``'s
        factors, ``"gn"``'s Cholesky factor) re-estimated at t on the training subset of output
        interval ``k``; y itself for the Θ dynamics without one."""
        if not self._aux_every():
            return y
        self.dyn.choose_batch(self.dyn.n_particles(y), k)
        return self.dyn.refresh_aux(y, t)

    def advance(self, state: SBTMState, t0: float, t1: float) -> SBTMState:
        """Integrate from output time t0 to t1 (:meth:`_integrate`).  A :class:`SamplingError`
        raised with a piecewise-refreshed Θ preconditioner (``theta_flow="diag"``, ``"kfac"``,
        ``"gn"``) also names that
        preconditioner's refresh interval: between refreshes it goes stale as particles move into
        features it saw empty (README, η and stiffness)."""
        try:
            return self._integrate(state, t0, t1)
        except SamplingError as e:
            every = self._aux_every()
            if not every:
                raise
            tf = self.dyn.theta_flow
            fix = "refresh it more often (e.g. every=1), or lower dt" if every > 1 else "lower dt or the tracked η's ratio"
            raise SamplingError(f"{e} [theta_flow={tf!r} refreshes its preconditioner every {every} step(s) and it can go "
                                f"stale in between: {fix}]", t=e.t) from e

    def _integrate(self, state: SBTMState, t0: float, t1: float) -> SBTMState:
        """Integrate from output time t0 to t1.  The stiffness monitors (Θ and X) look at the state
        every ``every`` steps: a fixed one-step solver integrates the interval in pieces of that
        many steps (bitwise the same result), however far apart the output times are."""
        cfg, i0, i1 = self.cfg, self._where[t0], self._where[t1]
        options = dict(cfg.solver.options or {})
        if self.spectral is not None:
            options["spectral"] = self.spectral
        y = state.pack()  # the torchdiffeq boundary
        if cfg.training == "flow":  # the training subset of this output interval
            self.dyn.choose_batch(state.x.shape[0], self._k[t0])
        if not self.fixed:
            if i0 > 0:  # a piecewise-refreshed Θ-dynamics state (DiagGNFlow): once per output interval
                y = self._refresh_aux(y, t0, self._k[t0])
            if self.monitor is not None:
                self.monitor.check(y, t0, cfg.dt, self._k[t0] * int(cfg.save_every))
            y = odeint_chunk(self.dyn, y, self.grid[[i0, i1]], cfg.solver.method, cfg.solver.rtol, cfg.solver.atol, options)
            return SBTMState.unpack(y, self.dyn)
        one_step = getattr(SOLVER_FACTS.get(cfg.solver.method), "stability", None) is not None  # not multistep
        every = min([m.every for m in (self.monitor, self.xstiff) if m is not None and one_step], default=i1 - i0)
        every = min(every, int(self.tracker.refresh_every)) if self.tracker is not None else every
        every = min(every, self._aux_every()) if self._aux_every() else every
        for a in range(i0, i1, max(1, every)):
            t_a, h_a = float(self.grid[a]), float(self.grid[a + 1] - self.grid[a])
            if a > 0:  # (at the run's start init() has just refreshed them)
                y = self._refresh_aux(y, t_a, self._k[t0])
                self._track(y, t_a, self._k[t0])
            if self.xstiff is not None:
                self.xstiff.check(self.particles(SBTMState.unpack(y, self.dyn)), t_a, h_a, a)
            if self.monitor is not None:
                self.monitor.check(y, t_a, h_a, a)
            y = odeint_chunk(self.dyn, y, self.grid[a : min(a + max(1, every), i1) + 1], cfg.solver.method,
                             ADAPTIVE_OPTIONS["rtol"], ADAPTIVE_OPTIONS["atol"], options)  # rtol/atol unused here
        return SBTMState.unpack(y, self.dyn)

    def particles(self, state: SBTMState) -> Tensor:
        """The training particles X ``(n, d)`` (all ranks' rows, gathered in order, under torch.distributed)."""
        return state.x if self.comm is None else self.comm.gather_rows(state.x)

    def nfe(self, state: SBTMState) -> int:
        """Right-hand-side evaluations so far."""
        return int(self.dyn.nfe)

    def state_dict(self, state: SBTMState) -> dict:
        """The state vector, the dynamics' run state (evaluation count, probes, generators and, for
        the discrete training, the network, its optimizer and the step count), the stiffness
        monitors, the rkc estimator and the η schedule's state."""
        dyn = self.dyn
        return {
            "y": state.pack().detach().cpu(), **dyn.run_state(), "info": dict(self.info),
            "monitor": None if self.monitor is None else self.monitor.state_dict(),
            "eta": dyn.eta.state_dict() if self.cfg.training == "flow" else None,
            "stiffness_x": None if self.xstiff is None else self.xstiff.state_dict(),
            "spectral": None if self.spectral is None else self.spectral.state_dict(),
            "n": int(self.particles(state).shape[0]),
        }

    def load_state_dict(self, blob: dict) -> SBTMState:
        """Inverse of :meth:`state_dict`."""
        dyn = self.dyn
        y = blob["y"].to(device=self.device)
        dyn.load_run_state(blob, y)
        self.shard(int(blob["n"]))
        self.info.update(blob["info"])
        if self.monitor is not None:
            self.monitor.load_state_dict(blob["monitor"])
        if self.spectral is not None and blob.get("spectral") is not None:
            self.spectral.load_state_dict(blob["spectral"])
        if self.cfg.training == "flow":
            dyn.eta.load_state_dict(_eta_state(blob))
        if self.xstiff is not None and blob.get("stiffness_x") is not None:
            self.xstiff.load_state_dict(blob["stiffness_x"])
        return SBTMState.unpack(y, dyn)

    # ---- what is recorded -----------------------------------------------------------------
    def view(self, state: SBTMState, t: float) -> SBTMView:
        """What the observers read at output time t, computed once per state and time."""
        if self._view is not None and self._view[0] is state and self._view[1] == t:
            return self._view[2]
        x, theta, logd, comm = state.x, state.theta, state.log_density, self.comm
        if theta is not None:  # the coupled flow: Θ is in the state
            fn = self.dyn.score_fn(theta, t)
        else:
            theta, fn = flatten_params(self.model), at_time(self.model, t)
        v = SBTMView(self, state, t, x, theta, fn, logd, state.holdout_x, state.holdout_log_density,
                     x_all=x if comm is None else comm.gather_rows(x),
                     log_density_all=logd if comm is None or logd is None else comm.gather_rows(logd))
        self._view = (state, t, v)
        return v

    def probes(self, x: Tensor) -> Tensor | None:
        """The Hutchinson probes ``(m, n, d)`` of the training particles (``None`` for the exact divergence)."""
        return self.dyn.probes_for(x)

    def diagnostic_particles(self, v: SBTMView) -> tuple[Tensor, Tensor | None]:
        """``(X (k, d), probes (m, k, d) or None)``: the particles the score diagnostics are means
        over — a fixed random subset of ``diagnostics_sample`` of them, or all — and their probes."""
        x, probes = v.x, self.probes(v.x)
        if self.diag_rows is None:
            return x, probes
        return x[self.diag_rows], (None if probes is None else probes[:, self.diag_rows])

    def observe(self, state: SBTMState, t: float, k: int) -> dict:
        """The series at output time t_k: Θ, ℓ and the held-out block (the diagnostics are observers')."""
        v = self.view(state, t)
        return {"thetas": v.theta, "log_density_trajectory": v.log_density_all, "holdout_trajectory": v.holdout_x,
                "holdout_log_density_trajectory": v.holdout_log_density}

    def observers(self) -> list:
        """The diagnostics this configuration records (:mod:`sbtm_flows.observers`), in order."""
        from .observers import DensityDiagnostics, EtaTrace, HeldOutStatus, NTKTrace, ScoreDiagnostics

        cfg, out = self.cfg, [FiniteTargetGuard(self.path), CollapsedScoreGuard(), ScoreDiagnostics()]
        if cfg.density.holdout:
            out.append(HeldOutStatus())
        if cfg.density.track_logdensity and self.log_target is not None:
            out.append(DensityDiagnostics(self.log_target, getattr(self.path.target, "log_Z", None)))
        if cfg.training == "flow" and not self.dyn.eta.stateful:
            out.append(EtaTrace())
        if cfg.flow is not None and cfg.flow.record_ntk_every is not None:
            out.append(NTKTrace(cfg.flow.record_ntk_every, cfg.flow.ntk_reference))
        return out

    def finish(self, state: SBTMState, packed: dict, info: dict) -> dict:
        """Facts for ``info`` and the SBTM fields of the Result."""
        cfg = self.cfg
        info.update({k: v for k, v in self.info.items() if k not in info})
        if cfg.training == "steps":
            info["train_steps"] = self.dyn.train_steps
        info["solver"] = cfg.solver.method
        if cfg.training == "flow":
            info["theta_flow"] = self.dyn.theta_flow.config()
            info["eta"] = eta_record(self.dyn.eta)
        if self.spectral is not None:
            info["rkc"] = self.spectral.summary()
        if cfg.training == "flow" and self.dyn.eta.summary() is not None:
            info["eta_schedule"] = self.dyn.eta.summary()
        if self.xstiff is not None:
            info["stiffness_x"] = self.xstiff.record()
        if self.monitor is not None and self.monitor.max_z > 0:
            info["stiffness"] = {"max_eta_lambda_dt": self.monitor.max_z, "at_t": self.monitor.t_max_z,
                                 "solver_limit": self.monitor.limit}
        if cfg.density.track_logdensity and self.log_target is None:
            info["density_diagnostics"] = "unavailable: the target has no log_prob (kl_plus_logz, log_z, ess need log π̃)"
        elif cfg.density.track_logdensity and cfg.density.holdout:
            info["density_diagnostics"] = (f"on the {cfg.density.holdout} held-out particles (never trained on); the training "
                                           "particles' values are the *_train diagnostics (biased, see sbtm_flows.logdensity)")
        return self._result_fields(state, packed)

    def _result_fields(self, state: SBTMState, packed: dict) -> dict:
        last = {k: packed[k][-1] if k in packed else None
                for k in ("log_density_trajectory", "holdout_trajectory", "holdout_log_density_trajectory")}
        lt = self.log_target
        lost = self.view(state, float(packed["times"][-1])).holdout_lost.cpu() if self.cfg.density.holdout else None
        return dict(
            thetas=packed.get("thetas"),
            score_config=_score_config(self.model, packed["times"]),
            log_density=last["log_density_trajectory"],
            log_density_trajectory=packed.get("log_density_trajectory"),
            log_target=lt(packed["trajectory"][-1]) if last["log_density_trajectory"] is not None and lt is not None else None,
            holdout_particles=last["holdout_trajectory"],
            holdout_trajectory=packed.get("holdout_trajectory"),
            holdout_log_density=last["holdout_log_density_trajectory"],
            holdout_log_density_trajectory=packed.get("holdout_log_density_trajectory"),
            holdout_log_target=(lt(last["holdout_trajectory"]) if last["holdout_log_density_trajectory"] is not None
                                and lt is not None else None),
            holdout_lost=lost,
        )


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
            # float32: dopri8 on §5.1 (η = 5, n = 500) underflows at t = 0.27 whatever rtol, and runs in float64
            single = ", or run in dtype=torch.float64" if y.dtype == torch.float32 else ""
            raise SamplingError(
                f"adaptive solver {solver!r}: step size underflow between t={t0:.6g} and t={t1:.6g} ({msg}); "
                f"the system is stiff or has blown up: lower eta, loosen rtol/atol, or check the target{single}",
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



def spectral_estimator(solver: str, solver_options: dict | None, gen: torch.Generator) -> SpectralRadius | None:
    """For ``solver="rkc"``: the :class:`~sbtm_flows.rkc.SpectralRadius` that picks its stage
    counts (``solver_options["spectral"]`` if given, else a default one whose first direction is
    drawn from a generator derived from the run's seed, so the training stream is unchanged);
    ``None`` for other solvers."""
    if solver != "rkc":
        return None
    spectral = (solver_options or {}).get("spectral")
    if spectral is None:
        spectral = SpectralRadius(generator=torch.Generator().manual_seed(splitmix64(gen.initial_seed() + 0x5BD1E995)))
    return spectral


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
    if solver == "rkc":
        raise ValueError(
            "solver 'rkc' picks its stage count from a spectral estimate of each rank's own shard, so the ranks would take "
            "different steps and their Θ would drift apart: use solver='heun2' (with a stable eta, e.g. eta='auto') for "
            "data-parallel runs, or run in one process")
    if record_ntk_every is not None or (eta is not None and eta.stateful):
        raise ValueError("the NTK tools (record_ntk_every, eta='ntk') need all particles in one process: run without "
                         "torch.distributed")


def auto_theta_flow(target, solver: str | None) -> str | None:
    """The Θ dynamics of ``training="auto"`` (which, with no training option given, is the flow):
    ``"kfac"`` (:mod:`sbtm_flows.kfac_flow`, refreshed every step, η ``"track"``) on a path that
    dilates space (one with ``scale(t)``, e.g. :class:`~sbtm_flows.paths.Dilation`) with a
    fixed-grid solver — there the plain gradient flow's Θ-curvature grows by orders of magnitude
    and it lags the transport between modes (README, η and stiffness: §5.4 TV to annealed ULA
    0.283 with ``"gd"``, 0.027 with ``"kfac"``); elsewhere ``None`` (the flow's default, ``"gd"``).
    An adaptive solver refreshes K-FAC's factors only at output times, so it keeps ``"gd"``."""
    dilates = callable(getattr(as_path(target), "scale", None))
    fixed = solver is None or solver in FIXED_GRID_SOLVERS  # None: the default, fixed-grid either way
    return "kfac" if dilates and fixed else None


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
    if isinstance(model, ResidualScore):
        return cfg if cfg.get("net") is not None else None
    if isinstance(model, ScaledScore):
        if cfg.get("net") is None:
            return None
        cfg["scales"] = [model.scale_at(t) for t in times.tolist()]
    return cfg


def eta_record(schedule) -> float | dict | str:
    """How ``info["eta"]`` (and the experiments' ``metrics.json``) records the flow's η: a constant
    as its value, a :class:`~sbtm_flows.eta.DecayingEta` as its keywords, others as their repr."""
    from .eta import ConstantEta, DecayingEta

    if isinstance(schedule, ConstantEta):
        return schedule.value
    return schedule.config() if isinstance(schedule, DecayingEta) else repr(schedule)


def _eta_state(blob: dict) -> dict:
    """The η schedule's state in a checkpoint blob (in checkpoints written before the η protocol:
    an AutoEta's value in the monitor's blob, an NTKEta's ceiling under ``eta_ceiling``)."""
    if blob.get("eta") is not None:
        return blob["eta"]
    return {"value": (blob.get("monitor") or {}).get("eta"), "ceiling": blob.get("eta_ceiling")}


def holdout_generator(gen: torch.Generator) -> torch.Generator:
    """The generator of the held-out particles and their probes: a CPU generator seeded with a
    fixed (splitmix64) function of ``gen``'s seed, so that held-out draws are reproducible
    from the run's seed without consuming the training stream (X₀, Θ₀, probes)."""
    return torch.Generator().manual_seed(splitmix64(gen.initial_seed() + 0x9E3779B97F4A7C15))


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
