r"""Training losses of the learned-diffusion samplers, selected by name (:data:`LOSSES`).

Both act on a :class:`~sbtm_flows.learned.controlled.PathBatch` of B paths:

* ``"kl"`` — the reverse KL, KL(P_u ‖ Q*) − log Z = E_{P_u}[R_T + log p_T(X_T) − log π̃(X_T)]
  (= −ELBO), estimated on paths of the current control u_θ with gradients through the solver
  (the reparametrised paths; the Itô term ∫u·dW, of mean zero, is left out of the loss).
* ``"log_variance"`` — Var_{P_v}(log dQ*/dP_u) = Var(log w), the paths drawn from the
  *reference control* v = u_θ.detach() (the current control, frozen for the step), so X_t does
  not depend on θ and no gradient flows through the solver: only through u_θ(X_t, t) in R_T and
  S_T.  Its minimum, 0, is at u = u* whatever v is (log dQ*/dP_{u*} = log Z on every path), and
  unlike the KL it does not weight the paths by the current, possibly mode-collapsed, P_u.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from .controlled import PathBatch

__all__ = ["LOSSES", "DETACHED", "kl_loss", "log_variance_loss"]


def kl_loss(paths: PathBatch) -> Tensor:
    """−ELBO estimate mean(R_T + log p_T(X_T) − log π̃(X_T)) over the B paths (a scalar)."""
    return (paths.running + paths.log_reference - paths.log_target).mean()


def log_variance_loss(paths: PathBatch) -> Tensor:
    """The sample variance (B − 1 denominator) of the B log-weights (a scalar)."""
    if paths.log_w.shape[0] < 2:
        raise ValueError("the log-variance loss needs a batch of at least 2 paths")
    return paths.log_w.var()


#: loss name -> loss function of a :class:`PathBatch`.
LOSSES: dict[str, Callable[[PathBatch], Tensor]] = {"kl": kl_loss, "log_variance": log_variance_loss}
#: loss name -> whether its paths are drawn with the detached control (no backprop through the solver).
DETACHED: dict[str, bool] = {"kl": False, "log_variance": True}
