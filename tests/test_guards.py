"""A target that is NaN on part of the space stops the run (issue 12, item 4)."""

import math
import re

import pytest
import torch

import sbtm_flows as sf
from sbtm_flows.guards import check_target_finite


def _half_nan(x):
    # the case: log π defined by torch.where with NaN on a half-plane; autograd gives
    # score 0 there, so particles that drift in stay
    return torch.where(x[:, 0] < -1.0, -0.5 * (x**2).sum(-1), torch.full_like(x[:, 0], float("nan")))


TARGET = sf.from_log_prob(_half_nan, 2)
INIT = sf.Gaussian(torch.tensor([-3.5, 0.0]), 0.25 * torch.eye(2))


@pytest.mark.parametrize("method, kw", [("ula", {}), ("sbtm", dict(init_steps=50, eta=0.5)), ("sbtm", dict(init_steps=50, training="steps"))])
def test_a_target_nan_on_half_the_space_stops_the_run_naming_t_count_and_x(method, kw):
    with pytest.raises(sf.SamplingError) as e:
        sf.sample(TARGET, method=method, init=INIT, n=200, t_final=3.0, dt=0.02, seed=0, **kw)
    msg, t = str(e.value), e.value.t
    assert "log π is NaN/inf" in msg and t is not None and 0.0 < t < 3.0  # caught on the way, not at the start
    count, n = map(int, re.search(r"at (\d+) of (\d+) particles", msg).groups())
    assert 1 <= count <= n == 200
    x = [float(v) for v in re.search(r"x=\[([^\]]*)\]", msg).group(1).split(",")]
    assert x[0] >= -1.0  # the example lies where log π is NaN
    assert f"t={t:.6g}" in msg


def test_check_target_finite_counts_rows_and_checks_the_score_too():
    x = torch.tensor([[-2.0, 0.0], [0.0, 0.0], [3.0, 1.0]])
    with pytest.raises(sf.SamplingError, match="at 2 of 3 particles at t=0.5"):
        check_target_finite(sf.as_path(TARGET), x, 0.5)
    check_target_finite(sf.as_path(TARGET), x[:1], 0.5)
    inf_score = sf.from_score(lambda y: torch.where(y > 0, torch.inf, -y), 2)  # no log_prob: the score is checked
    with pytest.raises(sf.SamplingError, match="score ∇log π is NaN/inf at 1 of 3"):
        check_target_finite(sf.as_path(inf_score), x, 0.0, chunk=2)


def test_a_log_prob_returning_a_float_is_refused_clearly():
    float_target = sf.from_log_prob(lambda y: 0.0, 2)
    with pytest.raises(ValueError, match="one row per particle"):
        check_target_finite(sf.as_path(float_target), torch.zeros(4, 2), 0.0)


def test_escaping_held_out_particles_are_flagged_and_regular_ones_are_not():
    from sbtm_flows.guards import holdout_outliers

    g = torch.Generator().manual_seed(0)
    x, xh = torch.randn(1000, 2, generator=g), torch.randn(300, 2, generator=g)
    ell, ellh = -0.5 * (x**2).sum(-1), -0.5 * (xh**2).sum(-1)
    xh[7] = torch.tensor([0.3, 350.0])  # the banana escapee: x₂ ≈ 350 ...
    ellh[11] = 1400.0  # ... and a tracked log-density ≈ +1400 at an ordinary position
    ellh[12] = float("nan")
    out = holdout_outliers(x, xh, ell, ellh)
    assert out.nonzero().flatten().tolist() == [7, 11, 12]
    assert holdout_outliers(x, xh).nonzero().flatten().tolist() == [7]  # positions only


def test_a_run_with_held_out_particles_counts_escapes_without_false_alarms():
    res = sf.sample(sf.Gaussian(torch.zeros(2), torch.eye(2)), init=sf.Gaussian(torch.zeros(2), 0.5 * torch.eye(2)), n=300,
                    holdout=300, track_logdensity=True, t_final=0.2, dt=0.02, init_steps=200, seed=0)
    assert res.diagnostics["holdout_escaped"].shape == res.times.shape
    assert float(res.diagnostics["holdout_escaped"].sum()) == 0.0
    assert torch.isfinite(res.diagnostics["log_z"]).all()


def _repel_beyond(x):
    """log N(0, 1) for x ≤ 3, growing like 5x² beyond (score +10x: particles out there fly off)."""
    y = x[:, 0]
    return torch.where(y > 3.0, -4.5 + 5.0 * (y**2 - 9.0), -0.5 * y**2) - 0.5 * math.log(2 * math.pi)


def test_held_out_particles_that_escape_are_excluded_and_counted():
    res = sf.sample(sf.from_log_prob(_repel_beyond, 1), init=sf.Gaussian(torch.zeros(1), 1.0), n=100, t_final=0.4, dt=0.02, seed=0, holdout=3000,
                    track_logdensity=True, save_every=5, init_steps=300)
    assert float(res.trajectory[:, :, 0].max()) < 3.0  # the training particles stay inside
    x0 = res.holdout_trajectory[0, :, 0]
    out = x0 > 3.0
    assert int(out.sum()) >= 1 and float(res.holdout_particles[out].abs().min()) > 30  # they escaped
    assert res.diagnostics["holdout_escaped"][-1] == int(out.sum())
    # the others give log Z ≈ 0 (f_0 = π); kept, the escapees (log π̃ − ℓ ≈ +10⁴) would dominate it
    assert float(res.diagnostics["log_z"][-1]) == pytest.approx(0.0, abs=0.05)
    est = sf.importance(res, lambda x: x[:, 0])
    assert float(est.weights[out].abs().sum()) == 0.0
