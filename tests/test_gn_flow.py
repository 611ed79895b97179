"""theta_flow="gn" (sbtm_flows.gn_flow): the dense Gauss–Newton matrix against a Jacobian built
another way, the right-hand side against −η(G + δI)⁻¹g, the factor's root against dense algebra,
Lanczos on Cᵀ∇²L C against a dense eigendecomposition, bitwise resume with the factor kept outside
the state, an adaptive solver, and bad input."""

import sys
from pathlib import Path

import pytest
import torch

import sbtm_flows as sf
from sbtm_flows.gn_flow import GNFlow, gauss_newton_matrix, subsample_rows
from sbtm_flows.stiffness import hessian_max_eigenvalue
from sbtm_flows.theta_flow import DEFAULT_ETA, resolve_theta_flow

sys.path.insert(0, str(Path(__file__).parent))
from flow_cases import dense_preconditioned_curvature, dense_score_jacobian, small_flow  # noqa: E402
from resume_cases import interrupt_and_resume  # noqa: E402

D64 = torch.float64


def _flow(delta=1e-3, eta=0.7, hidden=(5,), m=None):
    return small_flow(GNFlow(delta=delta, m=m, chunk=3), eta, hidden)


def _dense_gn(net, x):
    """(2/n) JᵀJ from the dense Jacobian J (n·d, P) of autograd.functional."""
    jac = dense_score_jacobian(net, x)
    return 2.0 * jac.T @ jac / x.shape[0]


def _dense_m(g, delta):
    return torch.linalg.inv(g + delta * g.diagonal().mean() * torch.eye(g.shape[0], dtype=g.dtype))


def test_gauss_newton_matrix_matches_the_dense_jacobian():
    _, net, flow, x = _flow()
    dense, theta = _dense_gn(net, x), sf.score.flatten_params(net)
    got = {chunk: gauss_newton_matrix(flow, x, theta, chunk=chunk) for chunk in (1, 3, 100)}  # blocks change nothing
    got["diag"] = torch.diag(sf.diag_flow.gauss_newton_diagonal(flow, x, theta))  # its diagonal is DiagGNFlow's
    want = {1: dense, 3: dense, 100: dense, "diag": torch.diag(dense.diagonal())}
    for key, g in got.items():
        torch.testing.assert_close(g, want[key], rtol=1e-10, atol=1e-13)
    assert subsample_rows(7, 3).tolist() == [0, 2, 4] and subsample_rows(7, 7) is None and subsample_rows(7, None) is None
    with pytest.raises(ValueError, match="x must be"):
        gauss_newton_matrix(flow, x[:0], theta)


@pytest.mark.parametrize("m", [None, 4])
def test_gn_rhs_equals_its_equations(m):
    # M = (G + δ·mean diag G·I)⁻¹ (G on the subsample ⌊k·7/4⌋ = 0, 1, 3, 5 for m = 4); dΘ/dt = −η M ∇_Θ L
    tgt, net, flow, x = _flow(delta=0.01, m=m)
    rows = x if m is None else x[[0, 1, 3, 5]]
    M = _dense_m(_dense_gn(net, rows), 0.01)
    y = flow.initial_state(x)
    nd, P = x.numel(), flow.n_params
    assert y.numel() == nd + P and flow.n_aux == 0  # the factor is not in the state
    factor = flow.preconditioner(y)
    torch.testing.assert_close(factor.dense(), M, rtol=1e-8, atol=1e-10)
    # the root C = L⁻ᵀ (G + δI = L Lᵀ) applied column by column, and C Cᵀ q = M q
    chol = torch.linalg.cholesky(torch.linalg.inv(M))
    eye = torch.eye(P, dtype=D64)
    C = torch.stack([factor.root(e) for e in eye], dim=1)
    torch.testing.assert_close(C, torch.linalg.inv(chol).T, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(torch.stack([factor.root_t(e) for e in eye], dim=1), C.T, rtol=0, atol=0)
    loss = sf.losses.implicit_score_matching(net, x)[0]
    grad = torch.cat([u.reshape(-1) for u in torch.autograd.grad(loss, list(net.parameters()))])
    dy = flow(torch.tensor(0.1), y)
    torch.testing.assert_close(dy[nd:], -0.7 * M @ grad, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(dy[:nd].view(7, 2), tgt.score(x) - net(x).detach())
    # refresh_aux recomputes the factor from the state's (X, Θ)
    y2 = y.clone()
    flow.split(y2)[1].add_(0.3)
    assert torch.equal(flow.refresh_aux(y2, 0.1), y2)
    net2 = sf.ScoreMLP(2, (5,), "tanh", dtype=D64)
    torch.nn.utils.vector_to_parameters(flow.split(y2)[1].clone(), net2.parameters())
    torch.testing.assert_close(flow.preconditioner(y2).dense(), _dense_m(_dense_gn(net2, rows), 0.01), rtol=1e-8, atol=1e-10)


def test_lanczos_sees_the_natural_gradient_curvature():
    # the Θ block's Jacobian −η M ∇²L: Lanczos on Cᵀ ∇²L C reads λ_max(M^{1/2} ∇²L M^{1/2}) (dense:
    # symmetric root by eigh), not λ_max(∇²L); the Gauss–Newton part alone, Cᵀ G C, lies in [0, 1)
    _, net, flow, x = _flow(hidden=(3,))
    y = flow.initial_state(x)
    dense, plain = dense_preconditioned_curvature(net, x, flow, y)
    lam = hessian_max_eigenvalue(flow, y, iters=sf.score.flatten_params(net).numel(), generator=torch.Generator().manual_seed(0))
    assert lam == pytest.approx(dense, rel=1e-6) and abs(dense - plain) > 0.5 * max(dense, plain)
    C = flow.preconditioner(y).inverse_lower.T
    gn = torch.linalg.eigvalsh(C.T @ _dense_gn(net, x) @ C)
    assert float(gn.min()) > -1e-10 and float(gn.max()) < 1.0


def test_gn_run_resumes_bitwise(tmp_path):
    # the factor lives outside the state: the resumed run recomputes it from the checkpoint's (X, Θ)
    # at the output time it resumes from, as the uninterrupted run does there
    target = sf.GaussianMixture(torch.tensor([[-2.0], [2.0]]), 1.0, torch.tensor([0.25, 0.75]))
    kw = dict(method="sbtm", init=sf.Gaussian(torch.zeros(1), torch.eye(1)), n=60, t_final=0.2, dt=0.01, save_every=2,
              theta_flow=GNFlow(every=3), hidden=(8,))
    full, resumed, k = interrupt_and_resume(target, tmp_path / "ck.pt", checkpoint_every=1, **kw)
    assert k > 0 and torch.equal(resumed.particles, full.particles) and torch.equal(resumed.thetas, full.thetas)
    assert full.info["theta_flow"] == {"name": "gn", "delta": 1e-3, "every": 3, "m": None}
    assert full.info["eta_schedule"]["refreshes"] >= 6 and DEFAULT_ETA["gn"] == "track"


def test_an_adaptive_solver_runs_the_gn_flow():
    # the factor refreshed at the output times; dopri5 integrates the coupled state in between
    tgt = sf.Gaussian(torch.zeros(1), torch.eye(1))
    res = sf.sample(tgt, method="sbtm", init=sf.Gaussian(torch.zeros(1), 0.25 * torch.eye(1)), n=80, t_final=0.3, dt=0.05,
                    solver="dopri5", theta_flow="gn", eta=0.5, hidden=(8,), save_every=2, seed=1, max_nfe=3000)
    assert res.info["solver"] == "dopri5" and torch.isfinite(res.particles).all()
    v0, v1 = (float(res.trajectory[i].var()) for i in (0, -1))
    assert v0 < v1 < 1.0  # spreading toward the target's unit variance


@pytest.mark.parametrize("kw, what", [({"delta": 0.0}, "delta"), ({"delta": float("nan")}, "delta"), ({"m": 0}, "m"),
                                      ({"m": 2.5}, "m"), ({"every": 0}, "every"), ({"chunk": True}, "chunk")])
def test_bad_gn_settings_are_refused(kw, what):
    with pytest.raises(ValueError, match=f"GNFlow: {what} must be"):
        GNFlow(**kw)


def test_gn_without_a_factor_says_how_to_get_one():
    flow = resolve_theta_flow("gn")
    assert isinstance(flow, GNFlow) and flow.aux_size([3, 4]) == 0
    with pytest.raises(RuntimeError, match="estimate"):
        flow.rates(torch.zeros(7), torch.zeros(0), 1.0)
    with pytest.raises(RuntimeError, match="estimate"):
        flow.start(torch.zeros(7))


def test_a_singular_gauss_newton_matrix_stops_the_run():
    # Θ with a NaN: G is NaN, Cholesky fails, the refresh stops with a SamplingError naming delta
    _, net, flow, x = _flow()
    theta = sf.score.flatten_params(net).clone()
    theta[0] = float("nan")
    with pytest.raises(sf.SamplingError, match="delta"):
        flow.theta_flow.estimate(flow, x, theta, 0.1)
