"""sbtm_flows — deterministic Score-Based Transport Modeling (SBTM) and Langevin baselines.

Sample from an unnormalised density π: particles follow dX/dt = ∇log π_t(X) − s_Θ(X)
while the score network s_Θ ≈ ∇log f_t is trained online by implicit score matching::

    import sbtm_flows as sf
    res = sf.sample(sf.Gaussian(mean, cov), method="sbtm", n=1000, t_final=2.0)

The top level holds the front door (:func:`sample`, its configurations, the generic loop
:func:`run` and :class:`Sampler`), targets and paths, the score networks, the dynamics and the
two read-outs most runs need (:func:`compare_laws`, :func:`importance`).  Everything else lives
in its submodule (``sf.metrics.tv_distance``, ``sf.ntk.empirical_ntk``, ``sf.plotting``, …);
submodules are attributes of the package, and the heavy ones (plotting → matplotlib, metrics'
optimal transport → POT, posteriordb, ntk, fokker_planck, experiments) are imported on first
use, so ``import sbtm_flows`` loads neither POT nor matplotlib and never changes a backend.
"""

import importlib
import warnings

from .config import SBTMConfig, ULAConfig
from .dynamics import SBTMFlow, SBTMSteps
from .errors import SamplingError
from .learned import run_learned  # noqa: F401 - importing learned registers method="pis" and "dis"
from .logdensity import importance
from .loop import Sampler, run
from .mala import MALAConfig  # importing mala registers method="mala"
from .metrics import compare_laws
from .paths import Dilation, Geometric, Path, as_path
from .result import Result, load
from .sampling import sample
from .score import ScaledScore, ScoreMLP
from .sde import LangevinSDE  # importing sde registers method="ula"
from .targets import Gaussian, GaussianMixture, Target, from_log_prob, from_score

__all__ = [
    "sample", "run", "Sampler", "SBTMConfig", "ULAConfig", "Result", "load", "SamplingError",
    "Target", "Gaussian", "GaussianMixture", "from_log_prob", "from_score",
    "Path", "Geometric", "Dilation", "as_path",
    "ScoreMLP", "ScaledScore", "SBTMFlow", "SBTMSteps", "LangevinSDE", "MALAConfig",
    "compare_laws", "importance",
]

__version__ = "0.1.0"

#: Submodules, imported on first attribute access (``sf.plotting``, ``sf.metrics``, …).
SUBMODULES = (
    "bench", "checkpoint", "compat", "config", "density", "diagnostics", "dynamics", "errors", "eta", "experiments", "fokker_planck",
    "learned", "logdensity", "loop", "losses", "mala", "metrics", "ntk", "paths", "plotting", "posteriordb", "result", "sampling", "score",
    "sde", "stiffness", "targets",
)

#: Names that were top-level before the surface was trimmed -> the submodule that has them
#: (still resolved, with a DeprecationWarning naming the new place).
MOVED = {
    **dict.fromkeys(["energy_distance", "sliced_wasserstein", "sinkhorn", "mode_weights", "mode_tv", "tv_distance"], "metrics"),
    **dict.fromkeys(["NTKEta", "empirical_ntk", "eta_condition", "ntk_matvec", "ntk_min_eigenvalue"], "ntk"),
    **dict.fromkeys(["FokkerPlanck1D", "fokker_planck_1d"], "fokker_planck"),
    **dict.fromkeys(["ImportanceEstimate", "effective_sample_size", "log_z_estimate"], "logdensity"),
    **dict.fromkeys(["SOLVERS", "FIXED_GRID_SOLVERS", "METHODS"], "sampling"),
    "SDE_SOLVERS": "sde", "Constant": "paths", "at_time": "score",
}


def __getattr__(name: str):
    if name in SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in MOVED:
        where = MOVED[name]
        warnings.warn(f"sbtm_flows.{name} moved to sbtm_flows.{where}.{name}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(f".{where}", __name__), name)
    raise AttributeError(f"module 'sbtm_flows' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*__all__, *SUBMODULES, "__version__"})
