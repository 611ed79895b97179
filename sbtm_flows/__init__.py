"""sbtm_flows — deterministic Score-Based Transport Modeling (SBTM) and Langevin baselines.

Sample from an unnormalised density π: particles follow dX/dt = ∇log π_t(X) − s_Θ(X)
while the score network s_Θ ≈ ∇log f_t is trained online by implicit score matching.
"""

from . import diagnostics, dynamics, fokker_planck, learned, logdensity, losses, metrics, ntk, paths, plotting, posteriordb, score, sde, targets
from .dynamics import SBTMFlow, SBTMSteps
from .errors import SamplingError
from .fokker_planck import FokkerPlanck1D, fokker_planck_1d
from .logdensity import ImportanceEstimate, effective_sample_size, importance, log_z_estimate
from .metrics import compare_laws, energy_distance, mode_tv, mode_weights, sinkhorn, sliced_wasserstein, tv_distance
from .ntk import NTKEta, empirical_ntk, eta_condition, ntk_matvec, ntk_min_eigenvalue
from .paths import Constant, Dilation, Geometric, Path, as_path
from .result import Result, load
from .sampling import FIXED_GRID_SOLVERS, METHODS, SOLVERS, sample
from .score import ScaledScore, ScoreMLP, at_time
from .sde import SDE_SOLVERS, LangevinSDE
from .targets import Gaussian, GaussianMixture, Target, from_log_prob, from_score

__all__ = [
    "diagnostics",
    "learned",
    "dynamics",
    "logdensity",
    "losses",
    "metrics",
    "ntk",
    "plotting",
    "posteriordb",
    "NTKEta",
    "empirical_ntk",
    "eta_condition",
    "ntk_matvec",
    "ntk_min_eigenvalue",
    "paths",
    "sde",
    "score",
    "targets",
    "SBTMFlow",
    "fokker_planck",
    "FokkerPlanck1D",
    "fokker_planck_1d",
    "SBTMSteps",
    "SamplingError",
    "importance",
    "ImportanceEstimate",
    "effective_sample_size",
    "log_z_estimate",
    "Path",
    "Constant",
    "Geometric",
    "Dilation",
    "as_path",
    "LangevinSDE",
    "SDE_SOLVERS",
    "compare_laws",
    "energy_distance",
    "sliced_wasserstein",
    "sinkhorn",
    "mode_weights",
    "mode_tv",
    "tv_distance",
    "Result",
    "load",
    "sample",
    "SOLVERS",
    "FIXED_GRID_SOLVERS",
    "METHODS",
    "ScoreMLP",
    "ScaledScore",
    "at_time",
    "Target",
    "Gaussian",
    "GaussianMixture",
    "from_log_prob",
    "from_score",
]

__version__ = "0.1.0"
