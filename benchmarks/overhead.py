"""Overhead of sf.sample(method="sbtm") over a minimal hand-written loop doing the same
arithmetic (same network and initial weights, same Heun steps, same exact divergence).

Run:  python benchmarks/overhead.py [--n 1000] [--steps 100] [--reps 5]
Prints the median wall time of each and the ratio, for training="flow" and "steps" at a fixed
eta, with diagnostics recorded every 10 steps (the library's extra work) and every step, plus
the default eta="auto" (which adds Hessian-vector products, so it is not the same arithmetic).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

import sbtm_flows as sf


def hand_flow(target, net, x, dt, steps, eta):
    """Heun on (X, Θ) with dX = ∇log π − s, dΘ = −η∇L, plain autograd."""
    params = [p.detach().clone() for p in net.parameters()]
    names = [n for n, _ in net.named_parameters()]

    def rhs(x, params):
        ps = [p.requires_grad_(True) for p in params]
        xr = x.detach().requires_grad_(True)
        s = torch.func.functional_call(net, dict(zip(names, ps)), (xr,))
        (j,) = torch.autograd.grad(s.sum(), xr, create_graph=True)
        loss = ((s * s).sum(-1) + 2 * j[:, 0]).mean()
        grads = torch.autograd.grad(loss, ps)
        return target.score(x) - s.detach(), [-eta * g for g in grads]

    for _ in range(steps):
        vx1, vp1 = rhs(x, params)
        x2 = x + dt * vx1
        p2 = [p.detach() + dt * v for p, v in zip(params, vp1)]
        vx2, vp2 = rhs(x2, p2)
        x = x + 0.5 * dt * (vx1 + vx2)
        params = [p.detach() + 0.5 * dt * (a + b) for p, a, b in zip(params, vp1, vp2)]
    return x


def hand_steps(target, net, x, dt, steps, k, lr):
    """K Adam steps on L, then one Heun step with the network frozen."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        for _ in range(k):
            opt.zero_grad()
            xr = x.detach().requires_grad_(True)
            s = net(xr)
            (j,) = torch.autograd.grad(s.sum(), xr, create_graph=True)
            loss = ((s * s).sum(-1) + 2 * j[:, 0]).mean()
            loss.backward()
            opt.step()
        with torch.no_grad():
            v1 = target.score(x) - net(x)
            x2 = x + dt * v1
            v2 = target.score(x2) - net(x2)
            x = x + 0.5 * dt * (v1 + v2)
    return x


def median_time(fn, reps):
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dt, eta, k, lr = 0.01, 5.0, 5, 1e-3
    target = sf.Gaussian(torch.zeros(1), torch.eye(1))
    x0 = sf.Gaussian(torch.zeros(1), (1 - math.exp(-0.2)) * torch.eye(1)).sample(a.n, torch.Generator().manual_seed(0)).float()

    def net():
        return sf.ScoreMLP(1, generator=torch.Generator().manual_seed(1))

    common = dict(init=x0, t_final=a.steps * dt, dt=dt, init_steps=0, seed=0)
    print(f"n={a.n}, d=1, ScoreMLP(64,64,silu), {a.steps} heun2 steps, dt={dt}, exact divergence, {a.reps} reps, {a.threads} thread(s)")
    print(f"{'training':>8} {'diag every':>10} {'sample [s]':>11} {'hand [s]':>9} {'ratio':>6}")
    for training in ("flow", "steps"):
        if training == "flow":
            t_hand = median_time(lambda: hand_flow(target, net(), x0, dt, a.steps, eta), a.reps)
        else:
            t_hand = median_time(lambda: hand_steps(target, net(), x0, dt, a.steps, k, lr), a.reps)
        # each training takes its own options (the other's are refused)
        own = dict(eta=eta, stiffness_check=False) if training == "flow" else dict(inner_steps=k, lr=lr)
        for every in (10, 1):
            t_lib = median_time(lambda: sf.sample(target, score_model=net(), training=training, save_every=every, **own, **common),
                                a.reps)
            print(f"{training:>8} {every:>10} {t_lib:>11.3f} {t_hand:>9.3f} {t_lib / t_hand:>6.3f}")
        if training == "flow":  # the default eta="auto" adds Lanczos estimates of λ_max(∇²_Θ L) every 20 steps
            t_auto = median_time(lambda: sf.sample(target, score_model=net(), eta="auto", stiffness_check=False, save_every=10,
                                                   **common), a.reps)
            print(f"{'flow, eta=auto':>19} {t_auto:>11.3f} {t_hand:>9.3f} {t_auto / t_hand:>6.3f}  (not the same arithmetic: extra HVPs)")


if __name__ == "__main__":
    main()
