"""The generic run loop (sbtm_flows.loop.run) with a toy sampler defined here: a deterministic
drift, a few lines, that gets output times, observers, stop rules, progress and bitwise
checkpoint/resume from the loop without writing any of them."""

import math

import pytest
import torch

from sbtm_flows.checkpoint import Checkpoint, read_checkpoint
from sbtm_flows.loop import Sampler, run

A = 0.7  # dX/dt = -A X, solved exactly: X(t1) = X(t0) exp(-A (t1 - t0))


class Decay:
    """The toy sampler: the State is the particle tensor itself."""

    def __init__(self, fail_at: float | None = None):
        self.fail_at, self.calls = fail_at, 0

    def init(self, x0, t0, generator):
        return x0 + 0.01 * torch.randn(x0.shape, generator=generator, dtype=x0.dtype)

    def advance(self, x, t0, t1):
        if self.fail_at is not None and t1 > self.fail_at:
            raise RuntimeError("interrupted")
        self.calls += 1
        return x * math.exp(-A * (t1 - t0))

    def state_dict(self, x):
        return {"x": x}

    def load_state_dict(self, blob):
        return blob["x"]

    def particles(self, x):
        return x


X0 = torch.arange(10.0, dtype=torch.float64).reshape(5, 2) + 1.0
TIMES = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)


def start(sampler):
    return lambda: sampler.init(X0, 0.0, torch.Generator().manual_seed(0))


def test_toy_sampler_is_a_sampler_and_runs_to_the_exact_solution():
    sampler = Decay()
    assert isinstance(sampler, Sampler)
    res = run(sampler, start(sampler), TIMES, method="decay", config={"a": A})
    x0 = res.trajectory[0]
    expect = x0[None] * torch.exp(-A * TIMES)[:, None, None]
    torch.testing.assert_close(res.trajectory, expect, rtol=1e-12, atol=0)
    assert torch.equal(res.particles, res.trajectory[-1]) and torch.equal(res.times, TIMES)
    assert res.method == "decay" and res.config == {"a": A} and sampler.calls == 10


def test_observers_record_diagnostics_and_series_and_a_stop_rule_ends_the_run():
    def mean_abs(sampler, x, t, k):
        return {"mean_abs": float(x.abs().mean()), "norms": x.norm(dim=1)}

    stop = lambda t, d: f"mean_abs below 4 at t = {t:.3g}" if d["mean_abs"] < 4.0 else None  # noqa: E731
    sampler = Decay()
    res = run(sampler, start(sampler), TIMES, observers=[mean_abs], stop=stop)
    m = res.diagnostics["mean_abs"]
    # mean|X0| ≈ 5.5, so mean|X_t| = 5.5 e^{-0.7 t} < 4 first at t = ln(5.5/4)/0.7 ≈ 0.455 -> output 0.5
    assert float(res.times[-1]) == pytest.approx(0.5) and float(m[-1]) < 4.0 <= float(m[-2])
    assert res.info["stopped"] == "mean_abs below 4 at t = 0.5"
    assert sampler.calls == 5


def test_checkpoint_resume_is_bitwise_and_skips_the_work_done(tmp_path):
    full = run(Decay(), start(Decay()), TIMES)
    ck = Checkpoint(tmp_path / "ck.pt", {"toy": True})
    broken = Decay(fail_at=0.65)
    with pytest.raises(RuntimeError, match="interrupted"):
        run(broken, start(broken), TIMES, checkpoint=ck, checkpoint_every=3)
    blob = read_checkpoint(tmp_path / "ck.pt")  # loaded with torch.load(weights_only=True)
    assert blob["k"] == 6
    again = Decay()
    calls = []
    resumed = run(again, lambda: calls.append(1), TIMES, checkpoint=ck, checkpoint_every=3, resume=True)
    assert not calls  # the initial state is not rebuilt on a resume
    assert again.calls == 4  # intervals 6 -> 10 only
    assert torch.equal(resumed.trajectory, full.trajectory) and torch.equal(resumed.times, full.times)
    with pytest.raises(ValueError, match="different arguments: toy"):
        run(Decay(), start(Decay()), TIMES, checkpoint=Checkpoint(tmp_path / "ck.pt", {"toy": False}), resume=True)


class FakeBar:
    """Stands in for tqdm: records what the loop tells the bar."""

    made = []

    def __init__(self, total, initial, desc, disable, **kw):
        self.total, self.n, self.desc, self.disable, self.postfix = total, initial, desc, disable, None
        FakeBar.made.append(self)

    def update(self, k):
        self.n += k

    def set_postfix(self, d, refresh=False):
        self.postfix = d

    def close(self):
        pass


def test_progress_bar_for_free(monkeypatch, tmp_path):
    import tqdm.auto

    monkeypatch.setattr(tqdm.auto, "tqdm", FakeBar)
    sampler = Decay()
    run(sampler, start(sampler), TIMES, progress=True, method="decay")
    bar = FakeBar.made[-1]
    assert (bar.desc, bar.total, bar.n, bar.disable) == ("decay", 10, 10, False) and bar.postfix == {"t": "1"}
    # a resumed run's bar starts where the checkpoint was
    ck = Checkpoint(tmp_path / "ck.pt", {})
    broken = Decay(fail_at=0.35)
    with pytest.raises(RuntimeError):
        run(broken, start(broken), TIMES, checkpoint=ck, checkpoint_every=1)
    run(Decay(), start(Decay()), TIMES, checkpoint=ck, resume=True, progress=True)
    assert FakeBar.made[-1].n == 10 and FakeBar.made[-2].n == 3


class _SlotLaw:
    """An initial law with ``__slots__`` (no instance ``__dict__``): N(0, I) in d = 2."""

    __slots__ = ("dim",)

    def __init__(self):
        self.dim = 2

    def sample(self, n, generator=None):
        return torch.randn(n, 2, generator=generator, dtype=torch.float64)


def test_initial_law_with_slots_is_sampled_not_crashed():
    from sbtm_flows.loop import initial_particles

    x0, law = initial_particles(_SlotLaw(), 7, 2, torch.Generator().manual_seed(3), torch.float64, "cpu")
    expected = torch.randn(7, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(x0, expected) and law is not None
