"""Bulk generation (``Pythia.nextBatch``) against the per-particle copy-out after ``next()``."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from knunu.simulation import generators
from knunu.simulation.generators import Generator, Particles, particles_of, vertex_of

#: Makes about 7 % of ccbar events fail Pythia's event check (momentum not conserved to the
#: last bits), so that failed events and their retries are exercised.
FAILING = ("Check:epTolErr = 3e-16",)


def reference(gen: Generator, n: int) -> Particles:
    """The old copy-out: ``next()`` until it succeeds, then every ``isFinal()`` particle
    with its production vertex.

    Args:
        gen: A continuum or tau-pair generator, freshly seeded.
        n: Number of events.

    Returns:
        The final-state particles, as ``Generator.generate`` must give them.
    """
    pdg: list[int] = []
    mom: list[tuple[float, float, float, float]] = []
    vtx: list[tuple[float, float, float, float]] = []
    counts = np.zeros(n, dtype=np.int64)
    for i in range(n):
        while not gen.pythia.next():
            pass
        for particle in gen.pythia.event:
            if particle.isFinal():
                pdg.append(particle.id())
                mom.append((particle.e(), particle.px(), particle.py(), particle.pz()))
                vtx.append(vertex_of(particle))
                counts[i] += 1
    return particles_of(counts, pdg, mom, gen.pythia.particleData, vtx)


def assert_identical(got: Particles, want: Particles) -> None:
    """Same columns, bit for bit, with the same dtypes and shapes."""
    for name in ("offsets", "pdg", "p4", "charge", "vertex"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype, name
        assert a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, strict=True, err_msg=name)
    assert got.side is None


@pytest.mark.parametrize("process", ["ccbar", "taupair"])
def test_bulk_is_bit_identical_to_the_particle_loop(process):
    got = Generator(process, seed=17).generate(200)
    assert got.n_events == 200
    assert_identical(got, reference(Generator(process, seed=17), 200))


def test_batches_and_consecutive_calls_continue_the_same_event_stream(monkeypatch):
    monkeypatch.setattr(generators, "BATCH_EVENTS", 64)  # 150 events: 64 + 64 + 22
    gen = Generator("ccbar", seed=23)
    first, second = gen.generate(150), gen.generate(30)
    want = reference(Generator("ccbar", seed=23), 180)
    assert_identical(first, want.take(np.arange(150)))
    assert_identical(second, want.take(np.arange(150, 180)))


def test_failed_events_are_retried_as_in_the_loop(caplog):
    gen = Generator("ccbar", seed=29, extra=FAILING)
    with caplog.at_level(logging.DEBUG, logger=generators.__name__):
        got = gen.generate(200)
    assert "Pythia events failed; retried" in caplog.text
    assert_identical(got, reference(Generator("ccbar", seed=29, extra=FAILING), 200))


def test_no_events():
    parts = Generator("taupair", seed=3).generate(0)
    assert parts.n_events == 0
    assert parts.offsets.tolist() == [0]
    assert parts.pdg.dtype == np.int32
    assert parts.p4.shape == (0, 4)
    assert parts.charge.shape == (0,)
    with pytest.raises(ValueError, match="negative number of events"):
        Generator("taupair", seed=3).generate(-1)
