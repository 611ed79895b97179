r"""Reference (uncontrolled) processes of the learned-diffusion samplers, and the exact optimal
control for a Gaussian target.

A reference is a linear SDE on [0, T] in d dimensions,

    dX = −β(t) X dt + σ(t) dW,      X₀ ~ N(0, s₀² I)   (s₀ = 0: a Dirac at 0),

whose law P_ref is known in closed form: X_T | X_t = x ~ N(a(t) x, c(t) I) and the terminal
marginal p_T = N(0, v_T I).  The learned sampler adds a control, dX = (−βX + σu) dt + σ dW,
and the target path measure is Q* = P_ref · π(X_T) / p_T(X_T) (the reference bridged to the
target), so the log importance weight of a controlled path is (Girsanov, see
:mod:`sbtm_flows.learned.controlled`)

    log w = log π̃(X_T) − log p_T(X_T) − ∫ u·dW − ½ ∫ |u|² dt,       E[w] = Z.

Discrete time: for the Euler–Maruyama chains on the K-step grid, the log-ratio of the controlled
to the reference chain's Gaussian transition densities is exactly Σ_k (u_k·ΔW_k + ½|u_k|² h),
so with p_T replaced by the terminal law of the *discrete* reference chain (a Gaussian,
:meth:`discrete_terminal_var`) the weights are exact for the chain: E[w] = Z with no
discretisation bias (the time step only costs variance).  For the Brownian reference the two
laws coincide; for the OU reference v_K = ν²(1 + O(βh)).

* :class:`BrownianReference` (PIS, Zhang & Chen 2022): β = 0, σ constant, X₀ = 0 or Gaussian:
  a(t) = 1, c(t) = σ²(T − t), v_T = s₀² + σ²T.
* :class:`OUReference` (DIS, Berner, Richter & Ullrich 2023): the VP/Ornstein–Uhlenbeck noising
  process dY = −β_n(s) Y ds + ν√(2β_n(s)) dB is stationary and reversible for N(0, ν² I), so its
  time reversal started at N(0, ν² I) is the same OU process run forward in t = T − s:
  β(t) = β_n(T − t), σ(t) = ν √(2 β(t)), X₀ ~ N(0, ν² I), marginal N(0, ν² I) at every t.
  Q* = P_ref · π/p_T is then exactly the time reversal of the noising process started at π,
  i.e. DIS's target path measure; the control is σu = σ²(∇log p^{noise}_{T−t} + x/ν²), the
  learned score shifted by the reference's.  a(t) = e^{−∫_t^T β}, c(t) = ν²(1 − a²), v_T = ν².
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["BrownianReference", "OUReference", "GaussianOptimalControl"]


def _check_pos(name: str, v, allow_zero: bool = False) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
    if not ok:
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} finite number, got {v!r}")
    return float(v)


def _gauss_logpdf(x: Tensor, var: float) -> Tensor:
    """log N(x; 0, var·I) per row, ``(n, d) -> (n,)``."""
    d = x.shape[-1]
    return -0.5 * (x * x).sum(-1) / var - 0.5 * d * math.log(2 * math.pi * var)


class BrownianReference:
    r"""PIS reference: dX = σ dW on [0, T], X₀ ~ N(0, s₀² I) (``init_std`` s₀ = 0: X₀ = 0).

    Args:
        sigma: the constant diffusion σ > 0.
        T: the horizon.
        init_std: s₀ ≥ 0.
    """

    name = "brownian"

    def __init__(self, sigma: float = 1.0, T: float = 1.0, init_std: float = 0.0):
        self.sigma_value = _check_pos("sigma", sigma)
        self.T = _check_pos("T (t_final)", T)
        self.init_std = _check_pos("init_std", init_std, allow_zero=True)

    def drift(self, x: Tensor, t: Tensor | float) -> Tensor:
        """μ(x, t) = 0, ``(n, d) -> (n, d)``."""
        return torch.zeros_like(x)

    def sigma(self, t: Tensor | float) -> float:
        """σ(t) = σ."""
        return self.sigma_value

    def sample_initial(self, n: int, d: int, generator: torch.Generator, dtype=torch.float32, device=None) -> Tensor:
        """X₀ ``(n, d)``: zeros, or N(0, s₀² I) drawn on the CPU from ``generator``."""
        if self.init_std == 0.0:
            return torch.zeros(n, d, dtype=dtype, device=device)
        z = torch.randn(n, d, generator=generator, dtype=torch.float64)
        return (self.init_std * z).to(dtype=dtype, device=device)

    def transition(self, t: float) -> tuple[float, float]:
        """``(a, c)`` with X_T | X_t = x ~ N(a x, c I): ``(1, σ²(T − t))``."""
        return 1.0, self.sigma_value**2 * (self.T - float(t))

    @property
    def terminal_var(self) -> float:
        """v_T = s₀² + σ² T."""
        return self.init_std**2 + self.sigma_value**2 * self.T

    def discrete_terminal_var(self, steps: int) -> float:
        """The terminal variance of the Euler–Maruyama chain with K = ``steps``: v_T (EM is exact)."""
        return self.terminal_var

    def terminal_log_prob(self, x: Tensor, steps: int | None = None) -> Tensor:
        """log p_T(x) = log N(x; 0, v_T I), ``(n, d) -> (n,)``."""
        return _gauss_logpdf(x, self.terminal_var)

    def config(self) -> dict:
        """The constructor arguments."""
        return {"reference": self.name, "sigma": self.sigma_value, "T": self.T, "init_std": self.init_std}


class OUReference:
    r"""DIS reference: the stationary OU process dX = −β(t) X dt + ν√(2β(t)) dW, X₀ ~ N(0, ν² I).

    β(t) = β_n(T − t) with the linear noising schedule β_n(s) = β_min + (β_max − β_min) s / T
    (large β at t = 0, where the sampler starts from noise; small near t = T, the target).

    Args:
        beta_min, beta_max: the schedule's end points (0 < β_min ≤ β_max).
        scale: ν, the standard deviation of the stationary (prior) Gaussian.
        T: the horizon.
    """

    name = "ou"

    def __init__(self, beta_min: float = 0.05, beta_max: float = 5.0, scale: float = 1.0, T: float = 1.0):
        self.beta_min = _check_pos("beta_min", beta_min)
        self.beta_max = _check_pos("beta_max", beta_max)
        if self.beta_max < self.beta_min:
            raise ValueError(f"beta_max must be >= beta_min, got beta_min={beta_min}, beta_max={beta_max}")
        self.scale = _check_pos("scale", scale)
        self.T = _check_pos("T (t_final)", T)
        self.init_std = self.scale

    def beta(self, t: Tensor | float) -> Tensor | float:
        """β(t) = β_max + (β_min − β_max) t / T."""
        return self.beta_max + (self.beta_min - self.beta_max) * t / self.T

    def integrated_beta(self, t: float) -> float:
        """∫_t^T β(r) dr."""
        t = float(t)
        return (self.T - t) * (self.beta_min + 0.5 * (self.beta_max - self.beta_min) * (self.T - t) / self.T)

    def drift(self, x: Tensor, t: Tensor | float) -> Tensor:
        """μ(x, t) = −β(t) x, ``(n, d) -> (n, d)``."""
        return -self.beta(t) * x

    def sigma(self, t: Tensor | float) -> Tensor | float:
        """σ(t) = ν √(2β(t))."""
        b = self.beta(t)
        return self.scale * (torch.sqrt(2 * b) if isinstance(b, Tensor) else math.sqrt(2 * b))

    def sample_initial(self, n: int, d: int, generator: torch.Generator, dtype=torch.float32, device=None) -> Tensor:
        """X₀ ~ N(0, ν² I) ``(n, d)``, drawn on the CPU from ``generator``."""
        z = torch.randn(n, d, generator=generator, dtype=torch.float64)
        return (self.scale * z).to(dtype=dtype, device=device)

    def transition(self, t: float) -> tuple[float, float]:
        """``(a, c)`` with X_T | X_t = x ~ N(a x, c I): a = e^{−∫_t^T β}, c = ν²(1 − a²)."""
        a = math.exp(-self.integrated_beta(t))
        return a, self.scale**2 * (1.0 - a * a)

    @property
    def terminal_var(self) -> float:
        """v_T = ν² (the reference is stationary)."""
        return self.scale**2

    def discrete_terminal_var(self, steps: int) -> float:
        """The terminal variance of the reference's Euler–Maruyama chain with K = ``steps``:
        v_{k+1} = (1 − β_k h)² v_k + σ_k² h from v₀ = ν² (β_k = β(kh)); ν²(1 + O(h)), not ν²."""
        h, v = self.T / steps, self.scale**2
        for k in range(steps):
            b = self.beta(k * h)
            v = (1 - b * h) ** 2 * v + 2 * b * self.scale**2 * h
        return v

    def terminal_log_prob(self, x: Tensor, steps: int | None = None) -> Tensor:
        """log p_T(x) = log N(x; 0, ν² I), ``(n, d) -> (n,)``; with ``steps``, the terminal law of
        the Euler–Maruyama chain (:meth:`discrete_terminal_var`)."""
        return _gauss_logpdf(x, self.terminal_var if steps is None else self.discrete_terminal_var(steps))

    def config(self) -> dict:
        """The constructor arguments."""
        return {"reference": self.name, "beta_min": self.beta_min, "beta_max": self.beta_max, "scale": self.scale, "T": self.T}


class GaussianOptimalControl(torch.nn.Module):
    r"""The exact optimal control u*(x, t) = σ(t) ∇log h_t(x) for the target N(m, s² I) and a
    Gaussian reference, with h_t(x) = E_ref[π(X_T)/p_T(X_T) | X_t = x] (π normalised).

    π/p_T = K·N(y; m', λ⁻¹ I) with λ = 1/s² − 1/v_T > 0, m' = m/(s²λ), so
    h_t(x) = K·N(a x; m', (c + λ⁻¹) I) and ∇log h_t(x) = −a (a x − m') / (c + λ⁻¹).
    Under this control the path law is Q* conditioned on X₀, so along every path
    log w = log Z + log h₀(X₀) (a constant for a Dirac start), up to the time discretisation.

    Args:
        reference: a :class:`BrownianReference` or :class:`OUReference`.
        mean: ``(d,)`` target mean m; std: target standard deviation s (isotropic).

    Raises:
        ValueError: s² ≥ v_T (then E_ref[π/p_T] is infinite: the target is wider than p_T).
    """

    time_conditioned = True

    def __init__(self, reference, mean: Tensor, std: float):
        super().__init__()
        self.reference = reference
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float64).flatten())
        self.var = float(std) ** 2
        vt = reference.terminal_var
        self.lam = 1.0 / self.var - 1.0 / vt
        if not self.lam > 0:
            raise ValueError(f"target variance {self.var:g} must be below the reference's terminal variance {vt:g}")
        self.register_buffer("shift", self.mean / (self.var * self.lam))
        # log K = log N(y; m, s²) − log N(y; 0, v_T) − log N(y; m', 1/λ) at y = m'
        y = self.shift[None]
        self.log_K = float(_gauss_logpdf(y - self.mean, self.var) - _gauss_logpdf(y, vt) - _gauss_logpdf(y - self.shift, 1 / self.lam))

    def log_h(self, x: Tensor, t: float) -> Tensor:
        """log h_t(x), ``(n, d) -> (n,)``."""
        a, c = self.reference.transition(t)
        return self.log_K + _gauss_logpdf(a * x - self.shift.to(x), c + 1.0 / self.lam)

    def forward(self, x: Tensor, t: Tensor | float, grad_log_target: Tensor | None = None) -> Tensor:
        """u*(x, t) = σ(t) ∇log h_t(x), ``(n, d) -> (n, d)``."""
        a, c = self.reference.transition(float(t))
        return self.reference.sigma(t) * (-a * (a * x - self.shift.to(x)) / (c + 1.0 / self.lam))
