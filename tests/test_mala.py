"""MALA (sbtm_flows.mala): exactness, frozen adaptation, detailed balance, seeding, resume."""

import math

import pytest
import torch
from scipy.stats import chi2

import sbtm_flows as sf
from sbtm_flows.mala import MALA, mala_log_alpha

F64 = torch.float64
COV = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=F64)
MEAN = torch.tensor([1.0, -2.0], dtype=F64)
CORR = sf.Gaussian(MEAN, COV)


def test_correlated_gaussian_moments_within_mc_error():
    n = 4000
    res = sf.sample(CORR, method="mala", n=n, steps=300, warmup=200, step_size=0.5, seed=3, save_every=100)
    x = res.particles.double()
    assert res.method == "mala" and x.shape == (n, 2)
    # n independent chains: standard errors of the mean sqrt(Σᵢᵢ/n), of a covariance entry
    # sqrt((ΣᵢᵢΣⱼⱼ + Σᵢⱼ²)/n) (Gaussian fourth moments); 4 standard errors
    se_mean = (torch.diagonal(COV) / n).sqrt()
    assert ((x.mean(0) - MEAN).abs() < 4 * se_mean).all(), x.mean(0)
    emp = torch.cov(x.T)
    se_cov = ((torch.diagonal(COV)[:, None] * torch.diagonal(COV)[None, :] + COV**2) / n).sqrt()
    assert ((emp - COV).abs() < 4 * se_cov).all(), emp
    assert abs(res.info["acceptance"] - 0.574) < 0.05, res.info


def test_step_size_frozen_after_warmup_and_acceptance_recorded():
    res = sf.sample(CORR, method="mala", n=500, steps=60, warmup=40, step_size=2.0, seed=0, save_every=10)
    h = res.diagnostics["step_size"]
    after = res.times >= 40
    assert after.sum() >= 6
    assert torch.all(h[after] == h[after][0]), h  # bitwise constant once frozen
    assert float(h[after][0]) == res.info["step_size"]
    assert not torch.all(h[~after] == h[0])  # it did move during warm-up
    acc = res.diagnostics["acceptance"]
    assert math.isnan(float(acc[0])) and torch.all((acc[1:] > 0) & (acc[1:] < 1))


def test_large_fixed_step_is_unbiased_where_ula_is_not():
    # N(0, 1) from exact draws, h = 1.5 frozen: ULA's chain has stationary variance 2/(2 − h) = 4,
    # MALA's accept/reject keeps π exactly.  n = 20,000 chains: var's se ≈ sqrt(2/n) = 0.01.
    tgt = sf.Gaussian(torch.zeros(1, dtype=F64), 1.0)
    res = sf.sample(tgt, method="mala", init=tgt, n=20_000, steps=200, warmup=0, step_size=1.5, seed=5, save_every=200)
    assert float(res.particles.var()) == pytest.approx(1.0, abs=0.05)
    ula = sf.sample(tgt, method="ula", init=tgt, n=20_000, t_final=300.0, dt=1.5, seed=5, save_every=200, dtype=F64)
    assert float(ula.particles.var()) > 2.0


def _bowker(x0: torch.Tensor, x1: torch.Tensor, edges: torch.Tensor) -> tuple[float, int]:
    """Bowker's symmetry statistic Σ_{i<j} (Nᵢⱼ − Nⱼᵢ)²/(Nᵢⱼ + Nⱼᵢ) of the transition counts
    between bins, and its degrees of freedom (χ² under detailed balance from stationarity)."""
    a, b = torch.bucketize(x0, edges), torch.bucketize(x1, edges)
    k = edges.numel() + 1
    counts = torch.zeros(k, k, dtype=F64)
    counts.index_put_((a, b), torch.ones_like(x0, dtype=F64), accumulate=True)
    stat, df = 0.0, 0
    for i in range(k):
        for j in range(i + 1, k):
            s = float(counts[i, j] + counts[j, i])
            if s > 0:
                stat += float(counts[i, j] - counts[j, i]) ** 2 / s
                df += 1
    return stat, df


ASYM = sf.GaussianMixture(torch.tensor([[-2.0], [1.5]], dtype=F64), torch.tensor([0.3, 1.0], dtype=F64),
                          torch.tensor([0.7, 0.3], dtype=F64))
EDGES = torch.tensor([-2.5, -1.8, -1.0, 0.0, 1.0, 2.0], dtype=F64)


def test_detailed_balance_after_warmup():
    # chains started at π; after the warm-up, the pair (X_W, X_{W+1}) of a π-reversible kernel is
    # exchangeable: the bin transition counts are symmetric (Bowker's χ² test, p > 0.001)
    n, warm = 40_000, 60
    res = sf.sample(ASYM, method="mala", init=ASYM, n=n, steps=1, warmup=warm, step_size=1.0, seed=7, save_every=1)
    assert torch.allclose(res.times[-2:], torch.tensor([warm, warm + 1.0], dtype=F64))
    stat, df = _bowker(res.trajectory[-2, :, 0], res.trajectory[-1, :, 0], EDGES)
    assert df >= 10 and chi2.sf(stat, df) > 1e-3, (stat, df)
    # the same check sees ULA's non-reversible step at that step size (it does not preserve π)
    h = res.info["step_size"]
    ula = sf.sample(ASYM, method="ula", init=ASYM, n=n, t_final=h, dt=h, seed=7, dtype=F64, stiffness_check=False)
    stat_ula, df_ula = _bowker(ula.trajectory[0, :, 0], ula.trajectory[-1, :, 0], EDGES)
    assert chi2.sf(stat_ula, df_ula) < 1e-6, (stat_ula, df_ula)


def test_log_alpha_is_antisymmetric():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 3, generator=g, dtype=F64), torch.randn(50, 3, generator=g, dtype=F64)
    tgt = sf.Gaussian(torch.zeros(3, dtype=F64), torch.eye(3, dtype=F64) * 2)
    lx, ly, gx, gy = tgt.log_prob(x), tgt.log_prob(y), tgt.score(x), tgt.score(y)
    fwd, bwd = mala_log_alpha(x, gx, lx, y, gy, ly, 0.3), mala_log_alpha(y, gy, ly, x, gx, lx, 0.3)
    assert torch.allclose(fwd, -bwd)
    # at a non-finite proposal the move is refused
    ly_bad = ly.clone()
    ly_bad[0] = float("nan")
    assert mala_log_alpha(x, gx, lx, y, gy, ly_bad, 0.3)[0] == -math.inf


def test_same_seed_same_chains_and_bitwise_resume(tmp_path, monkeypatch):
    kw = dict(n=200, steps=30, warmup=20, step_size=0.5, save_every=10)
    a = sf.sample(CORR, method="mala", seed=11, **kw)
    b = sf.sample(CORR, method="mala", seed=11, **kw)
    c = sf.sample(CORR, method="mala", seed=12, **kw)
    assert torch.equal(a.particles, b.particles) and not torch.equal(a.particles, c.particles)
    ck = tmp_path / "m.ckpt"
    real_advance, calls = MALA.advance, []

    def crashing(self, state, t0, t1):  # the run dies in its 4th output interval (mid warm-up → after)
        calls.append(t1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_advance(self, state, t0, t1)

    monkeypatch.setattr(MALA, "advance", crashing)
    with pytest.raises(KeyboardInterrupt):
        sf.sample(CORR, method="mala", seed=11, checkpoint=ck, checkpoint_every=1, **kw)
    monkeypatch.setattr(MALA, "advance", real_advance)
    resumed = sf.sample(CORR, method="mala", seed=11, checkpoint=ck, resume=True, **kw)
    assert torch.equal(resumed.particles, a.particles) and torch.equal(resumed.trajectory, a.trajectory)
    assert resumed.nfe == a.nfe == 51 and resumed.info["step_size"] == a.info["step_size"]
    with pytest.raises(ValueError, match="different arguments"):  # another run's checkpoint is refused
        sf.sample(CORR, method="mala", seed=11, checkpoint=ck, resume=True, **{**kw, "steps": 40})


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(step_size=0.0), "step_size"),
        (dict(warmup=-1), "warmup"),
        (dict(target_accept=1.0), "target_accept"),
        (dict(steps=0), "steps"),
    ],
)
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        sf.sample(CORR, method="mala", n=10, **kw)


def test_annealing_path_and_score_only_targets_refused():
    path = sf.Geometric(sf.Gaussian(torch.zeros(2), 1.0), CORR)
    with pytest.raises(ValueError, match="fixed law"):
        sf.sample(path, method="mala", n=10)
    score_only = sf.from_score(lambda x: -x, dim=2)
    with pytest.raises(ValueError, match="log_prob"):
        sf.sample(score_only, method="mala", n=10)


def test_cli_sample_mala(tmp_path):
    from sbtm_flows.cli import main

    out = tmp_path / "m"
    assert main(["sample", "--target", "gaussian2d", "--method", "mala", "--n", "50", "--steps", "5", "--warmup", "5",
                 "--step-size", "0.3", "--out", str(out), "--no-progress"]) == 0
    res = sf.load(out / "result.pt")
    assert res.method == "mala" and res.nfe == 11 and res.particles.shape == (50, 2) and "acceptance" in res.diagnostics
    assert main(["sample", "--target", "gaussian2d", "--method", "ula", "--steps", "5", "--out", str(out)]) == 2


def test_options_of_other_methods_refused():
    with pytest.raises(ValueError, match="no option 'eta'.*method='sbtm'"):
        sf.sample(CORR, method="mala", n=10, eta=1.0)
    with pytest.raises(ValueError, match="no option 't_final'"):
        sf.sample(CORR, method="mala", n=10, t_final=2.0)


def test_proposals_where_the_target_is_undefined_are_rejected_counted_and_warned():
    # N(0, 1) whose log π is NaN on x > 1 (an undefined region, not a zero density): MALA rejects
    # there, so it samples N(0, 1) truncated to x ≤ 1, mean −φ(1)/Φ(1) = −0.2876 (se ≈ 0.8/√n), and
    # says how often it happened instead of rejecting silently
    def log_prob(x):
        lp = -0.5 * (x**2).sum(-1)
        return torch.where(x[:, 0] > 1, torch.full_like(lp, math.nan), lp)

    tgt = sf.from_log_prob(log_prob, 1, score=lambda x: -x)
    n = 3000
    with pytest.warns(RuntimeWarning, match="NaN/\\+inf at [0-9]+ proposals"):
        res = sf.sample(tgt, method="mala", init=sf.Gaussian(torch.full((1,), -1.0, dtype=F64), 0.25), n=n, steps=300,
                        warmup=100, step_size=0.5, seed=0, save_every=300)
    x = res.particles.double()
    assert float(x.max()) <= 1.0 and res.info["undefined_proposals"] > 0
    assert abs(float(x.mean()) + 0.2876) < 4 * 0.8 / math.sqrt(n), float(x.mean())
    clean = sf.sample(CORR, method="mala", n=200, steps=20, warmup=10, seed=0, save_every=20)
    assert clean.info["undefined_proposals"] == 0
