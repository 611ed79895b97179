"""Issue 10's acceptance for the coupled flow on paper §5.4 and posteriordb eight_schools, as
slow runs (``pytest -m slow``).  Neither is met today: each is a strict xfail naming the measured
failure, so it turns into an error (XPASS) the day it passes and the marker must go.

Measured (seed 0, README "η and stiffness"):
* §5.4, ``training="flow", eta="track"`` (ScaledScore), n = 4000, T = 20: stable to the end, but SBTM
  min mode weight 0.0 and TV to annealed ULA's weights 0.283 (bound 0.06; the discrete training: 0.025);
  with ``TrackingEta(ratio=200)``: min 0.0285, TV 0.171; with the diagonal Gauss–Newton Θ flow
  (``theta_flow="diag"``, ratio 50): min 0.0288, TV 0.0737 — the test below runs that one.
* eight_schools, flow defaults (rkc, η = 5), n = 2000, T = 30: ``SamplingError`` at t = 4.57
  (ρ = 2.3·10⁶, > 200 rkc stages): a particle escapes along the τ tail (X block).
* eight_schools with the tail-anchored network ``ResidualScore`` (s = ∇log π + r_Θ, opt-in), otherwise the
  same run: it runs to the end (max ρh 15.6, ≤ 6 rkc stages, 1113 s on the loaded machine) with max mean
  error 0.093 and max sd error 0.079 (bounds 0.1), but energy distance 2.11× the noise floor (bound 1.5×):
  the slow μ mode has not relaxed by T = 30 (ULA at T = 30: 1.2×; README "η and stiffness").
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import sbtm_flows as sf

sys.path.insert(0, str(Path(__file__).parent))
import paper_cases as P  # noqa: E402


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="§5.4 with the flow: theta_flow='diag', eta='track' finds every mode (min 2.9 %) "
                                        "but TV to ULA 0.074 > 0.06 (gd flow: 0.283; README)")
def test_54_paper_with_the_flow():
    s = P.grid_54("sbtm", n=4000, training="flow", eta="track", theta_flow="diag")
    u = P.grid_54("ula", n=4000)
    tv = sf.metrics.tv_distance(s["weights"], u["weights"])
    print(f"5.4 flow (theta_flow='diag', eta='track'): SBTM min {s['min_weight']:.4f}, ULA min {u['min_weight']:.4f}, TV {tv:.4f}")
    assert s["min_weight"] >= 0.01 and u["min_weight"] >= 0.01
    assert tv <= 0.06


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=sf.SamplingError,
                   reason="eight_schools with the flow's default network stops at t = 4.57 (X-block stiffness, ρ = 2.3e6; "
                          "ResidualScore runs through but misses the energy bound: README)")
def test_eight_schools_with_the_flow_defaults():
    post = sf.posteriordb.load("eight_schools")
    res = sf.sample(post, method="sbtm", n=2000, t_final=30.0, save_every=3000)
    c = post.compare(res, metric="energy")
    assert c["max_mean_error"] <= 0.1 and c["max_sd_error"] <= 0.1
    assert c["ratio"] <= 1.5
    assert res.info["training"] == "flow" and torch.isfinite(res.particles).all()


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="eight_schools with ResidualScore runs through but the energy distance is 2.11x the floor (README)")
def test_eight_schools_with_the_residual_network():
    post = sf.posteriordb.load("eight_schools")
    model = sf.score.ResidualScore(sf.ScoreMLP(post.dim, generator=torch.Generator().manual_seed(0)), post)
    res = sf.sample(post, method="sbtm", n=2000, t_final=30.0, save_every=3000, score_model=model)
    c = post.compare(res, metric="energy")
    print(f"eight_schools, ResidualScore: max mean error {c['max_mean_error']:.3f}, max sd error {c['max_sd_error']:.3f}, "
          f"energy ratio {c['ratio']:.2f}")
    assert res.info["training"] == "flow" and torch.isfinite(res.particles).all()
    assert c["max_mean_error"] <= 0.1 and c["max_sd_error"] <= 0.1
    assert c["ratio"] <= 1.5


def test_54_quick_with_the_flow():
    """The experiment's quick schedule (n = 400, T = 10, dt = 0.05, λ₀ = 0.2) with the flow and the
    tracked η: it runs through (a fixed η stops: README) and finds every mode.  Measured, seeds 0/1/2:
    SBTM min weight 0.0325/0.03/0.0375, TV to annealed ULA 0.145/0.200/0.168 (the discrete training:
    0.120/0.098/0.108; two independent weight vectors at n = 400 differ by ≈ 0.11), TV to uniform
    0.115/0.09/0.11 (ULA ≈ 0.21): the flow's weights are systematically flatter than annealed ULA's.
    Bounds (looser than the acceptance's 0.06 at n = 4000, which is not met): min ≥ 0.015, TV < 0.25."""
    s = P.grid_54("sbtm", n=400, t_final=10.0, dt=0.05, lam0=0.2, training="flow", eta="track")
    u = P.grid_54("ula", n=400, t_final=10.0, dt=0.05, lam0=0.2)
    assert s["result"].info["training"] == "flow" and s["result"].info["solver"] == "rkc"
    assert s["min_weight"] >= 0.015, s["weights"]
    assert sf.metrics.tv_distance(s["weights"], u["weights"]) < 0.25
