"""The minor items of issue 12 (item 8): each gives a clear error or is accepted consistently."""

import numpy as np
import pytest
import torch

import sbtm_flows as sf

T2 = sf.Gaussian(torch.zeros(2), torch.eye(2))
I2 = sf.Gaussian(torch.zeros(2), 0.5 * torch.eye(2))
KW = dict(init=I2, n=40, t_final=0.04, dt=0.02, init_steps=10, seed=0)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(hidden=64), "hidden must be a sequence"),
        (dict(seed=2**70), "seed must be an int in"),
        (dict(device="meta"), "device must be"),
        (dict(init_steps=-1), "init_steps must be a non-negative integer"),
        (dict(resume="no"), "resume must be"),
        (dict(times=[[0.0, 0.02], [0.03, 0.04]]), "times must be a 1-D"),
        (dict(eta=lambda t: "fast"), "eta\\(t\\) must return a finite non-negative number"),
    ],
)
def test_bad_arguments_are_refused_naming_them(bad, match):
    with pytest.raises(ValueError, match=match):
        sf.sample(T2, **{**KW, **bad})


def test_a_score_returned_as_a_numpy_array_is_named():
    target = sf.from_score(lambda x: -x.numpy(), 2)
    with pytest.raises(ValueError, match="torch tensor of shape \\(40, 2\\), got a ndarray"):
        sf.sample(target, method="ula", **{k: v for k, v in KW.items() if k != "init_steps"})


def test_numpy_floats_are_accepted_alike():
    kw = {k: v for k, v in KW.items() if k != "init_steps"}
    ref = sf.sample(T2, method="ula", **kw)
    for dt in (np.float64(0.02), np.float32(0.02)):
        res = sf.sample(T2, method="ula", **{**kw, "dt": dt})
        assert res.times.numel() == ref.times.numel()
