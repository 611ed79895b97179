r"""``sample(target, method="pis" | "dis", ...)``: train a learned diffusion and draw from it."""

from __future__ import annotations

import json
import os
import time

import torch
from torch import Tensor

from ..checkpoint import Checkpoint, check_resume, target_fingerprint
from ..paths import as_path
from ..result import Result
from ..sampling import METHODS, make_generator, resolve_device
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


_DTYPES = {"float32": torch.float32, "float64": torch.float64, torch.float32: torch.float32, torch.float64: torch.float64}


def _plain(args: dict) -> dict:
    """The run's arguments as JSON values (tuples as lists, other objects by repr)."""
    return json.loads(json.dumps(args, default=repr))


def _check_args(target, loss: str, iterations, n, batch_size, lr, dt, t_final) -> None:
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)}")
    for name, v, integer in (("iterations", iterations, True), ("n", n, True), ("batch_size", batch_size, True),
                             ("lr", lr, False), ("dt", dt, False), ("t_final", t_final, False)):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and v > 0 and v != float("inf")
        if not ok or (integer and int(v) != v):
            raise ValueError(f"{name} must be a positive {'integer' if integer else 'finite number'}, got {v!r}")
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
    _check_args(target, loss, iterations, n, batch_size, lr, dt, t_final)
    check_resume(resume)
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    dtype, device = _DTYPES[dtype], resolve_device(device)
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
    return run_loop(sampler, lambda: sampler.init(x0, 0.0, gen), times, checkpoint=ckpt, checkpoint_every=checkpoint_every,
                    resume=resume, progress=progress, method=method, config=_plain(args),
                    info={"loss": loss, "steps": cfg.steps, "reference": sampler.reference.config()})


def run_pis(target, **kwargs) -> Result:
    """:func:`run_learned` with ``method="pis"`` (path integral sampler, Brownian reference)."""
    return run_learned(target, method="pis", **kwargs)


def run_dis(target, **kwargs) -> Result:
    """:func:`run_learned` with ``method="dis"`` (time-reversed diffusion sampler, OU reference)."""
    return run_learned(target, method="dis", **kwargs)


METHODS["pis"] = run_pis
METHODS["dis"] = run_dis


# ----------------------------------------------------------------------------------------
# A minimal run loop with the run-loop protocol's semantics (to be replaced by loop.run)
# ----------------------------------------------------------------------------------------
class _Record:
    def __init__(self, blob: dict | None = None):
        blob = blob or {"times": [], "xs": [], "series": {}, "diags": {}}
        self.times, self.xs, self.series, self.diags = blob["times"], blob["xs"], blob["series"], blob["diags"]

    def add(self, t: float, x: Tensor, record: dict) -> None:
        self.times.append(float(t))
        self.xs.append(x.detach().clone())
        for k, v in record.items():
            if isinstance(v, Tensor):
                self.series.setdefault(k, []).append(v.detach().clone())
            else:
                self.diags.setdefault(k, []).append(float(v))

    def state_dict(self) -> dict:
        return {"times": self.times, "xs": self.xs, "series": self.series, "diags": self.diags}


def run_loop(sampler: LearnedDiffusion, start, times: Tensor, *, checkpoint=None, checkpoint_every: int = 1, resume=False,
             progress=False, method="", config=None, info=None) -> Result:
    """Advance ``sampler`` over the output ``times``, observing, checkpointing and packing a Result."""
    from tqdm.auto import tqdm

    blob = checkpoint.load() if (checkpoint is not None and resume) else None
    if blob is None:
        state, rec, k0, wall0, info = start(), _Record(), 0, 0.0, dict(info or {})
        rec.add(float(times[0]), sampler.particles(state), sampler.observe(state, float(times[0]), 0))
    else:
        state, rec = sampler.load_state_dict(blob["sampler"]), _Record(blob["record"])
        k0, wall0, info = int(blob["k"]), float(blob["wall"]), json.loads(blob["info"])
    t_start = time.perf_counter()
    n_out = times.numel() - 1
    bar = tqdm(total=n_out, initial=k0, desc=method, disable=not progress, leave=False, dynamic_ncols=True)
    for k in range(k0, n_out):
        state = sampler.advance(state, float(times[k]), float(times[k + 1]))
        rec.add(float(times[k + 1]), sampler.particles(state), sampler.observe(state, float(times[k + 1]), k + 1))
        bar.update(1)
        bar.set_postfix({"it": int(times[k + 1]), "logZ": f"{rec.diags['log_z'][-1]:.3f}"}, refresh=False)
        if checkpoint is not None and (k + 1 == n_out or (k + 1) % int(checkpoint_every) == 0):
            checkpoint.save({"k": k + 1, "stopped": False, "sampler": sampler.state_dict(state), "record": rec.state_dict(),
                             "wall": time.perf_counter() - t_start + wall0, "info": json.dumps(info)})
    bar.close()
    packed = {"times": torch.tensor(rec.times, dtype=torch.float64), "trajectory": torch.stack(rec.xs),
              **{k: torch.stack(v) for k, v in rec.series.items()}}
    extra = sampler.finish(state, packed, info)
    return Result(particles=packed["trajectory"][-1], times=packed["times"], trajectory=packed["trajectory"],
                  diagnostics={k: torch.tensor(v, dtype=torch.float64) for k, v in rec.diags.items()},
                  nfe=sampler.nfe(state), wall_time=time.perf_counter() - t_start + wall0, method=method,
                  config=dict(config or {}), info=info, **extra)
