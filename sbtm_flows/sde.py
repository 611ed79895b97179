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
(``path.time_grid``: uniform, or λ-aware for :class:`~sbtm_flows.paths.Dilation`): it wires
:class:`ULASampler` into the generic loop :func:`sbtm_flows.loop.run`.  Each output interval [t_k, t_{k+1}] has its own
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
from dataclasses import dataclass

import torch
import torchsde
from torch import Tensor

from .checkpoint import Checkpoint, target_fingerprint
from .compat import TORCHSDE_METHODS, torchsde_method
from .config import ULAConfig, build_config
from .distributed import current as current_comm
from .distributed import is_main_process, rank_path
from .dynamics import particle_rates
from .errors import SamplingError
from .guards import FiniteTargetGuard, ParticleStiffness
from .loop import grid_index, output_grid, prepare_run, run, splitmix64
from .paths import Path, as_path
from .result import Result
from .sampling import METHODS

__all__ = ["LangevinSDE", "SDE_SOLVERS", "ULASampler", "ULAState", "run_ula", "uniform_runs", "chunk_entropy",
           "noise_blocks", "BlockBrownian"]

#: Noise blocks: at least this many rows each, and at most NOISE_BLOCKS_MAX blocks.
NOISE_BLOCK_MIN = 4096
NOISE_BLOCKS_MAX = 256

_ADJOINT_ONLY = {"adjoint_reversible_heun"}


def _solver_table() -> dict[str, tuple[str, str]]:
    """method -> (sde_type, levy_area_approximation) for every torchsde method whose
    ``noise_types`` include diagonal noise (forward-only methods)."""
    table = {}
    for name in TORCHSDE_METHODS:
        if name in _ADJOINT_ONLY:
            continue
        cls = torchsde_method(name, "ito")
        if "diagonal" not in cls.noise_types or "additive" not in cls.noise_types:
            continue
        levy = cls.levy_area_approximations
        area = "none" if "none" in levy else ("space-time" if "space-time" in levy else "foster")
        table[name] = (cls.sde_type, area)
    return table


#: torchsde methods accepted by :func:`run_ula`: name -> (sde_type, Lévy-area approximation).
SDE_SOLVERS: dict[str, tuple[str, str]] = _solver_table()


def check_sde_solver(name: str) -> None:
    """Raise ValueError unless ``name`` is in :data:`SDE_SOLVERS` (naming why and the valid ones)."""
    if name in SDE_SOLVERS:
        return
    valid = ", ".join(sorted(SDE_SOLVERS))
    if name in _ADJOINT_ONLY:
        raise ValueError(f"sde_solver {name!r} is the backward pass of sdeint_adjoint, not a forward solver; valid: {valid}")
    if name in TORCHSDE_METHODS:
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

    def restore_count(self, nfe: int) -> None:
        """Continue counting drift evaluations from ``nfe`` (a resumed run)."""
        self.nfe = int(nfe)

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


def run_ula(target, config: ULAConfig | None = None, **kwargs) -> Result:
    r"""Run (annealed) ULA: dX = ∇log π_t(X) dt + √2 dW with torchsde, from X₀ ~ init.

    Args:
        target: a target, an annealing path (:class:`~sbtm_flows.paths.Geometric`,
            :class:`~sbtm_flows.paths.Dilation`, …) or any object with ``dim`` and ``score``.
        config: a :class:`~sbtm_flows.config.ULAConfig`, or ``None`` to build one from ``kwargs``
            (its fields: the common run options and ``sde_solver``, ``solver_options``).  The steps
            are the path's time grid (``path.time_grid(t0, t_final, dt)``), so annealed runs take
            the path's λ-aware steps.

    The Brownian motion of output interval k is a ``torchsde.BrownianInterval`` with entropy
    :func:`chunk_entropy` (base, k), the base being drawn from the seeded generator after X₀:
    same seed ⇒ bitwise the same particles, with or without a resume.

    Returns:
        a :class:`~sbtm_flows.result.Result` with ``method="ula"``, empty ``diagnostics`` (there
        is no score model, so no Fisher information or dissipation: see ``info["diagnostics"]``).

    Raises:
        ValueError: bad arguments (an sde_solver outside :data:`SDE_SOLVERS`, an SBTM option, …),
            or a checkpoint written with other arguments.
        SamplingError: ∇log π_t or the particles became NaN/inf (names t and the count).
    """
    cfg = build_config("ula", kwargs, config)
    path, gen, x0, _, _, device = prepare_run(target, cfg.init, cfg.n, cfg.t0, cfg.t_final, cfg.dt, cfg.save_every,
                                              cfg.seed, cfg.dtype, cfg.device)
    grid, out_idx = output_grid(path, cfg.t0, cfg.t_final, cfg.dt, int(cfg.save_every), True, cfg.times)
    sampler = ULASampler(path, grid, grid[out_idx], cfg.sde_solver, cfg.solver_options, cfg.max_nfe, device=device,
                         stiffness_check=cfg.stiffness_check)
    config_dict = cfg.to_dict()
    sampler.shard(x0.shape[0])  # this process's rows under torch.distributed (before the checkpoint's name)
    ckpt = None
    if cfg.checkpoint is not None:
        ckpt = Checkpoint(rank_path(cfg.checkpoint, sampler.comm), cfg.fields(), target_fingerprint(path, x0, cfg.t0, cfg.t_final))
    return run(sampler, sampler.init(x0, cfg.t0, gen), grid[out_idx], observers=[FiniteTargetGuard(path)], checkpoint=ckpt,
               checkpoint_every=cfg.checkpoint_every,
               resume=cfg.resume, progress=cfg.progress and is_main_process(), method="ula", config=config_dict,
               info={"diagnostics": _NO_DIAGNOSTICS})

_NO_DIAGNOSTICS = (
    "ULA has no score model, so the relative Fisher information, the score-matching loss and the dissipation "
    "diagnostics (which need s ≈ ∇log f_t) are not computed; compare laws with sf.compare_laws or fit a score to "
    "result.trajectory"
)


@dataclass
class ULAState:
    """ULA's State: the particles ``(n, d)`` and the base entropy of the Brownian motions."""

    x: Tensor
    entropy: int


class ULASampler:
    r"""(Annealed) ULA as a :class:`~sbtm_flows.loop.Sampler`: Euler–Maruyama (or another torchsde
    method) for dX = ∇log π_t(X) dt + √2 dW on the time grid ``grid (m,)``, whose points include
    the output times ``times (T,)``.  Output interval [t_k, t_{k+1}] uses a ``torchsde.BrownianInterval`` with
    entropy :func:`chunk_entropy` (base, k), the base drawn in :meth:`init` from the run's generator."""

    def __init__(self, path, grid: Tensor, times: Tensor, sde_solver: str = "euler", solver_options: dict | None = None,
                 max_nfe: int | None = None, device: torch.device | str = "cpu", stiffness_check: bool = True):
        check_sde_solver(sde_solver)
        #: the particle-block check (Euler–Maruyama's drift step is stable for dt·|λ| ≤ 2)
        self.stiffness = ParticleStiffness(path, sde_solver, 2.0, "ula", generator=torch.Generator().manual_seed(0)) \
            if stiffness_check else None
        self.sde_type, self.levy = SDE_SOLVERS[sde_solver]
        self.sde = LangevinSDE(path, sde_type=self.sde_type, max_nfe=max_nfe)
        self.solver, self.solver_options = sde_solver, solver_options
        self.grid = grid.to(torch.float64)
        self._where = grid_index(self.grid)
        self._interval = grid_index(times.to(torch.float64))
        self.device = torch.device(device)
        self.comm = current_comm()
        self.blocks, self.rows = [], slice(0, 0)

    def init(self, x0: Tensor, t0: float, generator: torch.Generator) -> ULAState:
        """State at t0: X₀ ``(n, d)`` (this process's noise blocks of it under torch.distributed)
        and a base entropy drawn from ``generator`` (after the particle-block stiffness check at X₀)."""
        if self.stiffness is not None:
            self.stiffness.start(x0, t0, float(self.grid[1] - self.grid[0]))
        self.shard(x0.shape[0])
        return ULAState(x0[self.rows], int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))

    def shard(self, n: int) -> None:
        """This process's noise blocks of n particles (:func:`_my_blocks`) and their rows; the
        communicator is dropped when every rank runs every particle (too few to shard)."""
        self.blocks = _my_blocks(n, self.comm)
        if self.comm is not None and len(self.blocks) == len(noise_blocks(n)):
            self.comm = None
        self.rows = slice(self.blocks[0][1].start, self.blocks[-1][1].stop)

    def particles(self, state: ULAState) -> Tensor:
        """X ``(n, d)`` (all ranks' rows, gathered in order, under torch.distributed)."""
        return state.x if self.comm is None else self.comm.gather_rows(state.x)

    def nfe(self, state: ULAState) -> int:
        """Drift evaluations so far."""
        return self.sde.nfe

    def state_dict(self, state: ULAState) -> dict:
        """Particles, base entropy and the evaluation count."""
        return {"x": state.x.detach().cpu(), "entropy": state.entropy, "nfe": self.sde.nfe, "n": self.particles(state).shape[0],
                "stiffness_x": None if self.stiffness is None else self.stiffness.state_dict()}

    def load_state_dict(self, blob: dict) -> ULAState:
        """Inverse of :meth:`state_dict` (particles back on the path's dtype/device)."""
        self.sde.restore_count(int(blob["nfe"]))
        if self.stiffness is not None and blob.get("stiffness_x") is not None:
            self.stiffness.load_state_dict(blob["stiffness_x"])
        if not self.blocks:  # (this rank's rows: the checkpoint holds its shard)
            self.shard(int(blob["n"]))
        return ULAState(blob["x"].to(self.device), int(blob["entropy"]))

    @torch.no_grad()
    def advance(self, state: ULAState, t0: float, t1: float) -> ULAState:
        """Integrate from output time t0 to t1 over the grid points between them."""
        i0, i1 = self._where[t0], self._where[t1]
        ts = self.grid[i0 : i1 + 1]
        y = state.x
        if self.stiffness is not None:  # every 50 steps, looked at output times
            self.stiffness.check(self.particles(state), float(ts[0]), float(ts[1] - ts[0]), i0)
        k = self._interval[t0]
        bm = BlockBrownian([torchsde.BrownianInterval(
            t0=float(ts[0]), t1=float(ts[-1]), size=(r.stop - r.start, y.shape[1]), dtype=y.dtype, device=y.device,
            entropy=block_entropy(chunk_entropy(state.entropy, k), b), dt=float((ts[1:] - ts[:-1]).max()),
            levy_area_approximation=self.levy) for b, r in self.blocks])
        for a, b in uniform_runs(ts):
            span = ts[[a, b]]
            step = float(span[1] - span[0]) / (b - a) * (1.0 + 1e-9)  # lands exactly on ts[b]
            y = torchsde.sdeint(self.sde, y, span, bm=bm, dt=step, method=self.solver, options=self.solver_options)[-1]
            bad = ~torch.isfinite(y).all(-1)
            if bad.any():
                t_b = float(span[1])
                raise SamplingError(
                    f"the ULA particles became NaN/inf at {int(bad.sum())} of {y.shape[0]} particles by t={t_b:.6g} "
                    f"({self.solver!r}, step {step:.3g}); lower dt or check the target's score",
                    t=t_b,
                )
        return ULAState(y, state.entropy)

    def finish(self, state: ULAState, packed: dict, info: dict) -> dict:
        """Adds the SDE type, the Lévy-area approximation, the base entropy and the step count to ``info``."""
        if self.stiffness is not None:
            info["stiffness_x"] = self.stiffness.record()
        info.update({"sde_type": self.sde_type, "levy_area_approximation": self.levy,
                     "brownian_entropy": state.entropy, "n_steps": int(self.grid.numel() - 1),
                     "ranks": 1 if self.comm is None else self.comm.world})
        return {}


METHODS["ula"] = run_ula
