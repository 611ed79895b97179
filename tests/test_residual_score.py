"""ResidualScore s = ∇log π_t + r_Θ: the analytic Gaussian flow, the loss and its Θ-gradient against the
plain parametrisation of the same function, reproducibility/resume, rebuilding from a Result, bad input."""

import math

import pytest
import torch

import sbtm_flows as sf
from sbtm_flows.losses import score_matching_grad
from sbtm_flows.score import ResidualScore, ScoreMLP, functional_score

V0 = 1 - math.exp(-0.2)
TARGET = sf.Gaussian(torch.zeros(1), torch.eye(1))
INIT = sf.Gaussian(torch.zeros(1), V0 * torch.eye(1))


def residual_model(dim: int = 1, seed: int = 0, target=TARGET) -> ResidualScore:
    return ResidualScore(ScoreMLP(dim, generator=torch.Generator().manual_seed(seed)), target)


def test_paper_51_with_the_residual_network_tracks_the_exact_variance():
    """§5.1 (f_t = N(0, 1 − e^{−2(t+0.1)})) with s = ∇log π + r_Θ: the particle velocity is −r_Θ.
    Measured (seed 0, n = 1000, rkc, η = 5): variance errors +2.6 % / +1.1 % / +0.25 % at t = 0.5 / 1 / 2
    (plain network: +1.35 % / +0.48 % / +0.03 %), F^n −7.9 % of (1 − v)²/v at t = 0.5, NFE 554.
    Bounds: 5 % at t = 0.5, 2 % after; 15 % on F^n (the plain §5.1 test's)."""
    res = sf.sample(TARGET, init=INIT, n=1000, t_final=2.0, dt=0.01, seed=0, score_model=residual_model())
    for t, tol in ((0.5, 0.05), (1.0, 0.02), (2.0, 0.02)):
        v_exact = 1 - math.exp(-2 * (t + 0.1))
        assert abs(float(res.at(t).var()) / v_exact - 1) < tol, (t, float(res.at(t).var()), v_exact)
    k = int(torch.argmin((res.times - 0.5).abs()))
    v = 1 - math.exp(-1.2)
    assert abs(float(res.diagnostics["fisher"][k]) / ((1 - v) ** 2 / v) - 1) < 0.15
    assert res.info["init_fit"]["relative_error"] < 0.02
    # the residual is what the velocity is: F^n = mean|∇log π − s|² = mean|r|² at the last output
    model = res.score_model(target=TARGET)
    with torch.no_grad():
        r = model.residual(res.particles)
        torch.testing.assert_close(model(res.particles) - TARGET.score(res.particles), r, rtol=0, atol=1e-5)
        assert abs(float((r * r).sum(-1).mean()) / float(res.diagnostics["fisher"][-1]) - 1) < 1e-3


def test_loss_and_gradient_equal_the_plain_parametrisation():
    """On π = N(0, C) (score −C⁻¹x) a linear r = Wx + b gives s = (W − C⁻¹)x + b, the same function as a
    plain linear network with weight W − C⁻¹: the implicit loss and its gradient in (W, b) must agree."""
    torch.manual_seed(0)
    c = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=torch.float64)
    target = sf.Gaussian(torch.zeros(2, dtype=torch.float64), c)
    lin = torch.nn.Linear(2, 2, dtype=torch.float64)
    plain = torch.nn.Linear(2, 2, dtype=torch.float64)
    with torch.no_grad():
        plain.weight.copy_(lin.weight - torch.linalg.inv(c))
        plain.bias.copy_(lin.bias)
    res_model = ResidualScore(lin, target)
    x = torch.randn(300, 2, dtype=torch.float64)
    losses = {}
    for method, probes in (("exact", None), ("hutchinson", torch.randn(2, 300, 2, dtype=torch.float64))):
        loss_r, g_r, s_r, div_r = score_matching_grad(lambda z: res_model(z), x, list(lin.parameters()), method, probes)
        loss_p, g_p, s_p, div_p = score_matching_grad(plain, x, list(plain.parameters()), method, probes)
        torch.testing.assert_close(loss_r, loss_p)
        losses[method] = loss_r
        for a, b in zip(g_r, g_p):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(s_r, s_p)
        torch.testing.assert_close(div_r, div_p)
    # the loss in r: mean(|s|² + 2∇·s) = mean(|∇log π + r|² + 2∇·r) + 2 mean(Δlog π), Δlog π = −tr C⁻¹
    r = lin(x)
    in_r = ((target.score(x) + r) ** 2).sum(-1).mean() + 2 * torch.diagonal(lin.weight).sum()
    torch.testing.assert_close(losses["exact"], in_r - 2 * torch.linalg.inv(c).trace())


def test_flow_gradient_is_the_plain_one_on_a_nonlinear_network():
    """The coupled flow's ∇_Θ L with s = ∇log π + r_Θ equals, entry by entry, the gradient of the plain
    loss of the function x ↦ ∇log π(x) + r_Θ(x) written out by hand (an MLP r, a non-Gaussian target)."""
    target = sf.targets.GaussianMixture(torch.tensor([[-1.0, 0.0], [1.5, 0.5]]), torch.stack([0.5 * torch.eye(2)] * 2),
                                        torch.tensor([0.3, 0.7]))
    model = residual_model(2, 3, target)
    flow = sf.SBTMFlow(target, model, eta=1.0)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    theta = sf.score.flatten_params(model)
    loss, grad, s, _ = flow.loss_and_grad(x, theta, t=0.0)
    params = sf.score.unflatten_params(model, theta.clone().requires_grad_(True))
    inner = {name.removeprefix("net."): p for name, p in params.items()}  # the same tensors, named inside r
    by_hand = lambda z: target.score(z) + functional_score(model.net, inner, z)  # noqa: E731
    loss2, grads2, s2, _ = score_matching_grad(by_hand, x, list(params.values()))
    torch.testing.assert_close(loss, loss2)
    torch.testing.assert_close(grad, torch.cat([g.reshape(-1) for g in grads2]))
    torch.testing.assert_close(s, s2)


def test_same_seed_same_particles_and_resume_is_bitwise(tmp_path):
    kw = dict(init=INIT, n=200, t_final=0.4, dt=0.01, save_every=2, seed=3)
    full = sf.sample(TARGET, score_model=residual_model(), **kw)
    again = sf.sample(TARGET, score_model=residual_model(), **kw)
    assert torch.equal(full.trajectory, again.trajectory)
    ck = tmp_path / "ck.pt"
    with pytest.raises(sf.SamplingError, match="max_nfe"):
        sf.sample(TARGET, score_model=residual_model(), checkpoint=ck, checkpoint_every=3, max_nfe=full.nfe // 2, **kw)
    resumed = sf.sample(TARGET, score_model=residual_model(), checkpoint=ck, checkpoint_every=3, resume=True, **kw)
    assert torch.equal(resumed.trajectory, full.trajectory) and resumed.nfe == full.nfe


def test_bad_input():
    with pytest.raises(ValueError, match="net must be a torch.nn.Module"):
        ResidualScore(lambda x: x, TARGET)
    with pytest.raises(ValueError, match="target must be a Target or a Path"):
        ResidualScore(ScoreMLP(1), object())
    with pytest.raises(ValueError, match="dimension 2, the target 1"):
        ResidualScore(ScoreMLP(2), TARGET)
    path = sf.Geometric(INIT, TARGET, t_final=1.0)
    with pytest.raises(ValueError, match="needs t"):
        ResidualScore(ScoreMLP(1), path)(torch.zeros(3, 1))
    res = sf.sample(TARGET, init=INIT, n=50, t_final=0.02, dt=0.01, score_model=residual_model())
    with pytest.raises(ValueError, match="pass the run's target"):
        res.score_model()


class _AnchoredGaussian(sf.Gaussian):
    anchored_score = True


def test_a_target_that_asks_for_an_anchored_score_gets_a_residual_network_for_the_flow():
    """``Target.anchored_score`` (set by posteriordb's eight_schools) makes the flow's default network a
    ResidualScore; the discrete training, an unmarked target and a user's ``score_model`` are unaffected."""
    tgt = _AnchoredGaussian(torch.zeros(1), torch.eye(1))
    kw = dict(init=INIT, n=100, t_final=0.05, dt=0.01, seed=3)
    res = sf.sample(tgt, **kw)
    assert res.score_config.get("residual") is True and isinstance(res.score_model(target=tgt), ResidualScore)
    assert "residual" not in sf.sample(tgt, training="steps", **kw).score_config
    assert "residual" not in sf.sample(TARGET, **kw).score_config
    mine = ScoreMLP(1, generator=torch.Generator().manual_seed(9))
    assert "residual" not in sf.sample(tgt, score_model=mine, **kw).score_config
    assert sf.posteriordb.load("eight_schools").anchored_score and not sf.posteriordb.load("arK").anchored_score


def test_moving_the_network_moves_its_anchor_but_not_its_dtype():
    # the anchor is not a submodule (its buffers are not network state), yet .to(device) must
    # carry it along or s = ∇log π_t + r would mix devices; "meta" stands in for a GPU here
    tgt = sf.Gaussian(torch.tensor([0.5, -1.0]), torch.eye(2))
    model = ResidualScore(sf.ScoreMLP(2, generator=torch.Generator().manual_seed(0)), tgt).double()
    assert {b.dtype for b in tgt.buffers()} == {torch.float32}  # dtype left to the anchor
    model.to("meta")
    assert {b.device.type for b in tgt.buffers()} == {"meta"} and next(model.parameters()).device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_residual_network_on_cuda():
    tgt = sf.Gaussian(torch.tensor([0.5, -1.0]), torch.eye(2))
    net = sf.ScoreMLP(2, generator=torch.Generator().manual_seed(0))
    x = torch.randn(5, 2)
    expected = tgt.score(x) + net(x)  # on the CPU, before the move
    model = ResidualScore(net, tgt).to("cuda")
    assert torch.allclose(model(x.cuda(), 0.0).cpu(), expected, atol=1e-5)
