r"""The control network u_θ(x, t) of the learned-diffusion samplers.

    u_θ(x, t) = NN₁([x, φ(t)]) + NN₂(φ(t)) ⊙ clip(∇log π̃(x))        (PIS-grad form, Zhang & Chen 2022)

φ(t) = (sin(kπt/T), cos(kπt/T))_{k=1..F} is a Fourier embedding of time; the second term (the
target-score feature) is optional (``use_score``).  The last layers of both networks start at
zero, so an untrained sampler is the uncontrolled reference process.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..score import ACTIVATIONS

__all__ = ["ControlNet"]


def _mlp(sizes: list[int], activation: str, generator: torch.Generator | None, dtype) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = torch.nn.Linear(a, b, dtype=dtype)
        with torch.no_grad():  # seeded init (same seed ⇒ same network)
            bound = 1.0 / math.sqrt(a)
            lin.weight.copy_(torch.rand(b, a, generator=generator, dtype=torch.float64) * 2 * bound - bound)
            lin.bias.copy_(torch.rand(b, generator=generator, dtype=torch.float64) * 2 * bound - bound)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    with torch.no_grad():
        layers[-1].weight.zero_()
        layers[-1].bias.zero_()
    return torch.nn.Sequential(*layers)


class ControlNet(torch.nn.Module):
    """u_θ(x, t): ``(n, d), t -> (n, d)`` (see the module docstring).

    Args:
        dim: d.
        T: the horizon (scales the time embedding).
        hidden: widths of the hidden layers of both networks.
        use_score: add NN₂(φ(t)) ⊙ clip(∇log π̃(x)); ``forward`` then needs ``grad_log_target``.
        n_freq: F, the number of Fourier frequencies of φ(t).
        clip: the score feature is clamped to [−clip, clip] coordinatewise.
        generator: seeds the initial weights.
    """

    time_conditioned = True

    def __init__(self, dim: int, T: float = 1.0, hidden: tuple[int, ...] = (64, 64), use_score: bool = True,
                 activation: str = "silu", n_freq: int = 8, clip: float = 1e4,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        if not hidden or min(hidden) < 1:
            raise ValueError(f"hidden must be a non-empty tuple of positive widths, got {hidden!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.dim, self.T, self.use_score, self.clip = dim, float(T), bool(use_score), float(clip)
        self.hidden, self.activation, self.n_freq = hidden, activation, int(n_freq)
        self.register_buffer("freqs", math.pi * torch.arange(1, n_freq + 1, dtype=dtype) / self.T)
        self.net = _mlp([dim + 2 * n_freq, *hidden, dim], activation, generator, dtype)
        self.time_net = _mlp([2 * n_freq, *hidden, dim], activation, generator, dtype) if use_score else None

    def embed(self, t: Tensor | float, n: int) -> Tensor:
        """φ(t) repeated for the n particles, ``(n, 2F)``."""
        t = torch.as_tensor(t, dtype=self.freqs.dtype, device=self.freqs.device)
        ang = t * self.freqs
        return torch.cat([torch.sin(ang), torch.cos(ang)]).expand(n, -1)

    def forward(self, x: Tensor, t: Tensor | float, grad_log_target: Tensor | None = None) -> Tensor:
        """u_θ(x, t) ``(n, d)``; ``grad_log_target`` ``(n, d)`` is ∇log π̃(x) (needed iff ``use_score``)."""
        emb = self.embed(t, x.shape[0])
        u = self.net(torch.cat([x, emb], -1))
        if self.use_score:
            if grad_log_target is None:
                raise ValueError("this ControlNet uses the target score as a feature: pass grad_log_target")
            u = u + self.time_net(emb[:1]) * grad_log_target.clamp(-self.clip, self.clip)
        return u

    def config(self) -> dict:
        """The constructor arguments (to rebuild the network)."""
        return {"dim": self.dim, "T": self.T, "hidden": list(self.hidden), "use_score": self.use_score,
                "activation": self.activation, "n_freq": self.n_freq, "clip": self.clip}
