r"""The standard hard targets of the sampling literature (issue 14).

=========  ====  ==========================================================================  =======  =========
name       d     law                                                                         log Z    exact draws
=========  ====  ==========================================================================  =======  =========
funnel     10    Neal's funnel: x₀ ~ N(0, 3²), x₁..₉ | x₀ ~ N(0, e^{x₀})                      0        yes
manywell   32    16 independent 2-D double wells, log π̃ = −Σ (x₁⁴ − 6x₁² − ½x₁ + ½x₂²)       quadrature  inverse CDF
gmm40-2d   2     40 equal-weight N(mₖ, I), mₖ ~ U[−40, 40]ᵈ (seed 0)                          0        yes
gmm40-50d  50    the same in d = 50                                                          0        yes
25gmm      2     25 equal-weight N(mₖ, 0.3·I), mₖ ∈ {−10, −5, 0, 5, 10}²                      0        yes
mos-50d    50    10 equal-weight products of Student-t (ν = 2, scale 1), μₖ ~ U[−10, 10]ᵈ       0        yes
dw4        8     4 particles in 2-D, pair potential 0.9(r − 4)⁴ − 4(r − 4)², centroid ~ N(0, ¼I)  unknown  no (MALA)
=========  ====  ==========================================================================  =======  =========

Conventions (the ones of the learned-diffusion papers where they agree; stated where we chose):

* 25GMM uses the grid spacing 5 and component variance 0.3 of the DGFS / learned-diffusion
  benchmark code (sd √0.3 ≈ 0.548, so the modes are 9σ apart).
* GMM40 components have unit variance (the issue's specification; FAB's original uses
  softplus(1) ≈ 1.31 as the scale).  Means are ``(2U − 1)·40`` with U ~ U[0, 1)^{40×d} drawn from
  ``torch.Generator().manual_seed(seed)`` in float64, so they do not depend on the dtype.
* The Student-t mixture has product components ∏ⱼ t_ν((xⱼ − μₖⱼ)/s)/s (as in Blessing et al.'s
  benchmark), ν = 2: every component has infinite variance, so moment errors are not meaningful
  there (use W₂/Sinkhorn/MMD and the mode statistics).
* DW-4: E(x) = Σ_{i<j} a(rᵢⱼ − d₀)⁴ + b(rᵢⱼ − d₀)² + c with a = 0.9, b = −4, c = 0, d₀ = 4,
  τ = 1 (bgflow's ``MultiDoubleWellPotential`` constants, i.e. Köhler et al.'s a=0, b=−4,
  c=0.9 in their ordering), log π̃ = −E/τ − |x̄|²/(2σ²) with x̄ the centroid of the particles and
  σ = ½.  E is translation invariant, so without the centroid factor π̃ is not integrable on R⁸;
  σ = ½ is the law of the mean of 4 independent N(0, I₂) points.  The internal configuration
  is untouched by that factor (x̄ is orthogonal to it).  No exact sampler: the reference is a
  long MALA run.

Exact samplers draw on the CPU in float64 from the given generator and return draws on the
target's device/dtype, so a seed gives the same draws everywhere.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .core import GaussianMixture, Target, check_particles

__all__ = [
    "Funnel",
    "ManyWell",
    "StudentTMixture",
    "ParticleDoubleWell",
    "gmm40",
    "gmm25",
    "student_t_mixture",
    "dw4",
    "student_t_draws",
    "BENCHMARK_TARGETS",
]

_LOG_2PI = math.log(2 * math.pi)


def _check_dim(dim: int, name: str, minimum: int = 1) -> int:
    if not (isinstance(dim, int) and dim >= minimum):
        raise ValueError(f"{name} must be an int >= {minimum}, got {dim!r}")
    return dim


def _placed(draws: Tensor, like: Tensor) -> Tensor:
    """CPU float64 draws moved to the device and dtype of a target's buffer ``like``."""
    return draws.to(device=like.device, dtype=like.dtype)


# ----------------------------------------------------------------------------------------
# Neal's funnel
# ----------------------------------------------------------------------------------------
class Funnel(Target):
    r"""Neal's funnel in ``dim`` dimensions: x₀ ~ N(0, σ²), xᵢ | x₀ ~ N(0, e^{x₀}) (i ≥ 1), σ = ``scale``.

    log π(x) = −x₀²/(2σ²) − log σ − ½log 2π + Σᵢ [−½xᵢ² e^{−x₀} − ½x₀ − ½log 2π], normalised
    (``log_Z = 0``).  Score: ∂₀ = −x₀/σ² + ½e^{−x₀}Σᵢxᵢ² − (d − 1)/2, ∂ᵢ = −xᵢ e^{−x₀}.
    Var xᵢ = E e^{x₀} = e^{σ²/2} ≈ 90 for σ = 3, with very heavy tails (E xᵢ⁴ = 3e^{2σ²}).
    """

    def __init__(self, dim: int = 10, scale: float = 3.0):
        super().__init__()
        self.dim = _check_dim(dim, "dim", 2)
        if not (isinstance(scale, (int, float)) and scale > 0):
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        self.log_Z = 0.0
        self.register_buffer("scale", torch.tensor(float(scale)))

    def log_prob(self, x: Tensor) -> Tensor:
        """Normalised log π(x), ``(n, d) -> (n,)``."""
        check_particles(x, self.dim)
        v, z = x[:, 0], x[:, 1:]
        s = self.scale.to(x)
        lp_v = -0.5 * (v / s) ** 2 - torch.log(s) - 0.5 * _LOG_2PI
        m = self.dim - 1
        lp_z = -0.5 * (z * z).sum(1) * torch.exp(-v) - 0.5 * m * v - 0.5 * m * _LOG_2PI
        return lp_v + lp_z

    def score(self, x: Tensor) -> Tensor:
        """Analytic ∇log π(x), ``(n, d) -> (n, d)``."""
        check_particles(x, self.dim)
        v, z = x[:, :1], x[:, 1:]
        e = torch.exp(-v)
        s0 = -v / self.scale.to(x) ** 2 + 0.5 * e * (z * z).sum(1, keepdim=True) - 0.5 * (self.dim - 1)
        return torch.cat([s0, -z * e], dim=1)

    def laplacian(self, x: Tensor, probes: Tensor | None = None) -> Tensor:
        """Analytic Δlog π(x) = −1/σ² − ½e^{−x₀}Σᵢxᵢ² − (d − 1)e^{−x₀}, ``(n, d) -> (n,)`` (``probes`` ignored)."""
        check_particles(x, self.dim)
        e = torch.exp(-x[:, 0])
        return -1 / self.scale.to(x) ** 2 - 0.5 * e * (x[:, 1:] ** 2).sum(1) - (self.dim - 1) * e

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Exact draws ``(n, d)``: x₀ = σε₀, xᵢ = e^{x₀/2}εᵢ with ε ~ N(0, I)."""
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        v = float(self.scale) * eps[:, :1]
        return _placed(torch.cat([v, eps[:, 1:] * torch.exp(0.5 * v)], dim=1), self.scale)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, scale={float(self.scale):g}"


# ----------------------------------------------------------------------------------------
# ManyWell
# ----------------------------------------------------------------------------------------
def _well_log_density(a: Tensor) -> Tensor:
    """Unnormalised log-density of the first coordinate of one double well: −(a⁴ − 6a² − ½a)."""
    return -(a**4 - 6 * a**2 - 0.5 * a)


class ManyWell(Target):
    r"""``dim/2`` independent copies of the 2-D double well; coordinates (x₁, x₂) of copy j are
    ``x[:, 2j], x[:, 2j + 1]``.

    log π̃(x) = −Σⱼ (x₁ⱼ⁴ − 6x₁ⱼ² − ½x₁ⱼ + ½x₂ⱼ²) (unnormalised), so
    log Z = (d/2)·(log Z₁ + ½log 2π) with Z₁ = ∫ exp(−a⁴ + 6a² + ½a) da, computed by the
    trapezoidal rule on ``grid_size`` points of [−L, L] (L = ``half_width``; the integrand is
    < e^{−280} of its peak beyond |a| = 4.5 and the rule converges geometrically for such
    functions: Z₁ agrees with adaptive quadrature to 1e-12 relative, see the tests).
    Each well has modes near a = ±√3; the + mode has ≈ 0.85 of the mass, so π has 2^{d/2}
    modes of very unequal weights.

    Exact draws: x₂ ~ N(0, 1); x₁ by the inverse of the CDF tabulated on the grid, linear in
    each cell (density constant per cell: TV to the true law ≲ h·max p₁ ≈ 1e-4 for the default
    spacing h = 2L/(grid_size − 1) ≈ 7.6e-5).
    """

    def __init__(self, dim: int = 32, grid_size: int = 2**17 + 1, half_width: float = 5.0):
        super().__init__()
        self.dim = _check_dim(dim, "dim", 2)
        if dim % 2:
            raise ValueError(f"dim must be even (pairs of coordinates), got {dim}")
        if not (isinstance(grid_size, int) and grid_size >= 1001):
            raise ValueError(f"grid_size must be an int >= 1001, got {grid_size!r}")
        if not (isinstance(half_width, (int, float)) and half_width >= 4.5):
            raise ValueError(f"half_width must be >= 4.5 (the well has mass out to |a| ≈ 3.5), got {half_width!r}")
        grid = torch.linspace(-half_width, half_width, grid_size, dtype=torch.float64)
        lp = _well_log_density(grid)
        peak = lp.max()
        dens = torch.exp(lp - peak)
        cells = 0.5 * (dens[1:] + dens[:-1]) * (grid[1:] - grid[:-1])
        mass = cells.sum()
        self.log_Z1 = float(peak + torch.log(mass))
        self.log_Z = (dim // 2) * (self.log_Z1 + 0.5 * _LOG_2PI)
        # sampler tables: plain CPU float64 attributes (not buffers: .to(float32) must not round them)
        self.grid = grid
        self.cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(cells, 0) / mass])
        self.cdf[-1] = 1.0
        self.register_buffer("anchor", torch.zeros(()))

    @property
    def n_wells(self) -> int:
        """Number of independent 2-D double wells, d/2."""
        return self.dim // 2

    def log_prob(self, x: Tensor) -> Tensor:
        """Unnormalised log π̃(x), ``(n, d) -> (n,)``."""
        check_particles(x, self.dim)
        p = x.reshape(x.shape[0], self.n_wells, 2)
        return _well_log_density(p[..., 0]).sum(1) - 0.5 * (p[..., 1] ** 2).sum(1)

    def score(self, x: Tensor) -> Tensor:
        """Analytic ∇log π(x): (−4x₁³ + 12x₁ + ½, −x₂) per well, ``(n, d) -> (n, d)``."""
        check_particles(x, self.dim)
        p = x.reshape(x.shape[0], self.n_wells, 2)
        a, b = p[..., 0], p[..., 1]
        return torch.stack([-4 * a**3 + 12 * a + 0.5, -b], dim=-1).reshape(x.shape)

    def laplacian(self, x: Tensor, probes: Tensor | None = None) -> Tensor:
        """Analytic Δlog π(x) = Σ_wells (11 − 12x₁²), ``(n, d) -> (n,)`` (``probes`` ignored)."""
        check_particles(x, self.dim)
        return (11 - 12 * x[:, 0::2] ** 2).sum(1)

    def sample_well(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws of the first coordinate of one well, ``(n,)`` float64 on the CPU (inverse CDF)."""
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        hi = torch.searchsorted(self.cdf, u, right=True).clamp(1, self.grid.shape[0] - 1)
        lo = hi - 1
        frac = (u - self.cdf[lo]) / (self.cdf[hi] - self.cdf[lo])
        return self.grid[lo] + frac * (self.grid[hi] - self.grid[lo])

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draws ``(n, d)``: x₁ of every well by :meth:`sample_well`, x₂ ~ N(0, 1)."""
        a = self.sample_well(n * self.n_wells, generator).reshape(n, self.n_wells)
        b = torch.randn(n, self.n_wells, generator=generator, dtype=torch.float64)
        return _placed(torch.stack([a, b], dim=-1).reshape(n, self.dim), self.anchor)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, log_Z={self.log_Z:.6f}"


# ----------------------------------------------------------------------------------------
# Gaussian mixtures of the benchmarks
# ----------------------------------------------------------------------------------------
def _uniform_means(k: int, dim: int, half_width: float, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(int(seed))
    u = torch.rand(k, dim, generator=gen, dtype=torch.float64)
    return ((2 * u - 1) * half_width).to(torch.get_default_dtype())


def gmm40(dim: int = 2, n_components: int = 40, half_width: float = 40.0, seed: int = 0) -> GaussianMixture:
    """GMM40: ``n_components`` equal-weight N(mₖ, I) with mₖ = (2U − 1)·``half_width``, U ~ U[0, 1)ᵈ
    drawn from ``torch.Generator().manual_seed(seed)`` (float64).  Normalised (log Z = 0)."""
    _check_dim(dim, "dim")
    _check_dim(n_components, "n_components")
    return GaussianMixture(_uniform_means(n_components, dim, half_width, seed), 1.0)


def gmm25(spacing: float = 5.0, sd: float = math.sqrt(0.3)) -> GaussianMixture:
    """25GMM: 25 equal-weight N(mₖ, sd²·I) in 2-D, mₖ on the 5×5 grid ``spacing·{−2, …, 2}²``
    (default {−10, −5, 0, 5, 10}², variance 0.3).  Normalised (log Z = 0)."""
    if not (spacing > 0 and sd > 0):
        raise ValueError(f"spacing and sd must be positive, got {spacing!r}, {sd!r}")
    g = spacing * torch.arange(-2, 3, dtype=torch.get_default_dtype())
    return GaussianMixture(torch.cartesian_prod(g, g), float(sd))


# ----------------------------------------------------------------------------------------
# Mixture of Student-t
# ----------------------------------------------------------------------------------------
def student_t_draws(n: int, df: float, generator: torch.Generator | None = None) -> Tensor:
    r"""``n`` standard Student-t draws with ``df`` degrees of freedom, ``(n,)`` float64 (CPU).

    Bailey's polar method (exact for any ν > 0): U, V ~ U(−1, 1) conditioned on
    W = U² + V² ∈ (0, 1), then T = U·√(ν(W^{−2/ν} − 1)/W).  Acceptance π/4; uses only
    ``generator``'s uniforms, so a seed gives the same draws on every machine."""
    out = torch.empty(n, dtype=torch.float64)
    filled = 0
    while filled < n:
        m = int(1.35 * (n - filled)) + 16
        uv = 2 * torch.rand(m, 2, generator=generator, dtype=torch.float64) - 1
        w = (uv * uv).sum(1)
        keep = (w < 1) & (w > 0)
        u, w = uv[keep, 0], w[keep]
        t = u * torch.sqrt(df * (w ** (-2.0 / df) - 1) / w)
        take = min(t.shape[0], n - filled)
        out[filled : filled + take] = t[:take]
        filled += take
    return out


class StudentTMixture(Target):
    r"""π(x) = Σₖ wₖ ∏ⱼ t_ν((xⱼ − μₖⱼ)/s)/s: equal-weight mixture of product Student-t laws.

    Args:
        locs: ``(k, d)`` component locations μₖ; df: ν > 0; scale: s > 0.

    log t_ν(u) = log Γ((ν+1)/2) − log Γ(ν/2) − ½log(νπ) − (ν+1)/2·log(1 + u²/ν); normalised
    (``log_Z = 0``).  Score Σₖ rₖ(x) gₖ(x) with gₖⱼ = −(ν+1)uₖⱼ/(s(ν + uₖⱼ²)), uₖⱼ = (xⱼ − μₖⱼ)/s.
    ``means`` (= ``locs``) and ``weights`` let :func:`~sbtm_flows.metrics.mode_tv` treat it like a
    Gaussian mixture; :meth:`responsibilities` gives the exact component posteriors.
    """

    def __init__(self, locs, df: float = 2.0, scale: float = 1.0):
        super().__init__()
        locs = torch.as_tensor(locs)
        if locs.ndim != 2 or not locs.is_floating_point() or not bool(torch.isfinite(locs).all()):
            raise ValueError(f"locs must be a finite floating tensor of shape (k, d), got {getattr(locs, 'shape', locs)}")
        if not (df > 0 and scale > 0):
            raise ValueError(f"df and scale must be positive, got {df!r}, {scale!r}")
        k, self.dim = locs.shape
        self.df, self.t_scale, self.log_Z = float(df), float(scale), 0.0
        self.register_buffer("means", locs.clone())
        self.register_buffer("weights", torch.full((k,), 1.0 / k, dtype=locs.dtype))
        nu = self.df
        self.log_norm = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi) - math.log(scale)

    @property
    def n_components(self) -> int:
        """Number of components k."""
        return self.means.shape[0]

    def _component_log_probs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        u = (x[:, None, :] - self.means) / self.t_scale  # (n, k, d)
        comp = self.dim * self.log_norm - 0.5 * (self.df + 1) * torch.log1p(u * u / self.df).sum(-1)
        return u, comp + torch.log(self.weights)

    def log_prob(self, x: Tensor) -> Tensor:
        """Normalised log π(x), ``(n, d) -> (n,)``."""
        check_particles(x, self.dim)
        return torch.logsumexp(self._component_log_probs(x)[1], dim=1)

    def responsibilities(self, x: Tensor) -> Tensor:
        """Posterior component probabilities rₖ(x), ``(n, d) -> (n, k)``."""
        check_particles(x, self.dim)
        return torch.softmax(self._component_log_probs(x)[1], dim=1)

    def score(self, x: Tensor) -> Tensor:
        """Analytic ∇log π(x), ``(n, d) -> (n, d)``."""
        check_particles(x, self.dim)
        u, logc = self._component_log_probs(x)
        g = -(self.df + 1) * u / (self.t_scale * (self.df + u * u))
        return (torch.softmax(logc, dim=1)[..., None] * g).sum(1)

    def laplacian(self, x: Tensor, probes: Tensor | None = None) -> Tensor:
        r"""Analytic Δlog π(x) = Σₖ rₖ(Δlog pₖ + |gₖ|²) − |Σₖ rₖgₖ|² with
        Δlog pₖ = −Σⱼ (ν+1)(ν − uₖⱼ²)/(s²(ν + uₖⱼ²)²), ``(n, d) -> (n,)`` (``probes`` ignored)."""
        check_particles(x, self.dim)
        u, logc = self._component_log_probs(x)
        nu, s = self.df, self.t_scale
        q = nu + u * u
        g = -(nu + 1) * u / (s * q)
        lap_k = (-(nu + 1) * (nu - u * u) / (s * s * q * q)).sum(-1)  # (n, k)
        r = torch.softmax(logc, dim=1)
        mean_g = (r[..., None] * g).sum(1)
        return (r * (lap_k + (g * g).sum(-1))).sum(1) - (mean_g * mean_g).sum(-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Exact draws ``(n, d)``: a component from the weights, then μₖ + s·T with T
        coordinate-wise i.i.d. Student-t (:func:`student_t_draws`)."""
        idx = torch.multinomial(self.weights.detach().cpu().to(torch.float64), n, replacement=True, generator=generator)
        t = student_t_draws(n * self.dim, self.df, generator).reshape(n, self.dim)
        x = self.means.detach().cpu().to(torch.float64)[idx] + self.t_scale * t
        return _placed(x, self.means)

    def extra_repr(self) -> str:
        return f"k={self.n_components}, dim={self.dim}, df={self.df:g}"


def student_t_mixture(
    dim: int = 50, n_components: int = 10, df: float = 2.0, half_width: float = 10.0, seed: int = 0
) -> StudentTMixture:
    """MoS: ``n_components`` equal-weight product Student-t(ν = ``df``, scale 1) components with
    locations (2U − 1)·``half_width``, U ~ U[0, 1)ᵈ from ``torch.Generator().manual_seed(seed)``."""
    _check_dim(dim, "dim")
    _check_dim(n_components, "n_components")
    return StudentTMixture(_uniform_means(n_components, dim, half_width, seed), df=df)


# ----------------------------------------------------------------------------------------
# DW-4: particles with a double-well pair potential
# ----------------------------------------------------------------------------------------
class ParticleDoubleWell(Target):
    r"""P particles in D dimensions (x = (x₁, …, x_P) flattened, d = P·D) with a double-well pair potential.

    E(x) = Σ_{i<j} a(rᵢⱼ − d₀)⁴ + b(rᵢⱼ − d₀)² + c,  rᵢⱼ = |xᵢ − xⱼ|;
    log π̃(x) = −E(x)/τ − |x̄|²/(2σ²),  x̄ = (1/P)Σᵢ xᵢ (σ = ``centroid_sd``; see the module docstring).
    Score: ∂/∂xᵢ = −(1/τ)Σ_{j≠i} E'(rᵢⱼ)(xᵢ − xⱼ)/rᵢⱼ − x̄/(Pσ²), E'(r) = 4a(r − d₀)³ + 2b(r − d₀).
    log Z is unknown and there is no exact sampler (reference draws come from MALA).
    """

    def __init__(self, n_particles: int = 4, spatial_dim: int = 2, a: float = 0.9, b: float = -4.0, c: float = 0.0,
                 d0: float = 4.0, tau: float = 1.0, centroid_sd: float = 0.5):
        super().__init__()
        _check_dim(n_particles, "n_particles", 2)
        _check_dim(spatial_dim, "spatial_dim")
        if not (tau > 0 and centroid_sd > 0 and a > 0):
            raise ValueError(f"tau, centroid_sd and a (the quartic coefficient) must be positive, got {tau}, {centroid_sd}, {a}")
        self.n_particles, self.spatial_dim, self.dim = n_particles, spatial_dim, n_particles * spatial_dim
        self.a, self.b, self.c, self.d0, self.tau, self.centroid_sd = float(a), float(b), float(c), float(d0), float(tau), float(centroid_sd)
        self.log_Z = None
        self.register_buffer("pairs", torch.triu_indices(n_particles, n_particles, offset=1), persistent=False)

    def _positions(self, x: Tensor) -> Tensor:
        check_particles(x, self.dim)
        return x.reshape(x.shape[0], self.n_particles, self.spatial_dim)

    def pair_distances(self, x: Tensor) -> Tensor:
        """rᵢⱼ for the P(P−1)/2 pairs i < j, ``(n, d) -> (n, P(P−1)/2)``."""
        pos = self._positions(x)
        return (pos[:, self.pairs[0]] - pos[:, self.pairs[1]]).norm(dim=-1)

    def energy(self, x: Tensor) -> Tensor:
        """The pair energy E(x), ``(n, d) -> (n,)``."""
        u = self.pair_distances(x) - self.d0
        return (self.a * u**4 + self.b * u**2 + self.c).sum(1)

    def log_prob(self, x: Tensor) -> Tensor:
        """Unnormalised log π̃(x) = −E(x)/τ − |x̄|²/(2σ²), ``(n, d) -> (n,)``."""
        centroid = self._positions(x).mean(1)
        return -self.energy(x) / self.tau - 0.5 * (centroid * centroid).sum(1) / self.centroid_sd**2

    def score(self, x: Tensor) -> Tensor:
        """Analytic ∇log π̃(x), ``(n, d) -> (n, d)`` (rᵢⱼ clamped at 1e-12 where particles coincide)."""
        pos = self._positions(x)
        i, j = self.pairs[0], self.pairs[1]
        diff = pos[:, i] - pos[:, j]  # (n, pairs, D)
        r = diff.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        u = r - self.d0
        f = (4 * self.a * u**3 + 2 * self.b * u) / (self.tau * r) * diff  # ∂E/∂xᵢ contribution of the pair
        grad = torch.zeros_like(pos).index_add_(1, i, f).index_add_(1, j, -f)
        centroid = pos.mean(1, keepdim=True)
        s = -grad - centroid / (self.n_particles * self.centroid_sd**2)
        return s.reshape(x.shape)

    def extra_repr(self) -> str:
        return f"n_particles={self.n_particles}, spatial_dim={self.spatial_dim}, a={self.a:g}, b={self.b:g}, d0={self.d0:g}"


def dw4() -> ParticleDoubleWell:
    """DW-4: 4 particles in 2-D, a = 0.9, b = −4, c = 0, d₀ = 4, τ = 1, centroid sd ½ (d = 8)."""
    return ParticleDoubleWell(4, 2)


#: name -> constructor of the benchmark targets (merged into the CLI's target registry).
BENCHMARK_TARGETS: dict[str, Callable[[], Target]] = {
    "funnel": Funnel,
    "manywell": ManyWell,
    "gmm40-2d": lambda: gmm40(2),
    "gmm40-50d": lambda: gmm40(50),
    "25gmm": gmm25,
    "mos-50d": student_t_mixture,
    "dw4": dw4,
}
