"""Code-shape rules of the package, checked on its source: functions of at most 80 lines
(docstring included), no import of another module's underscore names, a lean top level."""

import ast
import pathlib
import subprocess
import sys

import pytest

import sbtm_flows as sf

SRC = pathlib.Path(sf.__file__).resolve().parent
MODULES = sorted(SRC.rglob("*.py"))


def test_functions_are_at_most_80_lines():
    long = []
    for f in MODULES:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{f.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long


def test_no_module_imports_another_modules_underscore_names():
    bad = []
    for f in MODULES:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 0:  # within the package
                bad += [f"{f.name}: from {'.' * node.level}{node.module or ''} import {a.name}"
                        for a in node.names if a.name.startswith("_") and a.name != "__version__"]
    assert not bad, bad


def test_top_level_is_small_and_every_name_resolves():
    assert len(sf.__all__) <= 25
    for name in sf.__all__:
        assert getattr(sf, name) is not None
    assert sf.metrics.tv_distance is not None and sf.plotting.plot_trajectories is not None  # submodules on demand


def test_import_loads_neither_pot_nor_pyplot_nor_switches_the_backend():
    code = ("import sys; import sbtm_flows; "
            "print('ot' in sys.modules, 'matplotlib' in sys.modules, 'sbtm_flows.posteriordb' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "False"]


def test_names_that_left_the_top_level_still_resolve_with_a_warning():
    with pytest.warns(DeprecationWarning, match="sbtm_flows.metrics.tv_distance"):
        assert sf.tv_distance is sf.metrics.tv_distance
