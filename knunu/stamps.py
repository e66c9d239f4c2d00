"""Stage stamps: which pipeline stages are up to date in a run directory.

A stage's *key* hashes everything its outputs depend on: the configuration sections it reads,
the source code and packaged data of the areas it runs, and the digests of its inputs (the
outputs of the stages before it). When a stage finishes, ``<run>/stages/<stage>.json`` records
the key and every output file with its SHA-256, size and modification time. A later run skips
the stage when the key is the same and every output is still there, unchanged; anything else
(a config change, edited code, a touched or missing output, an upstream stage re-run) runs it
again, and with it every stage downstream, whose input digests change.

Checking a stamp costs a ``stat`` per output: a file whose size and modification time match the
stamp keeps its recorded digest (as ``make`` trusts timestamps); any other is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

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


def code_digest(areas: Iterable[str]) -> str:
    """SHA-256 over the source and packaged data of ``knunu.<area>`` subpackages.

    An area ``configs/samples.yaml`` stands for that one file of the subpackage.

    >>> len(code_digest(["fits"]))
    64
    """
    h = hashlib.sha256()
    for area in sorted(areas):
        package, _, only = area.partition("/")
        root = resources.files("knunu" if package == "knunu" else f"knunu.{package}")
        for item in sorted(root.iterdir(), key=lambda p: p.name):
            if only and item.name != only:
                continue
            if item.is_file() and item.name.endswith((".py", ".yaml", ".json")):
                h.update(f"{package}/{item.name}\0".encode())
                h.update(item.read_bytes())
    return h.hexdigest()


def stage_key(
    stage: str,
    config: Mapping[str, Any],
    config_keys: Iterable[str],
    areas: Iterable[str],
    inputs: Mapping[str, str],
) -> str:
    """The key of a stage: its config sections, its code and its inputs' digests.

    Args:
        stage: The stage's name.
        config: The run's configuration.
        config_keys: Dotted keys of the configuration the stage reads (``ita``, ``seed``,
            ``processing.skip_bad_inputs``).
        areas: The knunu subpackages whose code the stage runs.
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
        "code": code_digest(areas),
        "inputs": dict(sorted(inputs.items())),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


class Stamp(NamedTuple):
    """What a finished stage recorded."""

    stage: str
    key: str
    outputs: dict[str, FileDigest]  # path relative to the run directory -> digest

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
        return Stamp(doc["stage"], doc["key"], outputs)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_stamp(run_dir: Path, stage: str, key: str, outputs: Iterable[Path]) -> Stamp:
    """Hash a finished stage's outputs and write its stamp (atomically)."""
    run_dir = Path(run_dir)
    digests = {
        str(Path(p).resolve().relative_to(run_dir.resolve())): digest_file(Path(p))
        for p in sorted(outputs)
    }
    stamp = Stamp(stage, key, digests)
    write_json(
        stamp_path(run_dir, stage),
        {"stage": stage, "key": key, "outputs": {k: list(v) for k, v in digests.items()}},
    )
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
