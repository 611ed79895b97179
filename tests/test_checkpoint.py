"""Checkpoints under hostile input: crafted pickles, corrupt files, another run's checkpoint,
concurrent runs, interrupted writes (issue 12, items 1–3)."""

import hashlib
import io
import os
import subprocess
import sys

import pytest
import torch

import sbtm_flows as sf
from sbtm_flows.checkpoint import Checkpoint, CheckpointError, fingerprint, read_checkpoint

T2 = sf.Gaussian(torch.zeros(2), torch.eye(2))
I2 = sf.Gaussian(torch.zeros(2), 0.5 * torch.eye(2))
ULA = dict(method="ula", n=40, t_final=0.1, dt=0.02, seed=0)
SBTM = dict(init=I2, n=40, t_final=0.06, dt=0.02, init_steps=20, seed=0)


def _ula(tmp_path, resume=False, **kw):
    return sf.sample(T2, checkpoint=tmp_path / "c.ckpt", resume=resume, **{"init": I2, **ULA, **kw})


# ---- no code on load ---------------------------------------------------------------------
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _with_header(payload: bytes) -> bytes:
    from sbtm_flows import checkpoint as ck

    return ck._MAGIC + hashlib.sha256(payload).digest() + payload


@pytest.mark.parametrize("wrapped", [True, False])
def test_a_crafted_pickle_is_refused_and_runs_nothing(tmp_path, wrapped):
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"config": "{}", "y": _Evil(str(marker))}, buf)
    # wrapped: a valid header and checksum around the payload; not wrapped: a plain torch file
    (tmp_path / "c.ckpt").write_bytes(_with_header(buf.getvalue()) if wrapped else buf.getvalue())
    with pytest.raises(CheckpointError, match="c.ckpt") as e:
        _ula(tmp_path, resume=True)
    assert ("other than tensors" in str(e.value)) if wrapped else ("not a sbtm_flows checkpoint" in str(e.value))
    assert not marker.exists()
    buf.seek(0)  # the payload is live: an unsafe load runs it
    torch.load(buf, weights_only=False)
    assert marker.exists()


def test_checkpoint_files_load_weights_only(tmp_path):
    # everything a run writes (SBTM steps: network, optimizer; the monitor) loads without pickled code
    sf.sample(T2, training="steps", checkpoint=tmp_path / "s.ckpt", **SBTM)
    sf.sample(T2, training="flow", checkpoint=tmp_path / "f.ckpt", **SBTM)
    for name in ("s.ckpt", "f.ckpt"):
        blob = read_checkpoint(tmp_path / name)
        assert blob["k"] == 3 and isinstance(blob["config"], str)


# ---- corrupt and foreign files ------------------------------------------------------------
def _corruptions(good: bytes, tmp_path):
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x10
    res = tmp_path / "r.pt"
    sf.sample(T2, **{"init": I2, **ULA}).save(res)
    return {
        "empty": (b"", "is empty"),
        "truncated": (good[: len(good) // 2], "corrupt"),
        "header only": (good[:10], "truncated"),
        "random bytes": (bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1), dtype=torch.uint8).tolist()),
                         "not a sbtm_flows checkpoint"),
        "bit flip": (bytes(flipped), "corrupt"),
        "result file": (res.read_bytes(), "saved Result"),
    }


def test_every_corrupt_checkpoint_gives_one_clear_error_naming_the_file(tmp_path):
    _ula(tmp_path)
    good = (tmp_path / "c.ckpt").read_bytes()
    for name, (data, what) in _corruptions(good, tmp_path).items():
        (tmp_path / "c.ckpt").write_bytes(data)
        with pytest.raises(CheckpointError) as e:
            _ula(tmp_path, resume=True)
        msg = str(e.value)
        assert "c.ckpt" in msg and what in msg, (name, msg)
        assert "\n" not in msg, name


# ---- only the same run resumes ------------------------------------------------------------
@pytest.mark.parametrize(
    "change, named",
    [
        (dict(init=sf.Gaussian(3 * torch.ones(2), 0.1 * torch.eye(2))), "init"),  # same shapes, another law
        (dict(times=[0.0, 0.05, 0.1]), "times"),
        (dict(seed=1), "seed"),
    ],
)
def test_resume_of_another_run_is_refused_naming_what_differs(tmp_path, change, named):
    _ula(tmp_path, times=[0.0, 0.04, 0.1])
    kw = {"times": [0.0, 0.04, 0.1], **change}
    with pytest.raises(CheckpointError, match=f"different arguments: {named}"):
        _ula(tmp_path, resume=True, **kw)


def test_init_tensors_of_the_same_shape_are_compared_by_value(tmp_path):
    x = torch.randn(40, 2, generator=torch.Generator().manual_seed(0))
    _ula(tmp_path, init=x)
    assert torch.equal(_ula(tmp_path, resume=True, init=x.clone()).trajectory[0], x)
    with pytest.raises(CheckpointError, match="init"):
        _ula(tmp_path, resume=True, init=x + 1e-6)


def _net(seed, hidden=(8,)):
    return sf.ScoreMLP(2, hidden, generator=torch.Generator().manual_seed(seed))


def test_another_network_is_refused_a_rebuilt_one_resumes(tmp_path):
    kw = dict(SBTM, training="flow", checkpoint=tmp_path / "c.ckpt")
    first = sf.sample(T2, score_model=_net(0), **kw)
    again = sf.sample(T2, score_model=_net(0), resume=True, **kw)
    assert torch.equal(again.trajectory, first.trajectory)
    for other in (_net(1), _net(0, (9,))):  # same architecture other Θ₀; another architecture
        with pytest.raises(CheckpointError, match="score_model.*freshly built"):
            sf.sample(T2, score_model=other, resume=True, **kw)


def _eta(t):
    return 2.0 + t


def _eta_factory(c):
    return lambda t: c


def test_a_callable_eta_with_the_same_code_resumes_and_other_code_is_refused(tmp_path):
    kw = dict(SBTM, training="flow", checkpoint=tmp_path / "c.ckpt")
    first = sf.sample(T2, eta=_eta, **kw)
    assert torch.equal(sf.sample(T2, eta=_eta, resume=True, **kw).trajectory, first.trajectory)
    sf.sample(T2, eta=_eta_factory(2.0), checkpoint=tmp_path / "d.ckpt", **{k: v for k, v in kw.items() if k != "checkpoint"})
    kw["checkpoint"] = tmp_path / "d.ckpt"
    sf.sample(T2, eta=_eta_factory(2.0), resume=True, **kw)  # a new closure, same code and value
    with pytest.raises(CheckpointError, match="eta"):
        sf.sample(T2, eta=_eta_factory(3.0), resume=True, **kw)  # same code, another captured value


class _Opaque:
    """An init law holding something whose content cannot be inspected (no state, no repr)."""

    def __init__(self):
        self.dim, self.law, self.handle = 2, I2, object()

    def sample(self, n, generator=None):
        return self.law.sample(n, generator=generator)


class _Plain:
    """An init law with plain attributes (fingerprinted by them)."""

    def __init__(self, scale):
        self.dim, self.scale = 2, scale

    def sample(self, n, generator=None):
        return self.scale * torch.randn(n, 2, generator=generator, dtype=torch.float64)


def test_custom_init_objects_resume_when_inspectable_and_with_force_otherwise(tmp_path):
    first = _ula(tmp_path, init=_Plain(0.5))
    assert torch.equal(_ula(tmp_path, resume=True, init=_Plain(0.5)).trajectory, first.trajectory)
    with pytest.raises(CheckpointError, match="init"):
        _ula(tmp_path, resume=True, init=_Plain(0.6))
    (tmp_path / "c.ckpt").unlink()
    first = _ula(tmp_path, init=_Opaque())
    with pytest.raises(CheckpointError, match="cannot verify that init.*resume='force'"):
        _ula(tmp_path, resume=True, init=_Opaque())
    with pytest.warns(RuntimeWarning, match="without verifying init"):
        again = _ula(tmp_path, resume="force", init=_Opaque())
    assert torch.equal(again.trajectory, first.trajectory)


def test_resume_must_be_true_false_or_force():
    with pytest.raises(ValueError, match="resume must be"):
        sf.sample(T2, resume="no", **{"init": I2, **ULA})


def test_fingerprint_is_by_content():
    a = fingerprint({"x": torch.ones(3), "f": _eta, "m": _net(0), "v": 1.5, "s": "heun2", "h": (64, 64)})
    b = fingerprint({"x": torch.ones(3), "f": _eta, "m": _net(0), "v": 1.5, "s": "heun2", "h": (64, 64)})
    assert a == b
    assert fingerprint({"x": torch.ones(3).double()}) != fingerprint({"x": torch.ones(3)})
    assert fingerprint({"m": _net(0)}) != fingerprint({"m": _net(1)})


# ---- one writer: the lock -----------------------------------------------------------------
def test_a_second_process_on_the_same_checkpoint_is_refused(tmp_path):
    path = tmp_path / "c.ckpt"
    code = ("import sys, time; from sbtm_flows.checkpoint import Checkpoint; c = Checkpoint(sys.argv[1], {}); "
            "print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(CheckpointError, match=f"in use by another run \\(process {holder.pid}"):
            Checkpoint(path, {})
        with pytest.raises(CheckpointError, match="in use"):
            _ula(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    Checkpoint(path, {}).close()  # the dead process's lock is taken over


def test_a_stale_lock_and_temp_file_are_taken_over_and_the_lock_is_released(tmp_path):
    path = tmp_path / "c.ckpt"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "c.ckpt.lock").write_text(f"{dead.pid}\n")
    (tmp_path / "c.ckpt.tmp").write_bytes(b"half a checkpoint")
    _ula(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.ckpt"]  # no lock, no .tmp left
    c = Checkpoint(path, {})
    assert (tmp_path / "c.ckpt.lock").read_text().strip() == str(os.getpid())
    c.close()
    assert not (tmp_path / "c.ckpt.lock").exists()


# ---- atomic writes and the path ------------------------------------------------------------
def test_a_failed_write_keeps_the_previous_checkpoint_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "c.ckpt"
    c = Checkpoint(path, {"a": 1})
    c.save({"k": 1, "y": torch.zeros(3)})
    before = path.read_bytes()

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="c.ckpt.*No space left"):
        c.save({"k": 2, "y": torch.ones(3)})
    monkeypatch.undo()
    assert path.read_bytes() == before and not (tmp_path / "c.ckpt.tmp").exists()
    assert c.load()["k"] == 1
    c.close()


def test_the_checkpoint_path_is_checked_before_the_run(tmp_path):
    calls = []

    def score(x):
        calls.append(1)
        return -x

    target = sf.from_score(score, 2)
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        sf.sample(target, checkpoint=tmp_path / "d", **{"init": I2, **ULA})
    assert len(calls) <= 4  # the initial score check and the target fingerprint, no step
    with pytest.raises(ValueError, match="not writable|checkpoint folder"):
        sf.sample(T2, checkpoint="/proc/sbtm/x.ckpt", **{"init": I2, **ULA})


def test_save_refuses_objects_that_would_not_load_safely(tmp_path):
    c = Checkpoint(tmp_path / "c.ckpt", {})
    with pytest.raises(ValueError, match="only tensors and plain data"):
        c.save({"k": 1, "thing": _Plain(1.0)})
    assert not (tmp_path / "c.ckpt").exists()
    c.close()


# ---- Ctrl-C ---------------------------------------------------------------------------------
class _CtrlC(sf.Target):
    """N(0, I) whose score raises KeyboardInterrupt on call number ``at`` (a Ctrl-C mid-run)."""

    def __init__(self, at):
        super().__init__()
        self.dim, self.at, self.calls = 2, at, 0

    def score(self, x):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return -x

    def log_prob(self, x):
        return -0.5 * (x**2).sum(-1)


@pytest.mark.parametrize("method, kw", [("ula", {}), ("sbtm", dict(init_steps=20, training="steps"))])
def test_ctrl_c_leaves_a_checkpoint_at_the_last_output_time_and_a_partial_result(tmp_path, method, kw):
    kw = dict(init=I2, n=40, t_final=0.4, dt=0.02, seed=0, method=method, checkpoint=tmp_path / "c.ckpt",
              checkpoint_every=100, stiffness_check=False, **kw)
    full = sf.sample(_CtrlC(10**9), **kw)
    (tmp_path / "c.ckpt").unlink()
    with pytest.raises(KeyboardInterrupt) as e:
        sf.sample(_CtrlC(25), **kw)
    part = e.value.result
    k = read_checkpoint(tmp_path / "c.ckpt")["k"]  # written at the interrupt (checkpoint_every=100 never fired)
    assert 0 < k < len(full.times) - 1 and part.times.numel() == k + 1 and "interrupted" in part.info
    assert torch.equal(part.trajectory, full.trajectory[: k + 1])
    resumed = sf.sample(_CtrlC(10**9), resume=True, **kw)
    assert torch.equal(resumed.trajectory, full.trajectory)
