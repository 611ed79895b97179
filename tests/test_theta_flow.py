"""The Θ dynamics of the coupled flow (sbtm_flows.theta_flow): the RMSprop flow's equations,
its state layout, the preconditioned stiffness estimate and the configuration checks."""

import math
import sys
from pathlib import Path

import pytest
import torch
import torchdiffeq

import sbtm_flows as sf
from sbtm_flows.eta import DecayingEta, as_eta
from sbtm_flows.stiffness import hessian_max_eigenvalue
from sbtm_flows.theta_flow import DEFAULT_ETA, GradientFlow, RMSpropFlow, resolve_theta_flow

sys.path.insert(0, str(Path(__file__).parent))
from flow_cases import dense_preconditioned_curvature  # noqa: E402

D64 = torch.float64


def _flow(per="tensor", track=False, holdout=0, eta=0.7, tau=0.5, eps=1e-3, hidden=(8,)):
    tgt = sf.Gaussian(torch.tensor([0.5, -1.0], dtype=D64), torch.eye(2, dtype=D64) * 0.7)
    net = sf.ScoreMLP(2, hidden, "tanh", generator=torch.Generator().manual_seed(0), dtype=D64)
    flow = sf.SBTMFlow(tgt, net, eta=eta, track_logdensity=track, holdout=holdout,
                       theta_flow=RMSpropFlow(tau=tau, eps=eps, per=per))
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(1), dtype=D64)
    return tgt, net, flow, x


def _grad(net, x):
    loss = sf.losses.implicit_score_matching(net, x)[0]
    return [g.detach() for g in torch.autograd.grad(loss, list(net.parameters()))]


@pytest.mark.parametrize("per", ["tensor", "parameter"])
def test_rmsprop_rhs_equals_its_equations(per):
    # dΘ_l/dt = −η g_l/√(v_l + ε²), dw/dt = ((mean g_l² + ε²)e^{−w} − 1)/τ, w = log(v + ε²),
    # checked against plain autograd on the module; w(0) = log(g(0)² + ε²)
    tgt, net, flow, x = _flow(per, track=True, holdout=3)
    grads = _grad(net, x)
    moment = torch.cat([g.reshape(-1) ** 2 for g in grads]) if per == "parameter" else torch.stack([g.pow(2).mean() for g in grads])
    eps2 = 1e-6
    xh = torch.randn(3, 2, generator=torch.Generator().manual_seed(5), dtype=D64)
    y = flow.initial_state(x, log_density0=torch.zeros(7, dtype=D64), holdout_x0=xh, holdout_log_density0=torch.zeros(3, dtype=D64))
    w0 = flow.aux(y)
    torch.testing.assert_close(w0, torch.log(moment + eps2))
    # a w away from equilibrium, so dw/dt ≠ 0
    w = w0 + torch.linspace(-1.0, 2.0, w0.numel(), dtype=D64)
    flow.aux(y).copy_(w)
    dy = flow(torch.tensor(0.2), y)
    v = torch.exp(w) - eps2
    sizes = [p.numel() for p in net.parameters()]
    v_full = v if per == "parameter" else v.repeat_interleave(torch.tensor(sizes))
    g = torch.cat([u.reshape(-1) for u in grads])
    P, nd = flow.n_params, x.numel()
    torch.testing.assert_close(dy[nd : nd + P], -0.7 * g / torch.sqrt(v_full + eps2))
    torch.testing.assert_close(dy[nd + P : nd + P + w.numel()], (moment - v) / 0.5 / (v + eps2))  # = (dv/dt)/(v + ε²)
    # the rest of the layout is unchanged: particles, ℓ, the held-out block
    xs, th = flow.split(y)
    assert torch.equal(xs, x) and torch.equal(th, sf.score.flatten_params(net)) and flow.n_particles(y) == 7
    torch.testing.assert_close(dy[:nd].view(7, 2), tgt.score(x) - net(x).detach())
    assert torch.equal(flow.split_holdout(y)[0], xh) and torch.equal(flow.log_density(y), torch.zeros(7, dtype=D64))


def test_second_moment_relaxes_to_the_squared_gradient():
    # with Θ nearly frozen (η tiny) and the particles held still, v_l(t) solves
    # dv/dt = (m − v)/τ with m = mean g_l² fixed: v(t) = m + (v0 − m)e^{−t/τ}.  Any torchdiffeq
    # method integrates the coupled state (dopri5 here).
    tgt, net, flow, x = _flow(eta=1e-9, tau=0.5)
    g = torch.cat([u.reshape(1, -1).pow(2).mean(1) for u in _grad(net, x)])
    y0 = flow.initial_state(x)
    w_start = torch.log(4 * g + 1e-6)  # v0 = 4m: relaxes down
    flow.aux(y0).copy_(w_start)
    def frozen(t, y):
        dy = flow(t, y)
        dy[: x.numel()] = 0
        return dy
    yT = torchdiffeq.odeint(frozen, y0, torch.tensor([0.0, 1.0], dtype=D64), method="dopri5", rtol=1e-8, atol=1e-10)[-1]
    v_T = torch.exp(flow.aux(yT)) - 1e-6
    torch.testing.assert_close(v_T, g + 3 * g * math.exp(-1.0 / 0.5), rtol=1e-5, atol=1e-12)


def test_preconditioned_curvature_matches_dense_eigenvalue():
    # the Θ block's Jacobian is −η·D·∇²L: its largest eigenvalue is λ_max(D^{1/2}∇²L D^{1/2})
    tgt, net, flow, x = _flow(per="tensor", hidden=(3,))
    y = flow.initial_state(x)
    flow.aux(y).copy_(torch.log(torch.tensor([4e-2, 1e-4, 2.5e-3, 9e-6], dtype=D64) + 1e-6))
    dense, plain = dense_preconditioned_curvature(net, x, flow, y)
    lam = hessian_max_eigenvalue(flow, y, iters=sf.score.flatten_params(net).numel(), generator=torch.Generator().manual_seed(0))
    assert lam == pytest.approx(dense, rel=1e-6) and abs(dense - plain) > 0.5 * plain  # (D changes it)


def test_gd_theta_flow_is_the_plain_flow():
    # theta_flow="gd" (the default) is bitwise the flow without the option
    kw = dict(init=sf.Gaussian(torch.zeros(1), 1.0), n=60, t_final=0.1, dt=0.02, seed=2, eta=4.0)
    tgt = sf.Gaussian(torch.ones(1), 0.5)
    a = sf.sample(tgt, method="sbtm", **kw)
    b = sf.sample(tgt, method="sbtm", theta_flow="gd", **kw)
    assert torch.equal(a.particles, b.particles) and torch.equal(a.thetas[-1], b.thetas[-1])
    assert b.info["theta_flow"] == {"name": "gd"}


def test_rmsprop_run_is_reproducible_and_recorded():
    kw = dict(init=sf.Gaussian(torch.zeros(1), 1.0), n=80, t_final=0.2, dt=0.02, seed=4, theta_flow="rmsprop")
    tgt = sf.GaussianMixture(torch.tensor([[-2.0], [2.0]]), 1.0, torch.tensor([0.25, 0.75]))
    a = sf.sample(tgt, method="sbtm", **kw)
    b = sf.sample(tgt, method="sbtm", **kw)
    assert torch.equal(a.particles, b.particles) and torch.equal(a.thetas[-1], b.thetas[-1])
    assert a.info["theta_flow"] == {"name": "rmsprop", "tau": 1.0, "eps": 1e-4, "per": "tensor"}
    assert float(a.diagnostics["eta"][0]) == DEFAULT_ETA["rmsprop"] and a.info["solver"] == "rkc"


def test_theta_flow_options_are_checked():
    tgt = sf.Gaussian(torch.zeros(1), 1.0)
    with pytest.raises(ValueError, match="theta_flow must be one of 'gd', 'rmsprop'"):
        sf.sample(tgt, method="sbtm", n=10, theta_flow="adam")
    with pytest.raises(ValueError, match="theta_flow='rmsprop' is not used by training='steps'"):
        sf.sample(tgt, method="sbtm", n=10, training="steps", theta_flow="rmsprop")
    with pytest.raises(ValueError, match="NTK tools"):
        sf.sample(tgt, method="sbtm", n=10, eta="ntk", theta_flow="rmsprop")
    for bad in (dict(tau=0.0), dict(eps=-1.0), dict(tau=float("nan")), dict(per="layer")):
        with pytest.raises(ValueError, match="RMSpropFlow"):
            RMSpropFlow(**bad)
    assert isinstance(resolve_theta_flow("gd"), GradientFlow)


def test_decaying_eta_schedule():
    # η(t) = η_∞ + (η₀ − η_∞)e^{−(t − t0)/t_c}; sample(eta=dict) builds it (JSON configs)
    eta = as_eta({"eta0": 1000.0, "eta_inf": 10.0, "t_c": 0.25, "t0": 1.0})
    assert isinstance(eta, DecayingEta) and not eta.stateful and not eta.follows_curvature
    assert eta(1.0) == pytest.approx(1000.0) and eta(torch.tensor(1.25)) == pytest.approx(10 + 990 / math.e)
    assert eta(50.0) == pytest.approx(10.0) and eta.config() == {"eta0": 1000.0, "eta_inf": 10.0, "t_c": 0.25, "t0": 1.0}
    with pytest.raises(ValueError, match="eta0, eta_inf, t_c"):
        as_eta({"eta_max": 3.0})
    for bad in (dict(eta0=0.0, eta_inf=1.0, t_c=1.0), dict(eta0=1.0, eta_inf=-1.0, t_c=1.0), dict(eta0=1.0, eta_inf=1.0, t_c=math.inf),
                dict(eta0=1.0, eta_inf=1.0, t_c=1.0, t0=math.nan)):
        with pytest.raises(ValueError, match="DecayingEta"):
            DecayingEta(**bad)
    res = sf.sample(sf.Gaussian(torch.zeros(1), 1.0), method="sbtm", n=30, t_final=0.04, dt=0.01, save_every=2,
                    eta={"eta0": 8.0, "eta_inf": 2.0, "t_c": 0.02})
    torch.testing.assert_close(res.diagnostics["eta"], torch.tensor([8.0, 2 + 6 / math.e, 2 + 6 / math.e**2], dtype=torch.float64))
    assert res.info["eta"] == {"eta0": 8.0, "eta_inf": 2.0, "t_c": 0.02, "t0": 0.0}
