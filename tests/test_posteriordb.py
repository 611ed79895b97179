"""posteriordb posteriors: log densities against independent direct formulas, Stein identities
on the reference draws (and their failure for a wrong density), transforms, compare(), ULA."""

import json
import math
from importlib import resources

import pytest
import torch

import sbtm_flows as sf
from sbtm_flows import posteriordb as pdb
from sbtm_flows.targets import autograd_score

NAMES = list(pdb.POSTERIORS)
DIMS = {"eight_schools-eight_schools_noncentered": 10, "arK-arK": 7, "gp_pois_regr-gp_pois_regr": 13, "diamonds-diamonds": 26}
# deliberately wrong log densities, written as corrections to the right one (v: (n, d) unconstrained).
# Measured max |z| of the Stein check with them: 71.3, 6.9, 8.3, 17.1 (the right ones: 2.7, 1.8, 2.9, 3.2).
# Dropping the +s Jacobian is invisible in gp (alpha, z 1.7) and diamonds (sigma, z 1.2): there the
# likelihood dominates, so those two get a wrong prior instead.
WRONG = {
    "eight_schools-eight_schools_noncentered": ("no +s log-Jacobian of tau = e^s", lambda v: -v[:, 9]),
    "arK-arK": ("no +s log-Jacobian of sigma = e^s", lambda v: -v[:, 6]),
    "gp_pois_regr-gp_pois_regr": ("Gamma(25, rate 5) instead of rate 4 for rho", lambda v: -torch.exp(v[:, 0])),
    "diamonds-diamonds": ("b ~ N(0, 0.5^2) instead of N(0, 1)", lambda v: -1.5 * (v[:, :24] ** 2).sum(1)),
}


def _raw(name: str, file: str):
    return json.loads((resources.files("sbtm_flows") / "data" / "posteriordb" / name / file).read_text())


def _stein_z(score, u):
    """z-scores of E[g] = 0 (d,) and E[g (u − ū)ᵀ] = −I (d, d) over the draws u (N, d)."""
    g = score(u)
    n = u.shape[0]
    z_mean = g.mean(0) / (g.std(0) / math.sqrt(n))
    prod = g[:, :, None] * (u - u.mean(0))[:, None, :]
    z_cov = (prod.mean(0) + torch.eye(u.shape[1], dtype=u.dtype)) / (prod.std(0) / math.sqrt(n))
    return z_mean, z_cov


@pytest.fixture(scope="module", params=NAMES)
def post_and_u(request):
    post = pdb.load(request.param)
    return post, post.unconstrain(post.reference_draws())


def test_shapes_and_names(post_and_u):
    post, u = post_and_u
    ref = post.reference_draws()
    assert post.dim == DIMS[post.name] and u.shape == (10000, post.dim)
    assert ref.shape == (10000, len(post.names)) and ref.dtype == torch.float64
    assert len(post.unconstrained_names) == post.dim
    chains = _raw(post.name, "reference_draws.json")
    # column j of reference_draws is names[j], chain 1 first, as in the JSON file
    assert list(chains[0]) == list(post.names)
    j = len(post.names) - 1
    assert ref[1000 * 3 + 7, j] == chains[3][post.names[j]][7]
    assert post.log_prob(u[:5]).shape == (5,) and post.score(u[:5]).shape == (5, post.dim)


def test_stein_identities_on_reference_draws(post_and_u):
    # packaging self-check (shared README): max |z| 2.7 / 1.8 / 2.9 / 3.2; measured here 2.67 / 1.78 / 2.93 / 3.22
    post, u = post_and_u
    z_mean, z_cov = _stein_z(post.score, u)
    assert torch.isfinite(z_cov).all()
    assert z_mean.abs().max() < 4.5 and z_cov.abs().max() < 4.5


def test_stein_identities_flag_a_wrong_log_density(post_and_u):
    # the same check (max |z| < 4.5) fails for a wrong variant (WRONG); e.g. without the +s of tau = e^s
    # the score is off by -1 in s, so E[d/ds log p] = -1 instead of 0
    post, u = post_and_u
    _, delta = WRONG[post.name]
    wrong = sf.from_log_prob(lambda v: post.log_prob(v) + delta(v), post.dim)
    z_mean, z_cov = _stein_z(wrong.score, u)
    assert max(z_mean.abs().max(), z_cov.abs().max()) > 4.5


def test_analytic_score_matches_autograd(post_and_u):
    post, u = post_and_u
    x = u[::500] + 0.3 * torch.randn(20, post.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g, ga = post.score(x), autograd_score(post.log_prob, x)
    assert torch.allclose(g, ga, rtol=1e-9, atol=1e-9 * float(ga.abs().max()))


def test_constrain_unconstrain_roundtrip(post_and_u):
    post, u = post_and_u
    ref = post.reference_draws()
    back = post.constrain(u)
    assert ((back - ref).abs() / ref.abs().clamp_min(1e-12)).max() < 1e-6
    assert torch.allclose(post.unconstrain(back[:100]), u[:100], rtol=1e-6, atol=1e-6)


def _direct_log_prob(name: str, u: torch.Tensor) -> torch.Tensor:
    """The model formulas written out plainly, from the raw JSON data (no shared code)."""
    data = _raw(name, "data.json")
    t = lambda v: torch.tensor(v, dtype=torch.float64)
    out = []
    for row in u:
        if name.startswith("eight_schools"):
            z, mu, s = row[:8], row[8], row[9]
            y, se = t(data["y"]), t(data["sigma"])
            theta = mu + torch.exp(s) * z
            lp = -0.5 * (z**2).sum() - 0.5 * (((y - theta) / se) ** 2).sum() - mu**2 / 50 - torch.log(1 + torch.exp(2 * s) / 25) + s
        elif name.startswith("arK"):
            y, K = t(data["y"]), data["K"]
            alpha, beta, s = row[0], row[1:6], row[6]
            sq = sum((y[i] - alpha - sum(beta[k - 1] * y[i - k] for k in range(1, K + 1))) ** 2 for i in range(K, data["T"]))
            m = data["T"] - K
            lp = -(alpha**2 + (beta**2).sum()) / 200 - torch.log(1 + torch.exp(2 * s) / 6.25) + s - m * s - sq / (2 * torch.exp(2 * s))
        elif name.startswith("gp"):
            x, k = t(data["x"]), t(data["k"])
            rho, alpha, w = torch.exp(row[0]), torch.exp(row[1]), row[2:]
            C = alpha**2 * torch.exp(-((x[:, None] - x[None, :]) ** 2) / (2 * rho**2)) + 1e-10 * torch.eye(len(x), dtype=torch.float64)
            f = torch.linalg.cholesky(C) @ w
            lp = 24 * row[0] - 4 * rho + row[0] - alpha**2 / 8 + row[1] - 0.5 * (w**2).sum() + (k * f - torch.exp(f)).sum()
        else:
            X, Y = t(data["X"]), t(data["Y"])
            xc = X[:, 1:] - X[:, 1:].mean(0)
            b, c, s = row[:24], row[24], row[25]
            resid = Y - c - xc @ b
            lp = (-0.5 * (b**2).sum() - 2 * torch.log(1 + (c - 8) ** 2 / 300) - 2 * torch.log(1 + torch.exp(2 * s) / 300) + s
                  - len(Y) * s - (resid**2).sum() / (2 * torch.exp(2 * s)))
        out.append(lp)
    return torch.stack(out)


def test_log_prob_matches_direct_formula(post_and_u):
    # equal up to one additive constant, to 1e-7 relative (gp: rounding of the Cholesky at the perturbed points, 1.4e-8)
    post, u = post_and_u
    x = torch.cat([u[::2500], u[:2] + 0.5])
    lp, direct = post.log_prob(x), _direct_log_prob(post.name, x)
    gap = (lp - direct) - (lp[0] - direct[0])
    assert (gap.abs() <= 1e-7 * direct.abs().clamp_min(1.0)).all()


def test_float32_posterior_agrees_with_float64(post_and_u):
    post, u = post_and_u
    p32 = pdb.load(post.name, dtype=torch.float32)
    x = u[::1000]
    lp64, lp32 = post.log_prob(x), p32.log_prob(x.float())
    assert lp32.dtype == torch.float32 and p32.score(x.float()).dtype == torch.float32
    assert ((lp32.double() - lp64) - (lp32.double() - lp64).mean()).abs().max() < 1e-4 * lp64.abs().max()


def test_compare_on_reference_halves_is_at_noise_level(post_and_u):
    # measured (2000 draws of chains 1-5): max mean err 0.040 / 0.040 / 0.050 / 0.050, sd err ≤ 0.044, ratio 0.98-1.10
    post, u = post_and_u
    x = u[torch.randperm(5000, generator=torch.Generator().manual_seed(0))[:2000]]
    c = post.compare(x)
    assert c["n"] == 2000 and c["names"] == list(post.names) and c["metric"] == "sliced_w2"
    assert set(c["mean_error"]) == set(post.names) and c["max_mean_error"] == max(c["mean_error"].values())
    assert c["max_mean_error"] < 4 * c["mean_error_se"]
    assert c["max_sd_error"] < 0.1
    assert 0.7 < c["ratio"] < 1.4


def test_compare_flags_a_shift():
    post = pdb.load("eight_schools")
    u = post.unconstrain(post.reference_draws())[:2000]
    sd_mu = float(post.reference_draws()[:, 8].std())
    shifted = u.clone()
    shifted[:, 8] += 0.5 * sd_mu  # mu (and with it every theta) moves by 0.5 sd(mu)
    c0, c1 = post.compare(u), post.compare(shifted)
    assert abs(c1["mean_error"]["mu"] - 0.5) < 0.1 and c1["max_mean_error"] > 0.4
    assert c1["ratio"] > 2 * c0["ratio"] and c1["distance"] > 3 * c1["floor"]
    e = post.compare(shifted, metric="energy", reps=1)
    assert e["ratio"] > 3


def test_ula_eight_schools_matches_reference_means():
    # measured (T = 30, dt = 0.03, n = 2000, f64): max mean error 0.039 / 0.065 / 0.078 (seeds 0/1/2; mu is the
    # slowest), max sd error 0.063 / 0.026 / 0.035, sliced-W2 ratio 1.03 / 1.19 / 1.32. Tolerances: 0.15, 0.15, 2.
    post = pdb.load("eight_schools")
    init = sf.Gaussian(torch.zeros(10, dtype=torch.float64), torch.eye(10, dtype=torch.float64))
    res = sf.sample(post, method="ula", init=init, n=2000, t_final=30.0, dt=0.03, dtype=torch.float64, seed=0, save_every=1000)
    c = post.compare(res)
    assert c["max_mean_error"] < 0.15
    assert c["max_sd_error"] < 0.15
    assert c["ratio"] < 2.0


def test_aliases_and_bad_input():
    assert pdb.load("eight_schools").name == "eight_schools-eight_schools_noncentered"
    assert pdb.load("arK").name == "arK-arK" and pdb.canonical_name("diamonds") == "diamonds-diamonds"
    with pytest.raises(ValueError, match="valid: eight_schools-eight_schools_noncentered, arK-arK"):
        pdb.load("eight_schools_centered")
    with pytest.raises(ValueError, match="unknown posterior"):
        pdb.load(3)
    with pytest.raises(ValueError, match="dtype"):
        pdb.load("arK", dtype=torch.int64)
    post = pdb.load("arK")
    with pytest.raises(ValueError, match=r"shape \(n, 7\)"):
        post.log_prob(torch.zeros(3, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"shape \(n, 7\)"):
        post.unconstrain(torch.ones(3, 8, dtype=torch.float64))
    u = torch.zeros(10, 7, dtype=torch.float64)
    with pytest.raises(ValueError, match="at least 2"):
        post.compare(u[:1])
    with pytest.raises(ValueError, match="not finite"):
        post.compare(torch.cat([u, torch.full((1, 7), float("nan"), dtype=torch.float64)]))
    with pytest.raises(ValueError, match="unknown metric"):
        post.compare(u, metric="kl")


def test_data_ship_with_the_package():
    root = resources.files("sbtm_flows") / "data" / "posteriordb"
    lic = (root / "LICENSE.md").read_text()
    assert "28f8d3d6e975315f42aa274a8399f21e07a43b30" in lic and "BSD 3-Clause" in lic
    assert "Keep this paragraph with the files if they are redistributed." in lic
    for name in NAMES:
        assert (root / name / "data.json").is_file() and (root / name / "reference_draws.json").is_file()
