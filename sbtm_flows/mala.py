r"""MALA: the Metropolis-adjusted Langevin algorithm on many parallel chains (the exact-MCMC
reference of the benchmark suite).

Each of the n chains proposes from the Euler step of the Langevin SDE with step h,

    y = x + h ∇log π(x) + √(2h) ξ,          ξ ~ N(0, I_d),
    q(y | x) ∝ exp(−|y − x − h∇log π(x)|² / (4h)),

and accepts with probability α = min(1, π(y) q(x | y) / (π(x) q(y | x))), so that the kernel is
reversible with respect to π for every fixed h.  One step size h is shared by all chains.

**Warm-up.** During the first ``warmup`` iterations h is adapted by dual averaging (Nesterov;
Hoffman & Gelman 2014, Algorithm 5) toward a mean acceptance probability δ = ``target_accept``
(default 0.574, the optimal MALA rate of Roberts & Rosenthal 1998) — the acceptance statistic of
iteration m is the mean over the chains of α, so it is nearly noise-free with many chains::

    H̄_m = (1 − 1/(m + t₀)) H̄_{m−1} + (δ − ᾱ_m)/(m + t₀),
    log h_m = μ − √m/γ · H̄_m,      log h̄_m = m^{−κ} log h_m + (1 − m^{−κ}) log h̄_{m−1},

with μ = log(10 h₀), γ = 0.05, t₀ = 10, κ = 0.75.  After warm-up h is frozen at h̄ (the averaged
iterate), so every later iteration is the same π-reversible kernel: the chains' law converges to
π and no adaptation biases it.

**Time.** A MALA run's "time" is the iteration count: output times are iterations (t = 0 the
initial particles, t = warmup + steps the last), each iteration costs one evaluation of
∇log π and one of log π at the proposals (``Result.nfe`` counts the score evaluations, the initial
one included; ``info["log_prob_evaluations"]`` the log-densities).

The sampler follows the run-loop protocol of :mod:`sbtm_flows.loop` (``init``/``advance``/``state_dict``/
``load_state_dict``/``particles`` and the optional ``observe``/``nfe``/``finish`` hooks): its
State holds the particles, log π and ∇log π there, the step-size adaptation and the generator
state, so a checkpointed run resumes bitwise.  :func:`run_mala` is ``sf.sample(..., method="mala")``.
"""

from __future__ import annotations

import inspect
import math
import os
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .checkpoint import Checkpoint, check_resume, target_fingerprint
from .config import OTHER_OPTIONS, unknown_option
from .errors import SamplingError
from .loop import config_of, prepare_run, run
from .paths import Constant, as_path
from .result import Result
from .sampling import METHODS

__all__ = ["MALAConfig", "MALAState", "MALA", "run_mala", "mala_log_alpha"]


@dataclass(frozen=True)
class MALAConfig:
    """MALA settings (validated on construction).

    Attributes:
        step_size: the initial step h₀ (> 0); the step once frozen when ``warmup = 0``.
        warmup: iterations of step-size adaptation (≥ 0); h is frozen after them.
        target_accept: δ ∈ (0, 1), the mean acceptance probability the warm-up aims at.
        gamma, t0, kappa: dual-averaging constants (γ > 0, t₀ ≥ 0, κ ∈ (0.5, 1]).
    """

    step_size: float = 0.1
    warmup: int = 500
    target_accept: float = 0.574
    gamma: float = 0.05
    t0: float = 10.0
    kappa: float = 0.75

    def __post_init__(self):
        if not (isinstance(self.step_size, (int, float)) and math.isfinite(self.step_size) and self.step_size > 0):
            raise ValueError(f"step_size must be a positive finite number, got {self.step_size!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup must be a non-negative int (adaptation iterations), got {self.warmup!r}")
        if not (isinstance(self.target_accept, (int, float)) and 0 < self.target_accept < 1):
            raise ValueError(f"target_accept must be in (0, 1) (MALA's optimum is 0.574), got {self.target_accept!r}")
        if not (self.gamma > 0 and self.t0 >= 0 and 0.5 < self.kappa <= 1):
            raise ValueError(f"dual averaging needs gamma > 0, t0 >= 0, 0.5 < kappa <= 1; got {self.gamma}, {self.t0}, {self.kappa}")


@dataclass
class MALAState:
    """Everything a MALA run needs to continue: chains ``x (n, d)``, ``logp (n,)`` = log π(x),
    ``grad (n, d)`` = ∇log π(x), iterations done ``it``, the current log step ``log_h``, the
    dual-averaging state (``h_bar``: H̄, ``log_h_avg``: log h̄), acceptance sums (over the
    current output interval and over all post-warm-up iterations), score evaluations, the count of
    proposals where the target was undefined (``n_undefined``: log π NaN or +inf, or ∇log π
    non-finite where log π is finite) and the generator state."""

    x: Tensor
    logp: Tensor
    grad: Tensor
    it: int = 0
    log_h: float = 0.0
    h_bar: float = 0.0
    log_h_avg: float = 0.0
    acc_interval: float = 0.0
    it_interval: int = 0
    acc_frozen: float = 0.0
    it_frozen: int = 0
    n_eval: int = 1
    n_undefined: int = 0
    rng_state: Tensor = field(default_factory=lambda: torch.Generator().get_state())


def mala_log_alpha(x: Tensor, gx: Tensor, lx: Tensor, y: Tensor, gy: Tensor, ly: Tensor, h: float) -> Tensor:
    r"""log of the MALA acceptance ratio for the move x → y, ``(n,)``:

    log π(y) − log π(x) + log q(x | y) − log q(y | x),   log q(b | a) = −|b − a − h∇log π(a)|²/(4h) + const,

    from the chains ``x (n, d)``, their scores ``gx (n, d)`` and log-densities ``lx (n,)``, and the
    same at the proposals ``y``.  Non-finite values (a proposal where π is 0 or undefined) give −∞."""
    fwd = ((y - x - h * gx) ** 2).sum(-1)
    bwd = ((x - y - h * gy) ** 2).sum(-1)
    la = ly - lx + (fwd - bwd) / (4.0 * h)
    return torch.where(torch.isfinite(la), la, torch.full_like(la, -math.inf))


class MALA:
    """MALA on a target with ``log_prob`` and ``score`` (see the module docstring); a sampler of
    the run-loop protocol.  ``target``: a :class:`~sbtm_flows.targets.Target` (not an annealing
    path: MALA samples one fixed law)."""

    def __init__(self, target, config: MALAConfig | None = None):
        self.config = config or MALAConfig()
        self.target = target
        if not callable(getattr(target, "log_prob", None)) or getattr(target, "has_log_prob", True) is False:
            raise ValueError("MALA needs the target's log_prob (for the accept/reject step); this target has only a score")
        self.generator = torch.Generator()

    def _evaluate(self, x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            return self.target.log_prob(x), self.target.score(x)

    def init(self, x0: Tensor, t0: float, generator: torch.Generator) -> MALAState:
        """The State at iteration 0: chains X₀ ``(n, d)``, log π and ∇log π there; the sampler
        draws its later noise from ``generator`` (its state is kept in the State)."""
        logp, grad = self._evaluate(x0)
        bad = ~(torch.isfinite(logp) & torch.isfinite(grad).all(-1))
        if bad.any():
            raise SamplingError(f"log π or ∇log π is NaN/inf at {int(bad.sum())} of {x0.shape[0]} initial chains; "
                                "start the chains where the target is finite", t=t0)
        log_h0 = math.log(self.config.step_size)
        return MALAState(x=x0.clone(), logp=logp, grad=grad, log_h=log_h0, log_h_avg=log_h0, rng_state=generator.get_state())

    def step_size(self, state: MALAState) -> float:
        """h used by the next iteration: the adapted h_m during warm-up, the frozen h̄ after."""
        if state.it >= self.config.warmup and self.config.warmup > 0:
            return math.exp(state.log_h_avg)
        return math.exp(state.log_h)

    def _adapt(self, state: MALAState, mean_accept: float) -> None:
        """One dual-averaging update after warm-up iteration m = state.it (1-based)."""
        c, m = self.config, state.it
        mu = math.log(10 * c.step_size)
        w = 1.0 / (m + c.t0)
        state.h_bar = (1 - w) * state.h_bar + w * (c.target_accept - mean_accept)
        state.log_h = mu - math.sqrt(m) / c.gamma * state.h_bar
        eta = m ** (-c.kappa)
        state.log_h_avg = eta * state.log_h + (1 - eta) * state.log_h_avg

    def iterate(self, state: MALAState) -> MALAState:
        """One MALA iteration of all chains (adapting h while ``state.it < warmup``)."""
        h = self.step_size(state)
        x = state.x
        xi = torch.randn(x.shape, generator=self.generator, dtype=x.dtype).to(x.device)
        y = x + h * state.grad + math.sqrt(2 * h) * xi
        ly, gy = self._evaluate(y)
        state.n_undefined += int((torch.isnan(ly) | torch.isposinf(ly) | (torch.isfinite(ly) & ~torch.isfinite(gy).all(-1))).sum())
        gy = torch.where(torch.isfinite(gy), gy, torch.zeros_like(gy))
        la = mala_log_alpha(x, state.grad, state.logp, y, gy, ly, h)
        u = torch.rand(x.shape[0], generator=self.generator, dtype=x.dtype).to(x.device)
        accept = torch.log(u) < la
        acc_prob = float(torch.exp(la.clamp(max=0.0)).mean())
        state.x = torch.where(accept[:, None], y, x)
        state.logp = torch.where(accept, ly, state.logp)
        state.grad = torch.where(accept[:, None], gy, state.grad)
        frozen = state.it >= self.config.warmup
        state.it += 1
        state.n_eval += 1
        state.acc_interval += acc_prob
        state.it_interval += 1
        if frozen:
            state.acc_frozen += acc_prob
            state.it_frozen += 1
        else:
            self._adapt(state, acc_prob)
        return state

    def advance(self, state: MALAState, t0: float, t1: float) -> MALAState:
        """Run the iterations from output time t0 to t1 (times are iteration counts)."""
        n_it = int(round(t1)) - int(round(t0))
        if n_it < 0 or int(round(t0)) != state.it:
            raise ValueError(f"MALA at iteration {state.it} cannot advance from t0={t0} to t1={t1} (times are iterations)")
        self.generator.set_state(state.rng_state)
        state.acc_interval, state.it_interval = 0.0, 0
        for _ in range(n_it):
            state = self.iterate(state)
        if not torch.isfinite(state.x).all():
            raise SamplingError(f"MALA chains became NaN/inf by iteration {state.it}", t=float(state.it))
        state.rng_state = self.generator.get_state()
        return state

    def particles(self, state: MALAState) -> Tensor:
        """The chains ``(n, d)``."""
        return state.x

    def nfe(self, state: MALAState) -> int:
        """Score evaluations so far (one per chain batch and iteration, plus the initial one)."""
        return state.n_eval

    def observe(self, state: MALAState, t: float, k: int) -> dict:
        """Diagnostics at output time t_k: ``acceptance`` (mean acceptance probability over the
        iterations since the last output; NaN at t₀), ``step_size`` (h of the next iteration)."""
        acc = state.acc_interval / state.it_interval if state.it_interval else float("nan")
        return {"acceptance": acc, "step_size": self.step_size(state)}

    def finish(self, state: MALAState, packed: dict, info: dict) -> dict:
        """Adds the frozen step size, the post-warm-up acceptance rate and the evaluation counts
        to ``info``; no extra Result fields.  Proposals where the target was undefined (log π NaN or
        +inf, or a non-finite score) were rejected as zero density: their count is
        ``info["undefined_proposals"]``, with a warning when there were any."""
        info["step_size"] = self.step_size(state)
        info["warmup"] = self.config.warmup
        info["acceptance"] = state.acc_frozen / state.it_frozen if state.it_frozen else float("nan")
        info["log_prob_evaluations"] = state.n_eval
        info["undefined_proposals"] = state.n_undefined
        if state.n_undefined:
            warnings.warn(f"MALA: the target's log π or score was NaN/+inf at {state.n_undefined} proposals (of "
                          f"{state.it * state.x.shape[0]}); they were rejected as zero density. Check the target there",
                          RuntimeWarning, stacklevel=2)
        return {}

    def state_dict(self, state: MALAState) -> dict:
        """The State as tensors and plain numbers (weights-only loadable)."""
        return {k: (v.detach().cpu() if isinstance(v, Tensor) else v) for k, v in vars(state).items()}

    def load_state_dict(self, blob: dict) -> MALAState:
        """Inverse of :meth:`state_dict` (tensors moved to the target's device)."""
        device = next((b.device for b in self.target.buffers()), None) if isinstance(self.target, torch.nn.Module) else None
        return MALAState(**{k: (v.to(device) if isinstance(v, Tensor) and k != "rng_state" and device is not None else v)
                            for k, v in blob.items()})


def _fixed_target(target):
    """The target of a MALA run: a plain target, or a constant path's target; ValueError for an
    annealing path."""
    path = as_path(target)
    if isinstance(path, Constant):
        return path.target
    raise ValueError(f"MALA samples one fixed law; got the annealing path {type(target).__name__}. Pass its final target "
                     "(e.g. path.target) instead")


def run_mala(
    target,
    *,
    init=None,
    n: int | None = None,
    steps: int = 1000,
    warmup: int = 500,
    step_size: float = 0.1,
    target_accept: float = 0.574,
    save_every: int = 100,
    seed: int | None = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str = torch.float64,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 50,
    resume: bool | str = False,
    **unknown,
) -> Result:
    r"""Run MALA (``sf.sample(target, method="mala", ...)``): n parallel chains from ``init``,
    ``warmup`` iterations adapting the shared step size toward acceptance ``target_accept``,
    then ``steps`` iterations of the frozen, π-reversible kernel.

    Args:
        target: a target with ``log_prob`` and ``score`` (not an annealing path).
        init, n, seed, device, progress: as for :func:`~sbtm_flows.sampling.run_sbtm`.
        steps: iterations after warm-up (≥ 1); warmup: adaptation iterations (≥ 0).
        step_size: initial step h₀; target_accept: δ of the adaptation.
        save_every: iterations between output times (the last output is the last iteration).
        dtype: float64 by default (the accept/reject compares log-densities whose differences
            float32 would round on targets with large |log π|).
        checkpoint, checkpoint_every, resume: as for the other methods (bitwise resume).

    Returns:
        a :class:`~sbtm_flows.result.Result` with ``method="mala"``, ``times`` = iteration counts,
        diagnostics ``acceptance`` and ``step_size`` at each output, and ``info["acceptance"]``
        (post-warm-up mean acceptance probability), ``info["step_size"]`` (the frozen h).

    Raises:
        ValueError: bad arguments; SamplingError: chains or log π became NaN/inf.
    """
    if unknown:
        raise unknown_option("mala", sorted(unknown)[0], " (MALA takes steps, warmup, step_size, target_accept)")
    args = dict(locals())
    args.pop("target")
    args.pop("unknown")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int (iterations after warm-up), got {steps!r}")
    cfg = MALAConfig(step_size=step_size, warmup=warmup, target_accept=target_accept)
    check_resume(resume)
    fixed = _fixed_target(target)
    total = warmup + steps
    path, gen, x0, _, dtype, device = prepare_run(fixed, init, n, 0.0, float(total), 1.0, save_every, seed, dtype, device)
    sampler = MALA(path.target, cfg)
    times = torch.tensor(list(range(0, total, int(save_every))) + [total], dtype=torch.float64)
    ckpt = Checkpoint(checkpoint, args, target_fingerprint(path, x0, 0.0, float(total))) if checkpoint is not None else None
    return run(sampler, lambda: sampler.init(x0, 0.0, gen), times, checkpoint=ckpt, checkpoint_every=int(checkpoint_every),
               resume=resume, progress=progress, method="mala", config=config_of(args))


METHODS["mala"] = run_mala
OTHER_OPTIONS["mala"] = frozenset(inspect.signature(run_mala).parameters) - {"target", "unknown"}
