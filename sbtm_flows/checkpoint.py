r"""Checkpoint files: one run's content fingerprint, and its state after the last output time,
written atomically so that an interrupted run resumes exactly where it stopped — and only the
same run.

Safety (what a checkpoint file can and cannot do):

* **No code on load.** The file is ``MAGIC + sha256 + torch.save bytes``; the payload is read
  with ``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers
  (configs are JSON strings), so a crafted pickle is refused instead of run.
* **Corruption is named.** Empty, truncated, bit-flipped or foreign files (random bytes, a
  saved :class:`~sbtm_flows.result.Result`) raise one :class:`CheckpointError` naming the
  file and what is wrong (the sha256 of the payload is checked before unpickling).
* **Only the same run resumes.** :func:`fingerprint` turns every argument into content: tensors
  (``init`` particles, ``times``) by the sha256 of their values, modules (the score network,
  an init law) by their architecture and the values of their parameters/buffers, functions
  (a callable η) by their code, constants, defaults and closure; the target by
  :func:`target_fingerprint`, its score (and log-density) at fixed points.  A resume whose
  fingerprint differs is refused naming the differing arguments.  What cannot be inspected
  (an opaque object) makes a plain ``resume=True`` refuse; ``resume="force"`` resumes it with
  a warning.
* **One writer.** A lock file ``<path>.lock`` holding the writer's pid is created with
  ``O_EXCL`` when the :class:`Checkpoint` is built; a second process on the same path is
  refused; a lock left by a process that no longer exists (SIGKILL) is taken over.
* **Atomic writes.** Each save writes ``<path>.tmp``, fsyncs it, renames it over ``<path>``
  and fsyncs the folder: a crash leaves the previous checkpoint intact, and no ``.tmp``
  survives a completed write.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import math
import os
import pickle
import types
import warnings
import weakref
import zipfile
from typing import Any

import torch
from torch import Tensor

from .files import atomic_write

__all__ = [
    "Checkpoint", "CheckpointError", "fingerprint", "target_fingerprint", "check_resume", "VOLATILE",
]

#: Arguments that do not change what a run computes (left out of the fingerprint).
VOLATILE = frozenset({"progress", "checkpoint", "checkpoint_every", "resume", "max_nfe"})
_MAGIC = b"SBTM-FLOWS-CHECKPOINT-1\n"
_DIGEST = 32
_UNVERIFIABLE = "<unverifiable "


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: corrupt, foreign, unsafe, locked, or written by
    another run.  The message names the file and what is wrong."""


def check_resume(resume: Any) -> bool | str:
    """``resume`` validated: ``False``, ``True`` or ``"force"``.

    Raises:
        ValueError: any other value (e.g. ``"no"``, which would otherwise read as true)."""
    if resume is True or resume is False or resume == "force":
        return resume
    raise ValueError(f"resume must be False, True or 'force', got {resume!r}")


# ----------------------------------------------------------------------------------------
# Content fingerprints
# ----------------------------------------------------------------------------------------
def _tensor_digest(t: Tensor) -> str:
    """``tensor(shape):dtype:sha256`` of the values of ``t`` (any device, any layout)."""
    t = t.detach()
    if t.is_sparse:
        t = t.to_dense()
    c = t.cpu().contiguous()
    h = hashlib.sha256(c.reshape(-1).view(torch.uint8).numpy().tobytes() if c.numel() else b"")
    return f"tensor{tuple(c.shape)}:{str(c.dtype).replace('torch.', '')}:{h.hexdigest()[:24]}"


def _module_print(m: torch.nn.Module, depth: int) -> dict:
    """Architecture (``repr``) and parameter/buffer values of a module, plus its plain attributes."""
    state = {k: _tensor_digest(v) for k, v in m.state_dict(keep_vars=False).items() if isinstance(v, Tensor)}
    skip = {"_parameters", "_buffers", "_modules", "training", "_state_dict_hooks", "_load_state_dict_pre_hooks"}
    attrs = {k: v for k, v in vars(m).items() if not k.startswith("_") and k not in skip}
    return {"module": type(m).__qualname__, "repr": repr(m), "state": state, "attrs": _fp(attrs, depth + 1)}


def _function_print(f: types.FunctionType, depth: int) -> dict:
    """A function by its code: bytecode, constants, names, defaults, closure cells and the
    plain-data globals it reads (identical code in another process gives the same print)."""
    code = f.__code__
    cells = [c.cell_contents if _cell_full(c) else None for c in (f.__closure__ or ())]
    globs = {name: f.__globals__[name] for name in code.co_names if name in f.__globals__
             and isinstance(f.__globals__[name], (int, float, str, bool, Tensor, tuple))}
    return {
        "function": f.__qualname__,
        "code": _code_print(code),
        "defaults": _fp(f.__defaults__, depth + 1),
        "kwdefaults": _fp(f.__kwdefaults__, depth + 1),
        "closure": _fp(cells, depth + 1),
        "globals": _fp(globs, depth + 1),
    }


def _cell_full(cell) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


def _code_print(code: types.CodeType) -> str:
    """sha256 of a code object's bytecode, names and constants (nested code included)."""
    h = hashlib.sha256(code.co_code)
    h.update(repr(code.co_names).encode())
    for c in code.co_consts:
        h.update(_code_print(c).encode() if isinstance(c, types.CodeType) else repr(c).encode())
    return h.hexdigest()[:24]


def _object_print(v: Any, depth: int):
    """Fingerprint of an object that is not plain data: functions by code, dataclasses and
    objects with ``__dict__`` by class and attributes, others by a repr without an address."""
    if isinstance(v, torch.nn.Module):
        return _module_print(v, depth)
    if isinstance(v, types.FunctionType):
        return _function_print(v, depth)
    if isinstance(v, types.MethodType):
        return {"method": v.__func__.__qualname__, "self": _fp(v.__self__, depth + 1), "func": _fp(v.__func__, depth + 1)}
    if isinstance(v, functools.partial):
        return {"partial": _fp(v.func, depth + 1), "args": _fp(v.args, depth + 1), "keywords": _fp(v.keywords, depth + 1)}
    if isinstance(v, (types.BuiltinFunctionType, type)):
        return f"{getattr(v, '__module__', '')}.{v.__qualname__}"
    if dataclasses.is_dataclass(v) or hasattr(v, "__dict__"):
        attrs = {f.name: getattr(v, f.name) for f in dataclasses.fields(v)} if dataclasses.is_dataclass(v) else vars(v)
        return {"object": type(v).__qualname__, "attrs": _fp(attrs, depth + 1)}
    r = repr(v)
    if " at 0x" not in r and type(v).__repr__ is not object.__repr__:
        return {"object": type(v).__qualname__, "repr": r}
    return f"{_UNVERIFIABLE}{type(v).__qualname__}>"


def _fp(v: Any, depth: int = 0):
    """JSON-able content fingerprint of ``v`` (see :func:`fingerprint`)."""
    if depth > 12:
        return f"{_UNVERIFIABLE}{type(v).__qualname__} (nested too deep)>"
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else repr(v)
    if isinstance(v, (torch.dtype, torch.device)):
        return str(v)
    if isinstance(v, Tensor):
        return _tensor_digest(v)
    if type(v).__module__ == "numpy":
        return _fp(torch.as_tensor(v) if hasattr(v, "shape") and v.shape != () else v.item(), depth)
    if isinstance(v, (list, tuple)):
        return [_fp(u, depth + 1) for u in v]
    if isinstance(v, dict):
        return {str(k): _fp(u, depth + 1) for k, u in v.items()}
    return _object_print(v, depth)


def fingerprint(config: dict) -> dict:
    r"""Content fingerprint of a run's arguments: a JSON-able dict with the same keys.

    Plain values are kept; a tensor or array becomes ``tensor(shape):dtype:sha256`` of its
    values; a module its class, ``repr`` (the architecture) and the sha256 of every
    parameter and buffer (a network's initial Θ, an init law's mean and covariance); a
    function its bytecode, constants, defaults, closure and the plain globals it reads;
    other objects their class and attributes.  What cannot be inspected becomes a string
    starting with ``"<unverifiable "`` (see :meth:`Checkpoint.unverifiable`).

    Args:
        config: argument name -> value (anything).

    Returns:
        name -> JSON-able fingerprint.
    """
    return {str(k): _fp(v) for k, v in config.items()}


def _unverifiable_keys(fp: dict) -> list[str]:
    return sorted(k for k, v in fp.items() if _UNVERIFIABLE in json.dumps(v))


def target_fingerprint(path, x_like: Tensor, t0: float, t_final: float) -> list[float]:
    """∇log π_t (and log π_t when the path has ``log_prob``) at 8 fixed standard-normal points
    (a fixed generator; dtype and device of ``x_like (n, d)``) at t0, (t0+t_final)/2 and t_final,
    rounded to 9 significant digits: a resume under another target or path is refused because
    these numbers differ."""
    g = torch.Generator().manual_seed(20241125)
    pts = torch.randn(8, x_like.shape[1], generator=g, dtype=torch.float64).to(x_like)
    vals = []
    for t in (t0, 0.5 * (t0 + t_final), t_final):
        try:
            with torch.no_grad():
                vals.append(torch.as_tensor(path.score(pts, t)).reshape(-1))
        except Exception:  # noqa: BLE001 - a score that fails off the sample is still a valid target
            return [float("nan")]
        log_prob = getattr(path, "log_prob", None)
        if callable(log_prob):
            try:
                with torch.no_grad():
                    vals.append(torch.as_tensor(log_prob(pts, t)).reshape(-1).to(vals[-1]))
            except Exception:  # noqa: BLE001 - log π is optional for sampling
                pass
    return [float(f"{v:.9g}") for v in torch.cat(vals).double().cpu().tolist()]


# ----------------------------------------------------------------------------------------
# Files: atomic writes and the lock
# ----------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _acquire_lock(lock: str) -> None:
    """Create ``lock`` (O_EXCL) holding this pid; take over a lock whose pid is dead or ours."""
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                with open(lock) as f:
                    pid = int(f.read().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid > 0 and pid != os.getpid() and _pid_alive(pid):
                raise CheckpointError(
                    f"checkpoint {lock[:-5]!r} is in use by another run (process {pid}, lock file {lock!r}); wait for it "
                    "to finish or use another checkpoint path (delete the lock file only if that process is not a sampler)"
                ) from None
            try:  # stale (a dead process, or an earlier run of this process): take it over
                os.remove(lock)
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        return
    raise CheckpointError(f"could not take the checkpoint lock {lock!r} (another process keeps recreating it)")


def _release_lock(lock: str, pid: int) -> None:
    try:
        with open(lock) as f:
            mine = f.read().strip() == str(pid)
        if mine:
            os.remove(lock)
    except (OSError, ValueError):
        pass


def _check_path(path: str) -> None:
    """Refuse a checkpoint path that cannot be written: a directory, an unwritable folder."""
    if os.path.isdir(path):
        raise ValueError(f"checkpoint path {path!r} is a directory; pass a file path, e.g. {os.path.join(path, 'run.ckpt')!r}")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the checkpoint folder {folder!r}: {e}") from e
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"the checkpoint folder {folder!r} is not writable")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ValueError(f"the checkpoint file {path!r} exists and is not writable")


# ----------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------
def _describe_foreign(path: str, raw: bytes) -> str:
    """What a file without the checkpoint header is (for the error message)."""
    if raw[:2] != b"PK":
        return "is not a sbtm_flows checkpoint (no checkpoint header: random bytes or another file format)"
    try:
        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any failure means: not ours
        return "is not a sbtm_flows checkpoint (a zip/torch file without the checkpoint header)"
    if isinstance(obj, dict) and {"particles", "trajectory"} <= set(obj):
        return "is a saved Result (read it with sf.load), not a checkpoint"
    return "is a torch file but not a sbtm_flows checkpoint (written by another program or an older version; delete it)"


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The blob stored in a checkpoint file, checked and loaded without running code.

    Raises:
        CheckpointError: the file is empty, truncated or damaged (sha256 mismatch), not a
            checkpoint, or contains objects other than tensors and plain data.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise CheckpointError(f"checkpoint {path!r} cannot be read: {e.strerror or e}") from e
    if not raw:
        raise CheckpointError(f"checkpoint {path!r} is empty (0 bytes): a write was interrupted; delete it to start afresh")
    if not raw.startswith(_MAGIC):
        if _MAGIC.startswith(raw):
            raise CheckpointError(f"checkpoint {path!r} is truncated ({len(raw)} bytes); delete it to start afresh")
        raise CheckpointError(f"checkpoint {path!r} {_describe_foreign(path, raw)}")
    digest, payload = raw[len(_MAGIC) : len(_MAGIC) + _DIGEST], raw[len(_MAGIC) + _DIGEST :]
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(
            f"checkpoint {path!r} is corrupt: its sha256 does not match its content ({len(raw)} bytes; truncated or "
            "damaged on disk); delete it to start afresh"
        )
    try:
        blob = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path!r} contains objects other than tensors and plain data, and was not loaded (unpickling "
            f"them could run code): {first[:300]}"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"checkpoint {path!r} is not readable: {str(e)[:300]}") from e
    if not isinstance(blob, dict) or "config" not in blob:
        raise CheckpointError(f"checkpoint {path!r} does not hold a checkpoint record (got {type(blob).__name__})")
    return blob


def _diff(saved: dict, now: dict) -> list[str]:
    keys = sorted(set(saved) | set(now))
    return [k for k in keys if json.dumps(saved.get(k), sort_keys=True) != json.dumps(now.get(k), sort_keys=True)]


# ----------------------------------------------------------------------------------------
# The checkpoint
# ----------------------------------------------------------------------------------------
class Checkpoint:
    """One run's checkpoint file (see the module docstring for the guarantees).

    Args:
        path: the checkpoint file (its folder is created).
        config: the run's arguments, name -> value (anything: tensors, modules and
            functions are fingerprinted by content, see :func:`fingerprint`; the
            :data:`VOLATILE` ones are left out).
        fingerprint: the target's :func:`target_fingerprint` (stored as ``"target"``).
        resume: ``False`` (default: ``config["resume"]`` when present), ``True`` or
            ``"force"`` (also resume arguments that cannot be verified, with a warning).

    Building it checks the path (not a directory, folder writable) and takes the lock
    ``<path>.lock``; :meth:`close` (or garbage collection, or the end of the process)
    releases it.

    Raises:
        ValueError: a bad path or ``resume`` value.
        CheckpointError: another live process holds the lock.
    """

    def __init__(self, path, config: dict, fingerprint: list[float] | None = None, *, resume: Any = None):
        self.path = os.fspath(path)
        self.resume = check_resume(config.get("resume", False) if resume is None else resume)
        _check_path(self.path)
        self.config = _fp({k: v for k, v in config.items() if k not in VOLATILE})
        if fingerprint is not None:
            self.config["target"] = fingerprint
        self.lock_path = self.path + ".lock"
        _acquire_lock(self.lock_path)
        self._release = weakref.finalize(self, _release_lock, self.lock_path, os.getpid())
        if os.path.exists(self.path + ".tmp"):  # left by a killed writer; we hold the lock
            os.remove(self.path + ".tmp")

    @property
    def unverifiable(self) -> list[str]:
        """Arguments whose content could not be fingerprinted (a resume needs ``"force"``)."""
        return _unverifiable_keys(self.config)

    def close(self) -> None:
        """Release the lock (idempotent)."""
        self._release()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def save(self, blob_or_y: dict | Tensor, k: int | None = None, rec=None, nfe: int = 0, wall: float = 0.0,
             info: dict | None = None, **state) -> None:
        """Write one state atomically (``<path>.tmp``, fsync, rename).

        Either ``save(blob)`` with a dict of tensors and plain data (the sampler's whole
        state), or the positional form ``save(y, k, recorder, nfe, wall, info, **state)``.

        Raises:
            ValueError: the blob holds something other than tensors and plain data.
            OSError: the write failed (the previous checkpoint is kept; names the file).
        """
        if isinstance(blob_or_y, dict):
            blob = dict(blob_or_y)
        else:
            blob = {"k": k, "y": blob_or_y.detach().cpu(), "record": rec.state_dict(), "nfe": nfe, "wall": wall,
                    "info": json.dumps(info or {}), **state}
        blob["config"] = json.dumps(self.config, sort_keys=True)
        buf = io.BytesIO()
        torch.save(blob, buf)
        payload = buf.getvalue()
        try:
            torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ValueError(f"a checkpoint may hold only tensors and plain data; this one would not load safely: {e}") from e
        atomic_write(self.path, _MAGIC + hashlib.sha256(payload).digest() + payload)

    def load(self) -> dict | None:
        """The saved blob if the file exists and was written by this same run, else ``None``.

        Raises:
            CheckpointError: a corrupt/foreign/unsafe file, a fingerprint mismatch (names the
                differing arguments), or arguments that cannot be verified without
                ``resume="force"``.
        """
        if not os.path.exists(self.path):
            return None
        blob = read_checkpoint(self.path)
        try:
            saved = json.loads(blob["config"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {self.path!r} has an unreadable run fingerprint: {e}") from e
        diff = _diff(saved, self.config)
        if diff:
            what = ["a different target/path (its score at fixed points differs)" if k == "target" else k for k in diff]
            hint = (" (a score_model is compared by architecture and initial Θ: pass a freshly built network, not one "
                    "a run has trained)") if "score_model" in diff else ""
            raise CheckpointError(
                f"checkpoint {self.path!r} was written by a run with different arguments: {', '.join(what)}{hint}. "
                "Use another checkpoint path, or the arguments of that run"
            )
        opaque = self.unverifiable
        if opaque and self.resume != "force":
            raise CheckpointError(
                f"checkpoint {self.path!r}: cannot verify that {', '.join(opaque)} are the same as in the run that wrote it "
                "(objects whose content cannot be fingerprinted); pass resume='force' to resume anyway"
            )
        if opaque:
            warnings.warn(f"resume='force': resuming {self.path!r} without verifying {', '.join(opaque)}", RuntimeWarning,
                          stacklevel=2)
        return blob
