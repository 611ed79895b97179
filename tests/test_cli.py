"""The `sbtm-flows` console script, through the real entry point (subprocess)."""

import json
import os
import struct
import subprocess
import sys
import zlib

import pytest
import torch

from sbtm_flows.experiments import EXPERIMENTS

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}


def cli(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "sbtm_flows.cli", *args], capture_output=True, text=True, env=ENV, timeout=900)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}: {p.stderr[-2000:]}")
    return p


def png_info(path):
    """(width, height, distinct bytes in the decompressed pixel data) of a PNG, or fail."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    w, h = struct.unpack(">II", data[16:24])
    idat, i = b"", 8
    while i < len(data):
        n = struct.unpack(">I", data[i : i + 4])[0]
        kind = data[i + 4 : i + 8]
        if kind == b"IDAT":
            idat += data[i + 8 : i + 8 + n]
        i += 12 + n
    return w, h, len(set(zlib.decompress(idat)))


FIGURES = {
    "gaussian-1d": ["fig1_trajectories.png", "fig2_dissipation_l2.png"],
    "mixture-1d": ["fig3_mixture.png"],
    "geometric-1d": ["fig4_geometric.png"],
    "dilation-2d": ["fig5_dilation_densities.png", "fig6_entropy_decay.png"],
}
#: quick-mode bounds on the metrics each claim rests on
BOUNDS = {
    "gaussian-1d": lambda m: abs(m["sbtm_var_rel_err_t0.5"]) < 0.05 and abs(m["sbtm_var_rel_err_t1"]) < 0.05
    and abs(m["sbtm_fisher_rel_err"]) < 0.3 and abs(m["sbtm_kl_decrease_rel_err"]) < 0.2,
    "mixture-1d": lambda m: abs(m["sbtm_frac_pos"] - m["ula_frac_pos"]) < 0.15 and 0.5 < m["sbtm_frac_pos"] < 0.9
    and m["eq41_relative_gap"] < 0.10  # measured 0.044 / 0.060 (seeds 0 / 1); η = 10 gives ≈ 0.2
    and m["sbtm_eta"] == {"t0": 0.0, **EXPERIMENTS["mixture-1d"].quick["eta"]},
    "geometric-1d": lambda m: m["frac_pos_gap"] < 0.15,
    "dilation-2d": lambda m: len(m["sbtm_mode_weights"]) == 16 and abs(sum(m["sbtm_mode_weights"]) - 1) < 1e-6
    and m["sbtm_min_mode_weight"] >= 0.015 and m["ula_min_mode_weight"] >= 0.01 and m["tv_sbtm_vs_ula"] < 0.15
    and m["sbtm_training"] == "flow" and m["sbtm_theta_flow"]["name"] == "kfac",  # TV measured 0.085 (seed 0)
}
KEYS = ["sbtm_wall_time_s", "sbtm_nfe", "ula_wall_time_s", "eq41_relative_gap", "sbtm_final_fisher", "total_wall_time_s"]


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_quick_experiment(tmp_path, name):
    out = tmp_path / name
    cli("run", name, "--quick", "--out", str(out), "--no-progress")
    for fig in FIGURES[name]:
        w, h, distinct = png_info(out / fig)
        assert w >= 300 and h >= 200 and distinct > 20, (fig, w, h, distinct)
    m = json.loads((out / "metrics.json").read_text())
    for k in KEYS:
        assert k in m and m[k] == m[k], k
    assert BOUNDS[name](m), m
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["experiment"] == name and cfg["quick"] is True


def test_config_reproduces_particles_bitwise(tmp_path):
    out = tmp_path / "g"
    cli("run", "gaussian-1d", "--quick", "--n", "200", "--t-final", "0.3", "--out", str(out), "--no-progress")
    first = torch.load(out / "particles.pt")
    again = tmp_path / "again"
    cli("run", "--config", str(out / "config.json"), "--out", str(again), "--no-progress")
    second = torch.load(again / "particles.pt")
    assert set(first) == {"sbtm", "ula"}
    for k in first:
        assert torch.equal(first[k], second[k]), k


def test_a_config_with_a_decaying_eta_runs_and_is_recorded(tmp_path):
    cfg = {"experiment": "mixture-1d", **EXPERIMENTS["mixture-1d"].defaults, "n": 100, "t_final": 0.1, "holdout": 0, "quick": False,
           "eta": {"eta0": 50.0, "eta_inf": 5.0, "t_c": 0.1}}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    cli("run", "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "o"), "--no-progress")
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["sbtm_eta"] == {"eta0": 50.0, "eta_inf": 5.0, "t_c": 0.1, "t0": 0.0} and m["sbtm_theta_flow"] == {"name": "gd"}


def test_sample_and_list(tmp_path):
    p = cli("list")
    for word in ("gaussian-1d", "dilation-2d", "gmm2d", "dopri5", "ula", "sbtm"):
        assert word in p.stdout
    out = tmp_path / "x"
    cli("sample", "--target", "gaussian2d", "--method", "sbtm", "--solver", "dopri5", "--n", "100", "--t-final", "0.2",
        "--out", str(out), "--no-progress")
    x = torch.load(out / "particles.pt")
    assert x.shape == (100, 2) and torch.isfinite(x).all()
    assert json.loads((out / "metrics.json").read_text())["nfe"] > 0


def test_sample_a_posteriordb_target_reports_errors_against_its_reference(tmp_path):
    out = tmp_path / "es"
    cli("sample", "--target", "eight_schools", "--method", "ula", "--n", "300", "--t-final", "30", "--dt", "0.03",
        "--out", str(out), "--no-progress")
    ref = json.loads((out / "metrics.json").read_text())["reference"]
    # ULA at T = 30 has settled (tests/test_posteriordb.py: max mean error 0.04–0.08 at n = 2000)
    assert ref["max_mean_error"] < 0.3 and ref["ratio"] < 3.0, ref


@pytest.mark.parametrize(
    "args",
    [
        ["run", "no-such-experiment"],
        ["sample", "--target", "banana", "--out", "{tmp}/a"],
        ["sample", "--target", "gaussian1d", "--solver", "rk45", "--out", "{tmp}/a"],
        ["sample", "--target", "gaussian1d", "--n", "-5", "--out", "{tmp}/a"],
        ["run", "gaussian-1d", "--quick", "--out", "/proc/forbidden/x"],
        ["run", "--config", "{tmp}/missing.json"],
        ["sample", "--target", "gaussian1d", "--method", "svgd", "--out", "{tmp}/a"],
        ["run", "gaussian-1d", "--quick", "--sde-solver", "bogus", "--out", "{tmp}/a"],  # before the SBTM half runs
        ["run", "--config", "{tmp}/list.json"],
        ["run", "--config", "{tmp}/missing_key.json"],
        ["run", "--config", "{tmp}/bad_value.json"],
        ["sample", "--target", "gaussian1d", "--resume", "--out", "{tmp}/a"],
        ["sample", "--target", "gaussian1d", "--checkpoint", "/proc/forbidden", "--out", "{tmp}/a"],
        ["sample", "--target", "gaussian1d", "--device", "cuda:7", "--out", "{tmp}/a"],
        ["run", "gaussian-1d", "--quick", "--training", "steps", "--eta", "3", "--out", "{tmp}/a"],  # eta unused: refused
        ["run", "dilation-2d", "--quick", "--training", "steps", "--eta", "3", "--out", "{tmp}/a"],  # eta unused: refused
        ["run", "--config", "{tmp}/steps.json", "--eta", "3"],
        ["run", "--config", "{tmp}/bad_eta.json"],  # a DecayingEta dict with eta0 < 0
    ],
)
def test_bad_input_exits_with_one_line(tmp_path, args):
    good = EXPERIMENTS["gaussian-1d"].defaults
    (tmp_path / "list.json").write_text(json.dumps([1, 2]))
    (tmp_path / "missing_key.json").write_text(json.dumps({"experiment": "gaussian-1d", **{k: v for k, v in good.items() if k != "dt"}}))
    (tmp_path / "bad_value.json").write_text(json.dumps({"experiment": "gaussian-1d", **good, "sde_solver": "nope"}))
    (tmp_path / "steps.json").write_text(json.dumps({"experiment": "gaussian-1d", **good, "training": "steps"}))
    (tmp_path / "bad_eta.json").write_text(json.dumps({"experiment": "gaussian-1d", **good, "eta": {"eta0": -1, "eta_inf": 1, "t_c": 1}}))
    p = cli(*[a.replace("{tmp}", str(tmp_path)) for a in args], check=False)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "a" / "particles.pt").exists() and not (tmp_path / "a" / "config.json").exists()


def _disk_full_after(limit: int):
    """A child process whose files cannot grow beyond ``limit`` bytes: writes past it fail with
    EFBIG, as on a full disk (SIGXFSZ ignored, so the write returns the error)."""
    import resource
    import signal

    def pre():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return pre


def test_a_full_disk_gives_status_2_one_line_and_no_truncated_file(tmp_path):
    out = tmp_path / "x"
    args = ["sample", "--target", "gaussian2d", "--method", "ula", "--n", "200", "--t-final", "0.5", "--out", str(out),
            "--no-progress"]
    p = subprocess.run([sys.executable, "-m", "sbtm_flows.cli", *args], capture_output=True, text=True, env=ENV, timeout=300,
                       preexec_fn=_disk_full_after(8192))
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "result.pt" in lines[0] and "Traceback" not in p.stderr, p.stderr
    assert sorted(f.name for f in out.iterdir()) == []  # neither a truncated result.pt nor a .tmp


def test_checkpoint_and_resume_from_the_command_line(tmp_path):
    args = ["sample", "--target", "gaussian2d", "--method", "ula", "--n", "50", "--t-final", "0.2", "--no-progress",
            "--checkpoint", str(tmp_path / "ck")]
    cli(*args, "--out", str(tmp_path / "a"))
    assert (tmp_path / "ck" / "ula.ckpt").exists() and not (tmp_path / "ck" / "ula.ckpt.lock").exists()
    cli(*args, "--resume", "--out", str(tmp_path / "b"))
    assert torch.equal(torch.load(tmp_path / "a" / "particles.pt"), torch.load(tmp_path / "b" / "particles.pt"))
    p = cli(*[a if a != "0.2" else "0.3" for a in args], "--resume", "--out", str(tmp_path / "c"), check=False)
    assert p.returncode == 2 and "different arguments: t_final" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_ctrl_c_writes_a_checkpoint_and_partial_results_and_exits_130(tmp_path):
    import signal
    import time

    import sbtm_flows as sf
    from sbtm_flows.checkpoint import read_checkpoint

    ck, out = tmp_path / "ck", tmp_path / "out"
    args = ["sample", "--target", "gaussian2d", "--method", "ula", "--n", "500", "--t-final", "3000", "--dt", "0.01",
            "--checkpoint", str(ck), "--out", str(out), "--no-progress"]
    # SIGINT back to its default in the child: a shell starts background jobs (e.g. `pytest &`) with
    # SIGINT ignored, which the child would inherit, and Python then never raises KeyboardInterrupt
    p = subprocess.Popen([sys.executable, "-m", "sbtm_flows.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=ENV, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 600
        while not (ck / "ula.ckpt").exists():  # the first periodic checkpoint (50 output times)
            assert p.poll() is None and time.time() < deadline, p.stderr.read() if p.poll() is not None else "timeout"
            time.sleep(0.2)
        time.sleep(1.0)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "interrupted at t=" in lines[0] and "--resume" in lines[0], err
    blob = read_checkpoint(ck / "ula.ckpt")  # written at the interrupt: the last output time reached
    partial = sf.load(out / "partial_ula.pt")
    assert partial.times.numel() == blob["k"] + 1 >= 51 and partial.info.get("interrupted")
    assert not (ck / "ula.ckpt.lock").exists() and not (ck / "ula.ckpt.tmp").exists()


def test_eta_follows_the_experiments_training():
    """η is an option of the coupled flow: a given η with training="steps" is refused naming the
    way out, an experiment default η is dropped for "steps" (and for "auto", which then chooses
    by itself), and kept for the flow."""
    from sbtm_flows.experiments import experiment_config

    with pytest.raises(ValueError, match=r"eta=3\.0 is not used by training='steps'.*--training flow"):
        experiment_config("gaussian-1d", training="steps", eta=3.0)
    with pytest.raises(ValueError, match="--training flow"):
        experiment_config("dilation-2d", training="steps", eta=3.0)
    assert experiment_config("dilation-2d", eta=3.0)["eta"] == 3.0  # "auto" with a given η: the flow with it
    assert experiment_config("dilation-2d")["eta"] is None and experiment_config("gaussian-1d", training="steps")["eta"] is None
    assert experiment_config("gaussian-1d", training="auto")["eta"] is None
    assert experiment_config("gaussian-1d", training="auto", eta=3.0)["eta"] == 3.0
    assert experiment_config("gaussian-1d")["eta"] == 5.0 and experiment_config("dilation-2d", training="flow", eta=2.0)["eta"] == 2.0
