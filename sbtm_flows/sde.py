r"""Langevin baselines as torchsde SDEs: ULA and annealed ULA.

The overdamped Langevin SDE on a path π_t (a constant path for plain ULA),

    dX_t = ∇log π_t(X_t) dt + √2 dW_t,        X: (n, d), W: n independent d-dim. Brownian motions,

is :class:`LangevinSDE`, a torchsde module (``f``, ``g``, ``noise_type``, ``sde_type``; the
batch is the particles).  Its law solves the same Fokker–Planck equation as the SBTM
ODE dX/dt = ∇log π_t − ∇log f_t, so the two have the same marginals f_t.

The noise is additive (g = √2 does not depend on X), so Itô and Stratonovich readings agree
and every torchsde method that handles diagonal noise is valid (:data:`SDE_SOLVERS`, read
from torchsde's own tables).  ``"euler"`` (Euler–Maruyama) is ULA.

:func:`run_ula` (``sf.sample(..., method="ula")``) steps on the path's time grid
(``path.time_grid``: uniform, or λ-aware for :class:`~sbtm_flows.paths.Dilation`) through
the shared chunked driver.  Each output interval [t_k, t_{k+1}] has its own
``torchsde.BrownianInterval`` whose entropy is a fixed function of the run's seed and k, so
the same seed gives bitwise the same particles, and a run resumed from a checkpoint at t_k
draws exactly the Brownian increments the uninterrupted run would have drawn.

The particles' Brownian motions come in row blocks (:func:`noise_blocks`: one block up to
4096 particles, at most 256 blocks), each block a ``BrownianInterval`` with its own entropy
(:class:`BlockBrownian`).  So a data-parallel run (``torch.distributed``, see
:mod:`sbtm_flows.distributed`), in which each rank holds whole blocks, draws bitwise the
increments of the single-process run: ULA shards trivially, with no communication but the
gathering of the particles at output times.
"""

from __future__ import annotations

import math
import os
import time

import torch
import torchsde
from torch import Tensor
from torchsde._core import methods as _tsde_methods
from torchsde.settings import METHODS as _TSDE_METHODS

from .checkpoint import Checkpoint, check_resume, target_fingerprint
from .distributed import current as current_comm
from .distributed import is_main_process
from .dynamics import particle_rates
from .errors import SamplingError
from .guards import check_target_finite
from .paths import Path, as_path
from .result import Result
from .sampling import (
    METHODS,
    Recorder,
    _config_of,
    drive,
    output_grid,
    prepare_run,
    restore_record,
    splitmix64,
)

__all__ = ["LangevinSDE", "SDE_SOLVERS", "run_ula", "uniform_runs", "chunk_entropy", "noise_blocks", "BlockBrownian"]

#: Noise blocks: at least this many rows each, and at most NOISE_BLOCKS_MAX blocks.
NOISE_BLOCK_MIN = 4096
NOISE_BLOCKS_MAX = 256

_ADJOINT_ONLY = {"adjoint_reversible_heun"}


def _solver_table() -> dict[str, tuple[str, str]]:
    """method -> (sde_type, levy_area_approximation) for every torchsde method whose
    ``noise_types`` include diagonal noise (forward-only methods)."""
    table = {}
    for name in _TSDE_METHODS.all():
        if name in _ADJOINT_ONLY:
            continue
        cls = _tsde_methods.select(name, "ito")
        if "diagonal" not in cls.noise_types or "additive" not in cls.noise_types:
            continue
        levy = cls.levy_area_approximations
        area = "none" if "none" in levy else ("space-time" if "space-time" in levy else "foster")
        table[name] = (cls.sde_type, area)
    return table


#: torchsde methods accepted by :func:`run_ula`: name -> (sde_type, Lévy-area approximation).
SDE_SOLVERS: dict[str, tuple[str, str]] = _solver_table()


def _check_sde_solver(name: str) -> None:
    if name in SDE_SOLVERS:
        return
    valid = ", ".join(sorted(SDE_SOLVERS))
    if name in _ADJOINT_ONLY:
        raise ValueError(f"sde_solver {name!r} is the backward pass of sdeint_adjoint, not a forward solver; valid: {valid}")
    if name in _TSDE_METHODS.all():
        raise ValueError(f"sde_solver {name!r} does not support the additive diagonal noise of the Langevin SDE; valid: {valid}")
    raise ValueError(f"unknown sde_solver {name!r}; valid torchsde methods for additive diagonal noise: {valid}")


class LangevinSDE(torch.nn.Module):
    r"""dX = ∇log π_t(X) dt + √2 dW as a torchsde SDE (state ``(n, d)``, batch = particles).

    Args:
        path: a target (constant path) or an annealing path with ``score(x, t)``.
        sde_type: ``"ito"`` or ``"stratonovich"`` — the same SDE, the noise being additive;
            set it to what the torchsde method expects.
        check_finite: raise :class:`SamplingError` when ∇log π_t is NaN/inf.

    Example::

        sde = LangevinSDE(target)
        bm = torchsde.BrownianInterval(0.0, 1.0, size=x0.shape, entropy=0)
        xs = torchsde.sdeint(sde, x0, torch.tensor([0.0, 1.0]), bm=bm, dt=0.01, method="euler")
    """

    noise_type = "diagonal"

    def __init__(self, path, sde_type: str = "ito", check_finite: bool = True, max_nfe: int | None = None):
        super().__init__()
        if sde_type not in ("ito", "stratonovich"):
            raise ValueError(f"sde_type must be 'ito' or 'stratonovich', got {sde_type!r}")
        self.path: Path = as_path(path)
        self.sde_type = sde_type
        self.check_finite = check_finite
        self.nfe = 0
        #: raise :class:`SamplingError` once the drift has been evaluated this many times.
        self.max_nfe = max_nfe

    def f(self, t: Tensor | float, y: Tensor) -> Tensor:
        """Drift ∇log π_t(y), ``(n, d) -> (n, d)``; raises :class:`SamplingError` if NaN/inf
        or once ``max_nfe`` drift evaluations are used up."""
        self.nfe += 1
        if self.max_nfe is not None and self.nfe > self.max_nfe:
            raise SamplingError(f"max_nfe={self.max_nfe} drift evaluations used up at t={float(t):.6g}", t=float(t))
        v, _ = particle_rates(self.path, t, y, y.new_zeros(()), None, self.check_finite)
        return v

    def g(self, t: Tensor | float, y: Tensor) -> Tensor:
        """Diagonal diffusion √2 (one entry per coordinate), ``(n, d)``."""
        return torch.full_like(y, math.sqrt(2.0))


def chunk_entropy(base: int, k: int) -> int:
    """Entropy of the Brownian motion on output interval k: a fixed (splitmix64) function of
    the run's ``base`` entropy and k, in [0, 2³¹)."""
    return splitmix64(int(base) * 0x9E3779B97F4A7C15 + int(k) + 1) % (2**31 - 1)


def noise_blocks(n: int) -> list[slice]:
    """The row blocks of n particles' Brownian motions: blocks of B = max(4096, ⌈n/256⌉) rows
    (the last one shorter); a function of n alone, so the noise does not depend on the number
    of processes."""
    size = max(NOISE_BLOCK_MIN, -(-n // NOISE_BLOCKS_MAX))
    return [slice(a, min(a + size, n)) for a in range(0, n, size)]


def block_entropy(interval_entropy: int, b: int) -> int:
    """Entropy of noise block b in an output interval (block 0 keeps the interval's own, so a run
    of up to 4096 particles has the Brownian motion of one BrownianInterval of its size)."""
    return interval_entropy if b == 0 else splitmix64(int(interval_entropy) * 0x9E3779B97F4A7C15 + b) % (2**31 - 1)


class BlockBrownian(torchsde.BaseBrownian):
    """Brownian motions of several row blocks side by side: ``bm(ta, tb)`` is the blocks'
    increments concatenated along the rows, ``(Σ rows, d)`` (and likewise their space-time Lévy
    areas when a solver asks for them)."""

    __slots__ = ("bms",)

    def __init__(self, bms: list):
        if not bms:
            raise ValueError("BlockBrownian needs at least one block")
        self.bms = list(bms)

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        outs = [bm(ta, tb, return_U=return_U, return_A=return_A) for bm in self.bms]
        if len(outs) == 1:
            return outs[0]
        if isinstance(outs[0], tuple):
            return tuple(torch.cat(parts) for parts in zip(*outs))
        return torch.cat(outs)

    def __repr__(self) -> str:
        return f"BlockBrownian({len(self.bms)} blocks, shape={self.shape})"

    @property
    def dtype(self):
        return self.bms[0].dtype

    @property
    def device(self):
        return self.bms[0].device

    @property
    def shape(self):
        return torch.Size((sum(bm.shape[0] for bm in self.bms), *self.bms[0].shape[1:]))

    @property
    def levy_area_approximation(self):
        return self.bms[0].levy_area_approximation


def _my_blocks(n: int, comm) -> list[tuple[int, slice]]:
    """``[(b, rows)]``: the noise blocks of this process (all of them in one process, or when there
    are fewer blocks than ranks — n < 4096·R: then every rank runs every particle, alike; rank r
    of R holds blocks ⌊r·nb/R⌋ … ⌊(r+1)·nb/R⌋ − 1)."""
    blocks = list(enumerate(noise_blocks(n)))
    if comm is None or len(blocks) < comm.world:
        return blocks
    return blocks[comm.rank * len(blocks) // comm.world : (comm.rank + 1) * len(blocks) // comm.world]


def uniform_runs(ts: Tensor, rtol: float = 1e-6) -> list[tuple[int, int]]:
    """Split a grid ``(m,)`` into maximal runs of equal steps (relative tolerance ``rtol``):
    index pairs ``(a, b)`` with ts[a:b+1] uniform.  A uniform grid is one run."""
    h = (ts[1:] - ts[:-1]).tolist()
    runs, a = [], 0
    for i in range(1, len(h)):
        if abs(h[i] - h[a]) > rtol * abs(h[a]):
            runs.append((a, i))
            a = i
    runs.append((a, len(h)))
    return runs


def run_ula(
    target,
    *,
    init=None,
    n: int | None = None,
    t0: float = 0.0,
    t_final: float = 1.0,
    dt: float = 0.01,
    sde_solver: str = "euler",
    solver_options: dict | None = None,
    save_every: int = 1,
    times=None,
    seed: int | None = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str = torch.float32,
    progress: bool = False,
    max_nfe: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 50,
    resume: bool | str = False,
) -> Result:
    r"""Run (annealed) ULA: dX = ∇log π_t(X) dt + √2 dW with torchsde, from X₀ ~ init.

    Args:
        target: a target, an annealing path (:class:`~sbtm_flows.paths.Geometric`,
            :class:`~sbtm_flows.paths.Dilation`, …) or any object with ``dim`` and ``score``.
        init, n, t0, t_final, dt, save_every, times, seed, device, dtype, progress: as for
            :func:`~sbtm_flows.sampling.run_sbtm`.  The steps are the path's time grid
            (``path.time_grid(t0, t_final, dt)``), so annealed runs take the path's λ-aware steps.
        sde_solver: a torchsde method valid for additive diagonal noise (:data:`SDE_SOLVERS`;
            ``"euler"`` = Euler–Maruyama = ULA, ``"milstein"``, ``"srk"``, ``"heun"``, …).
        solver_options: passed to ``torchsde.sdeint`` as ``options``.
        max_nfe: raise :class:`SamplingError` after this many drift evaluations.
        checkpoint, checkpoint_every, resume: write a checkpoint every ``checkpoint_every``
            output times; ``resume=True`` continues an existing one of the same run, bitwise as
            if uninterrupted (``"force"``: see :func:`~sbtm_flows.sampling.run_sbtm`).

    The Brownian motion of output interval k is a ``torchsde.BrownianInterval`` with entropy
    :func:`chunk_entropy` (base, k), the base being drawn from the seeded generator after X₀:
    same seed ⇒ bitwise the same particles, with or without a resume.

    Returns:
        a :class:`~sbtm_flows.result.Result` with ``method="ula"``, empty ``diagnostics`` (there
        is no score model, so no Fisher information or dissipation: see ``info["diagnostics"]``).

    Raises:
        ValueError: bad arguments (an sde_solver outside :data:`SDE_SOLVERS`, …), or a
            checkpoint written with other arguments.
        SamplingError: ∇log π_t or the particles became NaN/inf (names t and the count).
    """
    args = dict(locals())
    args.pop("target")
    _check_sde_solver(sde_solver)
    check_resume(resume)
    path, gen, x0, _, dtype, device = prepare_run(target, init, n, t0, t_final, dt, save_every, seed, dtype, device)
    sde_type, levy = SDE_SOLVERS[sde_solver]
    sde = LangevinSDE(path, sde_type=sde_type, max_nfe=max_nfe)
    grid, out_idx = output_grid(path, t0, t_final, dt, int(save_every), True, times)
    entropy = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    comm = current_comm()
    blocks = _my_blocks(x0.shape[0], comm)  # [(block index, rows)] of this process
    if comm is not None and len(blocks) == len(noise_blocks(x0.shape[0])):
        comm = None  # too few particles to shard: this rank runs them all (as every rank does)
    rows = slice(blocks[0][1].start, blocks[-1][1].stop)
    if checkpoint is not None and comm is not None:  # one file per rank: its shard of the state
        checkpoint = f"{os.fspath(checkpoint)}.rank{comm.rank}of{comm.world}"
    ckpt = Checkpoint(checkpoint, args, target_fingerprint(path, x0, t0, t_final)) if checkpoint is not None else None
    resumed = ckpt.load() if (ckpt is not None and resume) else None

    def advance(y: Tensor, i0: int, i1: int) -> Tensor:
        ts = grid[i0 : i1 + 1]
        k = int(torch.searchsorted(out_idx, torch.tensor(i0)))
        bm = BlockBrownian([torchsde.BrownianInterval(
            t0=float(ts[0]), t1=float(ts[-1]), size=(r.stop - r.start, y.shape[1]), dtype=dtype, device=device,
            entropy=block_entropy(chunk_entropy(entropy, k), b), dt=float((ts[1:] - ts[:-1]).max()),
            levy_area_approximation=levy) for b, r in blocks])
        for a, b in uniform_runs(ts):
            span = ts[[a, b]]
            step = float(span[1] - span[0]) / (b - a) * (1.0 + 1e-9)  # lands exactly on ts[b]
            y = torchsde.sdeint(sde, y, span, bm=bm, dt=step, method=sde_solver, options=solver_options)[-1]
            bad = ~torch.isfinite(y).all(-1)
            if bad.any():
                t_b = float(span[1])
                raise SamplingError(
                    f"the ULA particles became NaN/inf at {int(bad.sum())} of {y.shape[0]} particles by t={t_b:.6g} "
                    f"({sde_solver!r}, step {step:.3g}); lower dt or check the target's score",
                    t=t_b,
                )
        return y

    if resumed is None:
        y, rec, start, wall0 = x0[rows], Recorder(), 0, 0.0
        check_target_finite(path, x0, float(grid[out_idx[0]]))
        rec.add(float(grid[out_idx[0]]), x0)
    else:
        y, rec, start, sde.nfe, wall0, _ = restore_record(resumed, device, dtype)

    def record(y: Tensor, k: int) -> bool:
        check_target_finite(path, y, float(grid[out_idx[k]]))
        rec.add(float(grid[out_idx[k]]), y if comm is None else comm.gather_rows(y))
        return False

    def save_ckpt(y: Tensor, k: int, stopped: bool) -> None:
        ckpt.save(y, k, rec, sde.nfe, time.perf_counter() - t_start + wall0, {})

    t_start = time.perf_counter()
    with torch.no_grad():
        drive(advance, record, y, out_idx, grid, start=start, progress=progress and is_main_process(), desc="ula",
              checkpoint=save_ckpt if ckpt is not None else None, checkpoint_every=int(checkpoint_every),
              postfix=lambda: {"t": f"{rec.times[-1]:.3g}", "nfe": sde.nfe})
    wall = time.perf_counter() - t_start + wall0
    packed = rec.pack()
    info = {
        "diagnostics": "ULA has no score model, so the relative Fisher information, the score-matching loss and the "
        "dissipation diagnostics (which need s ≈ ∇log f_t) are not computed; compare laws with sf.compare_laws "
        "or fit a score to result.trajectory",
        "sde_type": sde_type,
        "levy_area_approximation": levy,
        "brownian_entropy": entropy,
        "n_steps": int(grid.numel() - 1),
        "ranks": 1 if comm is None else comm.world,
    }
    return Result(
        particles=packed["trajectory"][-1],
        times=packed["times"],
        trajectory=packed["trajectory"],
        diagnostics=packed["diagnostics"],
        nfe=int(sde.nfe),
        wall_time=wall,
        method="ula",
        config=_config_of(args),
        info=info,
    )


METHODS["ula"] = run_ula
