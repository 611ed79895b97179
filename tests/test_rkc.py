"""The stabilised explicit solver (sbtm_flows.rkc): order, stability interval, spectral-radius
estimate, stage selection, and the coupled flow with it (no edge-of-stability spike on §5.1)."""

from __future__ import annotations

import math

import pytest
import torch
import torchdiffeq

import sbtm_flows as sf
from sbtm_flows.rkc import SpectralRadius, rkc_stability_bound, rkc_stages

LAM = torch.tensor([-1.0, -2000.0], dtype=torch.float64)


def _linear(t, y):
    """y' = diag(−1, −2000) y + cos t: one slow and one very stiff component."""
    return LAM * y + torch.cos(t)


def _exact(t: float) -> torch.Tensor:
    """y(t) = (y₀ − a)e^{λt} + a cos t + b sin t, a = −λ/(1 + λ²), b = 1/(1 + λ²) (componentwise)."""
    a = -LAM / (LAM**2 + 1)
    b = 1 / (LAM**2 + 1)
    return (Y0 - a) * torch.exp(LAM * t) + a * math.cos(t) + b * math.sin(t)


#: the slow component starts off its equilibrium, the stiff one on its slow manifold (RKC damps
#: a stiff transient only slowly, |R_s| ≈ 1 − 2ε/3 near −β(s), so order is measured without one)
Y0 = torch.tensor([1.0, float(2000 / (2000**2 + 1))], dtype=torch.float64)


def _solve(n_steps: int, method: str = "rkc") -> torch.Tensor:
    t = torch.linspace(0, 1, n_steps + 1, dtype=torch.float64)
    opts = {"spectral": SpectralRadius(generator=torch.Generator().manual_seed(0))} if method == "rkc" else {}
    return torchdiffeq.odeint(_linear, Y0, t, method=method, options=opts)[-1]


def test_rkc_is_second_order_and_stable_far_beyond_heun():
    errs = [float((_solve(n) - _exact(1.0)).abs().max()) for n in (20, 40, 80)]
    # h·ρ = 2000/20 = 100 ≫ 2: heun2 diverges, rkc converges at order 2 (error ratio 4 per halving)
    assert not torch.isfinite(_solve(20, "heun2")).all() or float((_solve(20, "heun2") - _exact(1.0)).abs().max()) > 1e3
    for e0, e1 in zip(errs, errs[1:]):
        assert 3.3 < e0 / e1 < 4.7, errs
    assert errs[-1] < 1e-5


def test_stability_polynomial_is_bounded_on_its_interval():
    # one rkc step on y' = λy from y = 1 is R_s(z), z = λh: |R_s| ≤ 1 on [−β(s), 0], > 1 at −1.2β(s)
    for s in (2, 3, 7, 15):
        beta = rkc_stability_bound(s)
        assert 0.49 * s**2 < beta < 0.66 * s**2
        z = torch.linspace(-beta, 0, 400, dtype=torch.float64)
        one = torchdiffeq.odeint(lambda t, y: z * y, torch.ones_like(z), torch.tensor([0.0, 1.0], dtype=torch.float64),
                                 method="rkc", options={"stages": s})[-1]
        assert float(one.abs().max()) <= 1.0 + 1e-9
        out = torchdiffeq.odeint(lambda t, y: -1.2 * beta * y, torch.ones(1, dtype=torch.float64),
                                 torch.tensor([0.0, 1.0], dtype=torch.float64), method="rkc", options={"stages": s})[-1]
        assert float(out.abs()) > 1.0


def test_stage_count_covers_the_spectrum_with_its_safety():
    for z in (0.0, 1.5, 10.0, 100.0, 5000.0):
        s = rkc_stages(z, safety=1.2)
        assert rkc_stability_bound(s) >= 1.2 * z
        assert s == 2 or rkc_stability_bound(s - 1) < 1.2 * z  # the smallest such s
    assert rkc_stages(5000.0) < 2 * math.sqrt(1.2 * 5000 / 0.65)  # ~√z, not ~z


def test_spectral_radius_estimate_and_stage_limit():
    sp = SpectralRadius(generator=torch.Generator().manual_seed(0))
    y = torch.ones(2, dtype=torch.float64)
    t = torch.tensor(0.0, dtype=torch.float64)
    rho = sp.refresh(_linear, t, y, _linear(t, y))
    assert abs(rho / 2000 - 1) < 0.02
    with pytest.raises(sf.SamplingError, match="max_stages"):
        SpectralRadius(max_stages=5, generator=torch.Generator().manual_seed(0)).stages(_linear, t, y, _linear(t, y), 0.1)
    with pytest.raises(ValueError, match="safety"):
        SpectralRadius(safety=0.5)


def test_max_stages_is_an_rkc_option():
    # the error message tells the user to raise max_stages in solver_options: that option must
    # reach the estimator (before, torchdiffeq ignored it with an "unexpected arguments" warning)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    sp = SpectralRadius(generator=torch.Generator().manual_seed(0))
    with pytest.raises(sf.SamplingError, match="max_stages = 5"):
        torchdiffeq.odeint(_linear, Y0, t, method="rkc", options={"spectral": sp, "max_stages": 5})
    y = torchdiffeq.odeint(_linear, Y0, t, method="rkc", options={"spectral": sp, "max_stages": 50})[-1]
    assert torch.allclose(y, _exact(1.0), rtol=1e-2, atol=1e-4) and sp.max_stages == 50
    with pytest.raises(ValueError, match="max_stages"):
        torchdiffeq.odeint(_linear, Y0, t, method="rkc", options={"max_stages": 1})


def test_a_step_that_leaves_the_stability_region_is_redone_with_more_stages():
    # an estimate that reads far too low (2 stages for ρh = 200): the stages grow, the step is
    # redone with ⌈1.5 s⌉ stages until it is stable, so the stiff component decays instead of
    # growing like R_2(−200)^10 ≈ 10^8^10; the result is the converged solution's
    sp = SpectralRadius(generator=torch.Generator().manual_seed(0))
    sp.stages = lambda func, t, y, f0, h: 2  # noqa: E731
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    y0 = torch.tensor([1.0, 1.0], dtype=torch.float64)  # a stiff transient, far off the slow manifold
    out = torchdiffeq.odeint(lambda t, y: LAM * y, y0, t, method="rkc", options={"spectral": sp})[-1]
    assert sp.rejections >= 10 and abs(float(out[1])) < 1.0  # every step redone; the stiff part damped
    assert float(out[0]) == pytest.approx(math.exp(-1.0), rel=1e-3)
    assert sp.summary()["rejected_steps"] == sp.rejections and sp.rho >= rkc_stability_bound(3) / (1.2 * 0.1)
    free = torchdiffeq.odeint(lambda t, y: LAM * y, y0, t, method="rkc", options={"stages": 2})[-1]  # no check
    assert not torch.isfinite(free).all() or float(free.abs().max()) > 1e6
    with pytest.raises(sf.SamplingError, match="keep growing"):  # retries stop at max_stages
        low = SpectralRadius(max_stages=4, generator=torch.Generator().manual_seed(0))
        low.stages = lambda func, t, y, f0, h: 2  # noqa: E731
        torchdiffeq.odeint(lambda t, y: LAM * y, y0, t, method="rkc", options={"spectral": low})


TARGET_51 = sf.Gaussian(torch.zeros(1), torch.eye(1))
INIT_51 = sf.Gaussian(torch.zeros(1), (1 - math.exp(-0.2)) * torch.eye(1))


def _max_fisher_error(res) -> float:
    v = 1 - torch.exp(-2 * (res.times.double() + 0.1))
    rel = res.diagnostics["fisher"] / ((1 - v) ** 2 / v) - 1
    window = (res.times >= 0.05 - 1e-9) & (res.times <= 1.0 + 1e-9)
    return float(rel[window].abs().max())


def test_flow_default_solver_has_no_edge_of_stability_spike_on_51():
    """§5.1 quick (n = 400, t ∈ [0, 1]): heun2 at η = 5 crosses its stability limit (the 44× F^n
    spike of the full run) and now stops with a SamplingError; the flow's default solver rkc
    stays stable (ρ·h ≈ 2.6, 3 stages) and F^n tracks the exact F within 0.35 (full run: 0.25)."""
    kw = dict(init=INIT_51, n=400, t_final=1.0, dt=0.01, seed=0, eta=5.0, training="flow")
    with pytest.raises(sf.SamplingError, match="became stiff at t=0"):
        sf.sample(TARGET_51, solver="heun2", **kw)
    res = sf.sample(TARGET_51, **kw)
    assert res.info["solver"] == "rkc" and res.info["rkc"]["max_rho_h"] > 2.0
    assert _max_fisher_error(res) < 0.35
    assert abs(float(res.at(1.0).double().var()) / (1 - math.exp(-2.2)) - 1) < 0.03


def test_dominant_direction_share_names_the_stiff_block():
    """y' = diag(−1, −2000) y + cos t: the power iteration's vector lies in the stiff entry."""
    spectral = SpectralRadius(generator=torch.Generator().manual_seed(0))
    spectral.name_blocks({"slow": 1, "stiff": 1})
    torchdiffeq.odeint(_linear, Y0, torch.linspace(0, 0.1, 11, dtype=torch.float64), method="rkc",
                       options={"spectral": spectral})
    share = spectral.summary()["dominant_share"]
    assert share["stiff"] > 0.999 and share["slow"] < 1e-3 and "rest" not in share
    with pytest.raises(ValueError, match="non-negative integer"):
        spectral.name_blocks({"x": -1})


def test_coupled_flow_records_which_block_is_stiff():
    """§5.4's dilation path with a ScaledScore network and η = 10: the loss carries λ⁻² = 100 and
    the Θ block holds the dominant direction (README, η and stiffness: ρ_Θ 2.5·10⁵ vs ρ_X ≈ 300)."""
    from sbtm_flows.experiments import make_target
    from sbtm_flows.paths import Dilation
    from sbtm_flows.score import ScaledScore, ScoreMLP

    path = Dilation(make_target("gmm2d"), t_final=20.0, lam0=0.1)
    model = ScaledScore(ScoreMLP(2, generator=torch.Generator().manual_seed(0)), path.scale)
    res = sf.sample(path, method="sbtm", training="flow", n=100, t_final=0.0004, dt=0.01, eta=10.0, score_model=model,
                    init=sf.Gaussian(torch.zeros(2), torch.eye(2)), save_every=1)
    share = res.info["rkc"]["dominant_share"]
    assert {"x", "theta"} <= set(share) and share["theta"] > 0.9 and share["x"] < 0.1
