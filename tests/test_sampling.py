"""sample(method="sbtm"): paper §5.1 against the analytic Fokker–Planck solution, a 2-D
correlated Gaussian against the moment ODEs, solver agreement, stiffness, reproducibility,
the torchdiffeq equivalence, checkpoints and bad input."""

import math

import numpy as np
import pytest
import torch
import torchdiffeq
from scipy.integrate import solve_ivp

import sbtm_flows as sf

V0 = 1 - math.exp(-0.2)
TARGET_51 = sf.Gaussian(torch.zeros(1), torch.eye(1))
INIT_51 = sf.Gaussian(torch.zeros(1), V0 * torch.eye(1))


def v_exact(t):
    """Variance of f_t = N(0, 1 − e^{−2(t+0.1)}) (paper eq. 5.1)."""
    return 1 - math.exp(-2 * (t + 0.1))


def kl_gauss(v):
    """KL(N(0, v) ‖ N(0, 1))."""
    return 0.5 * (v - 1 - math.log(v))


@pytest.fixture(scope="module", params=["flow", "steps"])
def run_51(request):
    # the default solvers: rkc for the flow (heun2 at η = 5 crosses η·λ_max·dt = 2 at t ≈ 0.5 and
    # is stopped by the stiffness monitor), heun2 for the steps
    return sf.sample(TARGET_51, method="sbtm", init=INIT_51, n=1000, t_final=2.0, dt=0.01,
                     training=request.param, seed=0)


def test_paper_51_variance_fisher_and_kl(run_51):
    res = run_51
    assert res.particles.shape == (1000, 1) and res.trajectory.shape == (201, 1000, 1) and res.times.shape == (201,)
    for t in (0.5, 1.0, 2.0):
        v = float(res.at(t).var())
        assert abs(v / v_exact(t) - 1) < 0.03, (t, v, v_exact(t))
    k = int(torch.argmin((res.times - 0.5).abs()))
    ve = v_exact(0.5)
    f_exact = (1 - ve) ** 2 / ve
    assert abs(float(res.diagnostics["fisher"][k]) / f_exact - 1) < 0.15
    dkl = kl_gauss(v_exact(0.0)) - kl_gauss(v_exact(2.0))
    assert abs(float(res.diagnostics["kl_decrease"][-1]) / dkl - 1) < 0.10
    assert res.info["init_fit"]["relative_error"] < 0.02
    if res.info["solver"] == "heun2":
        assert res.nfe == 400  # heun2: 2 evaluations per step, 200 steps


def _moments_exact(m, C, mu0, S0, ts):
    """Mean and covariance of the Fokker–Planck solution for π = N(m, C) from N(mu0, S0):
    μ' = −P(μ − m), Σ' = −PΣ − ΣP + 2I with P = C⁻¹ (solved to 1e-10)."""
    P = np.linalg.inv(C)
    d = len(m)

    def rhs(t, z):
        mu, S = z[:d], z[d:].reshape(d, d)
        return np.concatenate([-P @ (mu - m), (-P @ S - S @ P + 2 * np.eye(d)).ravel()])

    sol = solve_ivp(rhs, (0, max(ts)), np.concatenate([mu0, S0.ravel()]), t_eval=ts, rtol=1e-10, atol=1e-12)
    return [(sol.y[:d, i], sol.y[d:, i].reshape(d, d)) for i in range(len(ts))]


def test_2d_correlated_gaussian_moments():
    m = np.array([1.0, -0.5])
    C = np.array([[1.0, 0.6], [0.6, 0.8]])
    target = sf.Gaussian(torch.tensor(m), torch.tensor(C))
    init = sf.Gaussian(torch.zeros(2), 0.5 * torch.eye(2))
    res = sf.sample(target, init=init, n=2000, t_final=3.0, dt=0.01, save_every=10, seed=1)
    x0 = res.trajectory[0].double().numpy()
    # start the exact moment ODE from the sample's own moments, so the test measures the flow
    exact = _moments_exact(m, C, x0.mean(0), np.cov(x0.T), [1.0, 3.0])
    for t, (mu, S) in zip((1.0, 3.0), exact):
        x = res.at(t).double().numpy()
        assert np.linalg.norm(x.mean(0) - mu) / np.linalg.norm(mu) < 0.05, t
        assert np.linalg.norm(np.cov(x.T) - S) / np.linalg.norm(S) < 0.05, t


def test_heun_and_dopri5_agree(capsys):
    kw = dict(init=INIT_51, n=1000, t_final=2.0, dt=0.01, seed=0, eta=3.0)  # η·λ_max·dt ≤ 1.5: heun2 stays stable
    heun = sf.sample(TARGET_51, solver="heun2", **kw)
    dopri = sf.sample(TARGET_51, solver="dopri5", rtol=1e-5, atol=1e-6, save_every=50, **kw)
    print(f"NFE heun2 {heun.nfe}, dopri5 {dopri.nfe}")
    for t in (0.5, 1.0, 2.0):
        vh, vd = float(heun.at(t).var()), float(dopri.at(t).var())
        assert abs(vh / vd - 1) < 0.01, (t, vh, vd)


def test_stiff_eta_is_refused_or_solved_never_nan():
    kw = dict(init=INIT_51, n=200, t_final=0.2, dt=0.01, seed=0)
    with pytest.raises(sf.SamplingError, match="stiff"):
        sf.sample(TARGET_51, eta=1000.0, solver="heun2", **kw)
    with pytest.raises(sf.SamplingError, match="stiff"):
        sf.sample(TARGET_51, eta=1000.0, solver="heun2", stiffness_check=False, **kw)
    with pytest.raises(sf.SamplingError, match="stiff"):  # rkc: beyond max_stages
        sf.sample(TARGET_51, eta=1000.0, **kw)
    # adaptive: completes with small steps (and warns), or stops on max_nfe with a clear error
    with pytest.warns(RuntimeWarning, match="stiff"):
        try:
            res = sf.sample(TARGET_51, eta=300.0, solver="dopri5", max_nfe=20000, save_every=20, **kw)
        except sf.SamplingError as e:
            assert "max_nfe" in str(e)
        else:
            assert torch.isfinite(res.particles).all()
            assert res.nfe > 200  # it needed far more steps than the 20 a non-stiff run takes
    with pytest.raises(sf.SamplingError, match="max_nfe"), pytest.warns(RuntimeWarning):
        sf.sample(TARGET_51, eta=3000.0, solver="dopri5", max_nfe=500, **kw)


@pytest.mark.parametrize("solver", ["heun2", "dopri5"])
def test_reproducible(solver):
    kw = dict(init=INIT_51, n=300, t_final=0.3, dt=0.01, solver=solver, save_every=10)
    a = sf.sample(TARGET_51, seed=5, **kw)
    b = sf.sample(TARGET_51, seed=5, **kw)
    c = sf.sample(TARGET_51, seed=6, **kw)
    assert torch.equal(a.particles, b.particles) and torch.equal(a.thetas, b.thetas)
    assert not torch.equal(a.particles, c.particles)


def test_direct_torchdiffeq_equals_sample():
    n, T = 200, 0.3
    x0 = INIT_51.sample(n, generator=torch.Generator().manual_seed(0)).float()
    net = sf.ScoreMLP(1, generator=torch.Generator().manual_seed(1))
    net2 = sf.ScoreMLP(1, generator=torch.Generator().manual_seed(1))
    for solver, times in (("heun2", None), ("dopri5", [0.0, T])):
        flow = sf.SBTMFlow(TARGET_51, net, eta=5.0)
        res = sf.sample(TARGET_51, init=x0, t_final=T, dt=0.01, solver=solver, times=times, score_model=net2,
                        init_steps=0, eta=5.0)
        t = torch.linspace(0, T, 31, dtype=torch.float64) if solver == "heun2" else torch.tensor([0.0, T], dtype=torch.float64)
        ys = torchdiffeq.odeint(flow, flow.initial_state(x0), t, method=solver, rtol=1e-5, atol=1e-6)
        x_T, theta_T = flow.split(ys[-1])
        assert torch.equal(x_T, res.particles), solver
        assert torch.equal(theta_T, res.thetas[-1]), solver


def test_stop_fisher_stops_early():
    for solver in ("heun2", "dopri5"):
        res = sf.sample(TARGET_51, init=INIT_51, n=500, t_final=3.0, dt=0.01, solver=solver, save_every=10,
                        stop_fisher=0.05, seed=0, eta=3.0)  # heun2-stable η (see test_heun_and_dopri5_agree)
        assert res.times[-1] < 3.0
        assert float(res.diagnostics["fisher"][-1]) < 0.05 <= float(res.diagnostics["fisher"][-2])
        assert "stop_fisher" in res.info["stopped"]


def test_save_and_load(tmp_path):
    res = sf.sample(TARGET_51, init=INIT_51, n=100, t_final=0.1, dt=0.01, seed=0)
    res.save(tmp_path / "run.pt")
    back = sf.load(tmp_path / "run.pt")
    assert torch.equal(back.particles, res.particles) and torch.equal(back.trajectory, res.trajectory)
    assert back.nfe == res.nfe and back.config == res.config
    assert torch.equal(back.diagnostics["fisher"], res.diagnostics["fisher"])
    x = torch.linspace(-1, 1, 5)[:, None]
    with torch.no_grad():
        torch.testing.assert_close(back.score_model()(x), res.score_model()(x))


@pytest.mark.parametrize("training", ["flow", "steps"])
def test_checkpoint_resume_is_bitwise(tmp_path, training):
    kw = dict(init=INIT_51, n=200, t_final=0.4, dt=0.01, save_every=2, seed=3, training=training)
    full = sf.sample(TARGET_51, **kw)
    ck = tmp_path / "ck.pt"
    nfe_stop = full.nfe // 2  # stop mid-run (the flow's rkc spends 20 RHS calls on its first spectral estimate)
    with pytest.raises(sf.SamplingError, match="max_nfe"):
        sf.sample(TARGET_51, checkpoint=ck, checkpoint_every=3, max_nfe=nfe_stop, **kw)
    assert ck.exists()
    resumed = sf.sample(TARGET_51, checkpoint=ck, checkpoint_every=3, resume=True, **kw)
    assert torch.equal(resumed.particles, full.particles)
    assert torch.equal(resumed.trajectory, full.trajectory)
    assert resumed.nfe == full.nfe
    with pytest.raises(ValueError, match="different arguments"):
        sf.sample(TARGET_51, checkpoint=ck, resume=True, **{**kw, "dt": 0.02})


class _NaNLater(sf.Path):
    """Score of N(0,1), NaN for t > 0.05 at particles with x > 0."""

    def __init__(self):
        super().__init__()
        self.target = TARGET_51

    def score(self, x, t):
        s = -x
        return torch.where((x > 0) & (torch.as_tensor(t) > 0.05), torch.nan, s)


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(init=torch.zeros(10, 2)), ValueError, r"shape \(n, 1\)"),
        (dict(init=torch.full((10, 1), math.nan)), ValueError, "NaN/inf in 10 of 10"),
        (dict(init=torch.zeros(1, 1)), ValueError, "n >= 2"),
        (dict(n=1), ValueError, "n >= 2"),
        (dict(n=-5), ValueError, "positive integer"),
        (dict(dt=0.0), ValueError, "dt must be > 0"),
        (dict(dt=-0.1), ValueError, "dt must be > 0"),
        (dict(t_final=0.0), ValueError, "t_final must be > t0"),
        (dict(solver="rk45"), ValueError, "dopri5"),
        (dict(training="sgd"), ValueError, "flow, steps"),
        (dict(divergence="approx"), ValueError, "exact, hutchinson, auto"),
        (dict(init=sf.Gaussian(torch.zeros(2), torch.eye(2))), ValueError, "dimension 2"),
        (dict(track_logdensity=True, init=torch.randn(10, 1)), ValueError, "log_prob"),
    ],
)
def test_bad_input(kwargs, err, match):
    kw = dict(n=None if isinstance(kwargs.get("init"), torch.Tensor) else 50, t_final=0.05, dt=0.01)
    kw.update(kwargs)
    with pytest.raises(err, match=match):
        sf.sample(TARGET_51, **kw)


def test_unknown_method_lists_valid():
    with pytest.raises(ValueError, match="sbtm"):
        sf.sample(TARGET_51, method="svgd")


def test_nan_target_score_is_reported():
    bad = sf.from_score(lambda x: torch.where(x > 1.0, torch.nan, -x), 1)
    with pytest.raises(sf.SamplingError, match=r"NaN/inf at \d+ of 100 initial particles"):
        sf.sample(bad, init=sf.Gaussian(torch.zeros(1), torch.eye(1)), n=100, t_final=0.1)
    with pytest.raises(sf.SamplingError, match=r"NaN/inf at \d+ of 100 particles at t=0\.0[56]"):
        sf.sample(_NaNLater(), init=sf.Gaussian(torch.zeros(1), torch.eye(1)), n=100, t_final=0.2)


def test_stiffness_that_develops_during_the_run_is_detected():
    # η grows from 5 to 9: the start is fine (z ≈ 1.2), heun2 then crosses its stability limit z = 2
    # and the run stops (a run past it trains at the edge of stability: spikes in F^n); the
    # flow's default solver, rkc, adds stages instead
    kw = dict(init=INIT_51, n=300, t_final=1.0, dt=0.01, seed=0, eta=lambda t: 5.0 + 4.0 * t)
    with pytest.raises(sf.SamplingError, match=r"became stiff at t=0\.\d+.*solver='rkc'"):
        sf.sample(TARGET_51, solver="heun2", **kw)
    res = sf.sample(TARGET_51, **kw)
    assert res.info["solver"] == "rkc" and res.info["rkc"]["max_rho_h"] > 2.0 and res.info["rkc"]["max_stages"] >= 3
    assert abs(float(res.at(1.0).double().var()) / (1 - math.exp(-2.2)) - 1) < 0.03


def test_eta_auto_keeps_the_run_stable():
    res = sf.sample(TARGET_51, init=INIT_51, n=500, t_final=1.0, dt=0.01, seed=0, eta="auto")
    assert res.info["stiffness"]["max_eta_lambda_dt"] <= 2.0
    assert float(res.diagnostics["eta"].min()) > 0
    assert abs(float(res.at(1.0).var()) / (1 - math.exp(-2.2)) - 1) < 0.05
