"""theta_flow="kfac" (sbtm_flows.kfac_flow): the Kronecker factors against the dense Gauss–Newton
matrix of a dense Jacobian (exact where K-FAC is exact), the right-hand side against its equations
with a dense M, M^{1/2} and the Lanczos estimate against dense linear algebra, bitwise resume, an
adaptive solver, and the errors on bad input."""

import math
import sys
from pathlib import Path

import pytest
import torch

import sbtm_flows as sf
from sbtm_flows.kfac_flow import KFACFlow, kronecker_factors, layer_signals
from sbtm_flows.losses import implicit_score_matching
from sbtm_flows.score import ResidualScore, ScaledScore, at_time, functional_score, unflatten_params
from sbtm_flows.stiffness import hessian_max_eigenvalue
from sbtm_flows.theta_flow import DEFAULT_ETA, resolve_theta_flow

sys.path.insert(0, str(Path(__file__).parent))
from flow_cases import dense_preconditioned_curvature, refreshed_flow_runs  # noqa: E402

D64 = torch.float64
T = 0.3
HIDDEN = 5


def _flow(kind="plain", n=7, delta=1e-2, eta=0.7, hidden=HIDDEN, power=1.0):
    tgt = sf.Gaussian(torch.tensor([0.5, -1.0], dtype=D64), torch.eye(2, dtype=D64) * 0.7)
    net = sf.ScoreMLP(2, (hidden,), "tanh", generator=torch.Generator().manual_seed(0), dtype=D64)
    model = {"plain": net, "scaled": ScaledScore(net, lambda t: 0.5 + t), "residual": ResidualScore(net, tgt)}[kind]
    flow = sf.SBTMFlow(tgt, model, eta=eta, theta_flow=KFACFlow(delta=delta, chunk=3, power=power))
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(1), dtype=D64)
    return tgt, net, model, flow, x


def _dense_gn(model, x):
    """G = (2/n) JᵀJ ``(P, P)`` from the dense Jacobian ``(n·d, P)`` of s at time T."""
    theta = sf.score.flatten_params(model)
    jac = torch.autograd.functional.jacobian(lambda th: functional_score(model, unflatten_params(model, th), x, T).reshape(-1), theta)
    return 2.0 * jac.T @ jac / x.shape[0]


def _layer_index(hidden=HIDDEN):
    """Per layer of a ScoreMLP(2, (hidden,)): the flat indices of [W | b] in row-major order ``(out·(in+1),)``."""
    out, off = [], 0
    for o, i in ((hidden, 2), (2, hidden)):
        out.append(torch.tensor([off + j * i + p if p < i else off + o * i + j for j in range(o) for p in range(i + 1)]))
        off += o * i + o
    return out


def _block(g, idx):
    return g[idx][:, idx]


@pytest.mark.parametrize("kind", ["plain", "scaled", "residual"])
def test_layer_signals_rebuild_the_exact_gauss_newton_blocks(kind):
    # G_l = (2/n) Σᵢ (Σ_k b_ik b_ikᵀ) ⊗ ãᵢãᵢᵀ exactly, through the ScaledScore / ResidualScore wrappers
    _, _, model, flow, x = _flow(kind)
    g = _dense_gn(model, x)
    theta = sf.score.flatten_params(model)
    for (a, b), idx in zip(layer_signals(flow, x, theta, T), _layer_index()):
        assert a.shape == (7, idx.numel() // b.shape[2]) and torch.equal(a[:, -1], torch.ones(7, dtype=D64))
        exact = 2.0 / 7 * sum(torch.kron(b[:, i].T @ b[:, i], torch.outer(a[i], a[i])) for i in range(7))
        torch.testing.assert_close(exact, _block(g, idx), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["plain", "scaled", "residual"])
def test_kronecker_factors_where_kfac_is_exact(kind):
    _, _, model, flow, x = _flow(kind)
    theta = sf.score.flatten_params(model)
    g = _dense_gn(model, x)
    (a1, b1), (a2, b2) = kronecker_factors(flow, x, theta, T, chunk=3)
    idx1, idx2 = _layer_index()
    for b, idx, o in ((b1, idx1, HIDDEN), (b2, idx2, 2)):  # B_l is G's bias–bias block (ã's last entry is 1)
        bias = idx.view(o, -1)[:, -1]
        torch.testing.assert_close(b, _block(g, bias), rtol=1e-10, atol=1e-12)
    # the output layer: b_ik = c·e_k for every particle, so B = 2c²I and B ⊗ A is its exact block
    c = 0.5 + T if kind == "scaled" else 1.0
    torch.testing.assert_close(b2, 2.0 / c**2 * torch.eye(2, dtype=D64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.kron(b2, a2), _block(g, idx2), rtol=1e-10, atol=1e-12)
    # the hidden layer sees different inputs per particle: an approximation (relative Frobenius error stated)
    err = float((torch.kron(b1, a1) - _block(g, idx1)).norm() / _block(g, idx1).norm())
    assert 1e-3 < err < 1.0, err
    # one particle: every layer's factorisation is exact
    g1 = _dense_gn(model, x[:1])
    for (a, b), idx in zip(kronecker_factors(flow, x[:1], theta, T), (idx1, idx2)):
        torch.testing.assert_close(torch.kron(b, a), _block(g1, idx), rtol=1e-10, atol=1e-12)


def _dense_m(net, flow, x, delta, c=1.0):
    """M = blockdiag_l (B̂_l^{-1} ⊗ Â_l^{-1}) ``(P, P)`` with A_l from a hand-written forward pass of the
    one-hidden-layer tanh network on x/c and B_l from the dense Jacobian's bias blocks."""
    w1, b1 = net.net[0].weight.detach(), net.net[0].bias.detach()
    a1 = torch.cat([x / c, torch.ones(x.shape[0], 1, dtype=D64)], 1)
    a2 = torch.cat([torch.tanh(a1 @ torch.cat([w1, b1[:, None]], 1).T), torch.ones(x.shape[0], 1, dtype=D64)], 1)
    g, idxs = _dense_gn(flow.model, x), _layer_index()
    factors = [(a.T @ a / x.shape[0], _block(g, idx.view(o, -1)[:, -1])) for a, idx, o in ((a1, idxs[0], HIDDEN), (a2, idxs[1], 2))]
    gamma = delta * sum(float(a.trace() * b.trace()) for a, b in factors) / flow.n_params
    m = torch.zeros(flow.n_params, flow.n_params, dtype=D64)
    for (a, b), idx in zip(factors, idxs):
        pi = math.sqrt(float(a.trace() / a.shape[0] / (b.trace() / b.shape[0])))
        inv_a = torch.linalg.inv(a + pi * math.sqrt(gamma) * torch.eye(a.shape[0], dtype=D64))
        inv_b = torch.linalg.inv(b + math.sqrt(gamma) / pi * torch.eye(b.shape[0], dtype=D64))
        m[idx[:, None], idx[None, :]] = torch.kron(inv_b, inv_a)
    return m


def _matrix_power(m, p):
    evals, evecs = torch.linalg.eigh(m)
    return evecs @ torch.diag(evals**p) @ evecs.T


@pytest.mark.parametrize("kind, power", [("plain", 1.0), ("scaled", 1.0), ("plain", 0.5)])
def test_kfac_rhs_and_square_root_against_a_dense_m(kind, power):
    # dΘ/dt = −η M^p ∇_Θ L, dA/dt = 0; the preconditioner applies M^{p/2}
    tgt, net, model, flow, x = _flow(kind, delta=0.05, power=power)
    y = flow.initial_state(x, t0=T)
    m = _matrix_power(_dense_m(net, flow, x, 0.05, c=0.5 + T if kind == "scaled" else 1.0), power)
    loss = implicit_score_matching(at_time(model, T), x)[0]
    grad = torch.cat([u.reshape(-1) for u in torch.autograd.grad(loss, list(model.parameters()))])
    dy = flow(torch.tensor(T, dtype=D64), y)
    nd, P = x.numel(), flow.n_params
    torch.testing.assert_close(dy[nd : nd + P], -0.7 * m @ grad, rtol=1e-9, atol=1e-12)
    assert torch.equal(dy[nd + P :], torch.zeros(flow.n_aux, dtype=D64)) and flow.n_aux == (9 + 3 + 25 + 5) + (36 + 6 + 4 + 2)
    root = _matrix_power(m, 0.5)
    q = torch.randn(P, generator=torch.Generator().manual_seed(2), dtype=D64)
    torch.testing.assert_close(flow.preconditioner(y)(q), root @ q, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(flow.refresh_aux(y, T), y, rtol=0, atol=0)  # same (X, Θ, t): same factors


def test_lanczos_sees_the_kfac_preconditioned_hessian():
    # the Θ block's Jacobian −η·M·∇²L: its stiff end is λ_max(M^{1/2}∇²L M^{1/2}), not λ_max(∇²L)
    _, net, _, flow, x = _flow(hidden=3)
    y = flow.initial_state(x)
    dense, plain = dense_preconditioned_curvature(net, x, flow, y)
    lam = hessian_max_eigenvalue(flow, y, iters=flow.n_params, generator=torch.Generator().manual_seed(0))
    assert lam == pytest.approx(dense, rel=1e-6) and abs(dense - plain) > 0.5 * max(dense, plain)


def test_kfac_run_resumes_bitwise_and_runs_under_dopri5(tmp_path):
    # the factors are in the state and are recomputed from (X, Θ) at the same steps after a resume;
    # an adaptive solver refreshes them at the output times
    full, resumed, k, res = refreshed_flow_runs(tmp_path, KFACFlow(every=3), "kfac", 0.05)
    assert k > 0 and torch.equal(resumed.particles, full.particles) and torch.equal(resumed.thetas, full.thetas)
    assert full.info["theta_flow"] == {"name": "kfac", "delta": 1e-3, "every": 3, "power": 1.0}
    assert full.info["eta_schedule"]["refreshes"] >= 6 and DEFAULT_ETA["kfac"].ratio == 10.0
    assert res.info["solver"] == "dopri5" and torch.isfinite(res.particles).all()
    v0, v1 = (float(res.trajectory[i].var()) for i in (0, -1))
    assert v0 < v1 < 1.0  # spreading toward the target's unit variance
    assert isinstance(resolve_theta_flow("kfac"), KFACFlow)


@pytest.mark.parametrize("bad", [dict(delta=0.0), dict(delta=-1.0), dict(delta=math.nan), dict(every=0), dict(chunk=0),
                                 dict(power=0.0), dict(power=1.5)])
def test_kfac_rejects_bad_settings(bad):
    with pytest.raises(ValueError, match=f"KFACFlow: {next(iter(bad))}"):
        KFACFlow(**bad)


def test_kfac_rejects_networks_it_cannot_factor():
    tgt = sf.Gaussian(torch.zeros(2), torch.eye(2))
    no_bias = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2, bias=False))
    with pytest.raises(ValueError, match="nn.Linear layers with biases"):
        sf.SBTMFlow(tgt, no_bias, theta_flow="kfac")
    normed = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))  # sizes pair up
    flow = sf.SBTMFlow(tgt, normed, theta_flow="kfac")
    with pytest.raises(ValueError, match="nn.Linear layers"):
        flow.initial_state(torch.randn(5, 2))
    _, _, model, flow, x = _flow()
    with pytest.raises(ValueError, match="x must be"):
        kronecker_factors(flow, x[:0], sf.score.flatten_params(model))


@pytest.mark.slow
def test_kfac_flow_follows_annealed_ula_between_modes():
    # §5.4's path (λ₀ = 0.1): right after the collapse the corner modes hold N(0, I)'s Voronoi mass
    # (≈ 0.12 each), which annealed ULA drains to ≈ 0.066 by t = 0.2.  The K-FAC flow follows
    # (README "η and stiffness": n = 1000, corners 0.0675 at t = 0.2, ULA 0.0658; diag 0.103).
    # Measured here (n = 400): 0.1106 -> 0.0644 (ULA 0.0638).
    target = sf.experiments.make_target("gmm2d")
    path = sf.Dilation(target, t_final=20.0, lam0=0.1)
    corners = [i for i, m in enumerate(target.means.tolist()) if abs(m[0]) == abs(m[1]) == 6.0]
    common = dict(n=400, t_final=0.2, dt=0.01, seed=0, init=sf.Gaussian(torch.zeros(2), torch.eye(2)), save_every=10**9)
    out = {}
    for name, kw in (("kfac", dict(method="sbtm", training="flow", theta_flow=KFACFlow(every=1))),
                     ("ula", dict(method="ula", sde_solver="euler"))):
        res = sf.sample(path, **common, **kw)
        w0, w1 = (sf.metrics.mode_weights(res.trajectory[i] / path.scale(float(res.times[i])), target.means) for i in (0, -1))
        out[name] = (float(w0[corners].mean()), float(w1[corners].mean()))
    assert out["kfac"][0] > 0.1 and out["kfac"][1] < out["kfac"][0] - 0.03, out
    assert abs(out["kfac"][1] - out["ula"][1]) < 0.02, out
