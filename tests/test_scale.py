"""Scale (issue 13): blocked per-particle work equals the unblocked computation, the ``batch``
option (mini-batch per optimizer step / fixed subset per output interval), ULA noise blocks.
Device-parametrised: CUDA runs too when present."""

import math

import pytest
import torch
import torchsde

import sbtm_flows as sf
from sbtm_flows.diagnostics import score_diagnostics
from sbtm_flows.losses import divergence, make_probes, row_blocks, score_matching_grad, score_matching_terms
from sbtm_flows.sde import BlockBrownian, noise_blocks

D64 = torch.float64


def _net(d, device, seed=0):
    return sf.ScoreMLP(d, (16, 16), "tanh", generator=torch.Generator().manual_seed(seed), dtype=D64).to(device)


def _gauss(d=1, var=1.0, device="cpu"):
    return sf.Gaussian(torch.zeros(d, dtype=D64, device=device), var * torch.eye(d, dtype=D64, device=device))


def test_row_blocks_cover_in_order():
    assert row_blocks(10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert row_blocks(10, None) == [slice(0, 10)] == row_blocks(10, 10)
    with pytest.raises(ValueError, match="chunk"):
        row_blocks(10, 0)


@pytest.mark.parametrize("method", ["exact", "hutchinson"])
def test_blocked_divergence_and_loss_gradient_equal_unblocked(device, method):
    # blocks of 7 rows vs one block: the same divergence, and the same ∇_Θ of mean(|s|² + 2∇·s)
    net = _net(3, device)
    x = torch.randn(40, 3, dtype=D64).to(device)
    probes = make_probes(2, 40, 3, generator=torch.Generator().manual_seed(1), dtype=D64, device=device) if method == "hutchinson" else None
    with torch.no_grad():
        s7, d7 = divergence(net, x, method, probes, chunk=7)
        s1, d1 = divergence(net, x, method, probes, chunk=None)
    torch.testing.assert_close(d7, d1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s7, s1)
    params = list(net.parameters())
    ref = torch.autograd.grad(score_matching_terms(net, x, method, probes)[0].mean(), params)
    loss, grads, s, div = score_matching_grad(net, x, params, method, probes, chunk=7)
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(div, d1)
    # a shard's part with the total count: two halves add up to the whole
    a = score_matching_grad(net, x[:15], params, method, None if probes is None else probes[:, :15], total=40)[1]
    b = score_matching_grad(net, x[15:], params, method, None if probes is None else probes[:, 15:], total=40)[1]
    for u, v, r in zip(a, b, ref):
        torch.testing.assert_close(u + v, r, rtol=1e-10, atol=1e-12)


def test_blocked_diagnostics_and_hessian_products_equal_unblocked(device):
    target = _gauss(2, device=device)
    net = _net(2, device)
    x = torch.randn(50, 2, dtype=D64).to(device)
    a = score_diagnostics(sf.paths.as_path(target), net, x, 0.0, chunk=8)
    b = score_diagnostics(sf.paths.as_path(target), net, x, 0.0, chunk=None)
    assert a == pytest.approx(b, rel=1e-12, abs=1e-12)
    flow = sf.SBTMFlow(target, net)
    theta = sf.score.flatten_params(net)
    q = torch.randn(theta.shape, dtype=D64, generator=torch.Generator().manual_seed(2)).to(device)
    flow.configure_scale(chunk=None)
    h1 = flow.hvp(x, theta)(q)
    flow.configure_scale(chunk=9)
    h9 = flow.hvp(x, theta)(q)
    torch.testing.assert_close(h9, h1, rtol=1e-10, atol=1e-12)


def test_flow_batch_trains_on_the_subset_and_moves_everyone(device):
    target = _gauss(1, device=device)
    net = _net(1, device)
    flow = sf.SBTMFlow(target, net, eta=2.0)
    x = torch.randn(30, 1, dtype=D64).to(device)
    flow.configure_scale(batch=8, batch_seed=5)
    y = flow.initial_state(x)
    flow.choose_batch(30, k=3)
    idx = flow.batch_index
    assert idx.shape == (8,) and len(set(idx.tolist())) == 8
    rhs = flow(torch.tensor(0.0), y)
    torch.testing.assert_close(flow(torch.tensor(0.0), y), rhs)  # a deterministic function of (t, y)
    v, dtheta = flow.split(rhs)
    theta = sf.score.flatten_params(net)
    torch.testing.assert_close(v, target.score(x) - net(x).detach())  # every particle moves
    params = list(net.parameters())
    g = score_matching_grad(net, x[idx.to(device)], params)[1]  # dΘ/dt = −η ∇_Θ L(X_B), the subset's loss
    torch.testing.assert_close(dtheta, -2.0 * torch.cat([u.reshape(-1) for u in g]), rtol=1e-10, atol=1e-12)
    flow.choose_batch(30, k=3)
    assert torch.equal(flow.batch_index, idx)  # a function of k: a resumed run picks the same subset
    flow.choose_batch(30, k=4)
    assert not torch.equal(flow.batch_index, idx)
    assert theta.shape == dtheta.shape


def _run(device, **kw):
    target = sf.Gaussian(torch.zeros(1, dtype=D64), torch.eye(1, dtype=D64))
    init = sf.Gaussian(torch.zeros(1, dtype=D64), (1 - math.exp(-0.2)) * torch.eye(1, dtype=D64))
    base = dict(init=init, n=120, t_final=0.1, dt=0.01, save_every=5, dtype=D64, seed=4, init_steps=50, device=device)
    return sf.sample(target, **{**base, **kw})


@pytest.mark.parametrize("training", ["steps", "flow"])
def test_batch_at_least_n_is_the_full_batch_bitwise(device, training):
    a = _run(device, training=training, batch=None)
    b = _run(device, training=training, batch=500)
    assert torch.equal(a.particles, b.particles)
    assert a.info["batch"] == b.info["batch"] == 120


@pytest.mark.parametrize("training", ["steps", "flow"])
def test_mini_batch_runs_are_seeded_and_differ_from_full(device, training):
    a = _run(device, training=training, batch=32)
    b = _run(device, training=training, batch=32)
    full = _run(device, training=training, batch=None)
    assert torch.equal(a.particles, b.particles)  # same seed, same mini-batches
    assert not torch.equal(a.particles, full.particles)
    assert a.info["batch"] == 32
    # the law barely changes over 10 steps: the variance follows the exact N(0, 1 − e^{−2(t+0.1)}) within sampling noise
    assert abs(float(a.particles.var()) / (1 - math.exp(-0.4)) - 1) < 0.25


@pytest.mark.parametrize("training", ["steps", "flow"])
def test_mini_batch_resume_is_bitwise(tmp_path, training):
    # the batch generator (steps) is checkpointed; the flow's subsets are a function of the interval
    full = _run("cpu", training=training, batch=32)
    ck = tmp_path / "run.ckpt"
    with pytest.raises(sf.SamplingError):
        _run("cpu", training=training, batch=32, checkpoint=ck, checkpoint_every=1, max_nfe=12)
    resumed = _run("cpu", training=training, batch=32, checkpoint=ck, checkpoint_every=1, resume=True)
    assert torch.equal(resumed.particles, full.particles)


def test_diagnostics_sample_estimates_the_full_means():
    a = _run("cpu", training="steps", diagnostics_sample=None, n=400)
    b = _run("cpu", training="steps", diagnostics_sample=200, n=400)
    assert torch.equal(a.particles, b.particles)  # the diagnostics do not change the run
    fa, fb = a.diagnostics["fisher"], b.diagnostics["fisher"]
    assert not torch.equal(fa, fb)
    assert torch.allclose(fa, fb, rtol=0.5)  # a 200-particle estimate of the same mean


@pytest.mark.parametrize("bad", [0, 1, 2.5, True, "all"])
def test_bad_batch_is_refused(bad):
    with pytest.raises(ValueError, match="batch"):
        _run("cpu", batch=bad)


def test_bad_chunk_is_refused():
    with pytest.raises(ValueError, match="chunk"):
        _run("cpu", chunk=0)


def test_ula_noise_blocks_and_small_runs_unchanged(device):
    assert noise_blocks(4096) == [slice(0, 4096)]
    blocks = noise_blocks(10000)
    assert [b.stop - b.start for b in blocks] == [4096, 4096, 1808]
    assert len(noise_blocks(10**7)) <= 256
    # one block: the Brownian increments of a single BrownianInterval of the whole size
    kw = dict(t0=0.0, t1=1.0, dtype=D64, device=device, entropy=7)
    one = torchsde.BrownianInterval(size=(50, 2), **kw)
    two = BlockBrownian([torchsde.BrownianInterval(size=(20, 2), **kw), torchsde.BrownianInterval(size=(30, 2), **kw)])
    assert two.shape == (50, 2)
    w1, w2 = one(0.2, 0.7), two(0.2, 0.7)
    assert w2.shape == (50, 2) and w2.device.type == torch.device(device).type
    assert not torch.equal(w1, w2)
    assert torch.equal(w2[:20], torchsde.BrownianInterval(size=(20, 2), **kw)(0.2, 0.7))
