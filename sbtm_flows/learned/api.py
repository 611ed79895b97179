r"""``sample(target, method="pis" | "dis", ...)``: train a learned diffusion and draw from it."""

from __future__ import annotations

import inspect
import os

import torch
from torch import Tensor

from ..checkpoint import Checkpoint, check_resume, target_fingerprint
from ..config import OTHER_OPTIONS, unknown_option
from ..loop import check_positive, check_step_count, config_of, make_generator, resolve_device, resolve_dtype, run
from ..paths import as_path
from ..result import Result
from ..sampling import METHODS
from .losses import LOSSES
from .sampler import LearnedConfig, LearnedDiffusion

__all__ = ["run_learned", "run_pis", "run_dis", "output_iterations"]


def output_iterations(iterations: int, save_every: int | None, times=None) -> Tensor:
    """The output times (training iterations) ``(T,)``: 0, save_every, 2·save_every, …, iterations
    (default spacing iterations/10), or ``times`` (increasing integers from 0 to iterations)."""
    if times is not None:
        t = torch.as_tensor(times, dtype=torch.float64).flatten()
        if t.numel() < 2 or not (t[1:] > t[:-1]).all() or t[0] != 0 or t[-1] != iterations or (t != t.round()).any():
            raise ValueError(f"times must be increasing integers (training iterations) from 0 to iterations={iterations}")
        return t
    step = max(1, iterations // 10) if save_every is None else int(save_every)
    t = torch.arange(0, iterations + 1, step, dtype=torch.float64)
    return t if t[-1] == iterations else torch.cat([t, torch.tensor([float(iterations)], dtype=torch.float64)])


def _check_args(target, loss: str, iterations, n, batch_size, lr, dt, t_final, save_every) -> None:
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)}")
    for name, v, integer in (("iterations", iterations, True), ("n", n, True), ("batch_size", batch_size, True),
                             ("lr", lr, False), ("dt", dt, False), ("t_final", t_final, False)):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and v > 0 and v != float("inf")
        if not ok or (integer and int(v) != v):
            raise ValueError(f"{name} must be a positive {'integer' if integer else 'finite number'}, got {v!r}")
    check_positive("save_every", save_every, integer=True, allow_none=True)
    check_step_count(0.0, t_final, dt)
    if n < 2 or batch_size < 2:
        raise ValueError(f"n and batch_size must be >= 2 (log-weights need a batch), got n={n}, batch_size={batch_size}")
    if not callable(getattr(target, "log_prob", None)) or not getattr(target, "has_log_prob", True):
        raise ValueError(f"the learned diffusions need the target's log_prob (the terminal log-weight); "
                         f"{type(target).__name__} has none")


def run_learned(
    target, *, method: str = "pis", loss: str = "log_variance", iterations: int = 1000, n: int = 1000,
    batch_size: int = 256, lr: float = 1e-3, t_final: float = 1.0, dt: float = 0.01, hidden: tuple = (64, 64),
    activation: str = "silu", use_score: bool = True, grad_clip: float | None = 10.0, sigma: float = 1.0,
    init_std: float = 0.0, beta_min: float = 0.05, beta_max: float = 5.0, scale: float = 1.0,
    save_every: int | None = None, times=None, seed: int | None = 0, device=None, dtype=torch.float32,
    progress: bool = False, checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 1, resume: bool = False,
) -> Result:
    r"""Train a PIS (``method="pis"``) or DIS (``"dis"``) sampler on ``target`` and return its samples.

    The controlled SDE dX = (μ + σ u_θ) dt + σ dW on [0, ``t_final``] (K = t_final/dt Euler–
    Maruyama steps through torchsde, :mod:`sbtm_flows.learned.controlled`) starts from the
    reference's initial law: PIS — Brownian reference σ = ``sigma``, X₀ = 0 (or N(0, init_std²));
    DIS — the OU/VP reference with schedule ``beta_min``…``beta_max`` and prior N(0, ``scale``² I).

    Args:
        loss: ``"log_variance"`` (default; paths from the detached current control, no
            backpropagation through the solver) or ``"kl"`` (reverse KL through the solver).
        iterations: training steps (Adam, ``lr``, ``batch_size`` paths each, gradient-norm clip
            ``grad_clip``); they are the run's "times": outputs every ``save_every`` iterations
            (default iterations/10) or at ``times``.
        n: evaluation paths drawn at each output (the particles, their log-weights).
        hidden, activation, use_score: the control network (:class:`~sbtm_flows.learned.ControlNet`;
            ``use_score`` adds the ∇log π̃ feature).
        seed, device, dtype, progress, checkpoint, checkpoint_every, resume: as for the other methods
            (a checkpoint every ``checkpoint_every`` outputs; a resumed run is bitwise the uninterrupted one).

    Returns:
        a :class:`~sbtm_flows.result.Result`: ``particles (n, d)`` = X_T, ``trajectory`` the
        evaluation samples at each output iteration, diagnostics ``log_z``, ``elbo``, ``ess``,
        ``loss``; ``log_target``, ``log_density`` (= log π̃ − log w) for ``importance``;
        ``info``: final log Z / ELBO / ESS, ``train_seconds``, ``score_evals``, ``target_evals``.

    Raises:
        ValueError: bad arguments, or a target without ``log_prob``.
        SamplingError: the paths went NaN/inf.
    """
    args = dict(locals())
    args.pop("target")
    _check_args(target, loss, iterations, n, batch_size, lr, dt, t_final, save_every)
    check_resume(resume)
    dtype, device = resolve_dtype(dtype), resolve_device(device)
    cfg = LearnedConfig(method, loss, float(t_final), float(dt), int(batch_size), float(lr), tuple(hidden), activation,
                        bool(use_score), grad_clip, float(sigma), float(init_std), float(beta_min), float(beta_max), float(scale))
    moved = target.to(dtype=dtype, device=device) if isinstance(target, torch.nn.Module) else target
    sampler = LearnedDiffusion(moved, cfg, dtype, device)
    gen = make_generator(seed)
    x0 = sampler.reference.sample_initial(int(n), sampler.dim, gen, dtype, device)
    times = output_iterations(int(iterations), save_every, times)
    ckpt = None
    if checkpoint is not None:
        ckpt = Checkpoint(checkpoint, args, target_fingerprint(as_path(moved), x0, 0.0, 1.0), resume=resume)
    return run(sampler, lambda: sampler.init(x0, 0.0, gen), times, checkpoint=ckpt, checkpoint_every=checkpoint_every,
               resume=resume, progress=progress, method=method, config=config_of(args),
               info={"loss": loss, "steps": cfg.steps, "reference": sampler.reference.config()})


#: run_learned's options (``sample(..., method="pis" | "dis", **options)``).
LEARNED_OPTIONS = frozenset(inspect.signature(run_learned).parameters) - {"target", "method"}
_STARTS = " (PIS and DIS start from their reference's initial law: PIS X₀ = 0 or N(0, init_std²), DIS N(0, scale²))"


def _learned(target, method: str, kwargs: dict) -> Result:
    """run_learned with ``method``, an unknown keyword refused naming the methods that take it."""
    for key in sorted(kwargs):
        if key not in LEARNED_OPTIONS:
            raise unknown_option(method, key, _STARTS if key == "init" else "")
    return run_learned(target, method=method, **kwargs)


def run_pis(target, **kwargs) -> Result:
    """:func:`run_learned` with ``method="pis"`` (path integral sampler, Brownian reference).

    Raises:
        ValueError: an option run_learned does not take (named with the methods that take it)."""
    return _learned(target, "pis", kwargs)


def run_dis(target, **kwargs) -> Result:
    """:func:`run_learned` with ``method="dis"`` (time-reversed diffusion sampler, OU reference).

    Raises:
        ValueError: an option run_learned does not take (named with the methods that take it)."""
    return _learned(target, "dis", kwargs)


METHODS["pis"] = run_pis
METHODS["dis"] = run_dis
OTHER_OPTIONS["pis"] = OTHER_OPTIONS["dis"] = LEARNED_OPTIONS
