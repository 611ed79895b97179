"""theta_flow="diag" (sbtm_flows.diag_flow): the Gauss–Newton diagonal against a dense Jacobian,
the right-hand side's equations, the state layout, bitwise resume, adaptive solvers, and that on
a dilation path it fits the score where the plain gradient flow does not."""

import sys
from pathlib import Path

import pytest
import torch

import sbtm_flows as sf
from sbtm_flows.diag_flow import DiagGNFlow, gauss_newton_diagonal
from sbtm_flows.stiffness import hessian_max_eigenvalue
from sbtm_flows.theta_flow import DEFAULT_ETA, resolve_theta_flow

sys.path.insert(0, str(Path(__file__).parent))
from flow_cases import dense_preconditioned_curvature, dense_score_jacobian, refreshed_flow_runs, small_flow  # noqa: E402

D64 = torch.float64


def _flow(power=1.0, delta=1e-3, eta=0.7, hidden=(5,)):
    return small_flow(DiagGNFlow(power=power, delta=delta, chunk=3), eta, hidden)


def _dense_gn_diagonal(net, x):
    """(2/n) Σ_{i,k} (∂s_k(x_i)/∂Θ)² from the dense Jacobian (n·d, P) of autograd.functional."""
    return 2.0 * dense_score_jacobian(net, x).pow(2).sum(0) / x.shape[0]


def test_gauss_newton_diagonal_matches_the_dense_jacobian():
    _, net, flow, x = _flow()
    dense = _dense_gn_diagonal(net, x)
    theta = sf.score.flatten_params(net)
    for chunk in (1, 3, 100):  # blocks of rows change nothing
        torch.testing.assert_close(gauss_newton_diagonal(flow, x, theta, chunk=chunk), dense, rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="x must be"):
        gauss_newton_diagonal(flow, x[:0], theta)
    with pytest.raises(ValueError, match="chunk"):
        gauss_newton_diagonal(flow, x, theta, chunk=0)


@pytest.mark.parametrize("power", [1.0, 0.5])
def test_diag_rhs_equals_its_equations(power):
    # A(t0) = log D, D = (diag G + δ·mean diag G)^{−p}; dΘ/dt = −η D ∇_Θ L, dA/dt = 0
    tgt, net, flow, x = _flow(power=power, delta=0.01)
    g_diag = _dense_gn_diagonal(net, x)
    d = (g_diag + 0.01 * g_diag.mean()) ** (-power)
    y = flow.initial_state(x)
    torch.testing.assert_close(flow.preconditioner(y), d, rtol=1e-10, atol=0)
    loss = sf.losses.implicit_score_matching(net, x)[0]
    grad = torch.cat([u.reshape(-1) for u in torch.autograd.grad(loss, list(net.parameters()))])
    dy = flow(torch.tensor(0.1), y)
    nd, P = x.numel(), flow.n_params
    torch.testing.assert_close(dy[nd : nd + P], -0.7 * d * grad)
    assert torch.equal(dy[nd + P :], torch.zeros(P, dtype=D64))
    torch.testing.assert_close(dy[:nd].view(7, 2), tgt.score(x) - net(x).detach())
    # refresh_aux recomputes D from the state's (X, Θ): unchanged Θ, same D; moved Θ, D of the new Θ
    assert torch.equal(flow.refresh_aux(y, 0.1), y)
    y2 = y.clone()
    flow.split(y2)[1].add_(0.3)
    net2 = sf.ScoreMLP(2, (5,), "tanh", dtype=D64)
    torch.nn.utils.vector_to_parameters(flow.split(y2)[1].clone(), net2.parameters())
    g2 = _dense_gn_diagonal(net2, x)
    torch.testing.assert_close(flow.preconditioner(flow.refresh_aux(y2, 0.1)), (g2 + 0.01 * g2.mean()) ** (-power))


def test_lanczos_sees_the_preconditioned_hessian():
    # the Θ block's Jacobian −η·D·∇²L: its stiff end is λ_max(D^{1/2}∇²L D^{1/2}), not λ_max(∇²L)
    _, net, flow, x = _flow(hidden=(3,))
    y = flow.initial_state(x)
    dense, plain = dense_preconditioned_curvature(net, x, flow, y)
    lam = hessian_max_eigenvalue(flow, y, iters=sf.score.flatten_params(net).numel(), generator=torch.Generator().manual_seed(0))
    assert lam == pytest.approx(dense, rel=1e-6) and abs(dense - plain) > 0.5 * dense


def test_diag_run_resumes_bitwise_and_runs_under_dopri5(tmp_path):
    # D is in the state (A = log D) and is recomputed from (X, Θ) at the same steps after a resume;
    # an adaptive solver refreshes D at the output times and integrates the coupled state in between
    full, resumed, k, res = refreshed_flow_runs(tmp_path, DiagGNFlow(every=3), "diag", 0.005)
    assert k > 0 and torch.equal(resumed.particles, full.particles) and torch.equal(resumed.thetas, full.thetas)
    assert full.info["theta_flow"] == {"name": "diag", "power": 1.0, "delta": 1e-3, "every": 3}
    assert full.info["eta_schedule"]["refreshes"] >= 6 and DEFAULT_ETA["diag"] == "track"
    assert res.info["solver"] == "dopri5" and torch.isfinite(res.particles).all()
    v0, v1 = (float(res.trajectory[i].var()) for i in (0, -1))
    assert v0 < v1 < 1.0  # spreading toward the target's unit variance
    with pytest.raises(ValueError, match="DiagGNFlow"):
        DiagGNFlow(power=0.0)
    with pytest.raises(ValueError, match="DiagGNFlow"):
        DiagGNFlow(delta=-1.0)
    with pytest.raises(ValueError, match="DiagGNFlow"):
        DiagGNFlow(every=0)
    assert isinstance(resolve_theta_flow("diag"), DiagGNFlow)


@pytest.mark.slow
def test_diag_flow_moves_mass_between_modes_where_gd_does_not():
    # §5.4's path (λ₀ = 0.1): right after the collapse the corner modes hold N(0, I)'s Voronoi mass
    # (≈ 0.12 each), which annealed ULA drains toward 0.066 by t = 0.2 and 0.056 by t = 0.5.  The
    # gd flow (eta="track") keeps them frozen; the diagonal Gauss–Newton flow moves mass out.
    # Measured (n = 1000, README): corners at t = 0.5 0.1207 (gd) vs 0.071 (diag).
    target = sf.experiments.make_target("gmm2d")
    path = sf.Dilation(target, t_final=20.0, lam0=0.1)
    corners = [i for i, m in enumerate(target.means.tolist()) if abs(m[0]) == abs(m[1]) == 6.0]
    out = {}
    for theta_flow in ("gd", "diag"):
        res = sf.sample(path, method="sbtm", training="flow", eta="track", theta_flow=theta_flow, n=300, t_final=0.3, dt=0.01,
                        seed=0, init=sf.Gaussian(torch.zeros(2), torch.eye(2)), save_every=10**9)
        w0, w1 = (sf.metrics.mode_weights(res.trajectory[i] / path.scale(float(res.times[i])), target.means) for i in (0, -1))
        out[theta_flow] = (float(w0[corners].mean()), float(w1[corners].mean()))
    assert out["gd"][0] > 0.1 and abs(out["gd"][1] - out["gd"][0]) < 0.005, out
    assert out["diag"][1] < out["diag"][0] - 0.015, out


def test_a_stopped_diag_run_names_the_refresh_interval():
    # rkc refuses the step (ρh far beyond max_stages); with a piecewise-refreshed D the error also
    # says that D may be stale and how to refresh it more often; the plain flow's does not
    target = sf.GaussianMixture(torch.tensor([[-2.0], [2.0]]), 1.0, torch.tensor([0.25, 0.75]))
    kw = dict(method="sbtm", init=sf.Gaussian(torch.zeros(1), torch.eye(1)), n=60, t_final=0.1, dt=0.01, save_every=2,
              eta=1e5, solver="rkc", solver_options={"max_stages": 3})
    with pytest.raises(sf.SamplingError, match=r"max_stages = 3 .*refreshes its preconditioner every 3 step\(s\).*every=1"):
        sf.sample(target, theta_flow=DiagGNFlow(every=3), **kw)
    with pytest.raises(sf.SamplingError, match="max_stages = 3") as err:
        sf.sample(target, **kw)
    assert "refreshes its preconditioner" not in str(err.value)
    with pytest.raises(sf.SamplingError, match=r"every 1 step\(s\).*lower dt or the tracked η's ratio"):
        sf.sample(target, theta_flow=DiagGNFlow(every=1), **kw)  # already every step: no "every=1" advice
