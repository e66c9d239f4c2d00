"""Fixtures of the simulation tests: small decay libraries, built once per session."""

from __future__ import annotations

import numpy as np
import pytest

from knunu.simulation import bdecays
from knunu.simulation.production import (
    FileTask,
    GeneratedEvents,
    LibraryTask,
    build_library_file,
    generate_events,
    library_path,
)


@pytest.fixture(scope="session")
def libraries(tmp_path_factory):
    """A directory of small decay libraries (every species and stratum)."""
    directory = tmp_path_factory.mktemp("libraries")
    for k, (species, stratum, n) in enumerate(bdecays.library_jobs(1500, 150)):
        path = str(library_path(directory, species, stratum))
        build_library_file(LibraryTask(species, stratum, n, 100 + k, path))
    return str(directory)


@pytest.fixture(scope="session")
def make_events(libraries):
    """Generate events of a sample: ``make_events(sample, n, seed, **task_fields)``."""

    def make(sample: str, n: int, seed: int, **fields) -> GeneratedEvents:
        task = FileTask(sample, n, seed, "unused.root", libraries=libraries, **fields)
        return generate_events(task, np.random.default_rng(seed))

    return make
