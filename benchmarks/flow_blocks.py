"""Issue 10, §5.4 and eight_schools with the coupled flow: which block is stiff, and what the
tracked η (``eta="track"``) gives.  Numbers in README "η and stiffness".

Run (one at a time, OMP_NUM_THREADS=1, PYTHONPATH=.):
  python benchmarks/flow_blocks.py blocks54 plain|scaled [ETA|track [THETA_FLOW [T_END]]]  # §5.4 path, n = 1000: ρ, ρ_X, ρ_Θ at rkc refreshes
  python benchmarks/flow_blocks.py blocks8s [ETA|track]              # eight_schools, n = 2000, T = 30 (minutes to an hour)
  python benchmarks/flow_blocks.py full54 RATIO [THETA_FLOW [SEED]]     # §5.4's schedule, n = 4000, T = 20 (10–60 min);
                                                                    #   THETA_FLOW diag[:P[:DELTA[:EVERY]]] | kfac[:DELTA[:EVERY[:P]]]
                                                                    #   | gn[:DELTA[:EVERY[:M]]]
  python benchmarks/flow_blocks.py quick54 SEED [RATIO THETA_FLOW]   # quick schedule: flow (track) vs steps vs ULA
  python benchmarks/flow_blocks.py mid54 CFG [N] [T_END]            # §5.4's path (λ₀ = 0.1, T = 20) to T_END (4), n = N (1000):
                                                                    #   mode weights vs t; CFG ula | steps | gd:RATIO |
                                                                    #   diag:RATIO[:POWER...] | kfac:RATIO[:DELTA[:EVERY[:POWER]]]
                                                                    #   | gn:RATIO[:DELTA[:EVERY[:M]]]
  python benchmarks/flow_blocks.py curv54 [T] [N]                   # steps' state at T (0.2), n = N (1000): λ_max, −λ_min of M^½HM^½
  python benchmarks/flow_blocks.py tail8s                           # eight_schools: s-velocity of a neck particle
ρ_X and ρ_Θ are power iterations on the X→X and Θ→Θ diagonal blocks of the right-hand side's
Jacobian (finite differences), printed with the full ρ of rkc's estimate at each refresh.
"""

from __future__ import annotations

import math
import sys
import time

import torch

import sbtm_flows as sf
from sbtm_flows.diag_flow import DiagGNFlow
from sbtm_flows.experiments import make_target
from sbtm_flows.gn_flow import GNFlow, gauss_newton_matrix
from sbtm_flows.kfac_flow import KFACFlow
from sbtm_flows.metrics import mode_weights, tv_distance
from sbtm_flows.paths import Dilation
from sbtm_flows.rkc import SpectralRadius
from sbtm_flows.score import ScaledScore, ScoreMLP, fit_score
from sbtm_flows.stiffness import hessian_max_eigenvalue
from sbtm_flows.tracking_eta import TrackingEta


def block_rho(func, t, y: torch.Tensor, f0: torch.Tensor, lo: int, hi: int, iters: int = 10) -> float:
    """Spectral radius of the (lo:hi, lo:hi) block of ∂F/∂y by power iteration on finite differences."""
    v = torch.zeros_like(y)
    v[lo:hi] = torch.randn(hi - lo, generator=torch.Generator().manual_seed(1)).to(y)
    delta = math.sqrt(torch.finfo(y.dtype).eps) * max(float(y.norm()), 1.0)
    rho = float("nan")
    for _ in range(iters):
        v = v / v.norm()
        d = (func(t, y + delta * v) - f0) / delta
        w = torch.zeros_like(y)
        w[lo:hi] = d[lo:hi]
        rho, v = float(w.norm()), w
    return rho


class BlockReport(SpectralRadius):
    """rkc's estimator that also prints ρ_X, ρ_Θ and the η schedule's state at every refresh."""

    def __init__(self, x_len: int, **kw):
        super().__init__(generator=torch.Generator().manual_seed(3), **kw)
        self.x_len = x_len

    def refresh(self, func, t, y, f0):
        rho = super().refresh(func, t, y, f0)
        flow = getattr(func, "base_func", func)
        m = flow.training_length(y)
        nd, p = self.x_len, flow.n_params
        rx, rt = block_rho(func, t, y, f0, 0, nd), block_rho(func, t, y, f0, nd, nd + p)
        eta = flow.eta
        print(f"t={float(t):.4f} rho={rho:.4g} rhoX={rx:.4g} rhoTheta={rt:.4g} eta={eta(float(t)):.4g} "
              f"lam_max={getattr(eta, 'lam', float('nan')):.4g} kappa_X={getattr(eta, 'kappa', float('nan')):.4g} "
              f"|theta|={float(y[nd:nd + p].norm()):.3g} max|x|={float(y[:nd].abs().max()):.3g} (state {m})", flush=True)
        return rho


def _eta(arg: str | None, default: float):
    return default if arg is None else ("track" if arg == "track" else float(arg))


def blocks54(net: str, eta_arg: str | None = None, theta: str | None = None, t_end: str = "2.0") -> None:
    path = Dilation(make_target("gmm2d"), t_final=20.0, lam0=0.1)
    model = ScaledScore(ScoreMLP(2, generator=torch.Generator().manual_seed(0)), path.scale) if net == "scaled" else None
    try:
        sf.sample(path, method="sbtm", training="flow", n=1000, t_final=float(t_end), dt=0.01, eta=_eta(eta_arg, 10.0), score_model=model,
                  init=sf.Gaussian(torch.zeros(2), torch.eye(2)), save_every=10, solver="rkc", theta_flow=_theta_flow(theta),
                  solver_options={"spectral": BlockReport(2000)})
    except sf.SamplingError as e:
        print("stopped:", str(e)[:200])


def blocks8s(eta_arg: str | None = None) -> None:
    post = sf.posteriordb.load("eight_schools")
    try:
        res = sf.sample(post, method="sbtm", n=2000, t_final=30.0, eta=_eta(eta_arg, 5.0), save_every=100, solver="rkc",
                        solver_options={"spectral": BlockReport(2000 * 10)})
        c = post.compare(res, metric="energy")
        print("max mean error", c["max_mean_error"], "max sd error", c["max_sd_error"], "energy ratio", c["ratio"])
    except sf.SamplingError as e:
        print("stopped:", str(e)[:200])


def _weights_vs_ula(kw: dict, n: int, t_final: float, dt: float, lam0: float, seed: int, save_every: int = 20) -> None:
    target = make_target("gmm2d")
    path = Dilation(target, t_final=t_final, lam0=lam0)
    common = dict(n=n, t_final=t_final, dt=dt, seed=seed, init=sf.Gaussian(torch.zeros(2), torch.eye(2)), save_every=save_every)
    t0 = time.perf_counter()
    res = sf.sample(path, method="sbtm", **common, **kw)
    wall = time.perf_counter() - t0
    ula = sf.sample(path, method="ula", sde_solver="euler", **common)
    w, wu = (mode_weights(r.particles, target.means).double() for r in (res, ula))
    uniform = torch.full((16,), 1 / 16, dtype=torch.float64)
    print(f"{kw} seed {seed}: SBTM min {float(w.min()):.4f}, ULA min {float(wu.min()):.4f}, TV to ULA {tv_distance(w, wu):.4f}, "
          f"TV to uniform {tv_distance(w, uniform):.4f} (ULA {tv_distance(wu, uniform):.4f}), NFE {res.nfe}, {wall:.0f} s, "
          f"rkc {res.info.get('rkc')}, eta {res.info.get('eta_schedule')}", flush=True)


def _theta_flow(spec: str | None):
    """``None``/``"gd"`` -> "gd"; ``"diag[:POWER[:DELTA[:EVERY]]]"`` -> a DiagGNFlow;
    ``"kfac[:DELTA[:EVERY[:POWER]]]"`` -> a KFACFlow; ``"gn[:DELTA[:EVERY[:M]]]"`` -> a GNFlow (M: G from
    a subsample of M particles)."""
    if spec is None or spec == "gd":
        return "gd"
    name, *rest = spec.split(":")
    if name == "kfac" and len(rest) <= 3:
        return KFACFlow(delta=float(rest[0]) if rest else 1e-3, every=int(rest[1]) if len(rest) > 1 else 1,
                        power=float(rest[2]) if len(rest) > 2 else 1.0)
    if name == "gn" and len(rest) <= 3:
        return GNFlow(delta=float(rest[0]) if rest else 1e-3, every=int(rest[1]) if len(rest) > 1 else 10,
                      m=int(rest[2]) if len(rest) > 2 else None)
    if name != "diag" or len(rest) > 3:
        raise ValueError(f"theta flow spec must be gd, diag[:POWER[:DELTA[:EVERY]]], kfac[:DELTA[:EVERY[:POWER]]] or "
                         f"gn[:DELTA[:EVERY[:M]]], got {spec!r}")
    return DiagGNFlow(power=float(rest[0]) if rest else 1.0, delta=float(rest[1]) if len(rest) > 1 else 1e-3,
                      every=int(rest[2]) if len(rest) > 2 else 10)


def full54(ratio: str, theta: str | None = None, seed: str = "0") -> None:
    _weights_vs_ula(dict(training="flow", eta=TrackingEta(ratio=float(ratio)), theta_flow=_theta_flow(theta)), 4000, 20.0, 0.01, 0.1,
                    int(seed))


def quick54(seed: str, ratio: str = "50", theta: str | None = None) -> None:
    flow = dict(training="flow", eta=TrackingEta(ratio=float(ratio)), theta_flow=_theta_flow(theta))
    for kw in (flow, dict(training="steps")):
        _weights_vs_ula(kw, 400, 10.0, 0.05, 0.2, int(seed), save_every=10**9)


def mid54(cfg: str, n: str = "1000", t_end: str = "4") -> None:
    """§5.4's path (λ₀ = 0.1, T = 20, dt = 0.01, seed 0) run to t_end: the mode weights (in the
    coordinates x/λ(t)), the corner modes' mean weight and the implicit loss at t = 0.2 … t_end.
    ULA always runs n = 4000 (the reference)."""
    target = make_target("gmm2d")
    path = Dilation(target, t_final=20.0, lam0=0.1)
    tend = float(t_end)
    common = dict(n=int(n), t_final=tend, dt=0.01, seed=0, init=sf.Gaussian(torch.zeros(2), torch.eye(2)), save_every=10)
    if cfg == "ula":
        kw, common["n"] = dict(method="ula", sde_solver="euler"), 4000
    elif cfg == "steps":
        kw = dict(method="sbtm", training="steps")
    else:
        name, ratio, *power = cfg.split(":")
        kw = dict(method="sbtm", training="flow", eta=TrackingEta(ratio=float(ratio)),
                  theta_flow=_theta_flow(":".join([name, *power])))
    t0 = time.perf_counter()
    try:
        r = sf.sample(path, **common, **kw)
    except sf.SamplingError as e:
        print(cfg, "stopped:", str(e)[:300])
        return
    print(f"{cfg}: {time.perf_counter() - t0:.0f} s, NFE {r.nfe}, eta {r.info.get('eta_schedule')}, rkc {r.info.get('rkc')}")
    corners = [i for i, m in enumerate(target.means.tolist()) if abs(m[0]) == abs(m[1]) == 6.0]
    for tq in (0.2, 0.5, 1, 2, 4, 8, 12, 16, 20):
        if tq <= tend + 1e-9:
            i = int(torch.argmin((torch.as_tensor(r.times) - tq).abs()))
            w = mode_weights(r.trajectory[i] / path.scale(float(r.times[i])), target.means).double()
            loss = float(r.diagnostics["loss"][i]) if "loss" in r.diagnostics else float("nan")
            print(f"t={float(r.times[i]):5.2f} corners {float(w[corners].mean()):.4f} min {float(w.min()):.4f} loss {loss:.2f} "
                  f"weights {[round(v, 3) for v in w.tolist()]}", flush=True)


class _Negated:
    """A flow whose loss Hessian is −∇²_Θ L (Lanczos on it reads −λ_min of the preconditioned Hessian)."""

    def __init__(self, flow):
        self.flow = flow

    def hvp(self, x, theta, t=None):
        product = self.flow.hvp(x, theta, t)
        return lambda q: -product(q)

    def __getattr__(self, name):
        return getattr(self.flow, name)


def curv54(t_end: str = "0.2", n: str = "1000") -> None:
    """At the discrete training's state on §5.4's path (n particles, seed 0, at t_end): λ_max and
    −λ_min of M^{1/2}∇²_Θ L M^{1/2} (30 Lanczos steps each) for gd (M = I), diag and gn at several δ,
    and the cost of a gn refresh (G, then Cholesky and triangular inverse) and of one M·g."""
    path = Dilation(make_target("gmm2d"), t_final=20.0, lam0=0.1)
    tq = float(t_end)
    res = sf.sample(path, method="sbtm", training="steps", n=int(n), t_final=tq, dt=0.01, seed=0,
                    init=sf.Gaussian(torch.zeros(2), torch.eye(2)), save_every=10**9)
    model = ScaledScore(ScoreMLP(2), path.scale)
    torch.nn.utils.vector_to_parameters(res.thetas[-1].clone(), model.parameters())
    for tf in ["gd", DiagGNFlow(), GNFlow(delta=1e-3), GNFlow(delta=1e-2), GNFlow(delta=0.1), GNFlow(delta=1.0)]:
        flow = sf.SBTMFlow(path, model, eta=1.0, theta_flow=tf)
        t0 = time.perf_counter()
        y = flow.initial_state(res.particles, t0=tq)
        t_est = time.perf_counter() - t0
        hi, lo = (hessian_max_eigenvalue(f, y, iters=30, t=tq, generator=torch.Generator().manual_seed(0)) for f in (flow, _Negated(flow)))
        print(f"t={tq} n={n} {tf!r}: lam_max {hi:.4g}, -lam_min {lo:.4g}, -lam_min/lam_max {lo / hi:.3g}, estimate {t_est:.1f} s", flush=True)
    x, theta = res.particles, flow.split(y)[1]
    t0 = time.perf_counter()
    g = gauss_newton_matrix(flow, x, theta, tq)
    t1 = time.perf_counter()
    low = torch.linalg.cholesky(g + 1e-3 * g.diagonal().mean() * torch.eye(g.shape[0], dtype=g.dtype))
    t2 = time.perf_counter()
    torch.linalg.solve_triangular(low, torch.eye(g.shape[0], dtype=g.dtype), upper=False)
    t3 = time.perf_counter()
    q = torch.randn(theta.numel())
    for _ in range(20):
        flow.theta_flow.factor.apply(q)
    print(f"P = {theta.numel()}, n·d = {x.numel()}: G {t1 - t0:.2f} s, Cholesky {t2 - t1:.2f} s, L⁻¹ {t3 - t2:.2f} s, "
          f"M·g {(time.perf_counter() - t3) / 20 * 1e3:.1f} ms", flush=True)


def tail8s() -> None:
    """A ScoreMLP fitted to a Gaussian cloud (s ~ N(0.5, 1)); the s-velocity of a particle at z = 0."""
    post = sf.posteriordb.load("eight_schools")
    x = torch.randn(2000, 10, generator=torch.Generator().manual_seed(0))
    x[:, 8] = x[:, 8] * 3 + 4.4
    x[:, 9] = x[:, 9] + 0.5
    law = sf.Gaussian(x.mean(0), torch.diag(x.var(0)))
    net = ScoreMLP(10, generator=torch.Generator().manual_seed(1))
    fit_score(net, x, law.score(x), steps=2000, divergence="exact")
    for s in (2.0, 4.0, 6.0, 8.0):
        pt = torch.zeros(1, 10)
        pt[0, 8], pt[0, 9] = 4.4, s
        g, n = float(post.score(pt)[0, 9]), float(net(pt)[0, 9])
        print(f"s={s}: d/ds log pi = {g:.2f}, s_theta = {n:.2f} (Gaussian: {float(law.score(pt)[0, 9]):.2f}), velocity {g - n:+.2f}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    cmd, *args = sys.argv[1:] or ["tail8s"]
    {"blocks54": blocks54, "blocks8s": blocks8s, "full54": full54, "quick54": quick54, "mid54": mid54, "curv54": curv54,
     "tail8s": tail8s}[cmd](*args)
