"""Data-parallel SBTM and ULA on torch.distributed (gloo, 2 processes on this machine): the
sharded runs equal the single-process runs on the same particles."""

import os
import socket
import subprocess
import sys

import pytest
import torch

import sbtm_flows as sf
from sbtm_flows.distributed import shard_rows

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import dist_worker  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Run tests/dist_worker.py as 2 gloo ranks (env as torchrun sets it); rank 0's output."""
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    out = tmp_path_factory.mktemp("dist") / "out.pt"
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")])}
        procs.append(subprocess.Popen([sys.executable, os.path.join(HERE, "dist_worker.py"), str(out)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(e[-3000:] for e in errs)
    return torch.load(out, weights_only=True)


@pytest.fixture(scope="module")
def single():
    """The same cases in this (single) process."""
    torch.set_num_threads(1)
    return {name: sf.sample(**kw) for name, kw in dist_worker.cases().items()}


@pytest.mark.parametrize("case", ["steps", "flow"])
def test_two_processes_equal_one(two_ranks, single, case):
    # discrete training (K Adam steps on the all-reduced gradient) and the coupled flow with heun2:
    # the final particles of 2 ranks equal the single-process run's to 1e-6 (float64: only the
    # order of the sums differs), and the all-reduced Fisher information agrees too
    assert two_ranks["world"] == 2
    x2, x1 = two_ranks["results"][case], single[case].particles
    assert x2.shape == x1.shape == (200, 1)
    assert (x2 - x1).abs().max() < 1e-6
    f2 = two_ranks["results"][case + "_fisher"]
    f1 = torch.as_tensor(single[case].diagnostics["fisher"])
    assert torch.allclose(f2, f1, rtol=1e-6, atol=1e-9)
    assert not torch.equal(x1, single[case].trajectory[0])  # the particles did move


def test_two_processes_holdout_and_log_z(two_ranks, single):
    # held-out particles are replicated on every rank (never trained on, so nothing to reduce): they and
    # the density diagnostics (log Z of the training particles all-reduced over the shards, and of the
    # held-out ones) equal the single process's
    one = single["flow_holdout"]
    assert (two_ranks["results"]["flow_holdout"] - one.holdout_particles).abs().max() < 1e-6
    for key in ("log_z_train", "log_z"):
        assert torch.allclose(two_ranks["results"][f"flow_holdout_{key}"], torch.as_tensor(one.diagnostics[key]), atol=1e-6)


def test_two_processes_mini_batch_runs(two_ranks, single):
    # with a mini-batch each rank draws its own batches (from rank-derived generators), so the
    # runs differ from the single process but follow the same law: the variances agree to a few %
    x2, x1 = two_ranks["results"]["steps_batch"], single["steps_batch"].particles
    assert not torch.equal(x2, x1)
    assert abs(float(x2.var()) / float(x1.var()) - 1) < 0.1


def test_two_processes_ula_bitwise(two_ranks, single):
    # ULA: each rank holds whole noise blocks (noise_blocks), so its Brownian increments are the
    # single-process ones: bitwise equal particles
    x2, x1 = two_ranks["results"]["ula"], single["ula"].particles
    assert x1.shape == (8300, 1)
    assert torch.equal(x2, x1)


def test_refusals_name_the_way_out(two_ranks):
    refused = two_ranks["refused"]
    assert "fixed-step solver" in refused["adaptive"] and "dopri5" in refused["adaptive"]
    assert "each rank's own shard" in refused["rkc"] and "solver='heun2'" in refused["rkc"]


def test_shard_rows_cover_in_order():
    for n, world in ((10, 3), (7, 7), (1000, 4)):
        rows = [shard_rows(n, r, world) for r in range(world)]
        assert rows[0].start == 0 and rows[-1].stop == n
        assert all(a.stop == b.start for a, b in zip(rows, rows[1:]))
        assert max(r.stop - r.start for r in rows) - min(r.stop - r.start for r in rows) <= 1
    with pytest.raises(ValueError, match="rank"):
        shard_rows(10, 3, 3)
