"""The η protocol (sbtm_flows.eta): conversions, capabilities declared rather than read off the
class, and that wrapping η changes no bit of a run."""

import math

import pytest
import torch
from resume_cases import interrupt_and_resume

import sbtm_flows as sf
from sbtm_flows.eta import ConstantEta, EtaSchedule, TimeEta, as_eta
from sbtm_flows.ntk import NTKEta
from sbtm_flows.stiffness import AutoEta, stable_eta

TARGET = sf.Gaussian(torch.zeros(1), torch.eye(1))
KW = dict(init=sf.Gaussian(torch.zeros(1), torch.tensor([[0.25]])), n=64, t_final=0.1, dt=0.01, seed=0, init_steps=200,
          solver="heun2")


def test_as_eta_converts_once_and_declares_capabilities():
    c, f = as_eta(5), as_eta(lambda t: 1.0 + t)
    assert isinstance(c, ConstantEta) and c(0.3) == 5.0 and not (c.stateful or c.follows_curvature or c.wants_ceiling)
    assert isinstance(f, TimeEta) and f(torch.tensor(0.5)) == 1.5 and not f.stateful
    auto, ntk = as_eta("auto"), as_eta("ntk")
    assert isinstance(auto, AutoEta) and auto.follows_curvature and not auto.stateful
    assert isinstance(ntk, NTKEta) and ntk.stateful and ntk.wants_ceiling
    ntk.set_ceiling(7.0)
    assert not ntk.wants_ceiling and ntk(0.0) == 7.0 and ntk.state_dict() == {"ceiling": 7.0, "auto_ceiling": True}
    assert as_eta(ntk) is ntk and as_eta(auto) is auto
    with pytest.raises(ValueError, match="takes no ceiling"):
        c.set_ceiling(1.0)


@pytest.mark.parametrize("eta, t0, match", [
    (-1.0, None, "eta must be > 0"),
    (0, None, "eta must be > 0"),
    ("fast", None, "'auto', 'ntk'"),
    (lambda t: -1.0, 0.0, "finite non-negative"),
    (lambda t: math.nan, 0.0, "finite non-negative"),
])
def test_as_eta_refuses_bad_values(eta, t0, match):
    with pytest.raises(ValueError, match=match):
        as_eta(eta, t0)


def test_time_eta_refuses_a_non_positive_value_when_called():
    with pytest.raises(ValueError, match=r"eta\(0\.5\) = 0\.0"):
        TimeEta(lambda t: 0.0)(0.5)


def test_auto_eta_state_round_trip():
    a = AutoEta(safety=0.5)
    with pytest.raises(RuntimeError, match="no value yet"):
        a(0.0)
    a.observe_curvature(lam=40.0, limit=2.0, h=0.01)
    assert a(0.0) == pytest.approx(stable_eta(40.0, 0.01, 2.0, 0.5)) == pytest.approx(2.5)
    b = AutoEta(safety=0.5)
    b.load_state_dict(a.state_dict())
    assert b(1.0) == a(1.0)


class Linear(EtaSchedule):
    """η(t) = 2 + 10 t as a schedule object."""

    def __call__(self, t, x=None, theta=None, flow=None):
        return 2.0 + 10.0 * float(t)


def test_a_schedule_a_callable_and_a_number_give_the_same_bits():
    a = sf.sample(TARGET, eta=Linear(), **KW)
    b = sf.sample(TARGET, eta=lambda t: 2.0 + 10.0 * t, **KW)
    assert torch.equal(a.particles, b.particles) and torch.equal(a.thetas, b.thetas)
    assert torch.equal(a.diagnostics["eta"], b.diagnostics["eta"])
    c, d = sf.sample(TARGET, eta=5.0, **KW), sf.sample(TARGET, eta=ConstantEta(5.0), **KW)
    assert torch.equal(c.particles, d.particles) and torch.equal(c.thetas, d.thetas)


class HalfStable(EtaSchedule):
    """A user's curvature-following η: half the stable η, capped at 20 (declared, not an AutoEta)."""

    follows_curvature = True

    def __init__(self):
        self.value, self.calls = None, 0

    def observe_curvature(self, lam, limit, h):
        self.calls += 1
        self.value = min(20.0, stable_eta(lam, h, limit, 0.5))

    def __call__(self, t, x=None, theta=None, flow=None):
        return self.value


def test_a_declared_capability_is_honoured_without_subclassing_auto_eta():
    kw = {k: v for k, v in KW.items() if k != "solver"}
    res = sf.sample(TARGET, eta=HalfStable(), **kw)
    assert res.info["solver"] == "heun2"  # the default for a curvature-following η
    assert res.info["stiffness"]["max_eta_lambda_dt"] <= 1.0 + 1e-9  # half of heun2's limit 2
    assert torch.isfinite(res.diagnostics["eta"]).all() and float(res.diagnostics["eta"].max()) <= 20.0


def test_auto_eta_resume_is_bitwise(tmp_path):
    kw = dict(KW, t_final=0.2, save_every=2, eta="auto")
    full, resumed, _ = interrupt_and_resume(TARGET, tmp_path / "ck.pt", **kw)
    assert torch.equal(resumed.particles, full.particles) and torch.equal(resumed.thetas, full.thetas)
    assert torch.equal(resumed.diagnostics["eta"], full.diagnostics["eta"])
