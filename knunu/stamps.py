"""Stage stamps: which pipeline stages are up to date in a run directory.

A stage's *key* hashes everything its outputs depend on: the configuration sections it reads,
the code it runs, and the digests of its inputs (the outputs of the stages before it). The code
is derived from the import graph (:func:`code_of`, :func:`module_closure`): the source of the
stage's own functions, every knunu module they import, directly or not (import statements
inside functions too), and the packaged files those modules read by name (:data:`TABLES`).

When a stage finishes, ``<run>/stages/<stage>.json`` records the key and every output file
with its SHA-256, size and modification time. A later run skips the stage when the key is the
same and every output is still there, unchanged; anything else (a config change, edited code,
a touched or missing output, an upstream stage re-run) runs it again, and with it every stage
downstream, whose input digests change.

Checking a stamp costs a ``stat`` per output: a file whose size and modification time match the
stamp keeps its recorded digest (as ``make`` trusts timestamps); any other is hashed again.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import json
import logging
import sys
import textwrap
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from knunu.logs import Warned
from knunu.rundir import sha256, write_json

log = logging.getLogger(__name__)

STAMP_DIR = "stages"

#: Configuration keys that change no output beyond float rounding: the chunk size only changes
#: the order in which the chunks' sums are added (histograms agree to 1e-12, tested).
IGNORED_KEYS = frozenset({"chunksize"})


class FileDigest(NamedTuple):
    """An output file as a stamp records it."""

    sha256: str
    size: int
    mtime_ns: int


def digest_file(path: Path) -> FileDigest:
    """SHA-256, size and modification time of a file."""
    st = path.stat()
    return FileDigest(sha256(path), st.st_size, st.st_mtime_ns)


#: Packaged files that modules read by name, not by import (module -> the files): they count
#: for the stages whose code holds the module. The rest of the packaged configuration is the
#: run's configuration (``analysis.yaml``, hashed section by section), cluster settings
#: (``cluster.yaml``, no effect on an output), example configs and the JSON schemas (which
#: only validate). A test checks that every other packaged data file is listed here.
TABLES = {
    "knunu.samples": ("configs/samples.yaml",),
    "knunu.fits.catalogue": ("configs/systematics.yaml",),
    "knunu.simulation.bdecays": ("configs/bdecays.yaml",),
    "knunu.fits.workspace": ("knunu/data/belle2_knunu_2023_combined.json",),
    "knunu.reinterpret.maps": (
        "knunu/data/number_density_hta.csv",
        "knunu/data/number_density_ita_regA.csv",
        "knunu/data/number_density_ita_regB.csv",
    ),
    "knunu.simulation.formfactors": ("knunu/data/bsz2015_formfactors_2507.12393.json",),
}
#: Modules in every closure that change no output: the keys' own code and the warnings' log.
_NOT_OUTPUTS = ("knunu.stamps", "knunu.logs")


@cache
def _locate(module: str) -> Path | None:
    """The source file of a knunu module (a package's ``__init__.py``), without importing it.

    Only packages are imported (to find where their modules live); ``None`` when ``module`` is
    not a knunu module (``from knunu.fits.plots import fit_plot`` names a function too).
    """
    if module != "knunu" and not module.startswith("knunu."):
        return None
    parent, _, leaf = module.rpartition(".")
    if parent in ("", "knunu"):  # knunu and its areas (folders mapped by package-dir)
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            return None
        return Path(spec.origin) if spec is not None and spec.origin else None
    above = _locate(parent)
    if above is None or above.name != "__init__.py":
        return None
    for path in (above.parent / leaf / "__init__.py", above.parent / f"{leaf}.py"):
        if path.is_file():
            return path
    return None


def _knunu_imports(tree: ast.AST, module: str, package: bool) -> set[str]:
    """Every knunu module (or module attribute) an AST imports, anywhere in it."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: None if package else -1]
                base = base[: len(base) - node.level + 1]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            out |= {name, *(f"{name}.{alias.name}" for alias in node.names)}
    return {n for n in out if n == "knunu" or n.startswith("knunu.")}


def module_closure(roots: Iterable[str]) -> tuple[str, ...]:
    """The knunu modules ``roots`` import, directly or not, with the packages above them.

    Static: every import statement counts, those inside functions included.

    Raises:
        ValueError: a root is not a knunu module.

    >>> "knunu.errors" in module_closure(["knunu.rundir"])
    True
    """
    todo = list(roots)
    if missing := [r for r in todo if _locate(r) is None]:
        raise ValueError(f"not knunu modules: {', '.join(missing)}")
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or (path := _locate(name)) is None:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:k]) for k in range(1, len(parts))]
        tree = ast.parse(path.read_bytes(), filename=str(path))
        todo += _knunu_imports(tree, name, path.name == "__init__.py")
    return tuple(sorted(seen))


def _packaged(entry: str) -> Path:
    """The file of a packaged-data entry (``configs/samples.yaml``, ``knunu/data/x.json``)."""
    package, _, only = entry.partition("/")
    root = resources.files("knunu" if package == "knunu" else f"knunu.{package}")
    return Path(str(root.joinpath(only)))


def _labelled(entries: Iterable[str]) -> list[tuple[str, Path]]:
    """``(label, file)`` of what the entries stand for, in label order.

    A label names the file the same way however knunu is installed (editable, wheel).
    """
    entries = list(entries)
    modules = module_closure(e for e in entries if "/" not in e and ":" not in e)
    out = {}
    for m in modules:
        if m not in _NOT_OUTPUTS and (path := _locate(m)) is not None:
            out[m + ("/__init__.py" if path.name == "__init__.py" else ".py")] = path
    data = [e for e in entries if "/" in e] + [f for m in modules for f in TABLES.get(m, ())]
    out |= {entry: _packaged(entry) for entry in data}
    return sorted(out.items())


def code_files(entries: Iterable[str]) -> tuple[Path, ...]:
    """The files a stage's code entries stand for (see :func:`code_digest`)."""
    return tuple(path for _, path in _labelled(entries))


def code_of(func: Callable[..., Any]) -> tuple[str, ...]:
    """The code entries of a function (see :func:`code_digest`).

    They are the function itself, the functions of its module it calls (and those they call),
    and the knunu modules that all of them, and their module, import.
    """
    module = sys.modules[func.__module__]
    top = ast.parse(inspect.getsource(module))
    heads = [x for x in top.body if isinstance(x, ast.Import | ast.ImportFrom)]
    imports = _knunu_imports(ast.Module(heads, []), module.__name__, False)
    seen: set[str] = set()
    todo = [func]
    while todo:
        f = todo.pop()
        if f.__qualname__ in seen:
            continue
        seen.add(f.__qualname__)
        tree = ast.parse(textwrap.dedent(inspect.getsource(f)))
        imports |= _knunu_imports(tree, module.__name__, False)
        for node in ast.walk(tree):
            g = vars(module).get(node.id) if isinstance(node, ast.Name) else None
            if inspect.isfunction(g) and g.__module__ == module.__name__:
                todo.append(g)
    modules = sorted(n for n in imports if _locate(n) is not None)
    return (*sorted(f"{module.__name__}:{q}" for q in seen), *modules)


def code_digest(entries: Iterable[str]) -> str:
    """SHA-256 over the code a stage runs.

    An entry is a module (``knunu.mva.train``: with every knunu module it imports and the files
    they read by name, :func:`module_closure`, :data:`TABLES`), a function
    (``knunu.pipeline:train_stage``: its source), or a packaged file read by name
    (``configs/samples.yaml``).

    >>> len(code_digest(["knunu.fits.infer", "configs/systematics.yaml"]))
    64
    """
    entries = sorted(set(entries))
    h = hashlib.sha256()
    for label, path in _labelled(entries):
        h.update(f"{label}\0".encode())
        h.update(path.read_bytes())
    for entry in entries:
        if ":" in entry:
            name, _, qualname = entry.partition(":")
            obj: Any = sys.modules[name]
            for part in qualname.split("."):
                obj = getattr(obj, part)
            h.update(f"{entry}\0{inspect.getsource(obj)}".encode())
    return h.hexdigest()


def stage_key(
    stage: str,
    config: Mapping[str, Any],
    config_keys: Iterable[str],
    code: Iterable[str],
    inputs: Mapping[str, str],
) -> str:
    """The key of a stage: its config sections, its code and its inputs' digests.

    Args:
        stage: The stage's name.
        config: The run's configuration.
        config_keys: Dotted keys of the configuration the stage reads (``ita``, ``seed``,
            ``processing.skip_bad_inputs``).
        code: The code the stage runs (entries of :func:`code_digest`).
        inputs: Input name -> SHA-256.
    """
    chosen = {}
    for dotted in sorted(config_keys):
        value: Any = config
        for part in dotted.split("."):
            value = value[part]
        if isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if k not in IGNORED_KEYS}
        chosen[dotted] = value
    doc = {
        "stage": stage,
        "config": chosen,
        "code": code_digest(code),
        "inputs": dict(sorted(inputs.items())),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


class Stamp(NamedTuple):
    """What a finished stage recorded."""

    stage: str
    key: str
    outputs: dict[str, FileDigest]  # path relative to the run directory -> digest
    warnings: tuple[Warned, ...] = ()  # what it logged at WARNING or above, each once

    def digests(self) -> dict[str, str]:
        """Output path -> SHA-256 (what downstream stages take as inputs)."""
        return {f"{self.stage}:{k}": v.sha256 for k, v in self.outputs.items()}


def stamp_path(run_dir: Path, stage: str) -> Path:
    """Where a stage's stamp lives."""
    return Path(run_dir) / STAMP_DIR / f"{stage}.json"


def load_stamp(run_dir: Path, stage: str) -> Stamp | None:
    """The stamp of a stage, ``None`` when there is none or it is unreadable."""
    path = stamp_path(run_dir, stage)
    try:
        doc = json.loads(path.read_text())
        outputs = {k: FileDigest(*v) for k, v in doc["outputs"].items()}
        warned = tuple(Warned(*w) for w in doc.get("warnings", []))
        return Stamp(doc["stage"], doc["key"], outputs, warned)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_stamp(
    run_dir: Path,
    stage: str,
    key: str,
    outputs: Iterable[Path],
    warnings: Iterable[Warned] = (),
) -> Stamp:
    """Hash a finished stage's outputs and write its stamp (atomically), with its warnings."""
    run_dir = Path(run_dir)
    digests = {
        str(Path(p).resolve().relative_to(run_dir.resolve())): digest_file(Path(p))
        for p in sorted(outputs)
    }
    stamp = Stamp(stage, key, digests, tuple(warnings))
    doc = {
        "stage": stage,
        "key": key,
        "outputs": {k: list(v) for k, v in digests.items()},
        "warnings": [list(w) for w in stamp.warnings],
    }
    write_json(stamp_path(run_dir, stage), doc)
    return stamp


def why_stale(run_dir: Path, stamp: Stamp | None, key: str) -> str | None:
    """Why a stage must run again (``None``: it is up to date).

    >>> why_stale(Path("."), None, "k")
    'never run here'
    """
    if stamp is None:
        return "never run here"
    if stamp.key != key:
        return "its configuration, code or inputs changed"
    for rel, recorded in stamp.outputs.items():
        path = Path(run_dir) / rel
        try:
            st = path.stat()
        except FileNotFoundError:
            return f"output {rel} is missing"
        if (st.st_size, st.st_mtime_ns) == (recorded.size, recorded.mtime_ns):
            continue
        if sha256(path) != recorded.sha256:
            return f"output {rel} was changed"
    return None


def clear_stamp(run_dir: Path, stage: str) -> None:
    """Forget a stage's stamp (before it runs, so a failure leaves it stale)."""
    stamp_path(run_dir, stage).unlink(missing_ok=True)
