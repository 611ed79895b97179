"""Checkpoint files: one run's arguments, a fingerprint of its target, and its state after
the last output time, written atomically so that an interrupted run resumes where it stopped."""

from __future__ import annotations

import json
import os

import torch
from torch import Tensor

from .paths import Path

_VOLATILE = {"progress", "checkpoint", "checkpoint_every", "resume", "max_nfe"}


def target_fingerprint(path: Path, x_like: Tensor, t0: float, t_final: float) -> list[float]:
    """∇log π_t at 8 fixed standard-normal points (a fixed generator; dtype and device of
    ``x_like (n, d)``) at t0 and t_final, rounded to 9 significant digits: a resume under another
    target or path is refused because these numbers differ."""
    g = torch.Generator().manual_seed(20241125)
    pts = torch.randn(8, x_like.shape[1], generator=g, dtype=torch.float64).to(x_like)
    try:
        with torch.no_grad():
            vals = torch.cat([path.score(pts, t0).reshape(-1), path.score(pts, t_final).reshape(-1)])
    except Exception:  # noqa: BLE001 - a score that fails off the sample is still a valid target
        return [float("nan")]
    return [float(f"{v:.9g}") for v in vals.double().cpu().tolist()]


class Checkpoint:
    """One run's checkpoint file: its arguments and a fingerprint of its target (a resume
    with other arguments or another target is refused), the state after the last output
    time, the recorder and the method's extra state.

    Raises:
        ValueError: the checkpoint's folder cannot be created or written.
    """

    def __init__(self, path, config: dict, fingerprint: list[float] | None = None):
        self.path = os.fspath(path)
        self.config = {k: v for k, v in config.items() if k not in _VOLATILE}
        if fingerprint is not None:
            self.config["target_fingerprint"] = fingerprint
        folder = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise ValueError(f"cannot create the checkpoint folder {folder!r}: {e}") from e
        if not os.access(folder, os.W_OK):
            raise ValueError(f"the checkpoint folder {folder!r} is not writable")

    def save(self, blob: dict) -> None:
        """Write ``blob`` (tensors and plain data: the run loop's state after an output time)
        atomically, with this run's configuration added under ``"config"``."""
        blob = {"config": json.dumps(self.config, sort_keys=True), **blob}
        tmp = self.path + ".tmp"
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        torch.save(blob, tmp)
        os.replace(tmp, self.path)

    def load(self) -> dict | None:
        """The saved blob, or ``None`` when there is no file yet.

        Raises:
            ValueError: the file was written by a run with other arguments or another target."""
        if not os.path.exists(self.path):
            return None
        blob = torch.load(self.path, map_location="cpu", weights_only=False)
        if blob["config"] != json.dumps(self.config, sort_keys=True):
            saved = json.loads(blob["config"])
            diff = sorted(k for k in set(saved) | set(self.config) if json.dumps(saved.get(k)) != json.dumps(self.config.get(k)))
            what = ["a different target/path" if k == "target_fingerprint" else k for k in diff]
            raise ValueError(f"checkpoint {self.path} was written by a run with different arguments: {', '.join(what)}")
        return blob
