r"""The learned-diffusion sampler (PIS / DIS) in the shape of the run-loop protocol.

:class:`LearnedDiffusion` implements ``init / advance / state_dict / load_state_dict /
particles`` (plus the optional ``observe``, ``nfe``, ``finish`` hooks): its "time" is the
training iteration, ``advance(state, t0, t1)`` runs t1 − t0 optimiser steps on the chosen
loss, and at each output time the current control draws the n evaluation paths (the same
starting points and Brownian increments at every output, drawn from a generator derived from
the seed), whose terminal points are the particles and whose log-weights give log Z, the
ELBO and the ESS.  The State holds the network, the optimiser and the training generator,
so a run resumed from a checkpoint is bitwise the uninterrupted one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..logdensity import effective_sample_size, log_z_estimate
from .control import ControlNet
from .controlled import ControlledSDE, PathBatch, brownian_increments, simulate
from .losses import DETACHED, LOSSES
from .reference import BrownianReference, OUReference

__all__ = ["LearnedConfig", "LearnedState", "LearnedDiffusion", "make_reference"]


@dataclass
class LearnedConfig:
    """Settings of a learned-diffusion run (see :func:`~sbtm_flows.learned.run_learned`)."""

    method: str = "pis"
    loss: str = "log_variance"
    t_final: float = 1.0
    dt: float = 0.01
    batch_size: int = 256
    lr: float = 1e-3
    hidden: tuple = (64, 64)
    activation: str = "silu"
    use_score: bool = True
    grad_clip: float | None = 10.0
    sigma: float = 1.0
    init_std: float = 0.0
    beta_min: float = 0.05
    beta_max: float = 5.0
    scale: float = 1.0

    @property
    def steps(self) -> int:
        """K = round(T / dt) Euler–Maruyama steps."""
        return max(1, round(self.t_final / self.dt))


def make_reference(cfg: LearnedConfig):
    """The reference process of ``cfg.method``: Brownian for ``"pis"``, OU for ``"dis"``."""
    if cfg.method == "pis":
        return BrownianReference(cfg.sigma, cfg.t_final, cfg.init_std)
    if cfg.method == "dis":
        return OUReference(cfg.beta_min, cfg.beta_max, cfg.scale, cfg.t_final)
    raise ValueError(f"unknown learned-diffusion method {cfg.method!r}; valid: pis, dis")


@dataclass
class LearnedState:
    """Everything a run needs to continue: the control network and its optimiser, the training
    generator, the iteration count, the evaluation paths' start ``eval_x0 (n, d)`` and seed, the
    last evaluation (``x (n, d)``, ``log_w (n,)``, ``log_target (n,)``), the training losses
    (``mark``: where the current output interval's start) and the counters."""

    control: ControlNet
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    eval_x0: Tensor
    eval_seed: int
    iteration: int = 0
    x: Tensor | None = None
    log_w: Tensor | None = None
    log_target: Tensor | None = None
    losses: list = field(default_factory=list)
    mark: int = 0
    counts: dict = field(default_factory=lambda: {"nfe": 0, "score_evals": 0, "target_evals": 0, "train_seconds": 0.0})


class LearnedDiffusion:
    """PIS / DIS trained on ``target`` (with ``log_prob``; ``score`` for the score feature)."""

    def __init__(self, target, config: LearnedConfig, dtype: torch.dtype = torch.float32, device=None):
        if config.loss not in LOSSES:
            raise ValueError(f"unknown loss {config.loss!r}; valid: {', '.join(LOSSES)}")
        self.target = target
        self.config = config
        self.reference = make_reference(config)
        self.dtype = dtype
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.dim = int(target.dim)

    # ---- the protocol -------------------------------------------------------------------
    def init(self, x0: Tensor, t0: float, generator: torch.Generator) -> LearnedState:
        """A fresh state: the network (seeded from ``generator``), Adam, the training generator
        (``generator`` itself) and the evaluation paths starting at ``x0 (n, d)``."""
        c = self.config
        net = ControlNet(self.dim, c.t_final, tuple(c.hidden), c.use_score, c.activation, generator=generator,
                         dtype=self.dtype).to(self.device)
        eval_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        state = LearnedState(net, torch.optim.Adam(net.parameters(), lr=c.lr), generator, x0, eval_seed, iteration=int(t0))
        return self.evaluate(state)

    def advance(self, state: LearnedState, t0: float, t1: float) -> LearnedState:
        """Train from iteration t0 to t1 (t1 − t0 optimiser steps), then evaluate."""
        start = time.perf_counter()
        state.mark = len(state.losses)
        for _ in range(int(round(t1 - t0))):
            state.losses.append(self.train_step(state))
        state.counts["train_seconds"] += time.perf_counter() - start
        return self.evaluate(state)

    def particles(self, state: LearnedState) -> Tensor:
        """The terminal points ``(n, d)`` of the last evaluation paths."""
        return state.x

    def state_dict(self, state: LearnedState) -> dict:
        """Tensors and plain data (weights-only loadable)."""
        return {
            "control": {k: v.detach().cpu() for k, v in state.control.state_dict().items()},
            "optimizer": state.optimizer.state_dict(), "generator": state.generator.get_state(),
            "eval_x0": state.eval_x0.cpu(), "eval_seed": state.eval_seed, "iteration": state.iteration,
            "losses": list(state.losses), "mark": state.mark, "counts": dict(state.counts),
        }

    def load_state_dict(self, blob: dict) -> LearnedState:
        """The state saved by :meth:`state_dict` (evaluated again: same numbers)."""
        c = self.config
        net = ControlNet(self.dim, c.t_final, tuple(c.hidden), c.use_score, c.activation, dtype=self.dtype).to(self.device)
        net.load_state_dict(blob["control"])
        opt = torch.optim.Adam(net.parameters(), lr=c.lr)
        opt.load_state_dict(blob["optimizer"])
        gen = torch.Generator()
        gen.set_state(blob["generator"])
        counts = dict(blob["counts"])
        state = LearnedState(net, opt, gen, blob["eval_x0"].to(self.device, self.dtype), int(blob["eval_seed"]),
                             int(blob["iteration"]), losses=list(blob["losses"]), mark=int(blob["mark"]), counts=counts)
        return self.evaluate(state, count=False)

    # ---- optional hooks -------------------------------------------------------------------
    def observe(self, state: LearnedState, t: float, k: int) -> dict:
        """``log_z``, ``elbo``, ``ess`` of the evaluation paths, the mean training ``loss`` since
        the previous output (NaN at the start) and the series ``log_w (n,)``, ``log_target (n,)``."""
        lw = state.log_w
        recent = state.losses[state.mark:]
        return {"log_z": log_z_estimate(lw), "elbo": float(lw.double().mean()), "ess": effective_sample_size(lw),
                "loss": float(sum(recent) / len(recent)) if recent else float("nan"),
                "log_w": lw.detach().clone(), "log_target": state.log_target.detach().clone()}

    def nfe(self, state: LearnedState) -> int:
        """Control-network evaluations (batched calls), training and evaluation."""
        return int(state.counts["nfe"])

    def finish(self, state: LearnedState, packed: dict, info: dict) -> dict:
        """Result fields: ``log_target`` and ``log_density`` = log π̃ − log w (so that
        ``importance`` weights the particles by w); ``info``: counts, final log Z, ELBO, ESS."""
        lw = packed.pop("log_w")[-1]
        lt = packed.pop("log_target")[-1]
        info.update({"train_seconds": state.counts["train_seconds"], "score_evals": int(state.counts["score_evals"]),
                     "target_evals": int(state.counts["target_evals"]), "iterations": state.iteration,
                     "log_z": log_z_estimate(lw), "elbo": float(lw.double().mean()), "ess": effective_sample_size(lw),
                     "log_density": "log π̃(X_T) − log w: the path-space log-weight, not a marginal density"})
        return {"log_target": lt, "log_density": lt.double() - lw.double()}

    # ---- training and evaluation ------------------------------------------------------------
    def _sde(self, state: LearnedState, detached: bool) -> ControlledSDE:
        return ControlledSDE(self.reference, state.control, self.target, detached=detached)

    def _count(self, state: LearnedState, sde: ControlledSDE, paths: PathBatch) -> None:
        state.counts["nfe"] += sde.nfe
        state.counts["score_evals"] += sde.score_evals
        state.counts["target_evals"] += paths.x.shape[0]

    def train_step(self, state: LearnedState) -> float:
        """One optimiser step on a fresh batch of paths; returns the loss."""
        c = self.config
        sde = self._sde(state, DETACHED[c.loss])
        x0 = self.reference.sample_initial(c.batch_size, self.dim, state.generator, self.dtype, self.device)
        paths = simulate(sde, x0, c.steps, state.generator)
        loss = LOSSES[c.loss](paths)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if c.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(state.control.parameters(), c.grad_clip)
        state.optimizer.step()
        state.iteration += 1
        self._count(state, sde, paths)
        return float(loss.detach())

    def evaluate(self, state: LearnedState, count: bool = True) -> LearnedState:
        """Draw the evaluation paths with the current control (fixed start and increments)."""
        n = state.eval_x0.shape[0]
        gen = torch.Generator().manual_seed(state.eval_seed)
        inc = brownian_increments(n, self.dim, self.config.steps, self.config.t_final / self.config.steps, gen,
                                  self.dtype, self.device)
        sde = self._sde(state, detached=False)
        with torch.no_grad():
            paths = simulate(sde, state.eval_x0, self.config.steps, gen, increments=inc)
        state.x, state.log_w, state.log_target = paths.x, paths.log_w.detach(), paths.log_target.detach()
        if count:
            self._count(state, sde, paths)
        return state
