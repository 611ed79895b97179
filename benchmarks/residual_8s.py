"""posteriordb eight_schools with the coupled flow: the plain score network against the tail-anchored
``ResidualScore`` s = ∇log π + r_Θ (README "η and stiffness"; issue 10).

  python benchmarks/residual_8s.py run KIND N T [ETA [THETA_FLOW]]   # KIND plain|residual: errors vs the reference,
                                                      # s = log τ quantiles, rkc; ETA "-": the default
  python benchmarks/residual_8s.py tail N T           # residual: the particle with the largest final s, along the run
  python benchmarks/residual_8s.py ula                 # ULA (dt = 0.03, float64, n = 2000): errors at t = 10, 20, 30
  python benchmarks/residual_8s.py slowmode            # N((4.4, 0), diag(11, 1)) from N(0, I): the mean vs e^{-t/11}
  python benchmarks/residual_8s.py gauss51            # §5.1 (analytic f_t): variance and F^n errors, plain vs residual

Flow defaults apart from n, t_final and the network (rkc, η = 5, dt = 0.01, seed 0).
"""

from __future__ import annotations

import math
import sys
import time

import torch

import sbtm_flows as sf
from sbtm_flows.score import ResidualScore, ScoreMLP, at_time, unflatten_params

QUANTILES = torch.tensor([0.5, 0.9, 0.99])


def network(kind: str, target, dim: int) -> torch.nn.Module | None:
    """``None`` (the sampler's default ScoreMLP) or a ResidualScore around the same MLP."""
    if kind == "plain":
        return None
    if kind == "residual":
        return ResidualScore(ScoreMLP(dim, generator=torch.Generator().manual_seed(0)), target)
    raise ValueError(f"KIND must be plain or residual, got {kind!r}")


def _quantiles(v: torch.Tensor) -> list[float]:
    return [round(float(a), 2) for a in torch.quantile(v.double(), QUANTILES.double())]


def _rounded(d: dict) -> dict:
    return {k: round(v, 3) for k, v in d.items()}


def run(kind: str, n: str, t_final: str, eta: str | None = None, theta_flow: str | None = None) -> None:
    post = sf.posteriordb.load("eight_schools")
    ref = torch.log(post.reference_chains()[..., -1].reshape(-1))
    print(f"reference s = log tau: quantiles .5/.9/.99 {_quantiles(ref)}, max of {ref.numel()} {float(ref.max()):.2f}")
    model = network(kind, post, post.dim)
    t0 = time.perf_counter()
    try:
        res = sf.sample(post, method="sbtm", n=int(n), t_final=float(t_final), save_every=100,
                        **({} if model is None else {"score_model": model}), **({} if eta in (None, "-") else {"eta": float(eta)}),
                        **({} if theta_flow is None else {"theta_flow": theta_flow}))
    except sf.SamplingError as e:
        print(f"{kind} n={n} T={t_final} eta={eta} theta_flow={theta_flow}: stopped after {time.perf_counter() - t0:.0f} s: {str(e)[:240]}")
        return
    for k in range(0, len(res.times), max(1, len(res.times) // 10)):
        s = res.trajectory[k, :, -1]
        ck = post.compare(res.trajectory[k], metric="energy") if k > 0 else None
        errs = "" if ck is None else (f", mean errors {_rounded(ck['mean_error'])}, sd errors {_rounded(ck['sd_error'])}, "
                                      f"energy ratio {ck['ratio']:.2f}")
        print(f"t={float(res.times[k]):5.1f}: s quantiles {_quantiles(s)}, max {float(s.max()):.2f}{errs}", flush=True)
    c = post.compare(res, metric="energy")
    print(f"{kind} n={n} T={t_final} eta={eta} theta_flow={theta_flow}: max mean error {c['max_mean_error']:.3f}, "
          f"max sd error {c['max_sd_error']:.3f} "
          f"(tau: {c['mean_error']['tau']:.3f} / {c['sd_error']['tau']:.3f}), energy ratio {c['ratio']:.2f}, "
          f"NFE {res.nfe}, rkc {res.info.get('rkc')}, {time.perf_counter() - t0:.0f} s")


def tail(n: str, t_final: str) -> None:
    """Velocity of the residual run's outermost particle: v = −r_Θ, whatever ∂_s log π says."""
    post = sf.posteriordb.load("eight_schools")
    model = network("residual", post, post.dim)
    res = sf.sample(post, method="sbtm", n=int(n), t_final=float(t_final), save_every=100, score_model=model)
    i = int(res.trajectory[-1, :, -1].argmax())
    y, se = post.y.float(), post.se.float()
    for k in range(len(res.times)):
        x = res.trajectory[k, i]
        z, mu, s = x[:-2], x[-2], x[-1]
        neck = ((z - (y - mu) / torch.exp(s)) * torch.exp(s) / se).abs().max()  # offset from the neck, in neck widths
        with torch.no_grad():
            for name, p in unflatten_params(model, res.thetas[k]).items():
                model.get_parameter(name).copy_(p)
            v = post.score(x[None].double())[0].float() - at_time(model, float(res.times[k]))(x[None])[0]
        g_s = float(post.score(x[None].double())[0, -1])
        print(f"t={float(res.times[k]):5.2f}: s {float(s):.2f}, neck offset {float(neck):.2f}, v_s {float(v[-1]):+.3f}, "
              f"d/ds log pi {g_s:+.3f}, F^n {float(res.diagnostics['fisher'][k]):.3g}")


def ula() -> None:
    """The Langevin baseline's relaxation of the slow μ mode from the same N(0, I)."""
    post = sf.posteriordb.load("eight_schools")
    res = sf.sample(post, method="ula", n=2000, t_final=30.0, dt=0.03, save_every=334, dtype=torch.float64, seed=0)
    for k in range(1, len(res.times)):
        c = post.compare(res.trajectory[k], metric="energy")
        print(f"ULA t={float(res.times[k]):.1f}: mean errors {_rounded(c['mean_error'])}, max sd error {c['max_sd_error']:.3f}, "
              f"energy ratio {c['ratio']:.2f}")


def slowmode() -> None:
    """A Gaussian with eight_schools' μ scale: the flow's mean against the exact 4.4 + (m₀ − 4.4)e^{−t/11}."""
    target = sf.Gaussian(torch.tensor([4.4, 0.0]), torch.diag(torch.tensor([11.0, 1.0])))
    for kind in ("plain", "residual"):
        model = network(kind, target, 2)
        res = sf.sample(target, n=1000, t_final=30.0, save_every=500, seed=0, **({} if model is None else {"score_model": model}))
        m0 = float(res.trajectory[0][:, 0].mean())
        rows = [(float(t), round(float(x[:, 0].mean()), 3), round(4.4 + (m0 - 4.4) * math.exp(-float(t) / 11), 3))
                for t, x in zip(res.times[1:], res.trajectory[1:])]
        print(f"{kind}: (t, mean, exact) {rows}, NFE {res.nfe}")


def gauss51() -> None:
    target = sf.Gaussian(torch.zeros(1), torch.eye(1))
    init = sf.Gaussian(torch.zeros(1), (1 - math.exp(-0.2)) * torch.eye(1))
    for kind in ("plain", "residual"):
        model = network(kind, target, 1)
        res = sf.sample(target, init=init, n=1000, t_final=2.0, dt=0.01, seed=0, **({} if model is None else {"score_model": model}))
        v = 1 - torch.exp(-2 * (res.times.double() + 0.1))
        fisher = (1 - v) ** 2 / v
        sel = (res.times >= 0.05) & (res.times <= 1.0)
        f_err = float((res.diagnostics["fisher"].double()[sel] / fisher[sel] - 1).abs().max())
        var_err = [float(res.at(t).double().var()) / (1 - math.exp(-2 * (t + 0.1))) - 1 for t in (0.5, 1.0, 2.0)]
        print(f"{kind}: variance error t = 0.5/1/2 {[f'{e:+.4f}' for e in var_err]}, max |F^n/F - 1| on [0.05, 1] {f_err:.3f}, "
              f"NFE {res.nfe}, {res.wall_time:.1f} s")


if __name__ == "__main__":
    torch.set_num_threads(1)
    cmd, *args = sys.argv[1:] or ["gauss51"]
    {"run": run, "tail": tail, "ula": ula, "slowmode": slowmode, "gauss51": gauss51}[cmd](*args)
