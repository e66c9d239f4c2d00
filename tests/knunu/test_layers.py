"""Layers that point one way (a module imports only its own layer or below); short functions.

Function-level imports count as much as top-level ones. The layers, bottom up:

0. the run's infrastructure: errors, files (rundir), configuration, samples, progress, logs,
   stamps, published numbers, Dask clusters;
1. the simulation (Belle II-like ntuples and the physics models the analysis reuses: signal
   form factors, decay tables, the ntuple contract);
2. the MVA models and what the processors need to apply them (``knunu.mva`` but its HTA
   training);
3. the processors (selections, corrections, histograms);
4. the HTA training (it trains on the processors' corrected inputs) and the fits;
5. the reinterpretation (on the fits);
6. the run level: catalogue import, measurement, report, pipeline, CLI.
"""

from __future__ import annotations

import ast
import importlib.util
import tomllib
from pathlib import Path

import pytest

#: Module prefix -> layer; the longest matching prefix wins.
LAYERS = {
    "knunu.errors": 0,
    "knunu.rundir": 0,
    "knunu.config": 0,
    "knunu.samples": 0,
    "knunu.progress": 0,
    "knunu.logs": 0,
    "knunu.stamps": 0,
    "knunu.published": 0,
    "knunu.cluster": 0,
    "knunu.simulation": 1,
    "knunu.mva": 2,
    "knunu.processors": 3,
    "knunu.mva.hta": 4,
    "knunu.fits": 4,
    "knunu.reinterpret": 5,
    "knunu.catalogue": 6,
    "knunu.measurement": 6,
    "knunu.report": 6,
    "knunu.pipeline": 6,
    "knunu.cli": 6,
    "knunu": 6,  # the package itself and anything not listed: the top
}


def layer(module: str) -> int:
    """The layer of a module (longest prefix of :data:`LAYERS`)."""
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def modules() -> dict[str, Path]:
    """Every module of the knunu packages (pyproject's ``packages``) and its source file."""
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    out = {}
    for package in project["tool"]["setuptools"]["packages"]:
        spec = importlib.util.find_spec(package)
        assert spec is not None, package
        assert spec.origin is not None, package
        out[package] = Path(spec.origin)
        for folder in spec.submodule_search_locations or ():
            for path in sorted(Path(folder).glob("*.py")):
                if path.stem != "__init__":
                    out[f"{package}.{path.stem}"] = path
    return out


def imports(path: Path) -> set[str]:
    """The knunu modules a source file imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
            found |= {n if n in MODULES else node.module for n in names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m == "knunu" or m.startswith("knunu.")}


MODULES = modules()


def test_the_package_is_found_whole():
    for area in ("simulation", "processors", "mva", "fits", "reinterpret", "cluster"):
        assert f"knunu.{area}" in MODULES
    assert "knunu.simulation.production" in MODULES
    assert "knunu.fits.infer" in MODULES


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    upward = sorted(m for m in imports(MODULES[module]) if layer(m) > layer(module))
    assert not upward, f"{module} (layer {layer(module)}) imports {upward} from above"


def test_the_rule_catches_an_upward_import(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from knunu.fits.infer import Likelihood\n")
    assert imports(source) == {"knunu.fits.infer"}
    assert layer("knunu.fits.infer") > layer("knunu.simulation.production")


#: The longest a production function may be, docstring included (issue 20: "about 60").
MAX_FUNCTION_LINES = 60


def long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """(name, lines) of every function (methods, nested ones) of a file longer than ``limit``."""
    return [
        (node.name, node.end_lineno - node.lineno + 1)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > limit
    ]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_function_is_longer_than_the_limit(module):
    assert not long_functions(MODULES[module]), f"{module}: split these functions"


def test_the_length_rule_catches_a_long_function(tmp_path):
    source = tmp_path / "m.py"
    body = "".join(f"    x{k} = {k}\n" for k in range(MAX_FUNCTION_LINES))
    source.write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}")
    assert long_functions(source) == [("long", MAX_FUNCTION_LINES + 1)]
