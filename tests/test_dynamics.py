"""SBTMFlow / SBTMSteps as torchdiffeq ODE functions."""

import math

import pytest
import torch
import torchdiffeq

import sbtm_flows as sf
from sbtm_flows.stiffness import hessian_max_eigenvalue

D64 = torch.float64


def _setup(d=2, n=6, track=False):
    tgt = sf.Gaussian(torch.arange(d, dtype=D64), torch.eye(d, dtype=D64) * 0.7)
    net = sf.ScoreMLP(d, (8,), "tanh", generator=torch.Generator().manual_seed(0), dtype=D64)
    flow = sf.SBTMFlow(tgt, net, eta=3.0, track_logdensity=track)
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(1), dtype=D64)
    return tgt, net, flow, x


def test_state_layout_round_trip():
    tgt, net, flow, x = _setup()
    y = flow.initial_state(x)
    assert y.ndim == 1 and y.numel() == x.numel() + flow.n_params
    xs, th = flow.split(y)
    assert torch.equal(xs, x) and torch.equal(th, sf.score.flatten_params(net))
    assert flow.log_density(y) is None


def test_rhs_equals_the_sbtm_equations():
    tgt, net, flow, x = _setup(track=True)
    logf = torch.randn(x.shape[0], dtype=D64)
    y = flow.initial_state(x, log_density0=logf)
    dy = flow(torch.tensor(0.3), y)
    n, d = x.shape
    # reference with plain autograd on the module
    s = net(x)
    loss, (s2, div) = sf.losses.implicit_score_matching(net, x)
    grads = torch.autograd.grad(loss, list(net.parameters()))
    ref_theta = -3.0 * torch.cat([g.reshape(-1) for g in grads])
    torch.testing.assert_close(dy[: n * d].view(n, d), tgt.score(x) - s.detach())
    torch.testing.assert_close(dy[n * d : n * d + flow.n_params], ref_theta)
    torch.testing.assert_close(dy[-n:], div.detach() - tgt.laplacian(x))
    assert torch.equal(flow.log_density(y), logf)


def test_rhs_runs_under_no_grad_and_eta_callable():
    tgt, net, flow, x = _setup()
    flow.eta = lambda t: 2.0 * t
    y = flow.initial_state(x)
    with torch.no_grad():
        dy1 = flow(torch.tensor(1.0), y)
        dy2 = flow(torch.tensor(2.0), y)
    P = slice(x.numel(), x.numel() + flow.n_params)
    torch.testing.assert_close(dy2[P], 2 * dy1[P])


def test_direct_torchdiffeq_call_runs_adaptive_and_fixed():
    tgt, net, flow, x = _setup(n=50)
    y0 = flow.initial_state(x)
    t = torch.linspace(0, 0.2, 3, dtype=D64)
    ys = torchdiffeq.odeint(flow, y0, t, method="dopri5", rtol=1e-7, atol=1e-9)
    yh = torchdiffeq.odeint(flow, y0, torch.linspace(0, 0.2, 201, dtype=D64), method="heun2")
    xa, _ = flow.split(ys[-1])
    xh, _ = flow.split(yh[-1])
    # Heun with h = 1e-3 is second order: agreement to ~1e-6 on O(1) states
    assert (xa - xh).abs().max() < 1e-5


def test_hessian_max_eigenvalue_matches_dense_hessian():
    tgt1 = sf.Gaussian(torch.zeros(1, dtype=D64), torch.eye(1, dtype=D64))
    net1 = sf.ScoreMLP(1, (4,), "tanh", generator=torch.Generator().manual_seed(0), dtype=D64)
    flow1 = sf.SBTMFlow(tgt1, net1)
    x1 = torch.randn(20, 1, dtype=D64, generator=torch.Generator().manual_seed(2))
    y = flow1.initial_state(x1)
    th = sf.score.flatten_params(net1)

    def loss(theta):
        return sf.losses.implicit_score_matching(flow1.score_fn(theta), x1)[0]

    H = torch.autograd.functional.hessian(loss, th)
    ref = max(float(torch.linalg.eigvalsh(H).max()), 0.0)  # the positive end: the stability-relevant one
    lam = hessian_max_eigenvalue(flow1, y, iters=300, generator=torch.Generator().manual_seed(0))
    assert abs(lam - ref) / ref < 1e-3


def test_steps_dynamics_trains_in_callback():
    tgt = sf.Gaussian(torch.zeros(1), torch.eye(1))
    net = sf.ScoreMLP(1, generator=torch.Generator().manual_seed(0))
    steps = sf.SBTMSteps(tgt, net, inner_steps=3, lr=1e-3)
    x = torch.randn(100, 1, generator=torch.Generator().manual_seed(0)) * 0.5
    y0 = steps.initial_state(x)
    th0 = sf.score.flatten_params(net)
    torchdiffeq.odeint(steps, y0, torch.linspace(0, 0.05, 6), method="heun2")
    assert steps.train_steps == 5 * 3
    assert not torch.equal(th0, sf.score.flatten_params(net))
    assert steps.nfe == 10


def test_bad_eta_and_probes():
    tgt = sf.Gaussian(torch.zeros(1), torch.eye(1))
    with pytest.raises(ValueError, match="eta must be > 0"):
        sf.SBTMFlow(tgt, sf.ScoreMLP(1), eta=-1.0)
    with pytest.raises(ValueError, match="probes must be >= 1"):
        sf.SBTMFlow(tgt, sf.ScoreMLP(1), probes=0)
    flow = sf.SBTMFlow(tgt, sf.ScoreMLP(1), track_logdensity=True)
    with pytest.raises(ValueError, match="log_density0"):
        flow.initial_state(torch.zeros(3, 1))


def test_hutchinson_flow_is_deterministic_function_of_state():
    tgt = sf.Gaussian(torch.zeros(20), torch.eye(20))
    flow = sf.SBTMFlow(tgt, sf.ScoreMLP(20, (16,)), divergence="auto", probes=2, generator=torch.Generator().manual_seed(0))
    assert flow.divergence == "hutchinson"
    y = flow.initial_state(torch.randn(10, 20))
    assert torch.equal(flow(torch.tensor(0.0), y), flow(torch.tensor(0.0), y))
    assert math.isfinite(float(flow(torch.tensor(0.0), y).abs().sum()))


@pytest.mark.parametrize("training", ["flow", "steps"])
def test_state_blocks_pack_back_into_the_torchdiffeq_vector(training):
    from sbtm_flows.sampling import SBTMState

    tgt = sf.Gaussian(torch.zeros(2, dtype=D64), torch.eye(2, dtype=D64))
    net = sf.ScoreMLP(2, (8,), "tanh", generator=torch.Generator().manual_seed(0), dtype=D64)
    cls = sf.SBTMFlow if training == "flow" else sf.SBTMSteps
    dyn = cls(tgt, net, track_logdensity=True, holdout=3)
    x, xh = torch.randn(5, 2, dtype=D64), torch.randn(3, 2, dtype=D64)
    logf, logfh = torch.randn(5, dtype=D64), torch.randn(3, dtype=D64)
    y = dyn.initial_state(x, log_density0=logf, holdout_x0=xh, holdout_log_density0=logfh)
    state = SBTMState.unpack(y, dyn)
    assert torch.equal(state.x, x) and torch.equal(state.log_density, logf)
    assert torch.equal(state.holdout_x, xh) and torch.equal(state.holdout_log_density, logfh)
    if training == "flow":
        assert torch.equal(state.theta, sf.score.flatten_params(net))
    else:
        assert state.theta is None
    assert torch.equal(state.pack(), y)
    bare = cls(tgt, net)
    assert SBTMState.unpack(bare.initial_state(x), bare).holdout_x is None
