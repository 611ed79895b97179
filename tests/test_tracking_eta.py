"""η(t) = ratio·κ_X/λ_max(∇²_Θ L) (sbtm_flows.tracking_eta): the value against its definition on
a target of known curvature, the bounds, bad input, reproducibility, and the coupled system's
spectral radius held near (1 + ratio)·κ_X on a dilation path where a fixed η lets it explode."""

from __future__ import annotations

import pytest
import torch
from resume_cases import interrupt_and_resume

import sbtm_flows as sf
from sbtm_flows.dynamics import SBTMFlow
from sbtm_flows.score import ScaledScore, ScoreMLP
from sbtm_flows.stiffness import hessian_max_eigenvalue
from sbtm_flows.tracking_eta import TrackingEta

SIGMA = 0.2  # N(0, σ²I): ∇²log π = −I/σ², so κ_X = 1/σ² = 25 at every particle


def _flow() -> tuple[SBTMFlow, torch.Tensor]:
    target = sf.Gaussian(torch.zeros(2, dtype=torch.float64), SIGMA**2 * torch.eye(2, dtype=torch.float64))
    net = ScoreMLP(2, (16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    flow = SBTMFlow(target, net, eta=1.0)
    x0 = torch.randn(300, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return flow, flow.initial_state(x0)


def test_eta_is_ratio_times_target_curvature_over_loss_curvature():
    flow, y = _flow()
    tracker = TrackingEta(ratio=3.0, first_iters=10, seed=2)
    eta = tracker.refresh(flow, y, 0.0)
    assert tracker.kappa == pytest.approx(1 / SIGMA**2, rel=1e-9)  # isotropic Hessian: exact in one iteration
    lam = hessian_max_eigenvalue(flow, y, 40, torch.Generator().manual_seed(3))
    assert tracker.lam == pytest.approx(lam, rel=0.05)
    assert eta == pytest.approx(3.0 * 25.0 / lam, rel=0.05)
    assert tracker(0.7) == eta  # piecewise constant between updates
    capped = TrackingEta(ratio=3.0, eta_max=0.5 * eta, seed=2)
    assert capped.refresh(flow, y, 0.0) == 0.5 * eta
    floored = TrackingEta(ratio=3.0, kappa_min=1e3, seed=2)
    assert floored.refresh(flow, y, 0.0) == pytest.approx(3.0 * 1e3 / floored.lam)


@pytest.mark.parametrize("kwargs", [dict(ratio=0.0), dict(ratio=float("nan")), dict(every=0), dict(iters=1.5),
                                    dict(eta_min=2.0, eta_max=1.0), dict(kappa_min=-1.0)])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match="TrackingEta"):
        TrackingEta(**kwargs)


def test_no_value_before_update_and_unknown_string():
    with pytest.raises(RuntimeError, match="refresh"):
        TrackingEta()(0.0)
    with pytest.raises(ValueError, match="'track'"):
        sf.sample(sf.Gaussian(torch.zeros(1), torch.eye(1)), method="sbtm", n=20, t_final=0.02, eta="trak")


def _dilation_run(eta, t_final: float, model=None) -> sf.Result:
    from sbtm_flows.experiments import make_target
    from sbtm_flows.paths import Dilation

    path = Dilation(make_target("gmm2d"), t_final=20.0, lam0=0.1)
    model = None if model is None else ScaledScore(ScoreMLP(2, generator=torch.Generator().manual_seed(0)), path.scale)
    return sf.sample(path, method="sbtm", training="flow", n=200, t_final=t_final, dt=0.01, eta=eta, score_model=model,
                     init=sf.Gaussian(torch.zeros(2), torch.eye(2)), save_every=50, seed=0)


def test_dilation_flow_spectral_radius_follows_the_particle_block():
    """Paper §5.4's path at λ₀ = 0.1: κ_X ≈ 1/λ² ≈ 100 and the grid step is h = dt·(λ/0.5)² = 4·10⁻⁴.
    With a ScaledScore network the loss carries a factor λ⁻² = 100: η = 10 gives ρ·h ≈ 116 at t = 0
    (15 rkc stages, and ρ grows 100-fold within t = 0.05: README); the tracked η (ratio 10; η ≈ 0.04–0.14
    as λ_max(∇²_Θ L) grows to 2.4·10⁴) keeps ρ·h near 1.2·(1 + ratio)·κ_X·h ≈ 0.5 (measured 0.40;
    bound 3× that, as the curvature grows between refreshes), 2 stages a step."""
    res = _dilation_run(TrackingEta(ratio=10.0), 0.012)
    info = res.info
    h = 0.01 * (0.1 / 0.5) ** 2
    assert info["rkc"]["max_rho_h"] <= 3 * 1.2 * (1 + 10.0) * info["eta_schedule"]["kappa_max_seen"] * h
    assert 95 < info["eta_schedule"]["kappa_max_seen"] < 105  # 1/λ² at the unit-variance modes
    assert torch.isfinite(res.particles).all() and res.info["rkc"]["max_stages"] == 2
    fixed = _dilation_run(10.0, h, model="scaled")
    assert fixed.info["rkc"]["max_rho_h"] > 50 * info["rkc"]["max_rho_h"]


def test_same_seed_same_particles():
    target = sf.Gaussian(torch.zeros(1), torch.eye(1))
    init = sf.Gaussian(torch.zeros(1), 0.1 * torch.eye(1))
    runs = [sf.sample(target, method="sbtm", init=init, n=100, t_final=0.2, dt=0.01, eta="track", save_every=10)
            for _ in range(2)]
    assert torch.equal(runs[0].particles, runs[1].particles)
    assert runs[0].info["eta_schedule"]["refreshes"] == 2  # every 10 of the 20 steps
    assert torch.equal(runs[0].diagnostics["eta"], runs[1].diagnostics["eta"])


def test_resume_is_bitwise(tmp_path):
    """The schedule's state (η, λ_max, κ_X, warm-start vectors, generator) travels in the checkpoint."""
    target = sf.Gaussian(torch.zeros(1), torch.eye(1))
    kw = dict(method="sbtm", init=sf.Gaussian(torch.zeros(1), 0.1 * torch.eye(1)), n=100, t_final=0.3, dt=0.01,
              save_every=5, eta=TrackingEta(every=4))
    full, resumed, _ = interrupt_and_resume(target, tmp_path / "ck.pt", checkpoint_every=1, **kw)
    assert torch.equal(resumed.particles, full.particles) and torch.equal(resumed.thetas, full.thetas)
    assert torch.equal(resumed.diagnostics["eta"], full.diagnostics["eta"])
    assert resumed.info["eta_schedule"]["refreshes"] == full.info["eta_schedule"]["refreshes"]
