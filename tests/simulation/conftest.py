"""Fixtures of the simulation tests."""

from __future__ import annotations

import numpy as np
import pytest

from knunu.simulation.production import FileTask, GeneratedEvents, generate_events


@pytest.fixture(scope="session")
def make_events(libraries):
    """Generate events of a sample: ``make_events(sample, n, seed, **task_fields)``."""

    def make(sample: str, n: int, seed: int, **fields) -> GeneratedEvents:
        task = FileTask(sample, n, seed, "unused.root", libraries=libraries, **fields)
        return generate_events(task, np.random.default_rng(seed))

    return make
