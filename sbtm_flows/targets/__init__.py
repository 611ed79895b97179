"""Target densities π: :mod:`.core` (the :class:`Target` base class, Gaussians, mixtures,
function wrappers) and :mod:`.benchmarks` (the standard hard targets of the sampling
literature and :data:`BENCHMARK_TARGETS`, name -> constructor).

``from sbtm_flows.targets import X`` works for every public name of both modules.
"""

from .benchmarks import (
    BENCHMARK_TARGETS,
    Funnel,
    ManyWell,
    ParticleDoubleWell,
    StudentTMixture,
    dw4,
    gmm25,
    gmm40,
    student_t_draws,
    student_t_mixture,
)
from .core import (
    Gaussian,
    GaussianMixture,
    Target,
    autograd_laplacian,
    autograd_score,
    check_particles,
    from_log_prob,
    from_score,
)

__all__ = [
    "Target",
    "Gaussian",
    "GaussianMixture",
    "from_log_prob",
    "from_score",
    "check_particles",
    "autograd_score",
    "autograd_laplacian",
    "Funnel",
    "ManyWell",
    "StudentTMixture",
    "ParticleDoubleWell",
    "gmm40",
    "gmm25",
    "student_t_mixture",
    "dw4",
    "student_t_draws",
    "BENCHMARK_TARGETS",
]
