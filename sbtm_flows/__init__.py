"""sbtm_flows — deterministic Score-Based Transport Modeling (SBTM) and Langevin baselines.

Sample from an unnormalised density π: particles follow dX/dt = ∇log π_t(X) − s_Θ(X)
while the score network s_Θ ≈ ∇log f_t is trained online by implicit score matching.
"""

from . import diagnostics, dynamics, logdensity, losses, paths, score, targets
from .dynamics import SBTMFlow, SBTMSteps
from .errors import SamplingError
from .logdensity import ImportanceEstimate, effective_sample_size, importance, log_z_estimate
from .paths import Path, as_path
from .result import Result, load
from .sampling import FIXED_GRID_SOLVERS, METHODS, SOLVERS, sample
from .score import ScoreMLP
from .targets import Gaussian, GaussianMixture, Target, from_log_prob, from_score

__all__ = [
    "diagnostics",
    "dynamics",
    "logdensity",
    "losses",
    "paths",
    "score",
    "targets",
    "SBTMFlow",
    "SBTMSteps",
    "SamplingError",
    "importance",
    "ImportanceEstimate",
    "effective_sample_size",
    "log_z_estimate",
    "Path",
    "as_path",
    "Result",
    "load",
    "sample",
    "SOLVERS",
    "FIXED_GRID_SOLVERS",
    "METHODS",
    "ScoreMLP",
    "Target",
    "Gaussian",
    "GaussianMixture",
    "from_log_prob",
    "from_score",
]

__version__ = "0.1.0"
