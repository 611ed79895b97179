"""One rank of the data-parallel tests (tests/test_distributed.py): RANK/WORLD_SIZE/MASTER_* come
from the environment, as under torchrun.  Runs every case of CASES and, on rank 0, saves the
final particles (and the messages of the refused runs) to the file named by argv[1]."""

import sys

import torch

import sbtm_flows as sf
from sbtm_flows.distributed import init_from_env

torch.set_num_threads(1)


def cases() -> dict:
    """name -> sample() keyword arguments (float64, exact divergence, fixed-step solvers)."""
    f64 = torch.float64
    target = sf.targets.Gaussian(mean=torch.zeros(1, dtype=f64), cov=torch.eye(1, dtype=f64))
    init = sf.targets.Gaussian(mean=torch.zeros(1, dtype=f64), cov=(1 - 0.8187307530779818) * torch.eye(1, dtype=f64))
    base = dict(target=target, init=init, n=200, t_final=0.2, dt=0.01, save_every=10, dtype=f64, seed=3, init_steps=100)
    return {
        "steps": dict(base, training="steps", batch=None),
        "flow": dict(base, training="flow", solver="heun2", batch=None),
        "steps_batch": dict(base, training="steps", batch=64),
        "flow_holdout": dict(base, training="flow", solver="heun2", batch=None, holdout=40, track_logdensity=True, t_final=0.1),
        "ula": dict(target=target, init=init, n=8300, t_final=0.1, dt=0.01, method="ula", seed=5),
    }


def main(out: str) -> None:
    comm = init_from_env("gloo")
    results = {}
    for name, kw in cases().items():
        res = sf.sample(**kw)
        results[name] = res.particles if res.holdout_particles is None else res.holdout_particles
        for key in ("fisher", "log_z_train", "log_z"):
            results[f"{name}_{key}"] = torch.as_tensor(res.diagnostics[key]) if key in res.diagnostics else None
    refused = {}
    for name, kw in (("adaptive", dict(cases()["flow"], solver="dopri5")), ("rkc", dict(cases()["flow"], solver="rkc"))):
        try:
            sf.sample(**kw)
            refused[name] = ""
        except ValueError as e:
            refused[name] = str(e)
    if comm.rank == 0:
        torch.save({"results": results, "refused": refused, "world": comm.world}, out)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
