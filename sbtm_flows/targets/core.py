r"""Target densities π: the base class, Gaussians and Gaussian mixtures, function wrappers.

A target knows an (unnormalised) density in ``dim`` dimensions:

* ``log_prob(x: (n, d)) -> (n,)``  — log π(x) up to an additive constant;
* ``score(x: (n, d)) -> (n, d)``   — ∇log π(x);
* optional ``laplacian(x) -> (n,)`` — Δlog π(x) = ∇·∇log π(x);
* optional ``sample(n, generator) -> (n, d)`` exact draws, and ``log_Z`` (the log of the
  normalising constant of ``exp(log_prob)``; 0 for the normalised Gaussian/mixture here).

:class:`Target` supplies autograd defaults for ``score`` and ``laplacian`` so that a
subclass only has to write ``log_prob``.  ``from_log_prob`` and ``from_score`` wrap plain
functions.  Targets are ``torch.nn.Module`` s so that ``.to(device, dtype)`` moves their
parameters (means, covariances, data) with them.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

__all__ = [
    "Target",
    "Gaussian",
    "GaussianMixture",
    "from_log_prob",
    "from_score",
    "check_particles",
    "autograd_score",
    "autograd_laplacian",
]


def check_particles(x: Tensor, dim: int, name: str = "x") -> Tensor:
    """Validate a particle array: a floating tensor of shape ``(n, dim)``.

    Raises:
        ValueError: naming the expected and actual shape, or the dtype.
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (n, {dim}), got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{name} must have shape (n, {dim}) (n particles in dimension {dim}), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def autograd_score(log_prob: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """∇log π(x) by one batched reverse-mode pass over ``log_prob(x).sum()``.

    Valid because particle i's log-density depends on row i only, so the gradient of the
    sum is the stack of the per-particle gradients. Shapes ``(n, d) -> (n, d)``.  When
    ``x.requires_grad`` the result is differentiable in x (for Laplacians).
    """
    with torch.enable_grad():
        xr = x if x.requires_grad else x.detach().requires_grad_(True)
        lp = log_prob(xr)
        if not isinstance(lp, Tensor):
            raise ValueError(f"log_prob must return a torch tensor of shape ({x.shape[0]},) (one value per particle), got "
                             f"{type(lp).__name__}{'' if not hasattr(lp, 'shape') else ' of shape ' + str(tuple(lp.shape))}")
        if lp.shape != x.shape[:1]:
            raise ValueError(f"log_prob must return shape ({x.shape[0]},), got {tuple(lp.shape)}")
        if not lp.requires_grad:
            raise ValueError("log_prob must be differentiable in x by torch autograd (it returned a tensor that does not "
                             "depend on x through torch operations: no .detach(), numpy or float() inside); or give the score")
        (g,) = torch.autograd.grad(lp.sum(), xr, create_graph=x.requires_grad)
    return g


def autograd_laplacian(
    score: Callable[[Tensor], Tensor],
    x: Tensor,
    probes: Tensor | None = None,
) -> Tensor:
    r"""Δlog π(x) = tr ∂(∇log π)/∂x per particle, by batched reverse-mode autograd.

    Exact (``probes=None``): the d rows of the Jacobian come from one vectorised
    ``autograd.grad(..., is_grads_batched=True)`` call.  Hutchinson (``probes`` of shape
    ``(m, n, d)``): mean over probes of vᵀ(∂s/∂x)v.  Returns ``(n,)``.
    """
    n, d = x.shape
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        g = score(xr)
        if probes is None:
            eye = torch.eye(d, dtype=x.dtype, device=x.device)
            cot = eye[:, None, :].expand(d, n, d)
            (rows,) = torch.autograd.grad(g, xr, grad_outputs=cot, is_grads_batched=True)
            return torch.diagonal(rows, dim1=0, dim2=2).sum(-1)  # rows[k, i, k]
        (jtv,) = torch.autograd.grad(g, xr, grad_outputs=probes, is_grads_batched=True)
        return (jtv * probes).sum(-1).mean(0)


class Target(torch.nn.Module):
    """Base class for targets.  Subclasses implement ``log_prob`` (and may override
    ``score``/``laplacian`` with analytic forms)."""

    dim: int
    log_Z: float | None = None
    #: Whether SBTM's default network is anchored to this target's score
    #: (:class:`~sbtm_flows.score.ResidualScore`, s = ∇log π + r_Θ, particle velocity −r_Θ).
    #: A target sets it when its curvature varies over orders of magnitude — a funnel's neck,
    #: where a plain network's velocity ∇log π − s_Θ is stiff and pushes lone tail particles
    #: outward (README "η and stiffness", eight_schools).  A user's ``score_model`` overrides it.
    anchored_score: bool = False

    def log_prob(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        """log π(x) up to a constant, ``(n, d) -> (n,)``."""
        raise NotImplementedError(f"{type(self).__name__} has no log_prob")

    def score(self, x: Tensor) -> Tensor:
        """∇log π(x), ``(n, d) -> (n, d)``; default: autograd of ``log_prob``."""
        return autograd_score(self.log_prob, x)

    def laplacian(self, x: Tensor, probes: Tensor | None = None) -> Tensor:
        """Δlog π(x), ``(n, d) -> (n,)``; default: autograd of ``score`` (exact, or
        Hutchinson when ``probes (m, n, d)`` are given)."""
        return autograd_laplacian(self.score, x, probes)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:  # pragma: no cover
        """Exact draws ``(n, d)``, where the target supports it."""
        raise NotImplementedError(f"{type(self).__name__} cannot be sampled exactly")

    @property
    def has_sample(self) -> bool:
        """Whether ``sample`` is implemented."""
        return type(self).sample is not Target.sample

    @property
    def has_log_prob(self) -> bool:
        """Whether ``log_prob`` is implemented."""
        return type(self).log_prob is not Target.log_prob

    def forward(self, x: Tensor) -> Tensor:
        return self.score(x)


def _as_tensor(v, dtype=None) -> Tensor:
    t = torch.as_tensor(v)
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    return t if dtype is None else t.to(dtype)


class GaussianMixture(Target):
    r"""π(x) = Σ_k w_k N(x; m_k, C_k), normalised (``log_Z = 0``).

    Args:
        means: ``(k, d)`` component means.
        covs: ``(k, d, d)`` covariances, or ``(d, d)`` shared, or a scalar / ``(k,)`` of
            standard deviations (isotropic components).
        weights: ``(k,)`` non-negative weights (normalised here); uniform by default.

    The score is Σ_k r_k(x) g_k(x) with responsibilities r_k and g_k = −C_k⁻¹(x − m_k);
    the Laplacian is Σ_k r_k(−tr C_k⁻¹) + Σ_k r_k|g_k|² − |Σ_k r_k g_k|².
    """

    def __init__(self, means, covs=1.0, weights=None):
        super().__init__()
        means = _as_tensor(means)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (k, d), got {tuple(means.shape)}")
        k, d = means.shape
        covs = _as_tensor(covs, means.dtype)
        eye = torch.eye(d, dtype=means.dtype)
        if covs.ndim == 0:
            covs = (covs**2) * eye.expand(k, d, d)
        elif covs.ndim == 1:
            if covs.shape[0] != k:
                raise ValueError(f"stds must have shape ({k},), got {tuple(covs.shape)}")
            covs = (covs**2)[:, None, None] * eye
        elif covs.ndim == 2:
            covs = covs.expand(k, d, d)
        if covs.shape != (k, d, d):
            raise ValueError(f"covs must have shape ({k}, {d}, {d}), got {tuple(covs.shape)}")
        if weights is None:
            weights = torch.full((k,), 1.0 / k, dtype=means.dtype)
        weights = _as_tensor(weights, means.dtype)
        if weights.shape != (k,) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"weights must be {k} non-negative numbers with a positive sum, got {weights}")
        if not (torch.isfinite(means).all() and torch.isfinite(covs).all()):
            raise ValueError("means and covs must be finite")
        chol, info = torch.linalg.cholesky_ex(covs.contiguous())
        if (info != 0).any():
            raise ValueError("every covariance must be symmetric positive definite")
        self.dim = d
        self.log_Z = 0.0
        self.register_buffer("means", means.clone())
        self.register_buffer("covs", covs.clone())
        self.register_buffer("weights", weights / weights.sum())
        self.register_buffer("chol", chol)
        self.register_buffer("precisions", torch.cholesky_inverse(chol))
        self.register_buffer("log_norm", -0.5 * d * math.log(2 * math.pi) - torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1))
        # isotropic components (C_k = σ_k² I): the score needs no (k, d, d) matrix products
        var = covs[:, 0, 0]
        isotropic = bool(torch.equal(covs, var[:, None, None] * eye))
        self.register_buffer("iso_precision", 1.0 / var if isotropic else None)

    @property
    def n_components(self) -> int:
        """Number of components k."""
        return self.means.shape[0]

    def _parts(self, x: Tensor):
        diff = x[:, None, :] - self.means  # (n, k, d)
        if self.iso_precision is not None:
            g = -diff * self.iso_precision[:, None]
        else:
            g = -torch.einsum("kij,nkj->nki", self.precisions, diff)  # (n, k, d)
        quad = -(diff * g).sum(-1)  # (n, k)
        logc = torch.log(self.weights) + self.log_norm - 0.5 * quad
        return g, logc

    def log_prob(self, x: Tensor) -> Tensor:
        """Normalised log π(x), ``(n, d) -> (n,)``."""
        _, logc = self._parts(x)
        return torch.logsumexp(logc, dim=1)

    def responsibilities(self, x: Tensor) -> Tensor:
        """Posterior component probabilities r_k(x), ``(n, d) -> (n, k)``."""
        _, logc = self._parts(x)
        return torch.softmax(logc, dim=1)

    def score(self, x: Tensor) -> Tensor:
        """Analytic ∇log π(x) = Σ_k r_k(x) g_k(x), ``(n, d) -> (n, d)``."""
        g, logc = self._parts(x)
        r = torch.softmax(logc, dim=1)
        return (r[..., None] * g).sum(1)

    def laplacian(self, x: Tensor, probes: Tensor | None = None) -> Tensor:
        """Analytic Δlog π(x), ``(n, d) -> (n,)`` (``probes`` ignored: it is exact)."""
        g, logc = self._parts(x)
        r = torch.softmax(logc, dim=1)
        tr = torch.diagonal(self.precisions, dim1=-2, dim2=-1).sum(-1)  # (k,)
        mean_g = (r[..., None] * g).sum(1)
        return -(r * tr).sum(1) + (r * (g * g).sum(-1)).sum(1) - (mean_g * mean_g).sum(-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Exact draws ``(n, d)``: component index from the weights, then m_k + L_k z.

        Randomness is drawn on the CPU from ``generator`` so that a seed gives the same
        draws on every device."""
        w = self.weights.detach().cpu().to(torch.float64)
        idx = torch.multinomial(w, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        z = z.to(device=self.means.device, dtype=self.means.dtype)
        idx = idx.to(self.means.device)
        return self.means[idx] + torch.einsum("nij,nj->ni", self.chol[idx], z)

    def extra_repr(self) -> str:
        return f"k={self.n_components}, dim={self.dim}"


class Gaussian(GaussianMixture):
    """π = N(mean, cov), normalised.  ``mean (d,)``, ``cov (d, d)`` or a scalar variance."""

    def __init__(self, mean, cov=1.0):
        mean = _as_tensor(mean)
        if mean.ndim != 1:
            raise ValueError(f"mean must have shape (d,), got {tuple(mean.shape)}")
        d = mean.shape[0]
        cov = _as_tensor(cov, mean.dtype)
        if cov.ndim == 0:
            cov = cov * torch.eye(d, dtype=mean.dtype)
        if cov.shape != (d, d):
            raise ValueError(f"cov must have shape ({d}, {d}) or be a scalar variance, got {tuple(cov.shape)}")
        super().__init__(mean[None], cov[None], torch.ones(1, dtype=mean.dtype))

    @property
    def mean(self) -> Tensor:
        """The mean ``(d,)``."""
        return self.means[0]

    @property
    def cov(self) -> Tensor:
        """The covariance ``(d, d)``."""
        return self.covs[0]

    def score(self, x: Tensor) -> Tensor:
        """−C⁻¹(x − m), ``(n, d) -> (n, d)``."""
        return -(x - self.mean) @ self.precisions[0]

    def laplacian(self, x: Tensor, probes: Tensor | None = None) -> Tensor:
        """−tr C⁻¹ at every particle, ``(n,)``."""
        return (-torch.diagonal(self.precisions[0]).sum()).expand(x.shape[0]).to(x.dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class _FunctionTarget(Target):
    def __init__(self, dim: int, log_prob=None, score=None, log_Z=None, name=None):
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.dim = dim
        self._log_prob_fn = log_prob
        self._score_fn = score
        self.log_Z = log_Z
        self.name = name or (getattr(log_prob or score, "__name__", "fn"))

    @property
    def has_log_prob(self) -> bool:
        return self._log_prob_fn is not None

    def log_prob(self, x: Tensor) -> Tensor:
        if self._log_prob_fn is None:
            raise NotImplementedError("this target was built with from_score and has no log_prob")
        return self._log_prob_fn(x)

    def score(self, x: Tensor) -> Tensor:
        if self._score_fn is not None:
            return self._score_fn(x)
        return autograd_score(self._log_prob_fn, x)

    def extra_repr(self) -> str:
        return f"{self.name}, dim={self.dim}"


def from_log_prob(fn: Callable[[Tensor], Tensor], dim: int, log_Z: float | None = None,
                  score: Callable[[Tensor], Tensor] | None = None) -> Target:
    """A target from a batched log-density ``fn: (n, d) -> (n,)``.

    The score is ``score`` ``(n, d) -> (n, d)`` when given (an analytic ∇log π), else one
    batched autograd pass of ``fn`` (no loop over particles); the Laplacian is autograd of the
    score (exact, vectorised over dimensions, or Hutchinson)."""
    if not callable(fn):
        raise ValueError("from_log_prob needs a callable (n, d) -> (n,)")
    if score is not None and not callable(score):
        raise ValueError("from_log_prob's score must be a callable (n, d) -> (n, d)")
    return _FunctionTarget(dim, log_prob=fn, score=score, log_Z=log_Z)


def from_score(fn: Callable[[Tensor], Tensor], dim: int) -> Target:
    """A target known only through its score ``fn: (n, d) -> (n, d)``.

    Such a target has no ``log_prob``: density-based diagnostics (log Z, KL) are
    unavailable, everything else works."""
    if not callable(fn):
        raise ValueError("from_score needs a callable (n, d) -> (n, d)")
    return _FunctionTarget(dim, score=fn)
