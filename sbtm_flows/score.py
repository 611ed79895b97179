r"""The score network s_Θ: ℝᵈ → ℝᵈ and its initialisation to the initial law's score.

:class:`ScoreMLP` is a plain MLP with smooth activations (the loss contains ∇·s, and its
Θ-gradient needs second derivatives of the activation, so ReLU is a poor choice).
:func:`fit_score` trains it at t = 0: by explicit score matching mean|s − ∇log f_0|² when
the initial law has an analytic score, by implicit score matching otherwise.
:func:`flatten_params` / :func:`unflatten_params` convert between the module's parameters
and the flat vector Θ that is part of the ODE state.

A *time-conditioned* model (``model.time_conditioned = True``) is called as ``model(x, t)``;
:func:`at_time` turns any model into the map x ↦ s(x) at one time t.  The one shipped here,
:class:`ScaledScore`, is s(x, t) = ŝ_Θ(x / c(t)) / c(t): the network ŝ works in the
coordinates y = x / c(t) of a path that dilates space (c = λ for
:class:`~sbtm_flows.paths.Dilation`), where f_t stays at unit scale while in x its modes
have width ~c(t) and its score size ~1/c(t).  :class:`ResidualScore` is s(x, t) = ∇log π_t(x) + r_Θ(x),
anchored to the target's score, so that SBTM's particle velocity ∇log π_t − s = −r_Θ carries no
∇log π_t term (opt-in; README "η and stiffness" has what it does on posteriordb eight_schools).
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Sequence

import torch
from torch import Tensor

from .losses import explicit_score_matching, implicit_score_matching
from .paths import Constant, as_path

__all__ = [
    "ScoreMLP",
    "ScaledScore",
    "ResidualScore",
    "at_time",
    "functional_score",
    "ACTIVATIONS",
    "fit_score",
    "optimize",
    "make_optimizer",
    "flatten_params",
    "unflatten_params",
]

ACTIVATIONS: dict[str, Callable[[], torch.nn.Module]] = {
    "silu": torch.nn.SiLU,
    "tanh": torch.nn.Tanh,
    "softplus": torch.nn.Softplus,
    "gelu": torch.nn.GELU,
    "elu": torch.nn.ELU,
}
OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}


class ScoreMLP(torch.nn.Module):
    """MLP ``(n, d) -> (n, d)``: d → hidden[0] → … → hidden[-1] → d.

    Args:
        dim: d.
        hidden: hidden widths (default two layers of 64).
        activation: one of ``ACTIVATIONS`` (default ``"silu"``).
        generator: seeds the initialisation (uniform ±1/√fan_in, PyTorch's default law);
            drawn on the CPU so a seed gives the same Θ on every device.
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64),
        activation: str = "silu",
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
        if isinstance(hidden, (str, bytes)) or not hasattr(hidden, "__iter__") or not all(
                isinstance(h, numbers.Integral) and not isinstance(h, bool) for h in hidden):
            raise ValueError(f"hidden must be a sequence of layer widths, e.g. (64, 64) or (64,) for one layer, got {hidden!r}")
        hidden = tuple(int(h) for h in hidden)
        if any(h < 1 for h in hidden):
            raise ValueError(f"hidden widths must be positive, got {hidden}")
        self.dim, self.hidden, self.activation = dim, hidden, activation
        widths = (dim, *hidden, dim)
        layers: list[torch.nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(torch.nn.Linear(a, b, dtype=dtype))
            if i < len(widths) - 2:
                layers.append(ACTIVATIONS[activation]())
        self.net = torch.nn.Sequential(*layers)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Uniform(±1/√fan_in) weights and biases, drawn from ``generator`` on the CPU."""
        for m in self.net:
            if isinstance(m, torch.nn.Linear):
                bound = 1.0 / math.sqrt(m.in_features)
                for p in (m.weight, m.bias):
                    u = torch.rand(p.shape, generator=generator, dtype=torch.float64)
                    p.copy_(((2 * u - 1) * bound).to(p.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def config(self) -> dict:
        """Constructor arguments, enough to rebuild the architecture."""
        return {"dim": self.dim, "hidden": list(self.hidden), "activation": self.activation}


class ScaledScore(torch.nn.Module):
    r"""s(x, t) = ŝ(x / c(t)) / c(t), ``(n, d) -> (n, d)``: a network in rescaled coordinates.

    If X_t = c(t)·Y_t then ∇log f^X_t(x) = ∇log f^Y_t(x/c) / c, so a network ŝ ≈ ∇log f^Y_t
    gives the score in x.  The implicit loss transforms the same way,
    mean(|s|² + 2∇_x·s) = c⁻² mean(|ŝ|² + 2∇_y·ŝ), so training s trains ŝ on the loss of Y
    (scaled by c⁻², which Adam ignores).  On a dilation path π_t(x) ∝ π(x/λ(t)) with
    c = λ the network sees data of the scale of π at every t, instead of modes of width λ and
    scores of size 1/λ — the difference between learning the 16-mode mixture of paper §5.4
    and not learning it.

    Args:
        net: the network ŝ ``(n, d) -> (n, d)``.
        scale: c(t) > 0, a callable of t (e.g. ``path.scale``) or a constant.
    """

    time_conditioned = True

    def __init__(self, net: torch.nn.Module, scale: Callable[[float], float] | float):
        super().__init__()
        if not callable(scale) and not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a callable of t or a positive number, got {scale!r}")
        self.net = net
        self.scale = scale

    def scale_at(self, t: float | Tensor | None) -> float:
        """c(t) as a float (a constant scale ignores t)."""
        if not callable(self.scale):
            return float(self.scale)
        if t is None:
            raise ValueError("ScaledScore with a time-dependent scale needs t: call model(x, t)")
        c = float(self.scale(float(t)))
        if not (math.isfinite(c) and c > 0):
            raise ValueError(f"ScaledScore: scale(t={float(t):.6g}) = {c!r}, must be positive and finite")
        return c

    def forward(self, x: Tensor, t: float | Tensor | None = None) -> Tensor:
        c = self.scale_at(t)
        return self.net(x / c) / c

    def config(self) -> dict:
        """The network's constructor arguments (the scale is a function of the path)."""
        return {"net": self.net.config() if hasattr(self.net, "config") else None}


class ResidualScore(torch.nn.Module):
    r"""s(x, t) = ∇log π_t(x) + r_Θ(x), ``(n, d) -> (n, d)``: a network anchored to the target's score.

    The particle velocity of SBTM is then v = ∇log π_t − s = −r_Θ: it carries no ∇log π_t term,
    so the stiffness of the target's curvature (e.g. the neck of a funnel, where ∇²log π grows
    without bound) enters the particle block only through the smooth network r_Θ, and far from
    the particles −r_Θ extrapolates the mismatch ∇log π_t − ∇log f_t (≈ 0 near equilibrium)
    instead of a Gaussian cloud's score.  The implicit loss is the same function of s:
    mean(|s|² + 2∇·s) = mean(|∇log π_t + r|² + 2∇·r) + 2 mean(Δlog π_t), the last term free of
    Θ, so ∇_Θ L is that of the plain parametrisation evaluated at s; F^n = mean|∇log π_t − s|² =
    mean|r|².  ∇·s is computed by autograd through ``path.score`` (so the log-density rate
    −∇·v = ∇·r stays exact).  The flow still forms v as ∇log π_t − s, so v carries a rounding error
    of order eps·|∇log π_t| (≈ 6·10⁻⁸|∇log π_t| in float32) where the target's score is large.

    Args:
        net: the residual network r ``(n, d) -> (n, d)`` (e.g. a :class:`ScoreMLP`).
        target: the target or annealing path whose score anchors s (a Target, a Path, or any
            object :func:`~sbtm_flows.paths.as_path` accepts); not a submodule (its buffers are
            not part of the network's state).
    """

    time_conditioned = True

    def __init__(self, net: torch.nn.Module, target):
        super().__init__()
        if not isinstance(net, torch.nn.Module):
            raise ValueError(f"ResidualScore: net must be a torch.nn.Module mapping (n, d) -> (n, d), got {type(net).__name__}")
        try:
            path = as_path(target)
        except ValueError as e:
            raise ValueError(f"ResidualScore: target must be a Target or a Path with score(x[, t]): {e}") from e
        dim = getattr(net, "dim", path.dim)
        if dim != path.dim:
            raise ValueError(f"ResidualScore: the network has dimension {dim}, the target {path.dim}")
        self.net = net
        object.__setattr__(self, "anchor", path)  # a plain attribute, not a submodule

    @property
    def dim(self) -> int:
        """d."""
        return self.anchor.dim

    def _apply(self, fn, *args, **kwargs):
        """``.to(device)``/``.cuda()`` also move the anchor (not a submodule) to the network's
        device; its dtype is left as it is (the anchor's score is cast to x's dtype)."""
        out = super()._apply(fn, *args, **kwargs)
        device = fn(torch.zeros(())).device
        if isinstance(self.anchor, torch.nn.Module):
            self.anchor.to(device)
        return out

    def residual(self, x: Tensor) -> Tensor:
        """r_Θ(x) = s(x, t) − ∇log π_t(x), ``(n, d) -> (n, d)``."""
        return self.net(x)

    def forward(self, x: Tensor, t: float | Tensor | None = None) -> Tensor:
        if t is None:
            if not isinstance(self.anchor, Constant):
                raise ValueError("ResidualScore on an annealing path needs t: call model(x, t)")
            t = 0.0
        return self.anchor.score(x, t).to(x.dtype) + self.net(x)

    def config(self) -> dict:
        """The network's constructor arguments (the anchor is the run's target)."""
        return {"net": self.net.config() if hasattr(self.net, "config") else None, "residual": True}


def functional_score(model: torch.nn.Module, params: dict[str, Tensor], x: Tensor, t: float | Tensor | None = None) -> Tensor:
    """s(x) ``(n, d)`` with the parameters ``params`` (``torch.func.functional_call``), at time t
    for a time-conditioned model."""
    args = (x, t) if getattr(model, "time_conditioned", False) else (x,)
    return torch.func.functional_call(model, params, args)


def at_time(model: Callable, t: float | Tensor | None) -> Callable[[Tensor], Tensor]:
    """x ↦ s(x) at time t: ``model`` itself, or ``x ↦ model(x, t)`` when the model is
    time-conditioned (``model.time_conditioned``)."""
    if getattr(model, "time_conditioned", False):
        return lambda x: model(x, t)
    return model


def flatten_params(model: torch.nn.Module) -> Tensor:
    """All parameters of ``model`` as one flat vector Θ ``(P,)`` (detached copy)."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def unflatten_params(model: torch.nn.Module, theta: Tensor) -> dict[str, Tensor]:
    """Split a flat Θ ``(P,)`` into ``{name: tensor}`` shaped like ``model``'s parameters
    (views of ``theta``, for ``torch.func.functional_call``)."""
    out, i = {}, 0
    for name, p in model.named_parameters():
        k = p.numel()
        out[name] = theta[i : i + k].view(p.shape)
        i += k
    if i != theta.numel():
        raise ValueError(f"theta has {theta.numel()} entries, the model has {i} parameters")
    return out


def make_optimizer(model: torch.nn.Module, optimizer: str = "adam", lr: float = 1e-3) -> torch.optim.Optimizer:
    """An optimizer by name (``adam``, ``adamw``, ``sgd``) over ``model``'s parameters."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    return OPTIMIZERS[optimizer](model.parameters(), lr=lr)


def optimize(loss_fn: Callable[[], Tensor], opt: torch.optim.Optimizer, steps: int) -> Tensor:
    """``steps`` optimizer steps on ``loss_fn()``; returns the last loss (detached)."""
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
    return loss.detach()


def fit_score(
    model: torch.nn.Module,
    x: Tensor,
    score: Tensor | None = None,
    *,
    steps: int = 2000,
    lr: float = 1e-3,
    tol: float = 1e-2,
    divergence: str = "exact",
    probes: Tensor | None = None,
    check_every: int = 50,
    t: float | None = None,
) -> dict:
    r"""Fit ``model`` to the score of the law of the particles ``x (n, d)`` (at time ``t``
    for a time-conditioned model).

    With ``score`` (``(n, d)``, the analytic ∇log f_0 at x) it minimises
    mean|s − ∇log f_0|² with Adam and stops once the relative error
    √(mean|s − ∇log f_0|² / mean|∇log f_0|²) < ``tol``; otherwise it minimises the implicit
    loss mean(|s|² + 2∇·s) for ``steps`` steps.

    Returns:
        ``{"relative_error": float or None, "loss": float, "steps": int, "explicit": bool}``.
    """
    opt = make_optimizer(model, "adam", lr)
    x = x.detach()
    model = at_time(model, t)  # (the optimizer already holds the parameters)
    if score is not None:
        score = score.detach()
        norm2 = (score * score).sum(-1).mean().clamp_min(1e-30)
        done, rel = 0, float("inf")
        while done < steps:
            k = min(check_every, steps - done)
            optimize(lambda: explicit_score_matching(model, x, score), opt, k)
            done += k
            with torch.no_grad():
                rel = math.sqrt(float(explicit_score_matching(model, x, score) / norm2))
            if rel < tol:
                break
        with torch.no_grad():
            loss = float(implicit_score_matching(model, x, divergence, probes)[0])
        return {"relative_error": rel, "loss": loss, "steps": done, "explicit": True}
    loss = optimize(lambda: implicit_score_matching(model, x, divergence, probes)[0], opt, steps)
    return {"relative_error": None, "loss": float(loss), "steps": steps, "explicit": False}
