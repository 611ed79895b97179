"""Learned-diffusion samplers (PIS / DIS): path weights against analytic values, training on
Gaussians, reproducibility, checkpoint/resume, bad input."""

from __future__ import annotations

import math

import pytest
import torch

import sbtm_flows as sf
from sbtm_flows.learned import (
    BrownianReference,
    ControlledSDE,
    ControlNet,
    GaussianOptimalControl,
    OUReference,
    brownian_increments,
    kl_loss,
    log_variance_loss,
    simulate,
)

MEAN2 = torch.tensor([1.0, -0.5], dtype=torch.float64)


class ConstantControl(torch.nn.Module):
    """u(x, t) = c."""

    def __init__(self, c: torch.Tensor):
        super().__init__()
        self.c = c

    def forward(self, x, t, grad=None):
        return self.c.to(x).expand_as(x)


def _paths(ref, control, target, n, steps, seed=0, detached=False):
    g = torch.Generator().manual_seed(seed)
    x0 = ref.sample_initial(n, target.dim, g, torch.float64)
    sde = ControlledSDE(ref, control, target, detached=detached)
    return x0, simulate(sde, x0, steps, g)


@pytest.mark.parametrize("ref", [BrownianReference(1.5, 2.0), OUReference(0.1, 4.0, 2.0, 1.0)])
def test_uncontrolled_weights_are_the_terminal_ratio(ref):
    # u ≡ 0 (an untrained ControlNet): R = S = 0 and log w = log π̃(X_T) − log p_T(X_T) exactly;
    # X_T ~ p_T, so the weights of a normalised target average to Z = 1
    tgt = sf.Gaussian(MEAN2, 0.8).double()
    net = ControlNet(2, ref.T, (8,), use_score=True, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        _, p = _paths(ref, net, tgt, 20000, 50)
    assert torch.equal(p.running, torch.zeros_like(p.running)) and torch.equal(p.stochastic, torch.zeros_like(p.running))
    expected = tgt.log_prob(p.x) - ref.terminal_log_prob(p.x, 50)
    assert torch.allclose(p.log_w, expected, atol=1e-12)
    # X_T ~ the discrete reference chain's terminal law (OU: ν²(1 + O(βh)), here +1.7 %)
    assert abs(float(p.x.var(0).mean()) / ref.discrete_terminal_var(50) - 1) < 0.03
    assert abs(sf.logdensity.log_z_estimate(p.log_w)) < 0.03


def test_constant_control_girsanov_is_exact():
    # PIS, Dirac start, u = c: X_T ~ N(σcT, σ²T) and dP_u/dP_ref = N(X_T; σcT, σ²T)/N(X_T; 0, σ²T)
    # path by path (Euler–Maruyama is exact here), so log w = log π̃(X_T) − log N(X_T; σcT, σ²T)
    sigma, T = 1.3, 0.7
    ref = BrownianReference(sigma, T)
    c = torch.tensor([0.8, -1.1], dtype=torch.float64)
    tgt = sf.Gaussian(MEAN2, 0.5).double()
    with torch.no_grad():
        _, p = _paths(ref, ConstantControl(c), tgt, 500, 40)
    law = sf.Gaussian(sigma * c * T, sigma**2 * T).double()
    assert torch.allclose(p.log_w, tgt.log_prob(p.x) - law.log_prob(p.x), atol=1e-6)  # the grid: steps h·(1 + 1e-9)
    assert torch.allclose(p.running, torch.full_like(p.running, 0.5 * float(c @ c) * T), atol=1e-12)


def test_augmented_sde_matches_a_hand_written_euler_maruyama():
    # the torchsde augmented state vs an explicit loop with the same increments (a random network)
    ref = OUReference(0.1, 3.0, 1.5, 1.0)
    tgt = sf.GaussianMixture(torch.tensor([[-1.0, 0.0], [2.0, 1.0]]), 0.7).double()
    net = ControlNet(2, 1.0, (16,), use_score=True, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for p_ in net.parameters():
        p_.data.normal_(0, 0.3, generator=torch.Generator().manual_seed(p_.numel()))
    g = torch.Generator().manual_seed(5)
    x0 = ref.sample_initial(64, 2, g, torch.float64)
    inc = brownian_increments(64, 2, 30, 1 / 30, g, torch.float64, None)
    with torch.no_grad():
        p = simulate(ControlledSDE(ref, net, tgt), x0, 30, g, increments=inc)
        x, lw = x0.clone(), torch.zeros(64, dtype=torch.float64)
        for k in range(30):
            t = torch.tensor(k / 30, dtype=torch.float64)
            u = net(x, t, tgt.score(x))
            lw -= 0.5 * (u * u).sum(-1) / 30 + (u * inc[k]).sum(-1)
            x = x - ref.beta(t) * x / 30 + ref.sigma(t) * (u / 30 + inc[k])
    assert torch.allclose(p.x, x, atol=1e-10)
    assert torch.allclose(p.log_w, lw + tgt.log_prob(x) - ref.terminal_log_prob(x, 30), atol=1e-10)


def test_optimal_control_gives_constant_weights_up_to_discretisation():
    # PIS from a Dirac with the exact optimal control for N(m, s²I): log w = log Z on every path in
    # continuous time.  Euler–Maruyama leaves a strong O(√h) error in the Itô integral ∫u·dW:
    # measured sd(log w) = 0.30, 0.148, 0.074 at K = 25, 100, 400 (d = 2, s = 0.5, σ = T = 1).
    ref = BrownianReference(1.0, 1.0)
    tgt = sf.Gaussian(MEAN2, 0.25).double()
    u = GaussianOptimalControl(ref, MEAN2, 0.5)
    sds = []
    for K in (100, 400):
        with torch.no_grad():
            _, p = _paths(ref, u, tgt, 2000, K)
        sds.append(float(p.log_w.std()))
        assert abs(sf.logdensity.log_z_estimate(p.log_w)) < 0.01 and abs(float(p.log_w.mean())) < 0.02
    assert sds[1] < 0.09 and 1.7 < sds[0] / sds[1] < 2.3  # ∝ √h


def test_dis_optimal_control_weights_are_log_h0():
    # DIS: the OU reference starts at N(0, ν²I) rather than Q*'s initial law h₀·N(0, ν²I), so
    # under u* log w = log Z + log h₀(X₀) exactly in continuous time (log Z = 0 here)
    ref = OUReference(0.05, 5.0, 1.0, 1.0)
    tgt = sf.Gaussian(MEAN2, 0.25).double()
    u = GaussianOptimalControl(ref, MEAN2, 0.5)
    with torch.no_grad():
        x0, p = _paths(ref, u, tgt, 2000, 400)
    resid = p.log_w - u.log_h(x0, 0.0)
    assert float(resid.std()) < 0.1 and abs(float(resid.mean())) < 0.01
    assert float(p.log_w.std()) > float(resid.std())  # log h₀ is not constant: the check has teeth


def test_log_variance_does_not_backpropagate_through_the_paths():
    ref = BrownianReference(1.0, 1.0)
    tgt = sf.Gaussian(MEAN2, 0.25).double()
    net = ControlNet(2, 1.0, (8,), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _, p = _paths(ref, net, tgt, 32, 10, detached=True)
    assert not p.x.requires_grad and p.log_w.requires_grad
    log_variance_loss(p).backward()
    assert any(q.grad is not None and q.grad.abs().sum() > 0 for q in net.parameters())
    _, p = _paths(ref, net, tgt, 32, 10, detached=False)
    assert p.x.requires_grad and kl_loss(p).requires_grad


QUICK = dict(iterations=100, save_every=100, batch_size=64, n=1000, dt=0.05, lr=1e-2, hidden=(16, 16), seed=0)


@pytest.mark.parametrize(("method", "loss", "dim"), [("pis", "log_variance", 1), ("dis", "log_variance", 2), ("pis", "kl", 2)])
def test_training_on_gaussians(method, loss, dim):
    # N((1.5, −1), 0.5 I): the untrained sampler (the reference) has ESS 0.1–0.2
    tgt = sf.Gaussian(torch.tensor([1.5, -1.0])[:dim], 0.5)
    lz = 1.7  # an unnormalised target: log π̃ = log N + 1.7
    target = sf.from_log_prob(lambda x: tgt.log_prob(x) + lz, dim, log_Z=lz)
    r = sf.sample(target, method=method, loss=loss, **QUICK)
    ess0 = float(r.diagnostics["ess"][0])
    assert abs(r.info["log_z"] - lz) < 0.05 and r.info["ess"] > 0.9, (r.info["log_z"], r.info["ess"])
    assert r.info["elbo"] <= r.info["log_z"] + 1e-9 and ess0 < 0.8  # training did the work
    assert r.particles.shape == (1000, dim) and r.method == method


def test_same_seed_same_samples_and_resume(tmp_path):
    tgt = sf.Gaussian(MEAN2, 0.3)
    kw = dict(iterations=6, save_every=2, batch_size=16, n=50, dt=0.1, hidden=(8,), seed=3)
    a = sf.sample(tgt, method="pis", **kw)
    b = sf.sample(tgt, method="pis", **kw)
    assert torch.equal(a.particles, b.particles) and torch.equal(a.trajectory, b.trajectory)
    c = sf.sample(tgt, method="pis", **{**kw, "seed": 4})
    assert not torch.equal(a.particles, c.particles)
    ck = tmp_path / "ck.pt"
    sf.sample(tgt, method="pis", **{**kw, "iterations": 4}, times=[0, 2, 4], checkpoint=ck)
    # a resume needs the same arguments: iterations differ -> refused
    with pytest.raises(ValueError, match="different arguments"):
        sf.sample(tgt, method="pis", **kw, checkpoint=ck, resume=True)


def test_resume_is_bitwise(tmp_path):
    tgt = sf.Gaussian(MEAN2, 0.3)
    kw = dict(iterations=6, save_every=2, batch_size=16, n=50, dt=0.1, hidden=(8,), seed=3, loss="kl")
    full = sf.sample(tgt, method="dis", **kw)
    ck = tmp_path / "ck.pt"

    class Stop(Exception):
        pass

    from sbtm_flows.learned import LearnedDiffusion

    orig = LearnedDiffusion.advance

    def interrupted(self, state, t0, t1):
        if t0 >= 4:
            raise Stop
        return orig(self, state, t0, t1)

    LearnedDiffusion.advance = interrupted
    try:
        with pytest.raises(Stop):
            sf.sample(tgt, method="dis", **kw, checkpoint=ck)
    finally:
        LearnedDiffusion.advance = orig
    resumed = sf.sample(tgt, method="dis", **kw, checkpoint=ck, resume=True)
    assert torch.equal(full.particles, resumed.particles) and torch.equal(full.trajectory, resumed.trajectory)
    assert torch.equal(full.diagnostics["log_z"], resumed.diagnostics["log_z"])


def test_result_feeds_importance_and_metrics():
    tgt = sf.Gaussian(MEAN2, 0.3)
    r = sf.sample(tgt, method="pis", iterations=4, batch_size=16, n=200, dt=0.1, hidden=(8,))
    est = sf.importance(r, lambda x: x)
    lw = r.log_target.double() - r.log_density
    assert math.isclose(est.ess, sf.logdensity.effective_sample_size(lw), rel_tol=1e-9)
    assert math.isclose(r.info["log_z"], sf.logdensity.log_z_estimate(lw), rel_tol=1e-9, abs_tol=1e-12)
    assert r.nfe > 0 and r.info["score_evals"] > 0 and r.diagnostics["log_z"].shape == r.times.shape
    from sbtm_flows.learned import LearnedConfig, LearnedDiffusion

    assert isinstance(LearnedDiffusion(tgt, LearnedConfig()), sf.Sampler)  # the run-loop protocol
    cmp = sf.compare_laws(r, tgt, floor_reps=2)  # the samples at each output iteration against π
    assert cmp.distance.shape == r.times.shape and torch.isfinite(cmp.distance).all()


def test_bad_input():
    tgt = sf.Gaussian(MEAN2, 0.3)
    with pytest.raises(ValueError, match="unknown loss"):
        sf.sample(tgt, method="pis", loss="tb")
    with pytest.raises(ValueError, match="iterations"):
        sf.sample(tgt, method="dis", iterations=0)
    with pytest.raises(ValueError, match="log_prob"):
        sf.sample(sf.from_score(lambda x: -x, 2), method="pis", iterations=2)
    with pytest.raises(ValueError, match="terminal variance"):
        GaussianOptimalControl(BrownianReference(0.5, 1.0), MEAN2, 1.0)
    with pytest.raises(ValueError, match="beta_max"):
        OUReference(2.0, 1.0)
    with pytest.raises(ValueError, match="times"):
        sf.sample(tgt, method="pis", iterations=4, times=[0, 3])


def test_cli_sample_pis(tmp_path, capsys):
    import json

    from sbtm_flows.cli import main

    out = tmp_path / "pis"
    assert main(["sample", "--target", "gaussian2d", "--method", "pis", "--loss", "kl", "--iterations", "3", "--n", "40",
                 "--dt", "0.1", "--out", str(out), "--no-progress"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "pis" and m["n"] == 40 and math.isfinite(m["final"]["log_z"])
    assert json.loads((out / "config.json").read_text())["loss"] == "kl"
    assert main(["sample", "--target", "gaussian2d", "--method", "sbtm", "--loss", "kl", "--out", str(out)]) == 2
    assert "--method pis or dis" in capsys.readouterr().err


@pytest.mark.slow
def test_pis_log_variance_on_25gmm():
    # 25 modes N(m, 0.3 I), m ∈ {−10, −5, 0, 5, 10}²; ~3 min on one core.  Measured (seed 0):
    # Δlog Z = −0.036, ESS 0.38, EMC 0.98, smallest mode 1.3 %
    tgt = sf.targets.gmm25()
    means = tgt.means
    r = sf.sample(tgt, method="pis", loss="log_variance", iterations=1000, batch_size=256, n=2000, dt=0.02, lr=5e-3,
                  sigma=4.0, hidden=(64, 64), seed=0, save_every=1000)
    assert abs(r.info["log_z"]) < 0.1
    assert float(sf.metrics.mode_weights(r.particles, means).min()) >= 0.01
