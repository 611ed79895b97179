"""Figures, one function each, taking :class:`~sbtm_flows.result.Result` objects.

Every function draws into the given matplotlib ``ax`` (or axes) or makes a new figure,
and returns the figure.  Nothing here re-runs a sampler.  Paper figure numbers refer to
Ilin, Hosseini & Hu, *Score-Based Deterministic Density Sampling*.
"""

from __future__ import annotations

from typing import Callable, Sequence

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from .density import kde_fisher, kde_log_density, l2_error_1d  # noqa: E402
from .result import Result  # noqa: E402

__all__ = [
    "plot_trajectories",
    "plot_dissipation",
    "plot_l2_error",
    "plot_density_1d",
    "plot_densities_2d",
    "plot_entropy_decay",
    "sde_dissipation",
    "save",
]

SBTM_COLOR, SDE_COLOR, EXACT_COLOR, LEARNED_COLOR = "tab:orange", "tab:blue", "tab:red", "tab:green"


def _axes(ax, ncols=1, size=(5.0, 3.6)):
    if ax is not None:
        return ax.figure if not isinstance(ax, (list, tuple)) else ax[0].figure, ax
    fig, axs = plt.subplots(1, ncols, figsize=(size[0] * ncols, size[1]), constrained_layout=True)
    return fig, axs


def save(fig, path) -> None:
    """Write ``fig`` as PNG (dpi 110) and close it."""
    fig.savefig(path, dpi=110)
    plt.close(fig)


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


def plot_dissipation(sbtm: Result, sde: Result | None = None, target_score=None, exact: Callable[[Tensor], Tensor] | None = None,
                     ax=None, title: str = "entropy dissipation $-dKL(f_t\\|\\pi)/dt$"):
    """Figures 2 (left), 3, 4 (right): −dKL/dt vs time — the exact rate (if known), SBTM's
    learned estimate (eq. 4.1 / Thm 3.2 with s for ∇log f), SBTM's integration-by-parts rate
    of its own ODE, and the SDE's KDE estimate."""
    fig, ax = _axes(ax)
    t = sbtm.times.numpy()
    if exact is not None:
        ax.plot(t, exact(sbtm.times).numpy(), color=EXACT_COLOR, lw=2.5, label="exact")
    ax.plot(t, sbtm.diagnostics["dissipation_learned"].numpy(), color=SBTM_COLOR, lw=1.8, label="SBTM, learned score (eq. 4.1 RHS)")
    ax.plot(t, sbtm.diagnostics["dissipation"].numpy(), color=LEARNED_COLOR, lw=1.2, ls="--", label="SBTM, its ODE's true rate")
    if sde is not None and target_score is not None:
        ax.plot(sde.times.numpy(), sde_dissipation(sde, target_score).numpy(), color=SDE_COLOR, lw=0.8, alpha=0.8,
                label="SDE (KDE estimate)")
    ax.set_yscale("symlog", linthresh=1e-3)
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
    """Figures 3, 4 (left): KDE of each result's final particles vs the target density."""
    fig, ax = _axes(ax)
    g = grid.double()[:, None]
    ax.plot(grid.numpy(), log_prob(g.to(torch.get_default_dtype())).exp().numpy(), color="black", lw=2.5, label="target $\\pi$")
    for name, res in results.items():
        ax.plot(grid.numpy(), kde_log_density(res.particles.double(), g).exp().numpy(), lw=1.5, label=name,
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
