r"""Real Bayesian posteriors from posteriordb, with gold-standard reference draws.

Four posteriors of the public posteriordb project (data and reference draws are shipped in
``sbtm_flows/data/posteriordb/``; source, commit and BSD-3-Clause licence in its
``LICENSE.md``).  Each is a :class:`~sbtm_flows.targets.Target` on **unconstrained**
coordinates u ``(n, d)``: every positive parameter is the exponential of a real coordinate and
its log-Jacobian is part of ``log_prob``.  Log densities are up to an additive constant.

``eight_schools-eight_schools_noncentered`` (d = 10), u = (z₁..z₈, μ, s), τ = eˢ, θⱼ = μ + τzⱼ:
    8 measured effects yⱼ with known standard errors σⱼ;  zⱼ ~ N(0, 1), μ ~ N(0, 5²),
    τ ~ half-Cauchy(0, 5), yⱼ ~ N(θⱼ, σⱼ²), so
    log p(u) = −½Σzⱼ² − ½Σ(yⱼ − μ − τzⱼ)²/σⱼ² − μ²/50 − log(1 + τ²/25) + s.
    Reported: θ₁..θ₈, μ, τ.

``arK-arK`` (d = 7), u = (α, β₁..β₅, s), σ = eˢ:
    an AR(5) regression of a series y₁..y₂₀₀ on its five previous values, for t = 6..200
    (m = 195 modelled points); α, βₖ ~ N(0, 10²), σ ~ half-Cauchy(0, 2.5):
    log p(u) = −(α² + Σβₖ²)/200 − log(1 + σ²/6.25) + s − m·s − Σₜ(yₜ − α − Σₖβₖyₜ₋ₖ)²/(2σ²).
    Reported: α, β₁..β₅, σ.

``gp_pois_regr-gp_pois_regr`` (d = 13), u = (a, b, w₁..w₁₁), ρ = eᵃ, α = eᵇ:
    counts kᵢ at inputs xᵢ = −10, −8, …, 10 with Poisson rates e^{fᵢ}; f = L w where L is the
    lower Cholesky factor of Cᵢⱼ = α²exp(−(xᵢ − xⱼ)²/(2ρ²)) + 10⁻¹⁰δᵢⱼ (a squared-exponential
    Gaussian process written non-centred); ρ ~ Gamma(25, rate 4), α ~ half-N(0, 2²), wᵢ ~ N(0, 1):
    log p(u) = 25a − 4ρ − α²/8 + b − ½|w|² + Σᵢ(kᵢfᵢ − e^{fᵢ}).
    Reported: ρ, α, f₁..f₁₁.  C is very ill-conditioned: the factorisation is always done in
    float64 with the 10⁻¹⁰ jitter, whatever the dtype of u.

``diamonds-diamonds`` (d = 26), u = (b₁..b₂₄, c, s), σ = eˢ:
    a linear regression of N = 5000 log prices Y on the 24 non-constant columns of the design,
    each centred by its mean (Xc, N × 24); bⱼ ~ N(0, 1), the intercept c of the centred design
    ~ Student-t(3, 8, 10), σ ~ half-Student-t(3, 0, 10):
    log p(u) = −½|b|² − 2log(1 + (c − 8)²/300) − 2log(1 + σ²/300) + s − N·s − |Y − c − Xc b|²/(2σ²).
    Reported: b₁..b₂₄, Intercept (= c), σ.  Badly conditioned (covariance condition ≈ 3e5).

For the two regressions the residual sum of squares is evaluated in the exact, cancellation-free
form |y − Aθ|² = RSS_min + |R(θ − θ̂)|² (A = QR, θ̂ the least-squares fit), O(p²) per particle.

The reference draws (10 chains × 1000 NUTS draws, ≈ 10,000 nearly independent draws) are on
the reported scale; :meth:`Posterior.compare` maps unconstrained samples there and reports
standardized mean and sd errors and a sliced-W₂ distance with its noise floor.

Example::

    post = sf.posteriordb.load("eight_schools")
    init = sf.Gaussian(torch.zeros(10, dtype=torch.float64), torch.eye(10, dtype=torch.float64))
    res = sf.sample(post, method="ula", init=init, n=2000, t_final=30.0, dt=0.03, dtype=torch.float64)
    post.compare(res)["max_mean_error"]        # 0.039 (tests/test_posteriordb.py)
"""

from __future__ import annotations

import functools
import json
import math
from importlib import resources

import torch
from torch import Tensor

from .metrics import METRICS
from .targets import Target, check_particles

__all__ = ["POSTERIORS", "ALIASES", "Posterior", "load", "canonical_name"]

#: canonical name -> short description.
POSTERIORS: dict[str, str] = {
    "eight_schools-eight_schools_noncentered": "8 schools, hierarchical normal, non-centred, half-Cauchy group sd (d = 10)",
    "arK-arK": "AR(5) time-series regression, 195 points, half-Cauchy noise sd (d = 7)",
    "gp_pois_regr-gp_pois_regr": "Poisson counts with a squared-exponential GP log-rate, 11 points, non-centred (d = 13)",
    "diamonds-diamonds": "linear regression of log price on 24 predictors, N = 5000, badly conditioned (d = 26)",
}

#: accepted short names -> canonical name.
ALIASES: dict[str, str] = {
    "eight_schools": "eight_schools-eight_schools_noncentered",
    "eight_schools_noncentered": "eight_schools-eight_schools_noncentered",
    "ark": "arK-arK",
    "arK": "arK-arK",
    "gp_pois_regr": "gp_pois_regr-gp_pois_regr",
    "diamonds": "diamonds-diamonds",
}

_N_CHAINS = 10
_DRAWS_PER_CHAIN = 1000
_GP_JITTER = 1e-10


def canonical_name(name: str) -> str:
    """The canonical posteriordb name of ``name`` (itself or an alias of :data:`ALIASES`).

    Raises:
        ValueError: an unknown name, listing the valid names and aliases.
    """
    if isinstance(name, str):
        if name in POSTERIORS:
            return name
        if name in ALIASES:
            return ALIASES[name]
    raise ValueError(f"unknown posterior {name!r}; valid: {', '.join(POSTERIORS)} (aliases: {', '.join(ALIASES)})")


def _folder(name: str):
    return resources.files("sbtm_flows") / "data" / "posteriordb" / name


@functools.lru_cache(maxsize=None)
def _read_data(name: str) -> dict:
    return json.loads((_folder(name) / "data.json").read_text())


@functools.lru_cache(maxsize=None)
def _read_draws(name: str, names: tuple[str, ...]) -> Tensor:
    """The reference draws as ``(chains, draws, k)`` float64, columns in ``names`` order."""
    chains = json.loads((_folder(name) / "reference_draws.json").read_text())
    if len(chains) != _N_CHAINS or any(set(c) != set(names) for c in chains):
        raise RuntimeError(f"{name}: reference_draws.json does not hold {_N_CHAINS} chains of {names}")
    out = torch.tensor([[c[p] for p in names] for c in chains], dtype=torch.float64).transpose(1, 2)
    if out.shape[1] != _DRAWS_PER_CHAIN:
        raise RuntimeError(f"{name}: expected {_DRAWS_PER_CHAIN} draws per chain, got {out.shape[1]}")
    return out


def _softplus_shift(two_s: Tensor, log_scale2: float) -> Tensor:
    """log(1 + e^{2s}/c²) = softplus(2s − log c²), overflow-free."""
    return torch.nn.functional.softplus(two_s - log_scale2)


class Posterior(Target):
    """A posteriordb posterior on unconstrained coordinates u ``(n, d)``.

    Attributes:
        name: the canonical posteriordb name.
        description: one line from :data:`POSTERIORS`.
        dim: d, the number of unconstrained coordinates.
        names: the reported parameter names, in the column order of :meth:`constrain` and
            :meth:`reference_draws` (k of them).
        unconstrained_names: names of the d coordinates of u.
    """

    name: str
    names: tuple[str, ...]
    unconstrained_names: tuple[str, ...]

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.description = POSTERIORS[name]

    # -- to be provided by each posterior ---------------------------------------------------
    def log_prob(self, u: Tensor) -> Tensor:  # pragma: no cover - abstract
        """log p(u) up to a constant, ``(n, d) -> (n,)``."""
        raise NotImplementedError

    def constrain(self, u: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Unconstrained draws ``u (n, d)`` -> reported parameters ``(n, k)`` in ``names`` order."""
        raise NotImplementedError

    def unconstrain(self, reported: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Reported parameters ``(n, k)`` (``names`` order) -> unconstrained ``u (n, d)``."""
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------
    def _check_reported(self, reported: Tensor) -> Tensor:
        return check_particles(reported, len(self.names), "reported")

    def reference_chains(self) -> Tensor:
        """The reference draws per chain, ``(10, 1000, k)`` float64, columns in ``names`` order."""
        return _read_draws(self.name, tuple(self.names)).clone()

    def reference_draws(self) -> Tensor:
        """The pooled reference draws, ``(10000, k)`` float64, columns in ``names`` order
        (chain 1's draws first)."""
        return self.reference_chains().reshape(-1, len(self.names))

    def compare(
        self,
        samples,
        metric: str = "sliced_w2",
        reps: int = 5,
        seed: int = 0,
        **metric_kwargs,
    ) -> dict:
        r"""Errors of unconstrained samples against the reference draws.

        Args:
            samples: ``(n, d)`` unconstrained draws (n ≥ 2, finite), or a
                :class:`~sbtm_flows.result.Result` (its final ``particles``).
            metric: a distance of :data:`sbtm_flows.metrics.METRICS` (``"sliced_w2"`` by default,
                ``"energy"``, ``"sinkhorn"``), computed on the reported parameters standardized by
                the reference mean and sd; ``metric_kwargs`` go to it (e.g. ``n_projections``).
            reps: distance and floor are averaged over this many random subsamples (and
                projection sets).
            seed: seeds the subsamples and projections.

        Returns:
            a dict with ``n``, ``names``; ``mean_error`` / ``sd_error`` (name -> float):
            |mean − mean_ref|/sd_ref and |sd/sd_ref − 1| per reported parameter;
            ``max_mean_error``, ``max_sd_error``; ``mean_error_se`` = √(1/n + 1/10000), the standard
            error of a standardized mean error for independent draws; ``metric``, ``distance`` (the
            metric between m = min(n, 5000) of the samples and m draws of reference chains 6–10),
            ``floor`` (the same metric between m draws of chains 1–5 and m draws of chains 6–10, with
            the same projections) and ``ratio`` = distance/floor (≈ 1: indistinguishable at this n).

        Raises:
            ValueError: wrong shape, fewer than 2 samples, non-finite samples, an unknown metric.
        """
        x = self._reported(samples, metric, reps)
        chains = self.reference_chains()
        ref = chains.reshape(-1, chains.shape[-1])
        mean_ref, sd_ref = ref.mean(0), ref.std(0)
        mean_err = (x.mean(0) - mean_ref).abs() / sd_ref
        sd_err = (x.std(0) / sd_ref - 1).abs()

        half = _N_CHAINS // 2
        std = lambda v: (v - mean_ref) / sd_ref
        first, second = std(chains[:half].reshape(-1, ref.shape[1])), std(chains[half:].reshape(-1, ref.shape[1]))
        xs = std(x)
        m = min(x.shape[0], first.shape[0])
        gen = torch.Generator().manual_seed(int(seed))
        fn = METRICS[metric]
        dist, floor = [], []
        for _ in range(reps):
            pick = lambda v: v[torch.randperm(v.shape[0], generator=gen)[:m]]
            xa, ra, rb = pick(xs), pick(first), pick(second)
            proj_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
            dist.append(fn(xa, rb, torch.Generator().manual_seed(proj_seed), **metric_kwargs))
            floor.append(fn(ra, rb, torch.Generator().manual_seed(proj_seed), **metric_kwargs))
        d_mean, f_mean = sum(dist) / reps, sum(floor) / reps
        names = list(self.names)
        return {
            "posterior": self.name,
            "n": int(x.shape[0]),
            "names": names,
            "mean_error": dict(zip(names, mean_err.tolist())),
            "sd_error": dict(zip(names, sd_err.tolist())),
            "max_mean_error": float(mean_err.max()),
            "max_sd_error": float(sd_err.max()),
            "mean_error_se": math.sqrt(1.0 / x.shape[0] + 1.0 / ref.shape[0]),
            "metric": metric,
            "distance": d_mean,
            "floor": f_mean,
            "ratio": d_mean / f_mean,
        }

    def _reported(self, samples, metric: str, reps) -> Tensor:
        """The reported parameters ``(n, k)`` float64 of checked unconstrained samples ``(n, d)``
        (or a Result's particles); ValueError for the problems :meth:`compare` lists."""
        x_u = getattr(samples, "particles", samples)
        check_particles(x_u, self.dim, "samples")
        if x_u.shape[0] < 2:
            raise ValueError("compare needs at least 2 samples")
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
        if not (isinstance(reps, int) and reps >= 1):
            raise ValueError(f"reps must be a positive int, got {reps!r}")
        bad = int((~torch.isfinite(x_u)).any(1).sum())
        if bad:
            raise ValueError(f"{bad} of the {x_u.shape[0]} samples are not finite")
        with torch.no_grad():
            x = self.constrain(x_u.detach().cpu().to(torch.float64))
        bad = int((~torch.isfinite(x)).any(1).sum())
        if bad:
            raise ValueError(f"{bad} of the {x.shape[0]} samples map to non-finite reported parameters")
        return x

    def extra_repr(self) -> str:
        return f"{self.name}, dim={self.dim}"


# ----------------------------------------------------------------------------------------
# eight schools, non-centred
# ----------------------------------------------------------------------------------------
class _EightSchools(Posterior):
    #: the neck of τ's funnel (z-curvature τ²/σⱼ²): the flow's default network is a ResidualScore
    anchored_score = True

    def __init__(self, name: str, data: dict):
        super().__init__(name)
        J = int(data["J"])
        self.dim = J + 2
        self.names = tuple(f"theta[{j + 1}]" for j in range(J)) + ("mu", "tau")
        self.unconstrained_names = tuple(f"z[{j + 1}]" for j in range(J)) + ("mu", "log_tau")
        self.register_buffer("y", torch.tensor(data["y"], dtype=torch.float64))
        self.register_buffer("se", torch.tensor(data["sigma"], dtype=torch.float64))

    def _split(self, u: Tensor):
        check_particles(u, self.dim, "u")
        return u[:, :-2], u[:, -2], u[:, -1]

    def log_prob(self, u: Tensor) -> Tensor:
        """log p(u) up to a constant, ``(n, 10) -> (n,)``."""
        z, mu, s = self._split(u)
        y, se = self.y.to(u), self.se.to(u)
        resid = (y - mu[:, None] - torch.exp(s)[:, None] * z) / se
        return -0.5 * (z * z).sum(1) - 0.5 * (resid * resid).sum(1) - mu * mu / 50.0 - _softplus_shift(2 * s, math.log(25.0)) + s

    def score(self, u: Tensor) -> Tensor:
        """Analytic ∇log p(u), ``(n, 10) -> (n, 10)``."""
        z, mu, s = self._split(u)
        y, se = self.y.to(u), self.se.to(u)
        tau = torch.exp(s)[:, None]
        r = (y - mu[:, None] - tau * z) / se / se  # ∂/∂θ of the likelihood term
        g_z = -z + tau * r
        g_mu = r.sum(1) - mu / 25.0
        g_s = (tau * z * r).sum(1) - 2 * torch.sigmoid(2 * s - math.log(25.0)) + 1
        return torch.cat([g_z, g_mu[:, None], g_s[:, None]], 1)

    def constrain(self, u: Tensor) -> Tensor:
        """u = (z, μ, s) ``(n, 10)`` -> (θ = μ + eˢz, μ, τ = eˢ) ``(n, 10)``."""
        z, mu, s = self._split(u)
        tau = torch.exp(s)
        return torch.cat([mu[:, None] + tau[:, None] * z, mu[:, None], tau[:, None]], 1)

    def unconstrain(self, reported: Tensor) -> Tensor:
        """(θ, μ, τ) ``(n, 10)`` -> u = ((θ − μ)/τ, μ, log τ) ``(n, 10)``."""
        self._check_reported(reported)
        theta, mu, tau = reported[:, :-2], reported[:, -2], reported[:, -1]
        return torch.cat([(theta - mu[:, None]) / tau[:, None], mu[:, None], torch.log(tau)[:, None]], 1)


# ----------------------------------------------------------------------------------------
# Gaussian linear regressions (arK, diamonds): |y − Aθ|² = RSS_min + |R(θ − θ̂)|²
# ----------------------------------------------------------------------------------------
class _Regression(Posterior):
    """Shared parts of the two regressions: u = (θ (p), s), σ = eˢ, Gaussian likelihood."""

    def _set_design(self, design: Tensor, response: Tensor) -> None:
        q, r = torch.linalg.qr(design)
        theta_hat = torch.linalg.solve_triangular(r, (q.T @ response)[:, None], upper=True)[:, 0]
        rss = ((response - design @ theta_hat) ** 2).sum()
        self.n_obs = int(design.shape[0])
        self.register_buffer("R", r)
        self.register_buffer("theta_hat", theta_hat)
        self.register_buffer("rss_min", rss)

    def _lik_parts(self, u: Tensor):
        check_particles(u, self.dim, "u")
        theta, s = u[:, :-1], u[:, -1]
        R = self.R.to(u)
        r = (theta - self.theta_hat.to(u)) @ R.T  # (n, p)
        ss = self.rss_min.to(u) + (r * r).sum(1)
        return theta, s, R, r, ss

    def _log_prior(self, theta: Tensor, s: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _prior_score(self, theta: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def log_prob(self, u: Tensor) -> Tensor:
        """log p(u) up to a constant, ``(n, d) -> (n,)``."""
        theta, s, _, _, ss = self._lik_parts(u)
        return self._log_prior(theta, s) + s - self.n_obs * s - 0.5 * ss * torch.exp(-2 * s)

    def score(self, u: Tensor) -> Tensor:
        """Analytic ∇log p(u), ``(n, d) -> (n, d)``."""
        theta, s, R, r, ss = self._lik_parts(u)
        g_theta, g_s = self._prior_score(theta, s)
        inv_var = torch.exp(-2 * s)
        g_theta = g_theta - (r @ R) * inv_var[:, None]
        g_s = g_s + 1 - self.n_obs + ss * inv_var
        return torch.cat([g_theta, g_s[:, None]], 1)

    def constrain(self, u: Tensor) -> Tensor:
        """u = (θ, s) ``(n, d)`` -> (θ, σ = eˢ) ``(n, d)``."""
        check_particles(u, self.dim, "u")
        return torch.cat([u[:, :-1], torch.exp(u[:, -1:])], 1)

    def unconstrain(self, reported: Tensor) -> Tensor:
        """(θ, σ) ``(n, d)`` -> u = (θ, log σ) ``(n, d)``."""
        self._check_reported(reported)
        return torch.cat([reported[:, :-1], torch.log(reported[:, -1:])], 1)

    def residual_sum_of_squares(self, theta: Tensor) -> Tensor:
        """|y − Aθ|² for coefficients ``theta (n, p)`` -> ``(n,)`` (the stable form)."""
        r = (theta - self.theta_hat.to(theta)) @ self.R.to(theta).T
        return self.rss_min.to(theta) + (r * r).sum(1)


class _ArK(_Regression):
    def __init__(self, name: str, data: dict):
        super().__init__(name)
        K, T = int(data["K"]), int(data["T"])
        y = torch.tensor(data["y"], dtype=torch.float64)
        if y.shape != (T,):
            raise RuntimeError(f"{name}: y has shape {tuple(y.shape)}, expected ({T},)")
        lags = torch.stack([y[K - k : T - k] for k in range(1, K + 1)], 1)  # column k-1: y_{t-k}, t = K+1..T
        design = torch.cat([torch.ones(T - K, 1, dtype=torch.float64), lags], 1)
        self.K = K
        self.dim = K + 2
        self.names = ("alpha",) + tuple(f"beta[{k}]" for k in range(1, K + 1)) + ("sigma",)
        self.unconstrained_names = self.names[:-1] + ("log_sigma",)
        self.register_buffer("design", design)
        self.register_buffer("response", y[K:].clone())
        self._set_design(design, y[K:])

    def _log_prior(self, theta: Tensor, s: Tensor) -> Tensor:
        return -(theta * theta).sum(1) / 200.0 - _softplus_shift(2 * s, math.log(6.25))

    def _prior_score(self, theta: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        return -theta / 100.0, -2 * torch.sigmoid(2 * s - math.log(6.25))


class _Diamonds(_Regression):
    def __init__(self, name: str, data: dict):
        super().__init__(name)
        X = torch.tensor(data["X"], dtype=torch.float64)
        Y = torch.tensor(data["Y"], dtype=torch.float64)
        N, K = int(data["N"]), int(data["K"])
        if X.shape != (N, K) or Y.shape != (N,):
            raise RuntimeError(f"{name}: X, Y have shapes {tuple(X.shape)}, {tuple(Y.shape)}, expected ({N}, {K}), ({N},)")
        xc = X[:, 1:] - X[:, 1:].mean(0)
        design = torch.cat([xc, torch.ones(N, 1, dtype=torch.float64)], 1)  # θ = (b, c)
        self.dim = K + 1
        self.names = tuple(f"b[{j}]" for j in range(1, K)) + ("Intercept", "sigma")
        self.unconstrained_names = self.names[:-1] + ("log_sigma",)
        self.register_buffer("xc", xc)
        self.register_buffer("response", Y)
        self._set_design(design, Y)

    def _log_prior(self, theta: Tensor, s: Tensor) -> Tensor:
        b, c = theta[:, :-1], theta[:, -1]
        return -0.5 * (b * b).sum(1) - 2 * torch.log1p((c - 8) ** 2 / 300.0) - 2 * _softplus_shift(2 * s, math.log(300.0))

    def _prior_score(self, theta: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        b, c = theta[:, :-1], theta[:, -1]
        g_c = -4 * (c - 8) / (300.0 + (c - 8) ** 2)
        return torch.cat([-b, g_c[:, None]], 1), -4 * torch.sigmoid(2 * s - math.log(300.0))


# ----------------------------------------------------------------------------------------
# Poisson GP regression, non-centred
# ----------------------------------------------------------------------------------------
class _GPPoisson(Posterior):
    """Score: the default batched autograd of ``log_prob`` (through a batched Cholesky)."""

    def __init__(self, name: str, data: dict):
        super().__init__(name)
        x = torch.tensor(data["x"], dtype=torch.float64)
        k = torch.tensor(data["k"], dtype=torch.float64)
        N = int(data["N"])
        if x.shape != (N,) or k.shape != (N,):
            raise RuntimeError(f"{name}: x, k must have {N} entries")
        self.dim = N + 2
        self.names = ("rho", "alpha") + tuple(f"f[{i}]" for i in range(1, N + 1))
        self.unconstrained_names = ("log_rho", "log_alpha") + tuple(f"w[{i}]" for i in range(1, N + 1))
        self.register_buffer("sqdist", (x[:, None] - x[None, :]) ** 2)
        self.register_buffer("counts", k)

    def cholesky(self, a: Tensor, b: Tensor) -> Tensor:
        """Lower Cholesky factors of C(ρ = eᵃ, α = eᵇ), ``a, b (n,) -> (n, N, N)`` float64.

        Rows whose C is not numerically positive definite get NaN factors."""
        a, b = a.to(torch.float64), b.to(torch.float64)
        d2 = self.sqdist.to(device=a.device, dtype=torch.float64)
        eye = torch.eye(d2.shape[0], dtype=torch.float64, device=a.device)
        cov = torch.exp(2 * b)[:, None, None] * torch.exp(-0.5 * d2 * torch.exp(-2 * a)[:, None, None]) + _GP_JITTER * eye
        L, info = torch.linalg.cholesky_ex(cov)
        if bool((info != 0).any()):
            L = torch.where((info != 0)[:, None, None], torch.full_like(L, float("nan")), L)
        return L

    def _f(self, u: Tensor) -> Tensor:
        a, b, w = u[:, 0], u[:, 1], u[:, 2:]
        return (self.cholesky(a, b) @ w.to(torch.float64)[:, :, None])[:, :, 0]

    def log_prob(self, u: Tensor) -> Tensor:
        """log p(u) up to a constant, ``(n, 13) -> (n,)``; computed in float64, returned in u's dtype."""
        check_particles(u, self.dim, "u")
        v = u.to(torch.float64)
        a, b, w = v[:, 0], v[:, 1], v[:, 2:]
        f = self._f(v)
        k = self.counts.to(f)
        lp = 25 * a - 4 * torch.exp(a) - torch.exp(2 * b) / 8 + b - 0.5 * (w * w).sum(1) + (k * f - torch.exp(f)).sum(1)
        return lp.to(u.dtype)

    def constrain(self, u: Tensor) -> Tensor:
        """u = (a, b, w) ``(n, 13)`` -> (ρ = eᵃ, α = eᵇ, f = L w) ``(n, 13)`` (f in float64, cast to u's dtype)."""
        check_particles(u, self.dim, "u")
        return torch.cat([torch.exp(u[:, :2]), self._f(u).to(u.dtype)], 1)

    def unconstrain(self, reported: Tensor) -> Tensor:
        """(ρ, α, f) ``(n, 13)`` -> u = (log ρ, log α, w = L⁻¹f) ``(n, 13)`` (float64 solve)."""
        self._check_reported(reported)
        a, b = torch.log(reported[:, 0]), torch.log(reported[:, 1])
        L = self.cholesky(a, b)
        w = torch.linalg.solve_triangular(L, reported[:, 2:].to(torch.float64)[:, :, None], upper=False)[:, :, 0]
        return torch.cat([a[:, None], b[:, None], w.to(reported.dtype)], 1)


_CLASSES: dict[str, type[Posterior]] = {
    "eight_schools-eight_schools_noncentered": _EightSchools,
    "arK-arK": _ArK,
    "gp_pois_regr-gp_pois_regr": _GPPoisson,
    "diamonds-diamonds": _Diamonds,
}


def load(name: str, dtype: torch.dtype = torch.float64) -> Posterior:
    """The posterior ``name`` (a key of :data:`POSTERIORS` or an alias) as a target on its
    unconstrained coordinates ``(n, d)``, with data buffers in ``dtype``.

    Raises:
        ValueError: an unknown name (listing the valid ones) or a dtype other than float32/float64.
    """
    canon = canonical_name(name)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    post = _CLASSES[canon](canon, _read_data(canon))
    return post.to(dtype)
