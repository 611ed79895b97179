"""A target that is NaN on part of the space stops the run (issue 12, item 4)."""

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
