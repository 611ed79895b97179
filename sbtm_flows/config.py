r"""Typed run configurations: one dataclass per sampler, validated when built.

``sf.sample(target, method, **kwargs)`` maps its keywords onto the method's configuration
(:func:`build_config`); a keyword that no field of it takes is an error naming the methods whose
configuration would take it, and an option that the chosen configuration does not use (``eta``
with ``training="steps"``, ``inner_steps`` with the coupled flow, ``rtol`` with a fixed-step
solver, ``hidden`` with a custom ``score_model``) is an error naming the configuration that would
use it.  Options that depend on a choice default to ``None`` ("not given") and get their
value once the choice is known (for SBTM, after ``training="auto"`` is resolved on the target);
options the configuration does not use stay ``None``, so a stored configuration rebuilds the run.

:meth:`RunConfig.to_dict` is the JSON form stored in ``result.config``, ``config.json`` and
checkpoints (a resume with another configuration is refused).
"""

from __future__ import annotations

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

__all__ = ["RunConfig", "SBTMConfig", "ULAConfig", "CONFIGS", "build_config", "TRAININGS", "FLOW_OPTIONS", "STEPS_OPTIONS"]

TRAININGS = ("flow", "steps", "auto")
#: Options of the coupled flow (training="flow") and their defaults.
FLOW_OPTIONS: dict[str, Any] = {"eta": 5.0, "record_ntk_every": None, "ntk_reference": None}
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
class SBTMConfig(RunConfig):
    r"""SBTM: the solver, the training of s_Θ (``"flow"``: dΘ/dt = −η∇_ΘL in the ODE state;
    ``"steps"``: K optimizer steps before each time step; ``"auto"``), the network, the initial
    fit, the density tracking and held-out particles.

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
        eta: η of the flow: a number (default 5), a callable of t, ``"auto"``
            (:class:`~sbtm_flows.stiffness.AutoEta`: the largest η the solver keeps stable at
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

    solver: str | None = None
    rtol: float | None = None
    atol: float | None = None
    solver_options: dict | None = None
    training: str = "auto"
    eta: Any = None
    record_ntk_every: int | None = None
    ntk_reference: Callable | None = None
    inner_steps: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    score_model: torch.nn.Module | None = field(default=None, repr=False)
    hidden: tuple[int, ...] | None = None
    activation: str | None = None
    divergence: str = "auto"
    probes: int = 1
    init_steps: int = 3000
    init_tol: float = 1e-2
    stop_fisher: float | None = None
    track_logdensity: bool = False
    holdout: int = 0
    batch: int | None = DEFAULT_BATCH
    chunk: int | None = CHUNK
    diagnostics_sample: int | None = DIAGNOSTICS_SAMPLE

    def __post_init__(self) -> None:
        super().__post_init__()
        from .dynamics import check_holdout
        from .sampling import SOLVERS

        self.holdout = check_holdout(self.holdout)
        self.batch = check_batch(self.batch)
        check_positive("chunk", self.chunk, integer=True, allow_none=True)
        check_positive("diagnostics_sample", self.diagnostics_sample, integer=True, allow_none=True)
        if self.solver is not None and self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; valid torchdiffeq methods: {', '.join(sorted(SOLVERS))}")
        if self.training not in TRAININGS:
            raise ValueError(f"unknown training {self.training!r}; valid: {', '.join(TRAININGS)}")
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.solver is None or self.solver in FIXED_GRID_SOLVERS:  # None: rkc or heun2, both fixed-grid
            _refuse(given, ADAPTIVE_OPTIONS, f"the fixed-step solver {self.solver!r}", "adaptive solvers (e.g. solver='dopri5')")
        else:
            self._fill(ADAPTIVE_OPTIONS)
        if self.score_model is not None:
            _refuse(given, NETWORK_OPTIONS, "a custom score_model", "the default network (score_model=None)")
        else:
            self._fill(NETWORK_OPTIONS)
        if self.training == "flow":
            _refuse(given, STEPS_OPTIONS, "training='flow'", "training='steps'")
        if self.training == "steps":
            _refuse(given, FLOW_OPTIONS, "training='steps'", "training='flow'")
        if self.training == "auto" and any(given[k] is not None for k in FLOW_OPTIONS) and any(given[k] is not None for k in STEPS_OPTIONS):
            flow = next(k for k in FLOW_OPTIONS if given[k] is not None)
            steps = next(k for k in STEPS_OPTIONS if given[k] is not None)
            raise ValueError(f"{flow} is an option of training='flow' and {steps} one of training='steps': choose one training")
        if self.training != "auto":
            self._check_training()
        for name in ("rtol", "atol"):
            check_positive(name, getattr(self, name), allow_none=True)
        check_positive("init_tol", self.init_tol)
        check_positive("stop_fisher", self.stop_fisher, allow_none=True)
        if isinstance(self.init_steps, bool) or not isinstance(self.init_steps, int) or self.init_steps < 0:
            raise ValueError(f"init_steps must be a non-negative integer, got {self.init_steps!r}")

    def _check_training(self) -> None:
        """Defaults and checks once the training is known."""
        if self.solver is None:
            self.solver = default_solver(self.training, self.eta)
        if self.training == "steps" and self.solver not in FIXED_GRID_SOLVERS:
            raise ValueError(
                f"training='steps' needs a fixed-step solver ({', '.join(sorted(FIXED_GRID_SOLVERS))}), got {self.solver!r}: the "
                "network is trained between steps, and an adaptive solver reuses the previous step's last derivative (computed "
                "before that training), so its error estimate sees the training jump and the step size collapses. Use "
                "training='flow' (Θ in the ODE state) with adaptive solvers"
            )
        self._fill(FLOW_OPTIONS if self.training == "flow" else STEPS_OPTIONS)
        check_positive("record_ntk_every", self.record_ntk_every, integer=True, allow_none=True)
        if self.training == "steps":
            check_positive("lr", self.lr)
            if isinstance(self.inner_steps, bool) or not isinstance(self.inner_steps, int) or self.inner_steps < 0:
                raise ValueError(f"inner_steps must be a non-negative integer, got {self.inner_steps!r}")

    def resolved(self, path) -> "SBTMConfig":
        """The configuration with ``training="auto"`` resolved on ``path``: ``"flow"`` when a
        flow option was given, ``"steps"`` when a steps option was, else as
        :func:`~sbtm_flows.sampling.resolve_training` (the discrete training on a dilation path with
        a fixed-step solver).  Others are returned unchanged."""
        if self.training != "auto":
            return self
        from .sampling import resolve_training

        if any(getattr(self, k) is not None for k in FLOW_OPTIONS):
            training = "flow"
        elif any(getattr(self, k) is not None for k in STEPS_OPTIONS):
            training = "steps"
        else:
            training = resolve_training(path, self.solver)
        out = dataclasses.replace(self)
        out.training = training
        out._check_training()
        return out


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
    names = {f.name for f in dataclasses.fields(cls)}
    for key in kwargs:
        if key not in names:
            others = sorted(m for m, c in CONFIGS.items() if key in {f.name for f in dataclasses.fields(c)})
            where = f"it is an option of method={' / '.join(repr(m) for m in others)}" if others else "no method takes it"
            raise ValueError(f"method={method!r} has no option {key!r}; {where}")
    return cls(**kwargs)
