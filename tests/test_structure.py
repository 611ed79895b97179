"""Code-shape rules of the package, checked on its source: functions of at most 80 lines
(docstring included), no import of another module's underscore names, no use of an underscore
attribute that the module does not define itself, no object configured from outside
(``a.b.c = …``, ``setattr(other, …)``), a lean top level."""

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


def _own_private_names(tree: ast.AST) -> set[str]:
    """Underscore names a module defines: functions, classes, variables and attributes it assigns."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def _private_uses(tree: ast.AST) -> list[str]:
    """``obj._name`` where the module does not define ``_name``."""
    own = _own_private_names(tree)
    return [f"{node.lineno}: {ast.unparse(node)}" for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
            and node.attr not in own]


def _configured_from_outside(tree: ast.AST) -> list[str]:
    """``a.b.c = value`` (an attribute of an object held by another) and ``setattr(x, …)`` with x not self/cls."""
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Attribute):
            bad.append(f"{node.lineno}: {ast.unparse(node)} = ...")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr"
                and not (isinstance(node.args[0], ast.Name) and node.args[0].id in ("self", "cls"))):
            bad.append(f"{node.lineno}: {ast.unparse(node)}")
    return bad


def test_no_module_uses_private_attributes_it_does_not_define():
    """``obj._name`` only where this module defines ``_name`` (its own classes' internals);
    another module's object is reached through its public methods."""
    bad = [f"{f.name}:{hit}" for f in MODULES for hit in _private_uses(ast.parse(f.read_text()))]
    assert not bad, bad


def test_no_object_is_configured_from_outside():
    """A collaborator takes its settings through its constructor or a public method, never by
    ``sampler.dyn.max_nfe = …`` or ``setattr(dyn, …)``."""
    bad = [f"{f.name}:{hit}" for f in MODULES for hit in _configured_from_outside(ast.parse(f.read_text()))]
    assert not bad, bad


def test_the_rules_above_catch_what_they_forbid():
    code = ("class A:\n    def _own(self):\n        pass\n\n    def f(self, dyn):\n        self.dyn.max_nfe = 3\n"
            "        setattr(dyn, 'a', 1)\n        setattr(self, 'b', 1)\n        self._own()\n        dyn._draw()\n")
    tree = ast.parse(code)
    assert _private_uses(tree) == ["10: dyn._draw"]
    assert _configured_from_outside(tree) == ["6: self.dyn.max_nfe = ...", "7: setattr(dyn, 'a', 1)"]


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
