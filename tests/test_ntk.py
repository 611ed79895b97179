"""Tests of sbtm_flows.ntk: the empirical NTK, λ_min, the η condition of Theorem 3.5, NTKEta."""

import math

import pytest
import torch
import torchdiffeq

import sbtm_flows as sf
from sbtm_flows import ntk
from sbtm_flows.score import ScoreMLP, fit_score, flatten_params, unflatten_params

F64 = torch.float64


def _v(t):
    """Variance of f_t in paper 5.1: 1 − e^{−2(t+0.1)} (t a float or tensor)."""
    return 1 - torch.exp(-2 * (torch.as_tensor(t, dtype=F64) + 0.1))


def ref_score(x, t):
    """∇log f_t(x) of paper 5.1, differentiable in t."""
    return -x / _v(t)


@pytest.fixture
def tiny():
    g = torch.Generator().manual_seed(0)
    model = ScoreMLP(2, hidden=(5, 3), activation="tanh", generator=g, dtype=F64)
    x = torch.randn(4, 2, generator=g, dtype=F64)
    return model, x


def _naive_ntk(model, x):
    """H[i·d+α, j·d+β] = Σ_k ∂_k s^α(Xⁱ) ∂_k s^β(Xʲ), one autograd call per (particle, output)."""
    n, d = x.shape
    rows = []
    for i in range(n):
        for a in range(d):
            model.zero_grad()
            model(x[i : i + 1])[0, a].backward()
            rows.append(torch.cat([p.grad.reshape(-1).clone() for p in model.parameters()]))
    h = torch.zeros(n * d, n * d, dtype=F64)
    for r in range(n * d):
        for c in range(n * d):
            h[r, c] = sum(float(rows[r][k]) * float(rows[c][k]) for k in range(rows[r].numel()))
    return h


def test_empirical_ntk_matches_naive_loop_and_is_psd(tiny):
    model, x = tiny
    h = ntk.empirical_ntk(model, x)
    ref = _naive_ntk(model, x)
    assert h.shape == (8, 8)
    assert torch.allclose(h, ref, atol=1e-10, rtol=0)
    assert torch.allclose(h, h.T, atol=1e-12, rtol=0)
    assert float(torch.linalg.eigvalsh(h)[0]) > -1e-12
    # the column-by-column (vjp/jvp) route gives the same matrix
    assert torch.allclose(ntk.empirical_ntk(model, x, method="matvec", block=3), ref, atol=1e-10, rtol=0)


def test_matvec_equals_dense(tiny):
    model, x = tiny
    h = ntk.empirical_ntk(model, x)
    mv = ntk.ntk_matvec(model, x)
    v = torch.randn(8, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    assert torch.allclose(mv(v[:, 0]), h @ v[:, 0], atol=1e-12, rtol=0)
    assert torch.allclose(mv(v), h @ v, atol=1e-12, rtol=0)


def test_min_eigenvalue_dense_and_lanczos_agree(tiny):
    model, x = tiny
    lam = float(torch.linalg.eigvalsh(_naive_ntk(model, x))[0])
    assert ntk.ntk_min_eigenvalue(model, x, method="dense") == pytest.approx(lam, rel=1e-9, abs=1e-12)
    assert ntk.ntk_min_eigenvalue(model, x, method="lanczos", tol=1e-12) == pytest.approx(lam, rel=1e-7, abs=1e-10)
    assert ntk.ntk_min_eigenvalue(model, x, method="lobpcg", tol=1e-10) == pytest.approx(lam, rel=1e-6, abs=1e-9)


def test_theta_argument_and_rank_deficiency(tiny):
    model, x = tiny
    theta = flatten_params(model) * 1.5
    h = ntk.empirical_ntk(model, x, theta)
    other = ScoreMLP(2, hidden=(5, 3), activation="tanh", dtype=F64)
    with torch.no_grad():
        for name, p in unflatten_params(other, theta).items():
            other.get_parameter(name).copy_(p)
    assert torch.allclose(h, ntk.empirical_ntk(other, x), atol=1e-12, rtol=0)
    # n·d > P: H is singular and the Lanczos route returns 0 by the rank bound
    xs = torch.randn(30, 2, generator=torch.Generator().manual_seed(2), dtype=F64)  # 60 > P = 44
    assert ntk.ntk_min_eigenvalue(model, xs, method="lanczos") == 0.0
    assert abs(ntk.ntk_min_eigenvalue(model, xs, method="dense")) < 1e-10
    with pytest.raises(ValueError, match="method"):
        ntk.empirical_ntk(model, x, method="svd")


@pytest.mark.parametrize("reference", [False, True])
def test_directional_derivative_matches_central_difference(tiny, reference):
    model, x = tiny
    target = sf.Gaussian(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
    flow = sf.SBTMFlow(target, model, eta=3.0)
    t = 0.3
    c = ntk.eta_condition(flow, x, t, reference_score=ref_score if reference else None)
    with torch.no_grad():
        vel = target.score(x) - model(x)

    def loss(eps):
        xx = x + eps * vel
        if not reference:
            with torch.enable_grad():
                return float(sf.losses.implicit_score_matching(model, xx)[0].detach())
        with torch.no_grad():
            return float(((model(xx) - ref_score(xx, t + eps)) ** 2).sum(-1).mean())

    h = 1e-5
    fd = (loss(h) - loss(-h)) / (2 * h)
    assert c.loss_rate == pytest.approx(fd, rel=1e-4)
    assert c.eta == 3.0 and c.kind == ("reference" if reference else "implicit")
    assert c.lambda_min == pytest.approx(ntk.ntk_min_eigenvalue(model, x), rel=1e-12)


def test_bound_formula_and_degenerate_cases():
    assert ntk._theorem_bound(10, 2.0, 0.5, 1.0, 4.0) == pytest.approx(10 * 1.0 / (4 * 2.0 * 0.5))
    assert ntk._theorem_bound(10, 0.0, 0.5, 1.0, 4.0) == math.inf
    assert ntk._theorem_bound(10, 0.0, 0.5, -1.0, 4.0) == 0.0
    assert math.isnan(ntk._theorem_bound(10, 1.0, -0.5, 1.0, 4.0))
    assert ntk._exact_threshold(-1.0, 2.0) == 0.0 and ntk._exact_threshold(1.0, 0.0) == math.inf


# ----------------------------------------------------------------------------------------
# Theorem 3.5 on paper 5.1: a fixed particle set on the exact velocity field
# ----------------------------------------------------------------------------------------
def _theorem_setup(n=6, t0=0.5):
    """n particles at the quantiles of f_{t0}, moving on the exact 5.1 velocity
    X_t = X_0 √(v_t/v_0), dX/dt = X(1 − v_t)/v_t; a tanh net (first layer scaled so the NTK
    is well conditioned, λ_min ≈ 2) fitted to ∇log f_{t0} at 5 % relative error."""
    q = (torch.arange(n, dtype=F64) + 0.5) / n
    x0 = (torch.sqrt(2 * _v(0.0)) * torch.erfinv(2 * q - 1))[:, None]

    def X(t):
        return x0 * torch.sqrt(_v(t) / _v(0.0))

    def V(t):
        return X(t) * (1 - _v(t)) / _v(t)

    model = ScoreMLP(1, hidden=(32,), activation="tanh", generator=torch.Generator().manual_seed(0), dtype=F64)
    with torch.no_grad():
        model.net[0].weight.mul_(16)
        model.net[0].bias.mul_(8)
    fit_score(model, X(t0), ref_score(X(t0), t0), steps=3000, tol=0.05, lr=3e-3)
    flow = sf.SBTMFlow(sf.Gaussian(torch.zeros(1, dtype=F64), torch.eye(1, dtype=F64)), model, eta=1.0)
    return flow, X, V


def theorem_run(rule, t0=0.5, t1=1.0, out=11):
    """Train Θ by the theorem's dΘ/dt = −η ∇_Θ L^n (explicit loss vs the exact score) with
    η = rule(EtaCondition) at every RHS evaluation (dopri5); returns (L^n at the outputs, conditions)."""
    flow, X, V = _theorem_setup(t0=t0)

    def rhs(t, theta):
        r = ntk.loss_rates(flow, X(t), t, theta, ref_score, V(t))
        c = ntk.eta_condition(flow, X(t), t, theta, reference_score=ref_score, velocity=V(t))
        return -rule(c) * r["grad"]

    ts = torch.linspace(t0, t1, out, dtype=F64)
    thetas = torchdiffeq.odeint(rhs, flatten_params(flow.model), ts, method="dopri5", rtol=1e-7, atol=1e-9)
    conds = [ntk.eta_condition(flow, X(t), t, th, reference_score=ref_score, velocity=V(t)) for t, th in zip(ts, thetas)]
    return torch.tensor([c.loss for c in conds], dtype=F64), conds


def test_theorem_3_5_loss_non_increasing_at_the_bound():
    loss, conds = theorem_run(lambda c: max(c.bound, 0.0))
    # the assumption of the theorem holds: the NTK is bounded below along the run
    assert min(c.lambda_min for c in conds) > 1.0
    # dL^n/dt ≤ 0 over the run (up to the solver's error, ~1e-9 here)
    assert float((loss[1:] - loss[:-1]).max()) <= 1e-8
    assert float(loss[-1]) < 0.2 * float(loss[0])  # 2.56e-3 -> 3.4e-4
    # η at the exact threshold rate/|∇_Θ L^n|² keeps L^n constant (dL/dt = 0)
    flat, _ = theorem_run(lambda c: max(c.loss_rate / c.grad_sq, 0.0))
    assert float((flat - flat[0]).abs().max()) < 1e-3 * float(flat[0])


def test_theorem_3_5_loss_rises_well_below_the_bound():
    loss, conds = theorem_run(lambda c: 0.1 * max(c.loss_rate / c.grad_sq, 0.0))
    assert all(c.loss_rate > 0 and c.bound > 0 for c in conds)
    assert float((loss[1:] - loss[:-1]).min()) > 0  # rises at every output time
    assert float(loss[-1]) > 10 * float(loss[0])  # 2.56e-3 -> 3.2e-2


# ----------------------------------------------------------------------------------------
# NTKEta and recording in sample()
# ----------------------------------------------------------------------------------------
def test_ntketa_arguments_and_clipping(tiny):
    with pytest.raises(ValueError, match="safety"):
        ntk.NTKEta(safety=0)
    with pytest.raises(ValueError, match="ceiling"):
        ntk.NTKEta(floor=2.0, ceiling=1.0)
    with pytest.raises(ValueError, match="bound"):
        ntk.NTKEta(bound="paper")
    model, x = tiny
    target = sf.Gaussian(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
    eta = ntk.NTKEta(safety=2.0, floor=0.5, ceiling=50.0, reference_score=ref_score)
    flow = sf.SBTMFlow(target, model, eta=eta)
    theta = flatten_params(model)
    thr = eta.threshold(0.3, x, theta, flow)
    assert flow.eta_at(0.3, x, theta) == pytest.approx(min(max(2 * thr, 0.5), 50.0))
    assert flow.eta_at(0.3) == 50.0  # without a state: the ceiling
    # the RHS is a deterministic function of (t, y)
    y = flow.initial_state(x)
    assert torch.equal(flow(torch.tensor(0.3), y), flow(torch.tensor(0.3), y))


def _gauss51():
    target = sf.Gaussian(mean=torch.zeros(1), cov=torch.eye(1))
    init = sf.Gaussian(mean=torch.zeros(1), cov=(1 - math.exp(-0.2)) * torch.eye(1))
    return target, init


def test_sample_records_ntk_diagnostics_and_runs_eta_ntk():
    target, init = _gauss51()
    res = sf.sample(target, init=init, n=100, t_final=0.1, dt=0.01, solver="heun2", eta="ntk", seed=0,
                    init_steps=300, record_ntk_every=5, ntk_reference=ref_score)
    d = res.diagnostics
    for k in ntk.NTK_DIAGNOSTICS:
        assert d[k].shape == res.times.shape
    rec = ~torch.isnan(d["ntk_lambda_min"])
    assert rec.tolist() == [k % 5 == 0 for k in range(len(res.times))]
    ceiling = res.info["ntk_eta_ceiling"]
    assert 0 < ceiling < math.inf
    eta_used = d["ntk_eta"][rec]
    assert bool(((eta_used >= 1.0 - 1e-12) & (eta_used <= ceiling * (1 + 1e-12))).all())
    assert bool((d["ntk_residual"][rec] > 0).all())
    assert torch.allclose(d["ntk_train_loss"][rec], d["loss"][rec], rtol=1e-5)
    with pytest.raises(ValueError, match="eta"):
        sf.sample(target, init=init, n=10, t_final=0.1, eta="ntk2")
    with pytest.raises(ValueError, match="record_ntk_every"):
        sf.sample(target, init=init, n=10, t_final=0.1, training="steps", record_ntk_every=1)


def test_eta_ntk_matches_best_constant_eta_on_5_1():
    """Paper 5.1, n = 1000, heun2, dt = 0.01, t = 0.5: eta="ntk" (implicit loss) and NTKEta
    with the exact score as reference reach the accuracy of the best η of {2, 3.5, 5}
    (the pre-run check allows up to 8.65, but η = 8 crosses η·λ_max·dt = 2 at t = 0.2 and the
    stiffness monitor stops it)."""
    target, init = _gauss51()
    ve = 1 - math.exp(-2 * 0.6)
    fe = (1 - ve) ** 2 / ve

    def errors(eta):
        r = sf.sample(target, init=init, n=1000, t_final=0.5, dt=0.01, solver="heun2", seed=0, eta=eta)
        return abs(float(r.particles.var()) / ve - 1), abs(float(r.diagnostics["fisher"][-1]) / fe - 1), r

    sweep = {e: errors(e) for e in (2.0, 3.5, 5.0)}
    best = min(sweep, key=lambda e: sweep[e][0])
    assert sweep[best][0] < 0.03 and sweep[best][1] < 0.15
    for eta in ("ntk", ntk.NTKEta(reference_score=ref_score)):
        var_err, f_err, r = errors(eta)
        assert var_err < 0.03 and f_err < 0.15, (eta, var_err, f_err)
        assert var_err <= sweep[best][0] + 0.015
        assert r.nfe == sweep[best][2].nfe  # heun2 on the same grid: 2 evaluations per step
