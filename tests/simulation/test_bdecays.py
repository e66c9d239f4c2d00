"""B decay libraries: truth codes, exact importance weights, pairing = direct generation."""

from __future__ import annotations

import numpy as np
import pytest

from knunu.simulation import bdecays
from knunu.simulation.generators import Generator, Particles
from knunu.simulation.kinematics import mass
from knunu.simulation.production import load_mixture


@pytest.fixture(scope="module")
def mixture(libraries):
    return load_mixture(libraries)


def test_forced_libraries_hold_their_mode(mixture):
    lib = mixture.library
    strata = bdecays.load_strata()
    for (_, name), (first, size) in mixture.control.items():
        assert set(lib.code[first : first + size].tolist()) == {strata[name].code}
    for rows in mixture.draws.values():
        for first, size, _, _ in rows[1:]:
            assert len(set(lib.code[first : first + size].tolist())) == 1
    # K+ K_L K_L: every entry has its two K_L; none from a D
    first, size, _, _ = next(
        r for r in mixture.draws[521] if lib.code[r[0]] == strata["k_kl_kl"].code
    )
    assert set(lib.n_kl[first : first + size].tolist()) == {2}
    assert not lib.d_to_kl[first : first + size].any()
    # tau+ nu with tau+ -> K+ nubar: exactly one charged particle, a K+
    first, size, _, _ = next(
        r for r in mixture.draws[521] if lib.code[r[0]] == strata["taunu_knu"].code
    )
    parts = lib.particles.take(np.arange(first, first + size))
    charged = parts.charge != 0
    assert parts.per_event_sum(charged.astype(int)).tolist() == [1] * size
    assert set(parts.pdg[charged].tolist()) == {321}


def test_generic_library_excludes_the_strata(mixture):
    lib = mixture.library
    strata = bdecays.load_strata()
    for species, rows in mixture.draws.items():
        first, size, _, _ = rows[0]
        codes = set(lib.code[first : first + size].tolist())
        forced = {s.code for s in strata.values() if s.mixture and not s.keep_in_generic}
        assert not codes & forced, species
        # about a quarter of B decays make a K_L through a D (Pythia's D tables)
        frac = np.mean(lib.d_to_kl[first : first + size] > 0)
        assert 0.15 < frac < 0.4
        assert np.all(lib.n_kl[first : first + size] >= lib.d_to_kl[first : first + size])


def test_importance_weights_are_exact(mixture):
    for species, rows in mixture.draws.items():
        q = np.array([r[2] for r in rows])
        w = np.array([r[3] for r in rows])
        assert q.sum() == pytest.approx(1.0, abs=1e-12)
        assert (q * w).sum() == pytest.approx(1.0, abs=1e-12), species  # E[w] = 1
        assert q[0] > 0.5  # the generic library still dominates the draws
    rng = np.random.default_rng(4)
    entry, weight = mixture.draw(np.full(200_000, 521), rng)
    assert weight.mean() == pytest.approx(1.0, abs=0.01)
    # a weighted oversampled mode appears at its branching fraction
    d_lnu = bdecays.stratum_bf(bdecays.load_strata()["d_lnu"], 521)
    is_dlnu = mixture.library.code[entry] == 1
    assert np.sum(weight * is_dlnu) / len(entry) == pytest.approx(d_lnu, rel=0.03)
    _, natural = mixture.draw(np.full(1000, 521), rng, natural=True)
    assert set(natural.tolist()) == {1.0}


def test_pairing_reproduces_direct_upsilon4s_generation(make_events):
    """Same charged multiplicity, energy balance and flight distances as Pythia decaying the
    Upsilon(4S) (which gives the B mesons their lifetimes itself)."""
    n = 3000
    direct = Generator("bbbar", seed=31, extra=("300553:oneChannel = 1 1.0 0 521 -521",))
    ref = direct.generate(n)
    paired = make_events("charged", n, 32)
    w = paired.truth["weight"]

    def n_charged(parts):
        return parts.per_event_sum((parts.charge != 0).astype(float))

    def n_photons(parts):
        return parts.per_event_sum((parts.pdg == 22).astype(float))

    def flight(parts):
        """Per event: mean distance (mm) of charged particles made within 5 mm of the
        Upsilon(4S) decay: B flight and D, tau decays (K_S and Lambda daughters out)."""
        r = np.linalg.norm(parts.vertices()[:, 1:], axis=1)
        near = (parts.charge != 0) & (r < 5.0)
        return parts.per_event_sum(np.where(near, r, 0.0)) / np.maximum(
            parts.per_event_sum(near.astype(float)), 1.0
        )

    for stat in (n_charged, n_photons, flight):
        a, b = stat(ref), stat(paired.parts)
        mean_b = np.sum(w * b) / np.sum(w)
        err = np.hypot(a.std() / np.sqrt(n), b.std() / np.sqrt(np.sum(w) ** 2 / np.sum(w**2)))
        assert abs(a.mean() - mean_b) < 4 * err, stat.__name__
    total = paired.parts.per_event_sum(paired.parts.p4)  # CM frame, at each event's sqrt(s)
    np.testing.assert_allclose(total[:, 0], mass(paired.total), rtol=1e-9)
    np.testing.assert_allclose(total[:, 1:], 0.0, atol=1e-9)


def test_b_mesons_fly_their_pdg_lifetime():
    """boost_sides moves each B's decay products to a decay point one exponential proper
    time along the B's momentum: proper length = |x| m / |p| with mean c tau."""
    n = 20_000
    rng = np.random.default_rng(5)
    p4 = np.zeros((n, 4))
    p4[:, 0] = 1.0  # a photon at rest stands for the decay products: only vertices matter
    at_rest = Particles(np.arange(n + 1), np.full(n, 22, np.int32), p4, np.zeros(n))
    sqrt_s = np.full(n, 10.58)
    p_first, _ = bdecays.b_pair_momenta(sqrt_s, rng)
    c_tau = bdecays.C_TAU_B_MM[521]
    parts = bdecays.boost_sides(at_rest, at_rest, p_first, rng, c_tau)
    first = parts.side == 0
    x = parts.vertex[first, 1:]
    p_b = p_first[:, 1:]
    # along the B's flight direction, and with the B's proper length
    cos = np.sum(x * p_b, axis=1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(p_b, axis=1))
    np.testing.assert_allclose(cos, 1.0, atol=1e-6)  # vertices are float32
    proper = np.linalg.norm(x, axis=1) * bdecays.M_B[521] / np.linalg.norm(p_b, axis=1)
    assert proper.mean() == pytest.approx(c_tau, rel=4 / np.sqrt(n))
    # time and space of the decay point are one four-vector: c t^2 - x^2 = proper^2
    np.testing.assert_allclose(
        parts.vertex[first, 0] ** 2 - np.sum(x**2, axis=1), proper**2, rtol=1e-5
    )


def test_library_vertices_start_at_the_b_decay_point():
    """Pythia gives the hand-placed B a lifetime of its own; the library keeps vertices
    relative to its decay point, so the pairing's flight is the only one. B+ -> K+ K_L K_L
    has only direct, stable daughters: all at (0, 0, 0, 0). Generic decays: a D daughter is
    displaced in space and time, never earlier than the B decay."""
    direct = bdecays.build_library(521, "k_kl_kl", 200, seed=11)
    np.testing.assert_array_equal(direct.particles.vertices(), 0.0)
    generic = bdecays.build_library(521, None, 300, seed=12).particles.vertices()
    assert np.all(generic[:, 0] >= 0.0)
    # space and time of a displaced vertex form a time-like four-vector (c t >= |x|)
    assert np.all(generic[:, 0] + 1e-12 >= np.linalg.norm(generic[:, 1:], axis=1))
    assert np.mean(generic[:, 0] == 0.0) > 0.2  # the B's direct daughters


def test_b_decays_to_a_spinless_meson_and_a_photon_are_drawn_again():
    """Pythia's inclusive b -> s gamma collapses the s-quark system into a single kaon in
    about a third of the decays: B+ -> K+ gamma, which angular momentum forbids (a spin-0 B
    cannot give a helicity-1 photon and a spinless meson). The library's decayer draws such a
    decay again: none is left, and the allowed K*+ gamma is."""
    settings = ("521:onMode = off", "521:onIfMatch = 2 -3 22")
    mass = bdecays.M_B[521]
    raw = bdecays._pythia(settings, 3)
    seen = []
    for _ in range(300):
        raw.event.reset()
        raw.event.append(521, 1, 0, 0, 0.0, 0.0, 0.0, mass, mass)
        assert raw.next()
        seen.append(tuple(sorted(abs(raw.event[k].id()) for k in raw.event[1].daughterList())))
    assert seen.count((22, 321)) > 0.2 * len(seen)
    decayer = bdecays._pythia(settings, 4)
    kept = [bdecays._decay(decayer, 521, mass)[1] for _ in range(300)]
    assert not any(bdecays.spin_forbidden(p) for p in kept)
    assert sum(sorted(p) == [22, 323] for p in kept) > 0.15 * len(kept)


def test_the_mixture_decays_b_mesons_as_pythia_does(mixture):
    """The strata plus the generic library reproduce Pythia's own B+ decays: the weighted
    fraction of D(*) l nu and D** l nu draws equals that of 20,000 B+ decayed directly with
    every channel on. (Until stop 49 the strata's branching fractions were normalised over
    the table's antiparticle-only channels too: D(*) l nu 0.138 where Pythia decays 0.176.)"""
    mass, n = bdecays.M_B[521], 20_000
    decayer = bdecays._pythia((), 8)
    codes = np.array([bdecays.classify(bdecays._decay(decayer, 521, mass)[1]) for _ in range(n)])
    entry, weight = mixture.draw(np.full(400_000, 521), np.random.default_rng(9))
    drawn = mixture.library.code[entry]
    for code in (1, 2):
        direct = np.mean(codes == code)
        error = np.sqrt(direct * (1 - direct) / n)
        assert np.sum(weight * (drawn == code)) / len(entry) == pytest.approx(direct, abs=4 * error)
