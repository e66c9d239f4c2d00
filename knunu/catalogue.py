"""A user's dataset catalogue: ntuples written by basf2 (or anyone) as knunu's inputs.

A catalogue is YAML (or JSON) validated by ``knunu/schemas/catalogue.schema.json``: datasets with
their files (paths, globs, or URLs uproot opens), tree names, layout (event- or candidate-based,
or detected), variable aliases, weight branch, and what normalises them: a data dataset's
luminosity; an MC dataset's sample, cross section (default: the sample's) and generated events
or equivalent luminosity. :func:`import_catalogue` turns it into the run's
``ntuples/catalogue.json``, the format knunu's simulation writes too, after opening every file
once: the trees must be there, in the layout said, and their events are counted.

Example (the README's worked example)::

    luminosity_fb: {on: 362.0, off: 42.3}
    datasets:
      data_on:   {kind: data, resonance: on, files: ["data/on_*.root"], layout: candidate}
      signal:
        kind: mc
        sample: signal
        generated_events: 2.0e6
        files: ["mc/signal_*.root"]
        aliases: {ita: {K_pstar: "useCMSFrame(p)"}}

Datasets are known to the analysis by knunu's names: ``data_on``/``data_off`` for data, the
sample (``charged``, ``ccbar``) for on-resonance MC and ``<sample>_offres`` off resonance. Two
entries that name the same (two MC campaigns of one sample) are merged; their generated events
and luminosities add.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from knunu.config import read_yaml, validate
from knunu.errors import ConfigError, InputError, first_line
from knunu.rundir import input_file, write_json

log = logging.getLogger(__name__)

#: The analysis trees every input file must hold.
TREES = ("ita", "hta")


def dataset_name(entry: Mapping[str, Any]) -> str:
    """Knunu's name of a user dataset.

    >>> dataset_name({"kind": "data", "resonance": "off"})
    'data_off'
    >>> dataset_name({"kind": "mc", "sample": "ccbar", "resonance": "off"})
    'ccbar_offres'
    >>> dataset_name({"kind": "data", "resonance": False})  # `resonance: off` in YAML 1.1
    'data_off'
    """
    off = entry.get("resonance", "on") in ("off", False)  # YAML 1.1 reads off as false
    if entry["kind"] == "data":
        return "data_off" if off else "data_on"
    return entry["sample"] + ("_offres" if off else "")


def load_user_catalogue(path: str | Path) -> dict[str, Any]:
    """Read and validate a user catalogue (YAML or JSON).

    Raises:
        ConfigError: unreadable, not YAML, or failing the schema (one line, file and key);
            an MC dataset without a known sample or without its normalisation.
    """
    from knunu.samples import load_samples

    doc = read_yaml(path)
    if doc is None:
        raise ConfigError(f"{path}: empty file, not a dataset catalogue")
    doc = _on_off(doc)
    validate(doc, "catalogue", path)
    samples = load_samples()
    for label, entry in doc["datasets"].items():
        if entry["kind"] == "data":
            continue
        sample = entry.get("sample")
        if sample not in samples:
            known = ", ".join(s for s, x in samples.items() if x.kind != "control")
            raise ConfigError(f"{path}: dataset '{label}': sample {sample!r} is not one of {known}")
        if ("generated_events" in entry) == ("luminosity_fb" in entry):
            raise ConfigError(
                f"{path}: dataset '{label}': give either generated_events or luminosity_fb"
            )
    return doc


def _on_off(doc: Any) -> Any:
    """YAML 1.1 reads ``on`` and ``off`` as booleans; a catalogue means the words.

    >>> _on_off({"luminosity_fb": {True: 362.0}, "datasets": {"d": {"resonance": False}}})
    {'luminosity_fb': {'on': 362.0}, 'datasets': {'d': {'resonance': 'off'}}}
    """
    word = {True: "on", False: "off"}
    if not isinstance(doc, dict):
        return doc
    if isinstance(doc.get("luminosity_fb"), dict):
        doc["luminosity_fb"] = {word.get(k, k): v for k, v in doc["luminosity_fb"].items()}
    for entry in (doc.get("datasets") or {}).values():
        if isinstance(entry, dict) and isinstance(entry.get("resonance"), bool):
            entry["resonance"] = word[entry["resonance"]]
    return doc


def resolve_files(entry: Mapping[str, Any], base: Path, where: str) -> list[dict[str, Any]]:
    """The files of a dataset: globs expanded (sorted), relative paths taken from ``base``.

    Raises:
        InputError: a pattern that matches no file.
    """
    out: list[dict[str, Any]] = []
    for item in entry["files"]:
        spec = {"path": item} if isinstance(item, str) else dict(item)
        name = spec["path"]
        if "://" in name:  # remote: uproot (fsspec, XRootD) opens it as it is
            out.append(spec)
            continue
        pattern = name if os.path.isabs(name) else str(base / name)
        found = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not found or not (glob.has_magic(pattern) or os.path.lexists(pattern)):
            raise InputError(f"{where}: no file matches '{name}'")
        out += [{**spec, "path": str(Path(p).resolve())} for p in found]
    return out


def files_digest(path: str | Path) -> str:
    """A digest of a user catalogue and of every local file it names (path, size, mtime).

    Stored in the configuration of ``knunu run --catalogue``, so that the import (and every
    stage after it) runs again when the catalogue or any of its files changes.
    """
    doc = load_user_catalogue(path)
    h = hashlib.sha256(Path(path).read_bytes())
    for label, entry in doc["datasets"].items():
        for f in resolve_files(entry, Path(path).resolve().parent, f"{path}: dataset '{label}'"):
            if "://" not in f["path"]:
                st = os.stat(f["path"])
                h.update(f"{f['path']}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def inspect_file(path: str, entry: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Open one file: its layout (as said or detected) and events per analysis tree.

    Raises:
        InputError: the file cannot be read, a tree is missing, or a tree's layout is bad
            (:func:`knunu.processors.layouts.inspect_tree`).
    """
    import uproot

    from knunu.processors.layouts import Source, detect, inspect_tree

    if "://" not in path:
        input_file(path)
    trees = entry.get("trees", {})
    out: dict[str, Any] = {}
    try:
        with uproot.open(path) as rf:
            for tree in TREES:
                name = trees.get(tree, tree)
                if name not in rf:
                    has = ", ".join(rf.keys(cycle=False)) or "nothing"
                    raise InputError(f"{path}: no tree '{name}' ({tree}; the file has: {has})")
                layout = entry.get("layout", "auto")
                if layout == "auto":
                    layout = detect(set(rf[name].keys()))
                if out.setdefault("layout", layout) != layout:
                    raise InputError(f"{path}: its trees are in different layouts")
                source = Source.of({**entry, "layout": layout}, {}, tree)
                out[f"entries_{tree}"] = inspect_tree(rf[name], path, source).events
    except InputError:
        raise
    except Exception as exc:  # not ROOT, unreadable, remote errors
        raise InputError(f"{path}: cannot read ({first_line(exc)}) [{where}]") from None
    return out


def import_catalogue(path: str | Path, out: str | Path) -> Path:
    """Turn a user catalogue into knunu's ``catalogue.json`` at ``out``.

    Args:
        path: The user catalogue (YAML or JSON).
        out: The JSON catalogue to write (``<run>/ntuples/catalogue.json``), atomically.

    Returns:
        ``out``.

    Raises:
        ConfigError: the catalogue fails its schema or names an unknown sample.
        InputError: a pattern matches nothing, a file or tree is missing or bad, or data have
            no luminosity.
    """
    doc = load_user_catalogue(path)
    base = Path(path).resolve().parent
    datasets: dict[str, dict[str, Any]] = {}
    for label, entry in doc["datasets"].items():
        where = f"{path}: dataset '{label}'"
        name = dataset_name(entry)
        off = name.endswith("_off") or name.endswith("_offres")
        files = []
        for f in resolve_files(entry, base, where):
            found = inspect_file(f["path"], entry, where)
            files.append({**f, **found, **_reading(entry), **_stat(f["path"])})
        if entry["kind"] == "data":
            # the catalogue's luminosity is the whole dataset's: it does not add up
            if entry.get("luminosity_fb") is None and name in datasets:
                raise InputError(f"{where}: a second entry of {name} needs its own luminosity_fb")
            norm = _data_norm(entry, doc, off, where)
        else:
            norm = _mc_norm(entry)
        target = datasets.setdefault(name, _new_dataset(entry, off))
        _add_entry(target, label, entry, files, norm, where)
    for entry in datasets.values():
        entry["generated"] = round(entry["sum_weights"])
        entry["events"] = entry["entries_ita"]
    log.info(
        "%s: %d dataset(s), %d file(s)",
        path,
        len(datasets),
        sum(len(d["files"]) for d in datasets.values()),
    )
    return write_json(out, {"datasets": datasets, "source": str(Path(path).resolve())})


def _data_norm(
    entry: Mapping[str, Any], doc: Mapping[str, Any], off: bool, where: str
) -> dict[str, Any]:
    """A data entry's luminosity: its own, else the catalogue's on or off resonance."""
    lum = entry.get("luminosity_fb")
    lum = lum if lum is not None else doc.get("luminosity_fb", {}).get("off" if off else "on")
    if lum is None:
        raise InputError(f"{where}: data without luminosity_fb")
    return {"luminosity_fb": float(lum), "sum_weights": 0.0}


def _mc_norm(entry: Mapping[str, Any]) -> dict[str, Any]:
    """An MC entry's normalisation: cross section, events produced, luminosity, process."""
    from knunu.samples import load_samples
    from knunu.simulation.production import sample_cross_section_nb

    sample = load_samples()[entry["sample"]]
    xs = float(entry.get("cross_section_nb") or sample_cross_section_nb(sample))
    # what the MC's weights sum to, produced (before any selection)
    produced = float(entry.get("generated_events") or entry["luminosity_fb"] * xs * 1e6)
    return {
        "luminosity_fb": float(entry.get("luminosity_fb") or produced / (xs * 1e6)),
        "sum_weights": produced,
        "cross_section_nb": xs,
        "process_code": sample.process_code,
    }


def _new_dataset(entry: Mapping[str, Any], off: bool) -> dict[str, Any]:
    """An empty catalogue dataset for an entry's kind and sample."""
    return {
        "data": entry["kind"] == "data",
        "nature": False,
        "off_resonance": off,
        "samples": ["data" if entry["kind"] == "data" else entry["sample"]],
        "labels": [],
        "files": [],
        "luminosity_fb": 0.0,
        "sum_weights": 0.0,
        "entries_ita": 0,
        "entries_hta": 0,
    }


def _add_entry(
    target: dict[str, Any],
    label: str,
    entry: Mapping[str, Any],
    files: list[dict[str, Any]],
    norm: Mapping[str, Any],
    where: str,
) -> None:
    """One user entry's files and normalisation added to its dataset (checked to fit)."""
    name = dataset_name(entry)
    if "cross_section_nb" in norm:
        xs = norm["cross_section_nb"]
        if target.setdefault("cross_section_nb", xs) != xs:
            raise InputError(
                f"{where}: cross section {xs} nb differs from that of {name}'s other entries"
            )
    layouts = {f["layout"] for f in (*target["files"], *files)}
    if len(layouts) > 1:
        raise InputError(f"{where}: {name} would mix the {' and '.join(sorted(layouts))} layouts")
    if not entry.get("unique_events", True):
        target["unique_events"] = False
    target["labels"].append(label)
    target["files"] += files
    target["luminosity_fb"] += norm["luminosity_fb"]
    target["sum_weights"] += norm["sum_weights"]
    target.update({k: v for k, v in norm.items() if k in ("process_code",)})
    for tree in TREES:
        target[f"entries_{tree}"] += sum(f[f"entries_{tree}"] for f in files)


def _stat(path: str) -> dict[str, int]:
    """Size and modification time of a local file.

    A changed file changes the catalogue, and so the stamp of every stage after the import.
    """
    if "://" in path:
        return {}
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _reading(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of a user dataset that say how its files are read (kept per file)."""
    return {k: entry[k] for k in ("trees", "aliases", "weight_branch") if k in entry}
