r"""The paper's experiments (§5.1–5.4), each a function of a config dict writing figures,
``metrics.json``, the final particles and ``config.json`` into an output folder.

================  =======  =====================================================
name              paper    what
================  =======  =====================================================
gaussian-1d       §5.1     π = N(0,1) from N(0, 1−e^{−0.2}); exact f_t known; Figs 1, 2
mixture-1d        §5.2     π = ¼N(−2,1) + ¾N(2,1) from N(0,1), t_final 30; Fig 3
geometric-1d      §5.3     π = ¼N(−4,1) + ¾N(4,1), geometric annealing; Fig 4
dilation-2d       §5.4     16-mode grid mixture, dilation annealing; Figs 5, 6
================  =======  =====================================================

SBTM and its SDE twin (ULA / annealed ULA) run side by side with the same n, dt and seed.
"""

from __future__ import annotations

import math
import pathlib
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import plotting
from .density import l2_error_1d
from .files import save_torch, write_json
from .result import Result
from .sampling import sample
from .targets import BENCHMARK_TARGETS, Gaussian, GaussianMixture

__all__ = ["Experiment", "EXPERIMENTS", "TARGETS", "run_experiment", "experiment_config", "settle_eta", "make_target", "paper_targets"]

CONFIG_KEYS = ("n", "t_final", "dt", "solver", "sde_solver", "training", "seed", "device", "eta", "save_every", "holdout")


# ----------------------------------------------------------------------------------------
# Targets of the paper (and of `sbtm-flows sample --target NAME`)
# ----------------------------------------------------------------------------------------
def paper_targets() -> dict[str, Callable[[], object]]:
    """Name -> constructor of the paper's targets."""
    return dict(TARGETS)


def _grid16() -> GaussianMixture:
    g = torch.tensor([-6.0, -2.0, 2.0, 6.0])
    means = torch.cartesian_prod(g, g)
    return GaussianMixture(means, 1.0)


TARGETS: dict[str, Callable[[], object]] = {
    "gaussian1d": lambda: Gaussian(torch.zeros(1), torch.eye(1)),
    "gaussian2d": lambda: Gaussian(torch.tensor([1.0, -0.5]), torch.tensor([[1.0, 0.6], [0.6, 0.8]])),
    "mixture1d": lambda: GaussianMixture(torch.tensor([[-2.0], [2.0]]), 1.0, torch.tensor([0.25, 0.75])),
    "mixture1d-far": lambda: GaussianMixture(torch.tensor([[-4.0], [4.0]]), 1.0, torch.tensor([0.25, 0.75])),
    "gmm2d": _grid16,
    # real posteriors with reference draws (sbtm_flows.posteriordb), on unconstrained coordinates
    "eight_schools": lambda: _posterior("eight_schools"),
    "arK": lambda: _posterior("arK"),
    "gp_pois_regr": lambda: _posterior("gp_pois_regr"),
    "diamonds": lambda: _posterior("diamonds"),
    # the standard hard targets of the sampling literature (sbtm_flows.targets.benchmarks)
    **BENCHMARK_TARGETS,
}


def _posterior(name: str):
    from . import posteriordb

    return posteriordb.load(name)


def make_target(name: str):
    """A target by name (see :data:`TARGETS`)."""
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; valid: {', '.join(TARGETS)}")
    return TARGETS[name]()


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------
def _std_normal(d: int, var: float = 1.0) -> Gaussian:
    return Gaussian(torch.zeros(d), var * torch.eye(d))


def _run_pair(target, init, cfg: dict, progress: bool, sbtm_extra: dict | None = None) -> tuple[Result, Result]:
    common = dict(init=init, n=cfg["n"], t_final=cfg["t_final"], dt=cfg["dt"], seed=cfg["seed"], device=cfg["device"],
                  save_every=cfg["save_every"], progress=progress)
    # the log-density is tracked on held-out particles too, for calibrated log Z / ESS / KL
    density = dict(track_logdensity=True, holdout=cfg["holdout"]) if cfg.get("holdout") else {}
    flow = {"eta": cfg["eta"]} if cfg.get("eta") is not None else {}  # None with training="steps" (settle_eta)
    sbtm = sample(target, method="sbtm", solver=cfg["solver"], training=cfg["training"], **flow, **common, **density,
                  **(sbtm_extra or {}), **_checkpointing(cfg, "sbtm"))
    ula = sample(target, method="ula", sde_solver=cfg["sde_solver"], **common, **_checkpointing(cfg, "ula"))
    return sbtm, ula


def _checkpointing(cfg: dict, method: str) -> dict:
    """``checkpoint``/``resume`` keywords for ``method``'s run: ``<checkpoint_dir>/<method>.ckpt``
    when the runner was given a checkpoint folder (``run_experiment(..., checkpoint=DIR)``)."""
    folder = cfg.get("checkpoint_dir")
    if folder is None:
        return {}
    return {"checkpoint": pathlib.Path(folder) / f"{method}.ckpt", "resume": bool(cfg.get("resume", False))}


def _frac_pos(x: torch.Tensor) -> float:
    return float((x[:, 0] > 0).double().mean())


def _curve_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 difference ‖a − b‖ / ‖b‖ of two curves (eq. 4.1's two sides)."""
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _common_metrics(sbtm: Result, ula: Result) -> dict:
    return {
        "sbtm_training": sbtm.info.get("training"),
        "sbtm_solver": sbtm.info.get("solver"),
        "sbtm_theta_flow": sbtm.info.get("theta_flow"),
        "sbtm_eta": sbtm.info.get("eta"),
        "sbtm_wall_time_s": sbtm.wall_time,
        "sbtm_nfe": sbtm.nfe,
        "ula_wall_time_s": ula.wall_time,
        "ula_nfe": ula.nfe,
        "sbtm_init_fit_relative_error": (sbtm.info.get("init_fit") or {}).get("relative_error"),
        "eq41_relative_gap": _curve_agreement(sbtm.diagnostics["dissipation_learned"], sbtm.diagnostics["dissipation"]),
        "sbtm_final_fisher": float(sbtm.diagnostics["fisher"][-1]),
        **{f"sbtm_{k}": float(sbtm.diagnostics[k][-1]) for k in ("log_z", "ess", "kl", "kl_plus_logz") if k in sbtm.diagnostics},
    }


# ----------------------------------------------------------------------------------------
# §5.1
# ----------------------------------------------------------------------------------------
def _v51(t):
    return 1 - torch.exp(-2 * (torch.as_tensor(t, dtype=torch.float64) + 0.1))


def gaussian_1d(cfg: dict, out: pathlib.Path, progress: bool) -> dict:
    """§5.1: π = N(0,1), f_0 = N(0, 1 − e^{−0.2}), f_t = N(0, 1 − e^{−2(t+0.1)}) exactly."""
    target = make_target("gaussian1d")
    init = _std_normal(1, 1 - math.exp(-0.2))
    sbtm, ula = _run_pair(target, init, cfg, progress)
    m = _common_metrics(sbtm, ula)
    for t in (0.5, 1.0, 2.0):
        if t <= cfg["t_final"] + 1e-9:
            for name, res in (("sbtm", sbtm), ("ula", ula)):
                m[f"{name}_var_rel_err_t{t:g}"] = float(res.at(t).double().var() / _v51(t) - 1)
    t_f = min(0.5, cfg["t_final"])
    k = int(torch.argmin((sbtm.times - t_f).abs()))
    v = float(_v51(sbtm.times[k]))
    m["fisher_time"] = float(sbtm.times[k])
    m["sbtm_fisher_rel_err"] = float(sbtm.diagnostics["fisher"][k]) / ((1 - v) ** 2 / v) - 1

    def kl(v):
        return 0.5 * (v - 1 - torch.log(v))

    exact_dec = kl(_v51(sbtm.times[0])) - kl(_v51(sbtm.times))
    m["kl_decrease_exact"] = float(exact_dec[-1])
    m["sbtm_kl_decrease"] = float(sbtm.diagnostics["kl_decrease"][-1])
    m["sbtm_kl_decrease_rel_err"] = m["sbtm_kl_decrease"] / m["kl_decrease_exact"] - 1
    grid = torch.linspace(-5, 5, 401, dtype=torch.float64)

    def dens(t):
        g = Gaussian(torch.zeros(1, dtype=torch.float64), float(_v51(t)) * torch.eye(1, dtype=torch.float64))
        return lambda y: g.log_prob(y).exp()

    for name, res in (("sbtm", sbtm), ("ula", ula)):
        m[f"{name}_l2_error_final"] = l2_error_1d(res.particles.double(), dens(float(res.times[-1])), grid)

    plotting.save(plotting.plot_trajectories(sbtm, ula), out / "fig1_trajectories.png")
    fig, axs = plotting.panels(2)

    def exact_rate(t):
        v = _v51(t)
        return (1 - v) ** 2 / v

    plotting.plot_dissipation(sbtm, _thin(ula, 50), target.score, exact_rate, ax=axs[0])
    plotting.plot_l2_error({"SBTM": _thin(sbtm, 50), "SDE": _thin(ula, 50)}, dens, grid, ax=axs[1])
    plotting.save(fig, out / "fig2_dissipation_l2.png")
    return m, {"sbtm": sbtm, "ula": ula}


def _thin(res: Result, max_times: int) -> Result:
    """A view of ``res`` with at most ``max_times`` output times (for plotting cost)."""
    step = max(1, math.ceil(len(res.times) / max_times))
    idx = torch.arange(0, len(res.times), step)
    if idx[-1] != len(res.times) - 1:
        idx = torch.cat([idx, torch.tensor([len(res.times) - 1])])
    return Result(particles=res.particles, times=res.times[idx], trajectory=res.trajectory[idx],
                  diagnostics={k: v[idx] for k, v in res.diagnostics.items()}, nfe=res.nfe, wall_time=res.wall_time,
                  method=res.method, config=res.config, info=res.info)


# ----------------------------------------------------------------------------------------
# §5.2, §5.3
# ----------------------------------------------------------------------------------------
def _exact_frac_pos(mix: GaussianMixture) -> float:
    """P_π(x > 0) for a 1-D mixture."""
    normal = torch.distributions.Normal(0.0, 1.0)
    sd = mix.covs[:, 0, 0].sqrt()
    return float((mix.weights * (1 - normal.cdf(-mix.means[:, 0] / sd))).sum())


def _exact_f_T(target, init, t_final: float, x_max: float, m: dict, ax) -> None:
    """The exact law f_T (1-D Fokker–Planck grid solution, which both samplers must reproduce;
    at finite T it is not π): its P(X_T > 0) into ``m``, its density onto ``ax``."""
    from .fokker_planck import fokker_planck_1d

    sol = fokker_planck_1d(target, init.log_prob, t_final, dt=2e-3, x_max=x_max, m=int(200 * x_max))
    m["fokker_planck_frac_pos_at_t_final"] = sol.prob(lambda x: x > 0)
    lim = ax.get_xlim()
    ax.plot(sol.x.numpy(), sol.density[-1].numpy(), "k:", lw=1.5, label="exact $f_T$ (Fokker–Planck)")
    ax.set_xlim(lim)
    ax.legend(fontsize=8)


def mixture_1d(cfg: dict, out: pathlib.Path, progress: bool) -> dict:
    """§5.2: π = ¼N(−2,1) + ¾N(2,1) from f_0 = N(0,1).

    SBTM is the coupled flow (solver rkc, η(t) = :data:`ETA_52`, from 1000 at t = 0 to 10);
    ``training="steps"`` (the paper's discrete
    algorithm) gives P(X_30 > 0) = 0.7360, the exact law's (Fokker–Planck grid solution), with
    eq. (4.1)'s two sides agreeing to 6 %; the flow with heun2 at η = 5 ran at heun2's edge of
    stability (0.7312, 40 %) and now stops with a SamplingError (README, η and stiffness)."""
    target = make_target("mixture1d")
    sbtm, ula = _run_pair(target, _std_normal(1), cfg, progress)
    m = _common_metrics(sbtm, ula)
    m["exact_frac_pos"] = _exact_frac_pos(target)
    m["sbtm_frac_pos"] = _frac_pos(sbtm.particles)
    m["ula_frac_pos"] = _frac_pos(ula.particles)
    fig, axs = plotting.panels(2)
    grid = torch.linspace(-7, 7, 401)
    plotting.plot_density_1d({"SBTM": sbtm, "SDE": ula}, target.log_prob, grid, ax=axs[0], title=f"density at t = {cfg['t_final']:g}")
    _exact_f_T(target, _std_normal(1), cfg["t_final"], 12.0, m, axs[0])
    plotting.plot_dissipation(sbtm, _thin(ula, 60), target.score, ax=axs[1])
    plotting.save(fig, out / "fig3_mixture.png")
    return m, {"sbtm": sbtm, "ula": ula}


def geometric_1d(cfg: dict, out: pathlib.Path, progress: bool) -> dict:
    """§5.3: π = ¼N(−4,1) + ¾N(4,1), geometric path from f_0 = N(0,1) over [0, t_final].

    SBTM is the coupled flow (η = 10, solver rkc: P(x > 0) = 0.587 at n = 5000 against 0.5951 for
    the exact annealed law f_T from the Fokker–Planck grid solution; the discrete training gives
    0.595).  With heun2 at η = 5 the flow ran at the edge of stability and lagged the moving π_t
    (0.566)."""
    from .paths import Geometric

    target = make_target("mixture1d-far")
    init = _std_normal(1)
    path = Geometric(init, target, t_final=cfg["t_final"])
    sbtm, ula = _run_pair(path, init, cfg, progress)
    m = _common_metrics(sbtm, ula)
    m["exact_frac_pos"] = _exact_frac_pos(target)
    m["sbtm_frac_pos"] = _frac_pos(sbtm.particles)
    m["ula_frac_pos"] = _frac_pos(ula.particles)
    m["frac_pos_gap"] = abs(m["sbtm_frac_pos"] - m["ula_frac_pos"])
    fig, axs = plotting.panels(2)
    grid = torch.linspace(-9, 9, 451)
    plotting.plot_density_1d({"SBTM": sbtm, "SDE": ula}, target.log_prob, grid, ax=axs[0], title=f"density at t = {cfg['t_final']:g}")
    _exact_f_T(path, init, cfg["t_final"], 14.0, m, axs[0])
    plotting.plot_dissipation(sbtm, None, ax=axs[1], title="eq. (4.1): $-dKL(f_t\\|\\pi)/dt$, both sides")
    plotting.save(fig, out / "fig4_geometric.png")
    return m, {"sbtm": sbtm, "ula": ula}


# ----------------------------------------------------------------------------------------
# §5.4
# ----------------------------------------------------------------------------------------
def dilation_2d(cfg: dict, out: pathlib.Path, progress: bool) -> dict:
    """§5.4: 16 unit-variance modes on {−6, −2, 2, 6}², dilation path π_t(x) ∝ π(x/λ(t)),
    λ linear from ``lam0`` to 1.  SBTM runs ``training="auto"``, which on a dilation path is the
    coupled flow with the K-FAC Θ dynamics (``theta_flow="kfac"``: dΘ/dt = −η·M·∇_Θ L, M the
    Kronecker-factored inverse Gauss–Newton matrix refreshed every step; η ``"track"``, ratio
    10; a :class:`~sbtm_flows.score.ScaledScore` learning in x/λ(t); solver rkc).  Measured (README,
    η and stiffness): TV to annealed ULA's mode weights 0.027 (plain gradient flow 0.283, diagonal
    Gauss–Newton 0.067–0.093, the paper's discrete training 0.025); ``--training steps`` runs the
    discrete training."""
    from .metrics import mode_weights, tv_distance
    from .paths import Dilation

    target = make_target("gmm2d")
    path = Dilation(target, t_final=cfg["t_final"], lam0=cfg["lam0"])
    sbtm, ula = _run_pair(path, _std_normal(2), cfg, progress)
    m = _common_metrics(sbtm, ula)
    uniform = torch.full((16,), 1 / 16, dtype=torch.float64)
    for name, res in (("sbtm", sbtm), ("ula", ula)):
        w = mode_weights(res.particles, target.means).double()
        m[f"{name}_mode_weights"] = w.tolist()
        m[f"{name}_min_mode_weight"] = float(w.min())
        m[f"{name}_tv_to_uniform"] = tv_distance(w, uniform)
    m["tv_sbtm_vs_ula"] = tv_distance(torch.tensor(m["sbtm_mode_weights"]), torch.tensor(m["ula_mode_weights"]))
    T = cfg["t_final"]
    times = [T * f for f in (0.0, 0.1, 0.25, 0.5, 1.0)]
    plotting.save(plotting.plot_densities_2d({"SBTM": sbtm, "annealed ULA": ula}, times), out / "fig5_dilation_densities.png")
    plotting.save(plotting.plot_entropy_decay(sbtm), out / "fig6_entropy_decay.png")
    return m, {"sbtm": sbtm, "ula": ula}


# ----------------------------------------------------------------------------------------
# Registry and runner
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Experiment:
    """One paper experiment: its defaults, its ``--quick`` overrides and its function."""

    name: str
    section: str
    description: str
    fn: Callable
    defaults: dict
    quick: dict = field(default_factory=dict)


#: §5.2's η(t) (a DecayingEta's keywords): 1000 → 10 with t_c = 0.25.  On a constant target f_t
#: moves fastest at t = 0, where the network starts at rest (fitted to f_0): with η = 10 it lags
#: (eq. (4.1)'s sides 26.5 % apart, 99 % of it in t ∈ [0.05, 0.55]); η = 1000 early removes the
#: lag, η = 10 later keeps the cost (README, η and stiffness).
ETA_52 = {"eta0": 1000.0, "eta_inf": 10.0, "t_c": 0.25}
#: ... and with --quick (n = 400): η₀ = 1000 overfits 400 particles (the flow itself blows up at
#: t ≈ 0.3: rkc's retries reach 198 stages and stop with a SamplingError); 300 is stable there.
ETA_52_QUICK = {"eta0": 300.0, "eta_inf": 10.0, "t_c": 0.25}
#: solver None: the flow's default, "rkc" (stable for any η·λ_max·dt), heun2 for training="steps"
_BASE = dict(solver=None, sde_solver="euler", training="flow", seed=0, device="cpu", eta=10.0, holdout=1000)
EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment("gaussian-1d", "5.1", "N(0,1) from N(0, 1-e^-0.2): exact Fokker-Planck solution (Figs 1, 2)", gaussian_1d,
                   dict(_BASE, n=1000, t_final=2.0, dt=0.01, save_every=1, eta=5.0), dict(n=400, t_final=1.0, dt=0.01, save_every=2, holdout=200)),
        Experiment("mixture-1d", "5.2", "1/4 N(-2,1) + 3/4 N(2,1) from N(0,1) (Fig 3)", mixture_1d,
                   dict(_BASE, n=5000, t_final=30.0, dt=0.01, save_every=10, eta=dict(ETA_52)),
                   dict(n=400, t_final=3.0, dt=0.01, save_every=5, holdout=200, eta=dict(ETA_52_QUICK))),
        Experiment("geometric-1d", "5.3", "1/4 N(-4,1) + 3/4 N(4,1), geometric annealing (Fig 4)", geometric_1d,
                   dict(_BASE, n=5000, t_final=10.0, dt=0.01, save_every=5),
                   dict(n=400, t_final=2.0, dt=0.01, save_every=5, holdout=200)),
        Experiment("dilation-2d", "5.4", "16-mode grid mixture, dilation annealing (Figs 5, 6)", dilation_2d,
                   dict(_BASE, training="auto", eta=None, n=4000, t_final=20.0, dt=0.01, lam0=0.1, save_every=20, holdout=0),
                   dict(n=400, t_final=10.0, dt=0.05, lam0=0.2, save_every=5)),
    )
}


def experiment_config(name: str, quick: bool = False, **overrides) -> dict:
    """Defaults of experiment ``name`` (with ``--quick`` and non-None overrides applied)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; valid: {', '.join(EXPERIMENTS)}")
    exp = EXPERIMENTS[name]
    cfg = dict(exp.defaults)
    if quick:
        cfg.update(exp.quick)
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise ValueError(f"unknown option(s) for {name}: {', '.join(sorted(unknown))}")
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    cfg["experiment"] = name
    cfg["quick"] = bool(quick)
    settle_eta(cfg, eta_given=overrides.get("eta") is not None)
    return cfg


def settle_eta(cfg: dict, eta_given: bool) -> None:
    """Make an experiment configuration's ``eta`` match its ``training`` (in place): η is an option
    of the coupled flow only, so with ``training="steps"`` it is ``None``, and with ``"auto"`` it is
    kept only when given (a given η makes "auto" the flow, as in ``sample``).

    Raises:
        ValueError: ``eta_given`` (on the command line) with ``training="steps"`` — it would
            have no effect; the message names ``--training flow``."""
    training = cfg.get("training")
    if training == "steps" and eta_given:
        raise ValueError(
            f"eta={cfg['eta']!r} is not used by training='steps' (the paper's discrete training, "
            f"{cfg.get('experiment', 'this run')}); it is an option of training='flow': drop --eta or pass --training flow")
    if training == "steps" or (training == "auto" and not eta_given):
        cfg["eta"] = None


def run_experiment(cfg: dict, out: str | pathlib.Path, progress: bool = False, checkpoint: str | pathlib.Path | None = None,
                   resume: bool = False) -> dict:
    """Run the experiment described by ``cfg`` (from :func:`experiment_config` or a saved
    ``config.json``) into folder ``out``: figures (PNG), ``metrics.json``, ``particles.pt``
    (final SBTM and SDE particles), ``results/*.pt`` (full results), ``config.json``; every
    file written atomically.  ``checkpoint``: a folder for one checkpoint per method
    (``sbtm.ckpt``, ``ula.ckpt``); ``resume``: continue them."""
    name = cfg.get("experiment")
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; valid: {', '.join(EXPERIMENTS)}")
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", cfg, indent=2, sort_keys=True)
    t = time.perf_counter()
    run_cfg = dict(cfg, checkpoint_dir=None if checkpoint is None else str(checkpoint), resume=bool(resume))
    metrics, results = EXPERIMENTS[name].fn(run_cfg, out, progress)
    metrics["total_wall_time_s"] = time.perf_counter() - t
    metrics["experiment"] = name
    metrics["paper_section"] = EXPERIMENTS[name].section
    write_json(out / "metrics.json", metrics, indent=2, sort_keys=True)
    save_torch({k: r.particles.cpu() for k, r in results.items()}, out / "particles.pt")
    for k, r in results.items():
        r.save(out / "results" / f"{k}.pt")
    return metrics
