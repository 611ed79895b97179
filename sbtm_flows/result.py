"""The result of a run, and saving / loading it.

Everything downstream (diagnostics, metrics, plots, the CLI) reads a :class:`Result`;
nothing re-runs the sampler.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path as _FsPath

import torch
from torch import Tensor

__all__ = ["Result", "HeldOut", "load"]


@dataclass(frozen=True)
class HeldOut:
    """The held-out ("passive") particles of a run, grouped (``result.holdout``): moved by the
    flow, never trained on.

    Attributes:
        particles: ``(m, d)`` at the last output time; trajectory: ``(T, m, d)``.
        log_density: ``(m,)`` log f_T at the final held-out particles, when tracked;
            log_density_trajectory: ``(T, m)``.
        log_target: ``(m,)`` log π̃ at the final held-out particles (when tracked).
        lost: ``(m,)`` bool, frozen because their score or position stopped being finite.
    """

    particles: Tensor
    trajectory: Tensor | None = None
    log_density: Tensor | None = None
    log_density_trajectory: Tensor | None = None
    log_target: Tensor | None = None
    lost: Tensor | None = None


@dataclass
class Result:
    """Particles and history of one run.

    Attributes:
        particles: ``(n, d)`` at the last output time.
        times: ``(T,)`` output times.
        trajectory: ``(T, n, d)`` particles at the output times.
        diagnostics: name -> ``(T,)`` tensor (see :mod:`sbtm_flows.diagnostics`).
        nfe: right-hand-side evaluations by the solver.
        wall_time: seconds spent integrating (initial fit excluded, see ``info``).
        method: ``"sbtm"``, ``"ula"``, …
        config: the arguments of the run (JSON-able), enough to repeat it.
        thetas: ``(T, P)`` network parameters at the output times (SBTM), or ``None``.
        score_config: architecture of the score network (to rebuild it), or ``None``.
        log_density: ``(n,)`` log f_T at the final particles when tracked, else ``None``.
        log_density_trajectory: ``(T, n)`` when tracked.
        log_target: ``(n,)`` log π̃(X_T) of the final target at the final particles, when the
            log-density is tracked and the target has ``log_prob`` (for importance weights).
        info: free-form facts about the run (initial fit error, stop reason, train steps…).
        holdout_particles: ``(m, d)`` final held-out particles (``sample(..., holdout=m)``:
            moved by the flow, never trained on), else ``None``.
        holdout_trajectory: ``(T, m, d)`` held-out particles at the output times.
        holdout_log_density: ``(m,)`` log f_T at the final held-out particles, when tracked.
        holdout_log_density_trajectory: ``(T, m)`` when tracked.
        holdout_log_target: ``(m,)`` log π̃ at the final held-out particles (as ``log_target``).
        holdout_lost: ``(m,)`` bool, held-out particles frozen because their score or position
            stopped being finite (left out of the density diagnostics and of ``importance``).
    """

    particles: Tensor
    times: Tensor
    trajectory: Tensor
    diagnostics: dict = field(default_factory=dict)
    nfe: int = 0
    wall_time: float = 0.0
    method: str = ""
    config: dict = field(default_factory=dict)
    thetas: Tensor | None = None
    score_config: dict | None = None
    log_density: Tensor | None = None
    log_density_trajectory: Tensor | None = None
    log_target: Tensor | None = None
    info: dict = field(default_factory=dict)
    holdout_particles: Tensor | None = None
    holdout_trajectory: Tensor | None = None
    holdout_log_density: Tensor | None = None
    holdout_log_density_trajectory: Tensor | None = None
    holdout_log_target: Tensor | None = None
    holdout_lost: Tensor | None = None

    @property
    def holdout(self) -> HeldOut | None:
        """The held-out fields grouped as a :class:`HeldOut` (``None`` for a run without them);
        the flat ``holdout_*`` attributes stay, so saved files of every version load."""
        if self.holdout_particles is None:
            return None
        return HeldOut(self.holdout_particles, self.holdout_trajectory, self.holdout_log_density,
                       self.holdout_log_density_trajectory, self.holdout_log_target, self.holdout_lost)

    @property
    def n(self) -> int:
        """Number of particles."""
        return self.particles.shape[0]

    @property
    def dim(self) -> int:
        """Dimension d."""
        return self.particles.shape[1]

    def score_model(self, k: int = -1, target=None) -> torch.nn.Module:
        """The score network s_Θ at output index ``k`` (default: the last), as a module
        x ↦ s(x) ``(n, d) -> (n, d)`` at that output time (for a :class:`ScaledScore` run, the
        network with its scale c(t_k) fixed; for a :class:`ResidualScore` run, s = ∇log π + r_Θ
        anchored to ``target``, which such a run needs: the result does not store the target).

        Raises:
            ValueError: for a run without a score network (e.g. ULA), or a ResidualScore run
                without ``target``.
        """
        if self.thetas is None:
            raise ValueError(f"a {self.method!r} run has no score network")
        if self.score_config is None:
            raise ValueError("this run's score network has no config() to rebuild it from: build the same network and "
                             "load result.thetas[k] into it with sf.score.unflatten_params(model, result.thetas[k])")
        from .score import ResidualScore, ScaledScore, ScoreMLP, unflatten_params

        cfg = self.score_config
        if cfg.get("residual"):
            if target is None:
                raise ValueError("this run's network is a ResidualScore s = ∇log π + r_Θ: pass the run's target, "
                                 "result.score_model(k, target=target)")
            model = ResidualScore(ScoreMLP(**cfg["net"], dtype=self.thetas.dtype), target).to(self.thetas.device)
        elif "net" in cfg:
            net = ScoreMLP(**cfg["net"], dtype=self.thetas.dtype)
            model = ScaledScore(net, cfg["scales"][k]).to(self.thetas.device)
        else:
            model = ScoreMLP(**cfg, dtype=self.thetas.dtype).to(self.thetas.device)
        with torch.no_grad():
            for name, p in unflatten_params(model, self.thetas[k]).items():
                model.get_parameter(name).copy_(p)
        return model

    def at(self, t: float) -> Tensor:
        """Particles ``(n, d)`` at the output time nearest to ``t``."""
        k = int(torch.argmin((self.times - t).abs()))
        return self.trajectory[k]

    def to_dict(self) -> dict:
        """A dict of tensors and plain Python values (``torch.save``-able, weights-only)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def save(self, path: str | _FsPath) -> None:
        """Write the result with ``torch.save`` (loadable with ``weights_only=True``),
        atomically: a failed write (full disk) raises OSError and leaves no partial file."""
        from .files import save_torch

        path = _FsPath(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_torch(_to_cpu(self.to_dict()), path)


def _to_cpu(obj):
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def load(path: str | _FsPath, map_location: str | torch.device = "cpu") -> Result:
    """Read a :class:`Result` written by :meth:`Result.save`."""
    d = torch.load(path, map_location=map_location, weights_only=True)
    names = {f.name for f in fields(Result)}
    return Result(**{k: v for k, v in d.items() if k in names})
