"""Every private torchdiffeq / torchsde name sbtm_flows uses, imported here and nowhere else.

Neither library exports its solver registry, so the solver tables (:data:`TORCHDIFFEQ_SOLVERS`:
method name -> torchdiffeq solver class; :func:`torchsde_method` / :data:`TORCHSDE_METHODS`:
torchsde's method classes and names) are read from their internals.  When a release moves them,
importing sbtm_flows fails here with an ImportError naming the library, its installed version,
the missing name and the versions known to work (``tests/test_compat.py`` checks the tables).
"""

from __future__ import annotations

import importlib
from importlib import metadata

__all__ = ["TORCHDIFFEQ_SOLVERS", "TORCHSDE_METHODS", "torchsde_method", "KNOWN_GOOD"]

#: Versions these imports were written against.
KNOWN_GOOD = {"torchdiffeq": "0.2.x", "torchsde": "0.2.x"}


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def private(dist: str, module: str, name: str):
    """``module.name`` from the internals of package ``dist``.

    Raises:
        ImportError: the module or name is missing (an incompatible ``dist`` release), naming the
            installed version and the known-good ones."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ImportError(
            f"sbtm_flows needs {module}.{name} from {dist}, which the installed {dist} {_version(dist)} does not have "
            f"({e}); sbtm_flows works with {dist} {KNOWN_GOOD[dist]}: pip install '{dist}>=0.2,<0.3'"
        ) from e


#: torchdiffeq's registry: method name -> solver class (``scipy_solver`` left out).
TORCHDIFFEQ_SOLVERS: dict[str, type] = {
    k: v for k, v in private("torchdiffeq", "torchdiffeq._impl.odeint", "SOLVERS").items() if k != "scipy_solver"
}
#: torchsde's method names (``torchsde.settings.METHODS``, an enum-like class with ``all()``).
TORCHSDE_METHODS: tuple[str, ...] = tuple(private("torchsde", "torchsde.settings", "METHODS").all())
_select = private("torchsde", "torchsde._core.methods", "select")


def torchsde_method(name: str, sde_type: str = "ito") -> type:
    """torchsde's solver class for method ``name`` and ``sde_type`` (``noise_types``,
    ``levy_area_approximations``, ``sde_type`` are read from it)."""
    return _select(name, sde_type)
