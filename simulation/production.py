"""Producing MC ntuple files: generate -> detector -> reconstruct -> write, one seed per file.

A production is a list of :class:`FileTask` (sample, events, seed, path); each task is
independent (runnable as a Dask task on any cluster backend) and writes its file atomically.
The dataset catalogue records files, entries, generated events, cross section and the
equivalent luminosity, so every event is accounted for.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from knunu.errors import ConfigError
from knunu.rundir import write_json
from knunu.samples import Sample, load_samples
from knunu.simulation.detector import DetectorConfig, simulate_detector
from knunu.simulation.generators import Decayer, Generator
from knunu.simulation.kinematics import OFF_RESONANCE, ON_RESONANCE
from knunu.simulation.ntuple import write_ita_ntuple
from knunu.simulation.reconstruction import ita_variables
from knunu.simulation.signal import generate_signal

log = logging.getLogger(__name__)

EXPERIMENT = 1003  # a made-up experiment number for simulated files
#: Branching fraction behind one signal event: B(B+ -> K+ nu nubar) at mu = 1.
SIGNAL_BF = 4.97e-6


@dataclass(frozen=True)
class FileTask:
    """One output file of a production."""

    sample: str
    n_events: int
    seed: int
    path: str
    off_resonance: bool = False


@dataclass(frozen=True)
class FileRecord:
    """What one task wrote (an entry of the dataset catalogue)."""

    sample: str
    path: str
    entries: int
    generated: int
    seed: int
    off_resonance: bool
    seconds: float


def produce_file(task: FileTask, detector: DetectorConfig | None = None) -> FileRecord:
    """Generate, simulate, reconstruct and write one file (runs on a worker)."""
    start = time.perf_counter()
    samples = load_samples()
    if task.sample not in samples:
        raise ConfigError(f"unknown sample {task.sample!r} (known: {', '.join(samples)})")
    sample = samples[task.sample]
    rng = np.random.default_rng(task.seed)
    beams = OFF_RESONANCE if task.off_resonance else ON_RESONANCE
    q2gen = np.full(task.n_events, -1.0)
    if task.sample == "signal":
        if task.off_resonance:
            raise ConfigError("signal: no B Bbar production off resonance")
        events = generate_signal(task.n_events, rng, Decayer(seed=task.seed))
        parts, q2gen = events.particles, events.q2gen
    elif sample.kind == "bbbar":
        parts = _bbbar(task)
    else:
        # continuum and tau pairs: the generator process has the sample's name
        parts = Generator(task.sample, seed=task.seed).generate(task.n_events)
    seen = simulate_detector(parts, beams, detector or DetectorConfig(), rng)
    event, candidates = ita_variables(seen)
    n = task.n_events
    header = {
        "__experiment__": np.full(n, EXPERIMENT, np.int32),
        "__run__": np.full(n, task.seed % (1 << 31), np.int32),
        "__event__": np.arange(n, dtype=np.int64),
        "__weight__": np.ones(n),
        "mcProcess": np.full(n, sample.process_code, np.int32),
        "nKL": parts.per_event_sum((np.abs(parts.pdg) == 130).astype(np.int64)).astype(np.int32),
        "q2gen": q2gen,
    }
    write_ita_ntuple(task.path, header, event, candidates, seen.tracks.offsets, task.seed)
    return FileRecord(
        task.sample, task.path, n, n, task.seed, task.off_resonance, time.perf_counter() - start
    )


def _bbbar(task: FileTask) -> Any:
    """Upsilon(4S) -> B Bbar restricted to one charge class by forcing the channel."""
    channel = "521 -521" if task.sample == "charged" else "511 -511"
    extra = (f"300553:oneChannel = 1 1.0 0 {channel}",)
    return Generator("bbbar", seed=task.seed, extra=extra).generate(task.n_events)


def luminosity_fb(sample: Sample, generated: int) -> float:
    """Integrated luminosity (fb^-1) equivalent to ``generated`` events of a sample."""
    xs_nb = sample.cross_section_nb
    if sample.kind == "signal":
        # signal: one B+B- pair in 2 x BF; the charged B Bbar cross section times that
        xs_nb = load_samples()["charged"].cross_section_nb * 2 * SIGNAL_BF
    return generated / (xs_nb * 1e6)


def write_catalogue(path: str | Path, records: list[FileRecord]) -> Path:
    """The dataset catalogue: files with entries, generated events, luminosity per sample."""
    samples = load_samples()
    per_sample: dict[str, dict[str, Any]] = {}
    for rec in records:
        entry = per_sample.setdefault(
            rec.sample + ("_offres" if rec.off_resonance else ""),
            {
                "sample": rec.sample,
                "off_resonance": rec.off_resonance,
                "data": False,
                "cross_section_nb": samples[rec.sample].cross_section_nb,
                "files": [],
                "entries": 0,
                "generated": 0,
            },
        )
        entry["files"].append(asdict(rec))
        entry["entries"] += rec.entries
        entry["generated"] += rec.generated
    for entry in per_sample.values():
        entry["luminosity_fb"] = luminosity_fb(samples[entry["sample"]], entry["generated"])
    return write_json(path, {"datasets": per_sample})
