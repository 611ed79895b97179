"""Figures from a :class:`~sbtm_flows.result.Result` (one function per figure; nothing re-runs).

Every function draws with the object-oriented matplotlib API (safe under the Agg backend),
returns the figure, and takes optional axes to draw into.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .result import Result

__all__ = ["plot_ntk"]


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
    import matplotlib.pyplot as plt

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
