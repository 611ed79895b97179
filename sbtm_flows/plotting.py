"""Figures, one function each, taking :class:`~sbtm_flows.result.Result` objects.

Every function draws into the given matplotlib ``ax`` (or axes) or makes a new figure,
and returns the figure.  Nothing here re-runs a sampler.  Paper figure numbers refer to
Ilin, Hosseini & Hu, *Score-Based Deterministic Density Sampling*.
"""

from __future__ import annotations

import io
from typing import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor

from .density import kde_fisher, l2_error_1d
from .result import Result

__all__ = [
    "plot_ntk",
    "plot_trajectories",
    "plot_dissipation",
    "plot_l2_error",
    "plot_density_1d",
    "plot_densities_2d",
    "plot_entropy_decay",
    "sde_dissipation",
    "panels",
    "save",
]

SBTM_COLOR, SDE_COLOR, EXACT_COLOR, LEARNED_COLOR = "tab:orange", "tab:blue", "tab:red", "tab:green"


def _axes(ax, ncols=1, size=(5.0, 3.6)):
    if ax is not None:
        return ax.figure if not isinstance(ax, (list, tuple)) else ax[0].figure, ax
    fig, axs = plt.subplots(1, ncols, figsize=(size[0] * ncols, size[1]), constrained_layout=True)
    return fig, axs


def panels(ncols: int = 1, size: tuple[float, float] = (5.0, 3.6)):
    """``(fig, axes)``: a new figure with ``ncols`` side-by-side panels (for combining figures)."""
    return _axes(None, ncols, size)


def save(fig, path) -> None:
    """Write ``fig`` as PNG (dpi 110) atomically (no partial file on a full disk) and close it."""
    from .files import atomic_write

    buf = io.BytesIO()
    try:
        fig.savefig(buf, dpi=110, format="png")
    finally:
        plt.close(fig)
    atomic_write(path, buf.getvalue())


def plot_trajectories(sbtm: Result, sde: Result, n_paths: int = 30, axs=None):
    """Figure 1: trajectories of ``n_paths`` particles, Langevin (left) vs SBTM (right), 1-D."""
    fig, axs = _axes(axs, 2)
    for ax, res, title, color in ((axs[0], sde, "Langevin (ULA): stochastic", SDE_COLOR), (axs[1], sbtm, "SBTM: deterministic", SBTM_COLOR)):
        k = min(n_paths, res.n)
        ax.plot(res.times.numpy(), res.trajectory[:, :k, 0].cpu().numpy(), color=color, lw=0.8, alpha=0.8)
        ax.set_title(title)
        ax.set_xlabel("time t")
        ax.set_ylabel("particle position $X_t$")
    return fig


def sde_dissipation(res: Result, target_score: Callable[[Tensor], Tensor], max_particles: int = 2000) -> Tensor:
    """The SDE's entropy-dissipation estimate F(f̂_t‖π) at every output time, f̂_t the KDE of
    (at most ``max_particles`` of) the particles — noisy by nature (paper Figures 2–3)."""
    out = [kde_fisher(x[:max_particles].double(), lambda z: target_score(z.to(x.dtype)).double()) for x in res.trajectory]
    return torch.tensor(out, dtype=torch.float64)


def symlog_threshold(curves: list[Tensor], floor: float = 1e-12) -> float:
    """The linear range of a symlog axis for rates that are positive but for noise: a tenth of the
    smallest positive finite value over ``curves`` (each ``(m,)``), at least ``floor``.  A fixed
    threshold makes a curve that decays through it bend where the axis turns linear (Figure 2's
    exact rate (1 − v)²/v crosses 10⁻³ at t ≈ 1.6) — an artefact of the axis, not of the data."""
    vals = torch.cat([torch.as_tensor(c, dtype=torch.float64).reshape(-1) for c in curves]) if curves else torch.ones(1)
    pos = vals[torch.isfinite(vals) & (vals > 0)]
    return max(float(pos.min()) / 10.0, floor) if pos.numel() else 1.0


def plot_dissipation(sbtm: Result, sde: Result | None = None, target_score=None, exact: Callable[[Tensor], Tensor] | None = None,
                     ax=None, title: str = "entropy dissipation $-dKL(f_t\\|\\pi)/dt$"):
    """Figures 2 (left), 3, 4 (right): −dKL/dt vs time — the exact rate (if known), SBTM's
    learned estimate (eq. 4.1 / Thm 3.2 with s for ∇log f), SBTM's integration-by-parts rate
    of its own ODE, and the SDE's KDE estimate."""
    fig, ax = _axes(ax)
    t = sbtm.times.numpy()
    curves = []
    if exact is not None:
        curves.append(exact(sbtm.times))
        ax.plot(t, curves[-1].numpy(), color=EXACT_COLOR, lw=2.5, label="exact")
    curves += [sbtm.diagnostics["dissipation_learned"], sbtm.diagnostics["dissipation"]]
    ax.plot(t, curves[-2].numpy(), color=SBTM_COLOR, lw=1.8, label="SBTM, learned score (eq. 4.1 RHS)")
    ax.plot(t, curves[-1].numpy(), color=LEARNED_COLOR, lw=1.2, ls="--", label="SBTM, its ODE's true rate")
    if sde is not None and target_score is not None:
        curves.append(sde_dissipation(sde, target_score))
        ax.plot(sde.times.numpy(), curves[-1].numpy(), color=SDE_COLOR, lw=0.8, alpha=0.8, label="SDE (KDE estimate)")
    ax.set_yscale("symlog", linthresh=symlog_threshold(curves))
    ax.set_xlabel("time t")
    ax.set_ylabel("$-dKL/dt$")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def plot_l2_error(results: dict[str, Result], density_at: Callable[[float], Callable[[Tensor], Tensor]], grid: Tensor, ax=None):
    """Figure 2 (right): ‖KDE(particles_t) − f_t‖_{L²} vs time for each named result,
    ``density_at(t)`` the exact density at time t (1-D)."""
    fig, ax = _axes(ax)
    for name, res in results.items():
        err = [l2_error_1d(x.double(), density_at(float(t)), grid.double()) for t, x in zip(res.times, res.trajectory)]
        ax.plot(res.times.numpy(), err, label=name, color=SBTM_COLOR if "SBTM" in name else SDE_COLOR)
    ax.set_yscale("log")
    ax.set_xlabel("time t")
    ax.set_ylabel("$\\|\\hat f_t - f_t\\|_{L^2}$")
    ax.set_title("L2 error of the reconstructed density")
    ax.legend(fontsize=8)
    return fig


def plot_density_1d(results: dict[str, Result], log_prob: Callable[[Tensor], Tensor], grid: Tensor, ax=None,
                    title: str = "density at the final time"):
    """Figures 3, 4 (left): histogram of each result's final particles (step lines, normalised
    by all n particles; a KDE's bandwidth rule would smear separated modes) vs the target."""
    fig, ax = _axes(ax)
    g = grid.double()[:, None]
    ax.plot(grid.numpy(), log_prob(g.to(torch.get_default_dtype())).exp().numpy(), color="black", lw=2.5, label="target $\\pi$")
    edges = np.linspace(float(grid.min()), float(grid.max()), 91)
    for name, res in results.items():
        x = res.particles[:, 0].double().cpu().numpy()
        counts, _ = np.histogram(x, bins=edges)
        ax.stairs(counts / (x.size * (edges[1] - edges[0])), edges, lw=1.5, label=name,
                  color=SBTM_COLOR if "SBTM" in name else SDE_COLOR)
    ax.set_xlabel("x")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def plot_densities_2d(rows: dict[str, Result], times: Sequence[float], lim: float = 9.0, bins: int = 80):
    """Figure 5: 2-D particle histograms at ``times`` (columns), one row per named result."""
    fig, axs = plt.subplots(len(rows), len(times), figsize=(2.6 * len(times), 2.6 * len(rows)), constrained_layout=True, squeeze=False)
    for r, (name, res) in enumerate(rows.items()):
        for c, t in enumerate(times):
            x = res.at(t).cpu().numpy()
            ax = axs[r][c]
            ax.hist2d(x[:, 0], x[:, 1], bins=bins, range=[[-lim, lim], [-lim, lim]], cmap="viridis")
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                k = int(torch.argmin((res.times - t).abs()))
                ax.set_title(f"t = {float(res.times[k]):.2f}")
            if c == 0:
                ax.set_ylabel(name)
    return fig


def plot_entropy_decay(sbtm: Result, ax=None, exact: Tensor | None = None):
    """Figures 4 (right) and 6: cumulative relative-entropy decrease KL(f_0‖π) − KL(f_t‖π) of
    SBTM: from its ODE's true rate, and from the eq. (4.1) learned-score estimate; plus the
    tracked-density estimate (``kl_plus_logz``) when the run tracked log f_t."""
    fig, ax = _axes(ax)
    t = sbtm.times.numpy()
    d = sbtm.diagnostics
    ax.plot(t, d["kl_decrease"].numpy(), color=LEARNED_COLOR, lw=2, label="$\\int$ true rate of the ODE")
    ax.plot(t, d["kl_decrease_learned"].numpy(), color=SBTM_COLOR, lw=1.5, ls="--", label="$\\int$ eq. (4.1) estimate")
    if "kl_plus_logz" in d:
        ax.plot(t, (d["kl_plus_logz"][0] - d["kl_plus_logz"]).numpy(), color="tab:purple", lw=1, ls=":", label="tracked log-density")
    if exact is not None:
        ax.plot(t, exact.numpy(), color=EXACT_COLOR, lw=1, label="exact")
    ax.set_xlabel("time t")
    ax.set_ylabel("$KL(f_0\\|\\pi) - KL(f_t\\|\\pi)$")
    ax.set_title("relative entropy decay")
    ax.legend(fontsize=8)
    return fig


def _positive(y: torch.Tensor) -> torch.Tensor:
    """y with entries ≤ 0 or non-finite set to NaN (for log axes; ±inf is drawn as a gap)."""
    y = y.to(torch.float64).clone()
    y[~torch.isfinite(y) | (y <= 0)] = float("nan")
    return y


def plot_ntk(result: Result, ax: Sequence | None = None, title: str | None = None):
    r"""The NTK diagnostics of a run with ``record_ntk_every`` (Theorem 3.5), three panels:

    1. λ_min(H)(t), the smallest eigenvalue of the empirical NTK (log scale; values ≤ 0,
       i.e. a numerically singular H, are shown as a gap and counted in the legend);
    2. the η bound of Theorem 3.5 (sharp form n/(4λ) ∂_τ log L^n), the exact threshold
       ∂_τ L^n / ⟨∇_Θ L^n, ∇_Θ L_train⟩, and the η the flow used (log scale; bounds ≤ 0 —
       the particle motion does not increase the loss — and +inf are gaps);
    3. the losses: L^n against the reference score (the score-matching residual, when
       recorded) and the trained implicit loss L_train = mean(|s|² + 2∇·s).

    Args:
        result: a run of ``sample(..., record_ntk_every=k)``.
        ax: three matplotlib axes, or ``None`` for a new 1×3 figure.
        title: figure title (default names the run's n and solver).

    Returns:
        the matplotlib figure.

    Raises:
        ValueError: if the result has no ``ntk_*`` diagnostics.
    """

    d = result.diagnostics
    if "ntk_lambda_min" not in d:
        raise ValueError("result has no NTK diagnostics; run sample(..., record_ntk_every=k)")
    if ax is None:
        fig, ax = plt.subplots(1, 3, figsize=(14, 4), constrained_layout=True)
    else:
        if len(ax) != 3:
            raise ValueError(f"ax must hold 3 axes, got {len(ax)}")
        fig = ax[0].figure
    keep = ~torch.isnan(d["ntk_lambda_min"])
    t = result.times[keep].numpy()

    lam = d["ntk_lambda_min"][keep].to(torch.float64)
    sing = lam <= 0
    ax[0].semilogy(t, _positive(lam).numpy(), "o-", ms=3, label=r"$\lambda_{\min}(H) > 0$")
    if bool(sing.any()):
        ax[0].semilogy(t[sing.numpy()], lam[sing].abs().clamp_min(1e-300).numpy(), "x", color="C3",
                       label=rf"$|\lambda_{{\min}}|$ where $\lambda_{{\min}} \leq 0$ "
                             rf"({int(sing.sum())}×: H singular to rounding)")
    ax[0].set_xlabel("t")
    ax[0].set_ylabel(r"smallest NTK eigenvalue $\lambda_{\min}$")
    ax[0].set_title("NTK lower bound")
    ax[0].legend()

    bound = d["ntk_eta_bound"][keep]
    n_inf = int(torch.isposinf(bound).sum())
    lab_bound = r"Thm 3.5 bound $\frac{n}{4\lambda}\partial_\tau \log L^n$" + (f" (= +∞ at {n_inf} times)" if n_inf else "")
    ax[1].semilogy(t, _positive(bound).numpy(), "o-", ms=3, label=lab_bound)
    lab_exact = r"exact threshold $\partial_\tau L^n/\langle\nabla L^n,\nabla L\rangle$"
    ax[1].semilogy(t, _positive(d["ntk_eta_exact"][keep]).numpy(), "s-", ms=3, label=lab_exact)
    ax[1].semilogy(t, _positive(d["ntk_eta"][keep]).numpy(), "k-", lw=2, label=r"$\eta$ used")
    ax[1].set_xlabel("t")
    ax[1].set_ylabel(r"$\eta$")
    ax[1].set_title(r"$\eta$ condition (gaps: bound $\leq 0$ or $\infty$)")
    ax[1].legend(fontsize=8)

    res = d["ntk_residual"][keep]
    if bool(torch.isfinite(res).any()):
        ax[2].semilogy(t, _positive(res).numpy(), "o-", ms=3, label=r"$L^n = \mathrm{mean}|s-\nabla\log f_t|^2$")
        ax[2].set_ylabel(r"$L^n$ (log)")
        twin = ax[2].twinx()
        twin.plot(t, d["ntk_train_loss"][keep].numpy(), "r--", label=r"trained loss $\mathrm{mean}(|s|^2+2\nabla\cdot s)$")
        twin.set_ylabel("trained implicit loss", color="r")
        lines = ax[2].get_lines() + twin.get_lines()
        ax[2].legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="center right")
    else:
        ax[2].plot(t, d["ntk_train_loss"][keep].numpy(), "r--", label=r"trained loss $\mathrm{mean}(|s|^2+2\nabla\cdot s)$")
        ax[2].set_ylabel("loss")
        ax[2].legend(fontsize=8)
    ax[2].set_xlabel("t")
    ax[2].set_title("score-matching loss")
    if title is None:
        title = f"NTK diagnostics — n = {result.n}, solver {result.config.get('solver', '?')}"
    fig.suptitle(title)
    return fig
