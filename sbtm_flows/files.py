"""Writing files so that a crash or a full disk never leaves a truncated file under its
final name: write ``<path>.tmp``, flush and fsync it, rename it over ``<path>``, fsync the
folder (the rename is atomic on POSIX file systems)."""

from __future__ import annotations

import io
import json
import os
from typing import Any

import torch

__all__ = ["atomic_write", "save_torch", "write_json"]


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (``<path>.tmp``, fsync, rename, fsync the folder).

    Raises:
        OSError: the write failed (disk full, unwritable, file too large); ``<path>.tmp`` is
            removed and ``path`` keeps its previous content (or stays absent).  The message
            names the file.
    """
    path = os.fspath(path)
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise OSError(e.errno, f"cannot write {path!r}: {e.strerror or e}") from e
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_write`."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


def write_json(path: str | os.PathLike, obj: Any, **kw) -> None:
    """``json.dumps(obj, **kw)`` written to ``path`` through :func:`atomic_write`."""
    atomic_write(path, json.dumps(obj, **kw).encode())
