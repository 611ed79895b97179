"""Edge cases and bad input found by an adversarial sweep: each would once hang, give a silent
wrong result, or fail deep inside torch instead of naming the problem."""

import numpy as np
import pytest
import torch

import sbtm_flows as sf
from sbtm_flows.sampling import output_grid

T2 = sf.Gaussian(torch.zeros(2), torch.eye(2))
I2 = sf.Gaussian(torch.zeros(2), 0.5 * torch.eye(2))
KW = dict(init=I2, n=60, t_final=0.1, dt=0.02, init_steps=50, seed=0)


def test_steps_training_needs_a_fixed_step_solver():
    # adaptive solvers reuse the last derivative of the previous step (FSAL), computed before the
    # network was trained, so their step size collapsed (a run that never ended)
    with pytest.raises(ValueError, match="fixed-step solver"):
        sf.sample(T2, training="steps", solver="adaptive_heun", **KW)


def test_output_times_equal_to_grid_points_up_to_rounding_are_snapped():
    grid, idx = output_grid(sf.as_path(T2), 0.0, 1.0, 0.1, 1, True, [0.0, 0.3, 1.0])
    assert grid.numel() == 11 and float((grid[1:] - grid[:-1]).min()) > 0.09  # no 1e-17 step
    assert idx.tolist() == [0, 3, 10]
    res = sf.sample(T2, method="ula", init=I2, n=50, t_final=1.0, dt=0.1, times=[0.0, 0.3, 1.0])
    assert res.times.tolist() == pytest.approx([0.0, 0.3, 1.0])


def test_resume_of_a_run_stopped_by_stop_fisher_is_the_same_run(tmp_path):
    kw = dict(init=I2, n=100, t_final=3.0, dt=0.02, init_steps=100, stop_fisher=0.05, seed=0, checkpoint=tmp_path / "c.pt")
    a = sf.sample(T2, **kw)
    assert "stopped" in a.info and float(a.times[-1]) < 3.0
    b = sf.sample(T2, resume=True, **kw)
    assert torch.equal(a.trajectory, b.trajectory) and a.info["stopped"] == b.info["stopped"]


def test_a_finished_run_leaves_a_checkpoint_and_resuming_it_returns_the_run(tmp_path):
    # fewer output times than checkpoint_every: the final state is still written
    kw = dict(KW, checkpoint=tmp_path / "c.pt", checkpoint_every=50)
    a = sf.sample(T2, **kw)
    assert (tmp_path / "c.pt").exists()
    assert torch.equal(sf.sample(T2, resume=True, **kw).trajectory, a.trajectory)


@pytest.mark.parametrize("method", ["sbtm", "ula"])
def test_resume_under_another_target_is_refused(tmp_path, method):
    kw = dict(KW, checkpoint=tmp_path / "c.pt") if method == "sbtm" else dict(init=I2, n=60, t_final=0.1, dt=0.02, checkpoint=tmp_path / "c.pt")
    sf.sample(T2, method=method, **kw)
    other = sf.Gaussian(3 * torch.ones(2), 4 * torch.eye(2))
    with pytest.raises(ValueError, match="different target"):
        sf.sample(other, method=method, resume=True, **kw)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_unavailable_or_unknown_device():
    with pytest.raises(ValueError, match="CUDA is not available"):
        sf.sample(T2, device="cuda", **KW)
    with pytest.raises(ValueError, match="unknown device"):
        sf.sample(T2, method="ula", device="foo", n=10)


@pytest.mark.parametrize("model", [torch.nn.Linear(2, 3), torch.nn.Linear(3, 2)])
def test_score_model_of_the_wrong_shape(model):
    with pytest.raises(ValueError, match="score_model"):
        sf.sample(T2, score_model=model, **KW)


def test_result_of_a_custom_network_explains_how_to_rebuild_it():
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    res = sf.sample(T2, score_model=net, **KW)
    assert res.thetas.shape[1] == sum(p.numel() for p in net.parameters())
    with pytest.raises(ValueError, match="thetas"):
        res.score_model()


def test_log_prob_that_autograd_cannot_differentiate():
    target = sf.from_log_prob(lambda x: -(x.detach() ** 2).sum(-1) / 2, 2)
    with pytest.raises(ValueError, match="differentiable"):
        sf.sample(target, method="ula", n=10)


def test_init_as_numpy_array_and_init_law_without_sampler():
    x0 = np.random.default_rng(0).normal(size=(40, 2))
    a = sf.sample(T2, method="ula", init=x0, t_final=0.1, dt=0.02)
    b = sf.sample(T2, method="ula", init=torch.as_tensor(x0), t_final=0.1, dt=0.02)
    assert torch.equal(a.trajectory, b.trajectory)
    law = sf.from_log_prob(lambda x: -(x**2).sum(-1) / 2, 2)
    with pytest.raises(ValueError, match="cannot be sampled"):
        sf.sample(T2, method="ula", init=law, n=10)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(eta=lambda t: -1.0), "eta"),
        (dict(solver="dopri5", rtol=-1.0), "rtol"),
        (dict(checkpoint_every=-1), "checkpoint_every"),
        (dict(seed="a"), "seed"),
    ],
)
def test_more_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        sf.sample(T2, **{**KW, **kw})


def test_unwritable_checkpoint_folder():
    with pytest.raises(ValueError, match="checkpoint folder"):
        sf.sample(T2, checkpoint="/proc/sbtm/x.pt", **KW)
