"""Plot helpers: the dissipation panel's axis must not bend the curves it shows."""

from __future__ import annotations

import math

import matplotlib
import matplotlib.pyplot
import pytest
import torch

import sbtm_flows as sf

matplotlib.use("Agg", force=False)


def test_symlog_threshold_is_below_every_positive_value():
    curves = [torch.tensor([1.0, 1e-2, 1e-5]), torch.tensor([-3.0, 0.0, float("nan"), 2e-4])]
    assert sf.plotting.symlog_threshold(curves) == pytest.approx(1e-6)
    assert sf.plotting.symlog_threshold([torch.tensor([0.0, -1.0])]) == 1.0
    assert sf.plotting.symlog_threshold([torch.tensor([1e-30])]) == 1e-12


def test_dissipation_panel_keeps_the_exact_rate_on_the_log_part():
    """§5.1's exact rate (1 − v)²/v falls below 10⁻³ at t ≈ 1.6; the old fixed threshold 10⁻³
    turned the axis linear there (a kink in Figure 2).  The threshold must sit below the curve."""
    target = sf.Gaussian(torch.zeros(1), torch.eye(1))
    init = sf.Gaussian(torch.zeros(1), (1 - math.exp(-0.2)) * torch.eye(1))
    res = sf.sample(target, init=init, n=200, t_final=2.0, dt=0.02, save_every=5, seed=0)

    def exact(t):
        v = 1 - torch.exp(-2 * (t.double() + 0.1))
        return (1 - v) ** 2 / v

    fig = sf.plotting.plot_dissipation(res, exact=exact)
    linthresh = fig.axes[0].yaxis.get_transform().linthresh
    assert float(exact(res.times).min()) < 1e-3  # the old threshold would have cut this curve
    assert linthresh <= float(exact(res.times).min()) / 10 * (1 + 1e-9)
    matplotlib.pyplot.close(fig)
