"""The private torchdiffeq / torchsde names sbtm_flows relies on: all imported in
sbtm_flows.compat, present in the installed versions, and a clear error when a release moves them."""

import importlib
import pathlib
import sys
from importlib import metadata

import pytest

from sbtm_flows import compat

SRC = pathlib.Path(__file__).resolve().parents[1] / "sbtm_flows"


@pytest.mark.parametrize("dist", ["torchdiffeq", "torchsde"])
def test_installed_versions_are_the_known_good_ones(dist):
    # a new major/minor release may move the private registries read by sbtm_flows.compat:
    # this fails first and names the library, so check compat.py against it, then widen KNOWN_GOOD
    version = metadata.version(dist)
    assert version.startswith(compat.KNOWN_GOOD[dist].rstrip("x")), (
        f"{dist} {version} is not a version sbtm_flows.compat was checked against ({compat.KNOWN_GOOD[dist]})")


def test_solver_tables_read_from_the_internals():
    assert {"euler", "heun2", "rk4", "dopri5", "adaptive_heun", "implicit_adams"} <= set(compat.TORCHDIFFEQ_SOLVERS)
    assert "scipy_solver" not in compat.TORCHDIFFEQ_SOLVERS
    assert {"euler", "milstein", "srk", "heun"} <= set(compat.TORCHSDE_METHODS)
    euler = compat.torchsde_method("euler", "ito")
    assert euler.sde_type == "ito" and "diagonal" in euler.noise_types


def test_a_moved_private_name_fails_clearly(monkeypatch):
    with pytest.raises(ImportError, match=r"torchdiffeq._impl.odeint.NOT_THERE from torchdiffeq.*installed torchdiffeq 0\.2"):
        compat.private("torchdiffeq", "torchdiffeq._impl.odeint", "NOT_THERE")
    monkeypatch.setitem(sys.modules, "torchsde._core.methods", None)  # the module is gone in this "release"
    try:
        with pytest.raises(ImportError, match=r"torchsde._core.methods.select from torchsde.*pip install"):
            importlib.reload(compat)
    finally:
        monkeypatch.undo()
        importlib.reload(compat)


def test_no_other_module_imports_private_torchdiffeq_or_torchsde_names():
    for f in SRC.glob("*.py"):
        if f.name == "compat.py":
            continue
        text = f.read_text()
        for private in ("torchdiffeq._impl", "torchsde._core", "torchsde.settings", "torchsde._brownian"):
            assert private not in text, f"{f.name} uses {private}: import it through sbtm_flows.compat"
