r"""Typed run configurations: one dataclass per sampler, validated when built.

:class:`SBTMConfig` groups its options in nested dataclasses (:class:`SolverOptions`,
:class:`FlowTraining` / :class:`StepsTraining`, :class:`ScoreOptions`, :class:`DensityOptions`).
``sf.sample(target, method, **kwargs)`` maps its flat keywords onto the method's configuration
(:func:`build_config`; for SBTM through :data:`FLAT_OPTIONS`); a keyword that it does not take
is an error naming the methods whose configuration would take it, and an option that the chosen configuration does not use (``eta``
with ``training="steps"``, ``inner_steps`` with the coupled flow, ``rtol`` with a fixed-step
solver, ``hidden`` with a custom ``score_model``) is an error naming the configuration that would
use it.  Options that depend on a choice default to ``None`` ("not given") and get their
value once the choice is known (for SBTM, after ``training="auto"`` is resolved on the target);
options the configuration does not use stay ``None`` (for SBTM the unused training's group is
``None``), so a stored configuration rebuilds the run.

:meth:`RunConfig.to_dict` is the (flat) JSON form stored in ``result.config``, ``config.json`` and
checkpoints (a resume with another configuration is refused).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .checkpoint import check_resume
from .dynamics import DEFAULT_BATCH, check_batch
from .eta import as_eta
from .loop import check_positive, config_of
from .losses import CHUNK
from .stiffness import FIXED_GRID_SOLVERS

__all__ = [
    "RunConfig", "SBTMConfig", "ULAConfig", "SolverOptions", "FlowTraining", "StepsTraining", "ScoreOptions", "DensityOptions",
    "CONFIGS", "OTHER_OPTIONS", "build_config", "unknown_option", "TRAININGS", "FLOW_OPTIONS", "STEPS_OPTIONS", "FLAT_OPTIONS",
]

TRAININGS = ("flow", "steps", "auto")
#: Options of the coupled flow (training="flow") and their defaults.
FLOW_OPTIONS: dict[str, Any] = {"eta": 5.0, "record_ntk_every": None, "ntk_reference": None, "theta_flow": "gd"}
#: Options of the discrete training (training="steps") and their defaults.
STEPS_OPTIONS: dict[str, Any] = {"inner_steps": 5, "optimizer": "adam", "lr": 1e-3}
#: Options of adaptive solvers and their defaults.
ADAPTIVE_OPTIONS: dict[str, Any] = {"rtol": 1e-5, "atol": 1e-6}
#: Options of the default network (score_model=None) and their defaults.
NETWORK_OPTIONS: dict[str, Any] = {"hidden": (64, 64), "activation": "silu"}


@dataclass
class RunConfig:
    """What every sampler's run takes: the initial law or particles, the time interval and
    output times, the seed, dtype/device, the budget and checkpoints (the fields are described
    in :class:`SBTMConfig`; ``max_nfe``: raise :class:`~sbtm_flows.errors.SamplingError` after that
    many right-hand-side / drift evaluations)."""

    init: Any = None
    n: int | None = None
    t0: float = 0.0
    t_final: float = 1.0
    dt: float = 0.01
    save_every: int = 1
    times: Any = None
    seed: int | None = 0
    device: str | torch.device | None = None
    dtype: torch.dtype | str = torch.float32
    progress: bool = False
    max_nfe: int | None = None
    checkpoint: str | os.PathLike | None = None
    checkpoint_every: int = 50
    resume: bool | str = False
    stiffness_check: bool = True

    def __post_init__(self) -> None:
        check_positive("checkpoint_every", self.checkpoint_every, integer=True)
        check_positive("max_nfe", self.max_nfe, integer=True, allow_none=True)
        check_resume(self.resume)

    def _fill(self, options: dict) -> None:
        """Give each option in ``options`` that was not given its default."""
        for name, default in options.items():
            if getattr(self, name) is None:
                setattr(self, name, default)

    @classmethod
    def option_names(cls) -> set[str]:
        """The keywords the configuration takes (``sample``'s keywords for its method)."""
        return {f.name for f in dataclasses.fields(cls)}

    def fields(self) -> dict:
        """The configuration as a dict of its field values (objects as they are)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_dict(self) -> dict:
        """The configuration as JSON-able values (objects as their repr, tensors as their shape)."""
        return config_of({k: v for k, v in self.fields().items() if k not in _NOT_CONFIG})


_NOT_CONFIG = {"score_model"}


def _refuse(given: dict, options: dict, who: str, used_by: str) -> None:
    """ValueError for the first option in ``options`` that was given (not None)."""
    for name in options:
        if given.get(name) is not None:
            raise ValueError(f"{name}={given[name]!r} is not used by {who}; it is an option of {used_by}")


def default_solver(training: str, eta=None) -> str:
    """The solver used when none is named: ``"rkc"`` (:mod:`sbtm_flows.rkc`) for the coupled flow
    — stable by construction whatever η·λ_max(∇²_Θ L)·dt becomes —, ``"heun2"`` (the paper's)
    for the discrete training, whose right-hand side is the particle velocity alone, and for
    ``eta="auto"`` (which sizes η to heun2's stability limit instead)."""
    auto = eta is not None and as_eta(eta).follows_curvature
    return "rkc" if training == "flow" and not auto else "heun2"


#: Default number of particles the score diagnostics (F^n, loss, dissipation) average over.
DIAGNOSTICS_SAMPLE = 65536


@dataclass
class SolverOptions:
    """The torchdiffeq method and its options (``sample``'s ``solver``, ``rtol``, ``atol``,
    ``solver_options``): ``method`` — any torchdiffeq method or ``"rkc"``, ``None`` for
    :func:`default_solver`; ``rtol``/``atol`` — adaptive methods only (``None`` = not given);
    ``options`` — passed through to torchdiffeq."""

    method: str | None = None
    rtol: float | None = None
    atol: float | None = None
    options: dict | None = None


@dataclass
class FlowTraining:
    """``training="flow"``: dΘ/dt = −η∇_Θ L in the ODE state; ``eta`` (default 5), the NTK records
    ``record_ntk_every`` / ``ntk_reference`` (``None`` = not given)."""

    eta: Any = None
    record_ntk_every: int | None = None
    ntk_reference: Callable | None = None
    theta_flow: Any = None


def theta_flow_defaults(flow: FlowTraining) -> FlowTraining:
    """``flow`` with ``theta_flow`` checked (default ``"gd"``) and η defaulted to the Θ dynamics'
    own (:data:`~sbtm_flows.theta_flow.DEFAULT_ETA`: a rate per unit curvature for ``"gd"``, a
    parameter speed for ``"rmsprop"``, ``"track"`` for ``"diag"``, a tracked η of ratio 10 for
    ``"kfac"``; a schedule object there is deep-copied, so runs never share its state).

    Raises:
        ValueError: an unknown ``theta_flow``, or a preconditioned one with the NTK tools
            (``eta="ntk"``, ``record_ntk_every``: Theorem 3.5's condition is for the plain flow)."""
    from .theta_flow import DEFAULT_ETA, resolve_theta_flow

    theta_flow = resolve_theta_flow("gd" if flow.theta_flow is None else flow.theta_flow)
    if theta_flow.name != "gd":
        ntk = flow.record_ntk_every is not None or (flow.eta is not None and as_eta(flow.eta).stateful)
        if ntk:
            raise ValueError(f"theta_flow={flow.theta_flow!r} with the NTK tools (eta='ntk', record_ntk_every): Theorem 3.5's "
                             "condition is for the plain gradient flow; use theta_flow='gd' with them")
    eta = copy.deepcopy(DEFAULT_ETA[theta_flow.name]) if flow.eta is None else flow.eta
    return dataclasses.replace(flow, eta=eta, theta_flow="gd" if flow.theta_flow is None else flow.theta_flow)


@dataclass
class StepsTraining:
    """``training="steps"`` (the paper's algorithm): ``inner_steps`` K (default 5) steps of
    ``optimizer`` (default ``"adam"``) with learning rate ``lr`` (default 1e-3) before each time
    step (``None`` = not given)."""

    inner_steps: int | None = None
    optimizer: str | None = None
    lr: float | None = None


@dataclass
class ScoreOptions:
    """The score network and its fit: ``model`` (``sample``'s ``score_model``; ``None``: a
    :class:`~sbtm_flows.score.ScoreMLP` of ``hidden``/``activation``), the divergence (``"exact"``,
    ``"hutchinson"`` with ``probes`` probes, ``"auto"``) and the initial fit (``init_steps``, ``init_tol``)."""

    model: torch.nn.Module | None = field(default=None, repr=False)
    hidden: tuple[int, ...] | None = None
    activation: str | None = None
    divergence: str = "auto"
    probes: int = 1
    init_steps: int = 3000
    init_tol: float = 1e-2


@dataclass
class DensityOptions:
    """The log-density ℓ = log f_t(X) along the particles (``track_logdensity``) and the m
    held-out particles (``holdout``)."""

    track_logdensity: bool = False
    holdout: int = 0


#: ``sample``'s flat keyword -> (group of :class:`SBTMConfig`, field of the group).
FLAT_OPTIONS: dict[str, tuple[str, str]] = {
    "solver": ("solver", "method"), "rtol": ("solver", "rtol"), "atol": ("solver", "atol"),
    "solver_options": ("solver", "options"),
    **{k: ("flow", k) for k in FLOW_OPTIONS}, **{k: ("steps", k) for k in STEPS_OPTIONS},
    "score_model": ("score", "model"), "hidden": ("score", "hidden"), "activation": ("score", "activation"),
    "divergence": ("score", "divergence"), "probes": ("score", "probes"), "init_steps": ("score", "init_steps"),
    "init_tol": ("score", "init_tol"),
    "track_logdensity": ("density", "track_logdensity"), "holdout": ("density", "holdout"),
}
#: The group classes of :class:`SBTMConfig`.
GROUPS: dict[str, type] = {"solver": SolverOptions, "flow": FlowTraining, "steps": StepsTraining, "score": ScoreOptions,
                           "density": DensityOptions}
#: The flat form's keys, in the order ``to_dict`` / ``config.json`` have always used.
FLAT_ORDER = ("solver", "rtol", "atol", "solver_options", "training", "eta", "record_ntk_every", "ntk_reference", "theta_flow", "inner_steps",
              "optimizer", "lr", "score_model", "hidden", "activation", "divergence", "probes", "init_steps", "init_tol",
              "stop_fisher", "track_logdensity", "holdout", "batch", "chunk", "diagnostics_sample")


def _given(group) -> dict:
    """A group's fields as a dict (``{}`` for an absent group)."""
    return {} if group is None else {f.name: getattr(group, f.name) for f in dataclasses.fields(group)}


def _with_defaults(group, defaults: dict):
    """A copy of ``group`` with each field of ``defaults`` that is ``None`` set to its default."""
    return dataclasses.replace(group, **{k: v for k, v in defaults.items() if getattr(group, k) is None})


@dataclass(init=False)
class SBTMConfig(RunConfig):
    r"""SBTM: the solver, the training of s_Θ (``"flow"``: dΘ/dt = −η∇_ΘL in the ODE state;
    ``"steps"``: K optimizer steps before each time step; ``"auto"``), the network, the initial
    fit, the density tracking and held-out particles — in nested groups:

    * ``solver``: :class:`SolverOptions` (``method``, ``rtol``, ``atol``, ``options``);
    * ``training``: ``"flow"``, ``"steps"`` or ``"auto"``, with the options of the chosen training
      in ``flow`` (:class:`FlowTraining`: ``eta``, ``record_ntk_every``, ``ntk_reference``) or
      ``steps`` (:class:`StepsTraining`: ``inner_steps``, ``optimizer``, ``lr``) — the other one is
      ``None``;
    * ``score``: :class:`ScoreOptions`; ``density``: :class:`DensityOptions`;
    * ``stop_fisher``, ``batch``, ``chunk``, ``diagnostics_sample`` and the run options of
      :class:`RunConfig` at the top.

    Built from groups (``SBTMConfig(solver=SolverOptions("dopri5", rtol=1e-4),
    training=FlowTraining(eta=10))`` — a :class:`FlowTraining` / :class:`StepsTraining` given as
    ``training`` also names the training) or from ``sample``'s flat keywords
    (:data:`FLAT_OPTIONS`: ``SBTMConfig(solver="dopri5", rtol=1e-4, eta=10)`` is the same
    configuration); flat names also read (``cfg.eta``, ``cfg.inner_steps``: ``None`` when unused).
    :meth:`fields` / :meth:`to_dict` are the flat form, which rebuilds the configuration.

    Options used by one configuration only (``None`` = not given; an error under the other):
    ``eta``, ``record_ntk_every``, ``ntk_reference`` (training="flow");
    ``inner_steps``, ``optimizer``, ``lr`` (training="steps"); ``rtol``, ``atol`` (adaptive
    solvers); ``hidden``, ``activation`` (the default network, score_model=None).

    Attributes:
        init: initial law (a target with ``sample``; default N(0, I)) or particles ``(n, d)``.
        n: number of particles (default 1000 when ``init`` is a law).
        t0, t_final: time interval; dt: step of fixed-step solvers (and the output spacing
            unit: outputs every ``save_every`` steps, or at ``times``).
        solver: any torchdiffeq method (``heun2`` — the paper's —, ``euler``, ``rk4``,
            ``dopri5``, ``adaptive_heun``, ``bosh3``, ``dopri8``, …) or ``"rkc"``
            (:mod:`sbtm_flows.rkc`: stabilised explicit, stages picked per step); default
            (``None``): :func:`default_solver` — ``"rkc"`` for the flow, ``"heun2"`` for the
            discrete training and ``eta="auto"``; rtol/atol for adaptive ones;
            ``solver_options`` passed through to torchdiffeq.
        training: ``"flow"`` (dΘ/dt = −η ∇_Θ L in the ODE state), ``"steps"`` (the paper's
            K = ``inner_steps`` optimizer steps of ``optimizer``/``lr`` before each time step;
            fixed-step solvers only) or ``"auto"`` (default: ``"steps"`` on a dilation path with a
            fixed-step solver, ``"flow"`` otherwise, unless options of one training are given; see
            :meth:`resolved`).
        theta_flow: the Θ dynamics of the flow (:mod:`sbtm_flows.theta_flow`): ``"gd"`` (default,
            dΘ/dt = −η∇_ΘL), ``"rmsprop"`` (dΘ/dt = −η∇_ΘL/√(v + ε²) with the running second
            moment v of the gradient in the ODE state, per parameter tensor), ``"diag"``
            (dΘ/dt = −η·D·∇_ΘL, D the inverse Gauss–Newton diagonal refreshed every 10 steps;
            default η ``"track"``; :mod:`sbtm_flows.diag_flow`), ``"kfac"`` (dΘ/dt = −η·M·∇_ΘL, M
            the damped Kronecker-factored inverse Gauss–Newton blocks, refreshed every step; default η
            a tracked η of ratio 10; :mod:`sbtm_flows.kfac_flow`; ``training="auto"``'s choice on a
            dilation path), ``"gn"`` (dΘ/dt = −η·(G + δI)⁻¹∇_ΘL, the dense
            Gauss–Newton matrix, refreshed likewise; :mod:`sbtm_flows.gn_flow`) or a ``GradientFlow`` /
            ``RMSpropFlow`` / ``DiagGNFlow`` / ``KFACFlow`` / ``GNFlow`` instance (τ, ε, per tensor or
            per parameter; power, δ; δ, every, m).
        eta: η of the flow: a number (default 5 for ``"gd"``, ``DEFAULT_ETA["rmsprop"]`` for ``"rmsprop"``), a callable of t, ``"auto"``
            (:class:`~sbtm_flows.stiffness.AutoEta`: the largest η the solver keeps stable at
            step dt, η = 0.6·c/(λ_max(∇²_Θ L)·dt), re-estimated along the run), ``"ntk"`` or an
            :class:`~sbtm_flows.ntk.NTKEta` (η from Theorem 3.5's condition at the current
            state; ``"ntk"`` = ``NTKEta()``; a ``ceiling=None`` is set to the stiffness limit
            ½·c/(λ_max(∇²_Θ L)·dt) after the initial fit), or ``"track"``
            (:class:`~sbtm_flows.tracking_eta.TrackingEta`: η = ratio·κ_X/λ_max(∇²_Θ L), the network's
            fastest mode a fixed multiple faster than the particles' — the dilation path's flow).
        score_model: a network ``(n, d) -> (n, d)``, or a time-conditioned one ``(x, t)``
            (``model.time_conditioned``, e.g. :class:`~sbtm_flows.score.ScaledScore`); default
            :class:`ScoreMLP(hidden, activation)`, wrapped in ``ScaledScore(net, path.scale)``
            when the path has a ``scale(t)`` (:class:`~sbtm_flows.paths.Dilation`) and ``training="steps"``
            or the η schedule ``absorbs_loss_scale`` (``eta="track"``).
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
            ``holdout_lost``: held-out particles never stop a run.
        batch: m, the number of particles in the score loss (default 4096, ``DEFAULT_BATCH``;
            None: all).  ``training="steps"`` draws a fresh mini-batch of m of the n particles for
            every optimizer step; the flow trains on a fixed random subset per output interval (so
            the right-hand side is a deterministic function of the state).  Every particle moves;
            those outside the batch with the velocity of the held-out ones
            (:meth:`~sbtm_flows.dynamics.SBTMFlow.configure_scale`).  The initial fit uses m random
            particles.  m ≥ n is the full-batch algorithm, unchanged.
        chunk: block size (particles) of every per-particle computation: memory grows with it,
            not with n (None: no blocking).
        diagnostics_sample: the score diagnostics (``fisher``, ``loss``, ``dissipation``…) are
            means over a fixed random subset of this many particles (default 65536; None: all);
            the density diagnostics (log Z, ESS) use every particle.
        max_nfe: raise :class:`SamplingError` once the solver has used this many RHS calls.
        stiffness_check: with a fixed-step solver, refuse a step the particle block cannot take
            (dt·max_i |λ(∇²log π_t(Xᵢ))| beyond the solver's limit, at the start and every 50
            steps: :class:`~sbtm_flows.guards.ParticleStiffness`, record ``info["stiffness_x"]``;
            ULA too); for a fixed-step flow run, also estimate η·λ_max(∇²_Θ L)·dt and refuse a
            run the solver cannot keep stable (the network block Θ).
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
            output times; with ``resume=True`` an existing checkpoint is continued.
    """

    solver: SolverOptions = field(default_factory=SolverOptions)
    training: str = "auto"
    flow: FlowTraining | None = None
    steps: StepsTraining | None = None
    score: ScoreOptions = field(default_factory=ScoreOptions)
    density: DensityOptions = field(default_factory=DensityOptions)
    stop_fisher: float | None = None
    batch: int | None = DEFAULT_BATCH
    chunk: int | None = CHUNK
    diagnostics_sample: int | None = DIAGNOSTICS_SAMPLE

    def __init__(self, **options: Any):
        for f in dataclasses.fields(self):
            setattr(self, f.name, f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
        flat: dict[str, dict] = {name: {} for name in GROUPS}
        for key, value in options.items():
            if key == "training" and isinstance(value, (FlowTraining, StepsTraining)):
                self.training = "flow" if isinstance(value, FlowTraining) else "steps"
                setattr(self, self.training, value)
            elif key in GROUPS and (isinstance(value, GROUPS[key]) or value is None and key in ("flow", "steps")) \
                    or key in {f.name for f in dataclasses.fields(self)} - set(GROUPS):
                setattr(self, key, value)
            elif key in FLAT_OPTIONS:
                group, name = FLAT_OPTIONS[key]
                flat[group][name] = value
            elif key in GROUPS:
                raise ValueError(f"{key} must be a {GROUPS[key].__name__}, got {type(value).__name__}")
            else:
                raise TypeError(f"SBTMConfig got an unexpected keyword argument {key!r}")
        for group, values in flat.items():  # flat keywords override their group's fields (copies: never the caller's)
            if values:
                current = getattr(self, group)
                setattr(self, group, GROUPS[group](**values) if current is None else dataclasses.replace(current, **values))
        self.__post_init__()

    def __getattr__(self, name: str) -> Any:
        """A flat option (``cfg.eta``, ``cfg.rtol``, …) read from its group (``None`` when the group
        is absent: the option is unused); ``cfg.solver`` is the group."""
        where = FLAT_OPTIONS.get(name)
        if where is None or name == "solver":
            raise AttributeError(f"'SBTMConfig' object has no attribute {name!r}")
        group = self.__dict__.get(where[0])
        return None if group is None else getattr(group, where[1])

    @classmethod
    def option_names(cls) -> set[str]:
        """The fields and the flat names of the groups' fields (:data:`FLAT_OPTIONS`)."""
        return {f.name for f in dataclasses.fields(cls)} | set(FLAT_OPTIONS)

    def fields(self) -> dict:
        """The flat form: the run options and ``sample``'s keywords with their values (objects as they are)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(RunConfig)}
        for key in FLAT_ORDER:
            out[key] = self.solver.method if key == "solver" else getattr(self, key)
        return out

    def __post_init__(self) -> None:
        super().__post_init__()
        from .dynamics import check_holdout
        from .sampling import SOLVERS

        self.density = dataclasses.replace(self.density, holdout=check_holdout(self.density.holdout))
        self.batch = check_batch(self.batch)
        check_positive("chunk", self.chunk, integer=True, allow_none=True)
        check_positive("diagnostics_sample", self.diagnostics_sample, integer=True, allow_none=True)
        if self.solver.method == "scipy_solver":  # a torchdiffeq method, but not one sample() runs
            raise ValueError("solver='scipy_solver' is not supported by sample(): torchdiffeq's wrapper of "
                             "scipy.integrate.solve_ivp copies the state to numpy at every call, takes its method as "
                             "options={'solver': ...} and reports no step-size failures to the run loop; use dopri5 "
                             f"(adaptive) or rkc (stiff), or another torchdiffeq method: {', '.join(sorted(SOLVERS))}")
        if self.solver.method is not None and self.solver.method not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver.method!r}; valid torchdiffeq methods: {', '.join(sorted(SOLVERS))}")
        if self.training not in TRAININGS:
            raise ValueError(f"unknown training {self.training!r}; valid: {', '.join(TRAININGS)}")
        self._check_groups()
        if self.training != "auto":
            self._check_training()
        for name in ("rtol", "atol"):
            check_positive(name, getattr(self.solver, name), allow_none=True)
        check_positive("init_tol", self.score.init_tol)
        check_positive("stop_fisher", self.stop_fisher, allow_none=True)
        steps = self.score.init_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"init_steps must be a non-negative integer, got {steps!r}")

    def _check_groups(self) -> None:
        """Refuse the options this configuration does not use (naming who uses them); fill the defaults of the used ones."""
        solver, score = _given(self.solver), _given(self.score)
        if self.solver.method is None or self.solver.method in FIXED_GRID_SOLVERS:  # None: rkc or heun2, both fixed-grid
            _refuse(solver, ADAPTIVE_OPTIONS, f"the fixed-step solver {self.solver.method!r}", "adaptive solvers (e.g. solver='dopri5')")
        else:
            self.solver = _with_defaults(self.solver, ADAPTIVE_OPTIONS)
        if self.score.model is not None:
            _refuse(score, NETWORK_OPTIONS, "a custom score_model", "the default network (score_model=None)")
        else:
            self.score = _with_defaults(self.score, NETWORK_OPTIONS)
        flow, steps = _given(self.flow), _given(self.steps)
        if self.training == "flow":
            _refuse(steps, STEPS_OPTIONS, "training='flow'", "training='steps'")
        if self.training == "steps":
            _refuse(flow, FLOW_OPTIONS, "training='steps'", "training='flow'")
        if self.training == "auto" and any(v is not None for v in flow.values()) and any(v is not None for v in steps.values()):
            f = next(k for k, v in flow.items() if v is not None)
            s = next(k for k, v in steps.items() if v is not None)
            raise ValueError(f"{f} is an option of training='flow' and {s} one of training='steps': choose one training")

    def _check_training(self) -> None:
        """Defaults and checks once the training is known (the unused training's group is dropped)."""
        if self.training == "flow":
            self.flow, self.steps = _with_defaults(theta_flow_defaults(self.flow or FlowTraining()), FLOW_OPTIONS), None
        else:
            self.flow, self.steps = None, _with_defaults(self.steps or StepsTraining(), STEPS_OPTIONS)
        if self.solver.method is None:
            self.solver = dataclasses.replace(self.solver, method=default_solver(self.training, self.eta))
        if self.training == "steps" and self.solver.method not in FIXED_GRID_SOLVERS:
            raise ValueError(
                f"training='steps' needs a fixed-step solver ({', '.join(sorted(FIXED_GRID_SOLVERS))}), got {self.solver.method!r}: "
                "the network is trained between steps, and an adaptive solver reuses the previous step's last derivative "
                "(computed before that training), so its error estimate sees the training jump and the step size collapses. "
                "Use training='flow' (Θ in the ODE state) with adaptive solvers"
            )
        check_positive("record_ntk_every", self.record_ntk_every, integer=True, allow_none=True)
        if self.training == "steps":
            check_positive("lr", self.lr)
            if isinstance(self.inner_steps, bool) or not isinstance(self.inner_steps, int) or self.inner_steps < 0:
                raise ValueError(f"inner_steps must be a non-negative integer, got {self.inner_steps!r}")

    def resolved(self, path) -> "SBTMConfig":
        """The configuration with ``training="auto"`` resolved on ``path``: ``"flow"`` when a
        flow option was given, ``"steps"`` when a steps option was, else the flow with the Θ
        dynamics of :func:`~sbtm_flows.sampling.auto_theta_flow` (``"kfac"`` on a dilation path
        with a fixed-grid solver).  Others are returned unchanged."""
        if self.training != "auto":
            return self
        from .sampling import auto_theta_flow

        if any(v is not None for v in _given(self.flow).values()):
            return dataclasses.replace(self, training="flow")
        if any(v is not None for v in _given(self.steps).values()):
            return dataclasses.replace(self, training="steps")
        return dataclasses.replace(self, training="flow", flow=FlowTraining(theta_flow=auto_theta_flow(path, self.solver.method)))


@dataclass
class ULAConfig(RunConfig):
    """ULA: the torchsde method (``sde_solver``, valid for additive diagonal noise) and its options."""

    sde_solver: str = "euler"
    solver_options: dict | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        from .sde import check_sde_solver

        check_sde_solver(self.sde_solver)


#: method name -> its configuration class (other modules add entries).
CONFIGS: dict[str, type[RunConfig]] = {"sbtm": SBTMConfig, "ula": ULAConfig}


def build_config(method: str, kwargs: dict, config: RunConfig | None = None) -> RunConfig:
    """The configuration of ``method`` from ``sample``'s keywords, or ``config`` itself when given.

    Raises:
        ValueError: both ``config`` and keywords, a ``config`` of another method, a keyword that
            the method's configuration has no field for (naming the methods that take it), or any
            error of the configuration's validation."""
    cls = CONFIGS[method]
    if config is not None:
        if kwargs:
            raise ValueError(f"pass either a config or keyword options, not both (got config and {', '.join(sorted(kwargs))})")
        if not isinstance(config, cls):
            raise ValueError(f"method={method!r} needs a {cls.__name__}, got {type(config).__name__}")
        return config
    for key in kwargs:
        if key not in cls.option_names():
            raise unknown_option(method, key)
    return cls(**kwargs)


#: method -> its option names, for the methods without a :class:`RunConfig` (``mala``, ``pis``,
#: ``dis`` register theirs here), so an unknown option's message can name who takes it.
OTHER_OPTIONS: dict[str, frozenset[str]] = {}


def unknown_option(method: str, key: str, takes: str = "") -> ValueError:
    """The error for an option ``key`` that ``method`` does not take: it names the methods that
    take it (or says none does); ``takes`` is inserted after the option's name (e.g. what
    the method takes instead)."""
    options = {**{m: c.option_names() for m, c in CONFIGS.items()}, **OTHER_OPTIONS}
    others = sorted(m for m, names in options.items() if m != method and key in names)
    where = f"it is an option of method={' / '.join(repr(m) for m in others)}" if others else "no method takes it"
    return ValueError(f"method={method!r} has no option {key!r}{takes}; {where}")
