r"""Learned-diffusion samplers (PIS, DIS) trained with the reverse KL or the log-variance loss.

Richter & Berner, "Improved sampling via learned diffusions" (ICLR 2024): learn the control u_θ
of dX = (μ + σu_θ) dt + σ dW so that X_T ~ π, by minimising a divergence between the controlled
path measure and the reference bridged to the target.  Modules:

* :mod:`~sbtm_flows.learned.reference` — the reference processes (Brownian for PIS, OU/VP for DIS)
  and the exact optimal control for a Gaussian target;
* :mod:`~sbtm_flows.learned.controlled` — the controlled SDE (torchsde, general noise, state
  augmented with the Girsanov terms) and the per-path log-weights;
* :mod:`~sbtm_flows.learned.control` — the control network (with the ∇log π̃ feature);
* :mod:`~sbtm_flows.learned.losses` — ``"kl"`` and ``"log_variance"``;
* :mod:`~sbtm_flows.learned.sampler` — the training as a run-loop sampler;
* :mod:`~sbtm_flows.learned.api` — ``sample(target, method="pis" | "dis", ...)``.
"""

from .api import output_iterations, run_dis, run_learned, run_pis
from .control import ControlNet
from .controlled import ControlledSDE, GridBrownian, PathBatch, brownian_increments, simulate
from .losses import DETACHED, LOSSES, kl_loss, log_variance_loss
from .reference import BrownianReference, GaussianOptimalControl, OUReference
from .sampler import LearnedConfig, LearnedDiffusion, LearnedState, make_reference

__all__ = [
    "run_learned", "run_pis", "run_dis", "output_iterations", "ControlNet", "ControlledSDE", "GridBrownian", "PathBatch",
    "brownian_increments", "simulate", "LOSSES", "DETACHED", "kl_loss", "log_variance_loss", "BrownianReference",
    "OUReference", "GaussianOptimalControl", "LearnedConfig", "LearnedDiffusion", "LearnedState", "make_reference",
]
