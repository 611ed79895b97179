r"""Data-parallel runs on ``torch.distributed``: every process (rank) holds a shard of the particles.

SBTM's particles are independent given Θ, and everything that couples them is a mean over
particles: the loss L = (1/N) Σ_i ℓ_i and its gradient ∇_Θ L, the relative Fisher information,
the dissipation, log Z and the ESS.  So R processes each hold ``N/R`` particles (a contiguous
block of rows, :func:`shard_rows`), each computes its part Σ_{i ∈ shard} (·)/N, and one
all-reduce (a sum) gives every rank the same total: one Θ everywhere, the same optimizer
steps, the same diagnostics and stop decisions.  Particles never move between ranks; they are
gathered only for output (:meth:`Comm.gather_rows`).

Launch with ``torchrun`` (its rendezvous sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``…)::

    torchrun --nproc-per-node 2 -m sbtm_flows.cli run gaussian-1d --out runs/g
    torchrun --nproc-per-node 2 my_script.py     # my_script calls sf.distributed.init_from_env()

``sample()`` shards automatically when a process group with more than one rank is initialised
(:func:`current`).  Backends: ``gloo`` on CPU, ``nccl`` for CUDA tensors.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["Comm", "current", "init_from_env", "shard_rows", "is_main_process", "rank_path"]


def shard_rows(n: int, rank: int, world: int) -> slice:
    """Rows ``[⌊rN/R⌋, ⌊(r+1)N/R⌋)`` of ``n`` particles: rank r's contiguous shard (sizes differ
    by at most one; concatenating the shards in rank order gives the rows back in order)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank}")
    return slice(rank * n // world, (rank + 1) * n // world)


class Comm:
    """Sums and gathers over the ranks of a ``torch.distributed`` process group.

    Args:
        group: the process group (default: the world group, which must be initialised).
    """

    def __init__(self, group=None):
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("torch.distributed is not initialised: launch with torchrun and call "
                             "sf.distributed.init_from_env() (or torch.distributed.init_process_group) first")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self._counts: dict[int, int] = {}

    def sum(self, t: Tensor) -> Tensor:
        """Σ over the ranks of ``t`` (a new tensor, the same on every rank)."""
        out = t.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self.group)
        return out

    def max(self, t: Tensor) -> Tensor:
        """Elementwise max over the ranks of ``t`` (a new tensor)."""
        out = t.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.MAX, group=self.group)
        return out

    def count(self, n_local: int) -> int:
        """Σ over the ranks of ``n_local`` (cached per value: shard sizes do not change)."""
        if n_local not in self._counts:
            self._counts[n_local] = int(self.sum(torch.tensor([int(n_local)], dtype=torch.int64, device=self._device()))[0])
        return self._counts[n_local]

    def gather_rows(self, x: Tensor) -> Tensor:
        """The ranks' row blocks ``(n_r, …)`` concatenated in rank order, on every rank
        (``all_gather`` of blocks padded to the largest)."""
        sizes = [torch.zeros(1, dtype=torch.int64, device=self._device(x)) for _ in range(self.world)]
        dist.all_gather(sizes, torch.tensor([x.shape[0]], dtype=torch.int64, device=self._device(x)), group=self.group)
        sizes = [int(s[0]) for s in sizes]
        m = max(sizes)
        pad = x.new_zeros((m - x.shape[0], *x.shape[1:]))
        blocks = [x.new_empty((m, *x.shape[1:])) for _ in range(self.world)]
        dist.all_gather(blocks, torch.cat([x.detach(), pad]).contiguous(), group=self.group)
        return torch.cat([b[:k] for b, k in zip(blocks, sizes)])

    def broadcast(self, t: Tensor, src: int = 0) -> Tensor:
        """``t`` of rank ``src`` on every rank (in place; returned)."""
        dist.broadcast(t, src=src, group=self.group)
        return t

    def _device(self, like: Tensor | None = None) -> torch.device:
        if like is not None:
            return like.device
        return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(self.group) == "nccl" else torch.device("cpu")


def current() -> Comm | None:
    """A :class:`Comm` on the world group when ``torch.distributed`` is initialised with more than
    one rank, else ``None`` (a single process: nothing to reduce)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return Comm()
    return None


def init_from_env(backend: str | None = None, timeout_s: float = 600.0) -> Comm | None:
    """Initialise the default process group from ``torchrun``'s environment (``WORLD_SIZE`` > 1)
    and return :func:`current`; ``None`` (and nothing initialised) outside torchrun.

    Args:
        backend: ``"gloo"`` (CPU) or ``"nccl"`` (CUDA); default nccl when CUDA is available
            and ``LOCAL_RANK`` names a GPU of this machine, else gloo.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if not dist.is_initialized():
        if backend is None:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            backend = "nccl" if torch.cuda.is_available() and local < torch.cuda.device_count() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return current()


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the rank that writes output files."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def rank_path(path, comm: Comm | None):
    """A checkpoint path of this process: ``path`` itself in one process, else
    ``"{path}.rank{r}of{R}"`` (each rank's file holds its shard of the state)."""
    if path is None or comm is None:
        return path
    return f"{os.fspath(path)}.rank{comm.rank}of{comm.world}"
