"""Target densities π: :mod:`.core` (the :class:`Target` base class, Gaussians, mixtures,
function wrappers) and :mod:`.benchmarks` (the standard hard targets of the sampling
literature and :data:`BENCHMARK_TARGETS`, name -> constructor).

``from sbtm_flows.targets import X`` works for every public name of both modules.
"""

from . import benchmarks, core
from .benchmarks import *  # noqa: F403  (names listed in benchmarks.__all__)
from .core import *  # noqa: F403  (names listed in core.__all__)

__all__ = [*core.__all__, *benchmarks.__all__]
