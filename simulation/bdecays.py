"""B decay libraries and B Bbar events built by pairing their entries.

Each B is decayed once by Pythia (at rest) into a *library* per species (B+, B-, B0, B0bar)
and *stratum* (configs/bdecays.yaml): the generic library holds every channel except those of
the dangerous strata (B -> D(*) l nu, D** l nu, D(*) K+, tau nu with tau -> K nu,
K+ K_L K_L, K+ n nbar, ...), which get libraries of their own and are drawn ``oversample``
times more often than their branching fraction. An Upsilon(4S) -> B Bbar event picks one entry
per B, lets each B fly for an exponential proper time (its PDG lifetime), boosts it with the
B momentum (sin^2 theta to the beam axis), vertices included, and carries the weight
``prod(bf / q)`` of the two draws, so weighted sums are exact; the pairing is numpy-fast and a
library entry serves many events.

Every entry carries its truth: the decay-mode code (:data:`MODES`), whether a K_L comes from
a D decay (the D -> K_L X systematic) and its number of K_L.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from knunu.errors import ConfigError, SimulationError
from knunu.rundir import atomic_path
from knunu.simulation import kinematics as kin
from knunu.simulation.generators import (
    COMMON_SETTINGS,
    VERTEX_DTYPE,
    Particles,
    merge,
    particles_of,
    vertex_of,
)

log = logging.getLogger(__name__)

M_B = {521: 5.27950, 511: 5.27965}  # GeV; B+ as in the signal spectrum (notes)
#: Mean proper decay lengths c tau in mm (PDG 2024: tau(B+) = 1.638 ps, tau(B0) = 1.519 ps).
C_TAU_B_MM = {521: 0.4911, 511: 0.4554}
_LEPTONS = {11, 13}
_D = {411, 421, 413, 423}
_D_GROUND = {411, 421, 431, 4122}
_DSS = {10411, 10421, 10413, 10423, 20413, 20423, 415, 425}
_KAON = {321}
_PION = {211}

#: Truth codes of a B decay (branch ``mcB1Mode``/``mcB2Mode``); -1 where there is no B.
MODES: dict[int, str] = {
    0: "other hadronic",
    1: "D(*) l nu",
    2: "D** l nu",
    3: "D(*) tau nu",
    4: "other semileptonic",
    5: "D(*) K+",
    6: "D(*) pi+",
    7: "tau+ nu, tau+ -> K+ nubar",
    8: "tau+ nu, other tau decays",
    9: "K+ K_L K_L",
    10: "K+ K_S K_S",
    11: "K+ K_S K_L",
    12: "K+ n nbar",
    13: "K+ nu nubar (signal)",
    14: "J/psi(mu mu) K+",
    15: "pi+ K0",
}

Selector = Callable[[tuple[int, ...]], bool]


def _has(products: tuple[int, ...], codes: set[int]) -> bool:
    return any(p in codes for p in products)


def _two_body(products: tuple[int, ...], first: set[int], second: set[int]) -> bool:
    return len(products) == 2 and _has(products, first) and _has(products, second)


#: Named selectors of Pythia channels by the |PDG| codes of their direct products.
SELECTORS: dict[str, Selector] = {
    "d_lnu": lambda p: _has(p, _LEPTONS) and _has(p, _D) and 15 not in p,
    "dss_lnu": lambda p: _has(p, _LEPTONS) and _has(p, _DSS),
    "d_k": lambda p: _two_body(p, _D, _KAON),
}

#: How a generic-library entry is classified (first match wins; else "other hadronic").
_GENERIC_CLASSES: tuple[tuple[int, Selector], ...] = (
    (3, lambda p: 15 in p and _has(p, _D | _DSS)),
    (8, lambda p: sorted(p) == [15, 16]),
    (1, SELECTORS["d_lnu"]),
    (2, SELECTORS["dss_lnu"]),
    (4, lambda p: _has(p, _LEPTONS | {15})),
    (5, SELECTORS["d_k"]),
    (6, lambda p: _two_body(p, _D, _PION)),
)


def classify(products: tuple[int, ...]) -> int:
    """Truth code of a generic B decay from the |PDG| codes of its direct products.

    >>> classify((421, 11, 12))
    1
    >>> classify((421, 211))
    6
    """
    for code, selector in _GENERIC_CLASSES:
        if selector(products):
            return code
    return 0


@dataclass(frozen=True)
class Stratum:
    """One row of configs/bdecays.yaml."""

    name: str
    code: int
    parents: tuple[int, ...]
    select: str | None = None
    channels: tuple[tuple[int, ...], ...] = ()
    bf: float | None = None
    oversample: float = 1.0
    forced: tuple[str, ...] = ()
    generic: tuple[str, ...] = ()
    replaces: tuple[tuple[int, ...], ...] = ()
    keep_in_generic: bool = False
    mixture: bool = True
    in_data: bool = False  # a control mode nature makes at its rate (removed from generic)


@cache
def load_strata(path: str | None = None) -> dict[str, Stratum]:
    """The strata table (packaged configs/bdecays.yaml unless ``path``)."""
    if path is None:
        text = resources.files("knunu.configs").joinpath("bdecays.yaml").read_text()
        where = "configs/bdecays.yaml"
    else:
        text, where = Path(path).read_text(), path
    raw = yaml.safe_load(text)["strata"]
    out = {}
    for name, row in raw.items():
        try:
            stratum = Stratum(
                name=name,
                code=int(row["code"]),
                parents=tuple(row["parents"]),
                select=row.get("select"),
                channels=tuple(tuple(c) for c in row.get("channels", ())),
                bf=row.get("bf"),
                oversample=float(row.get("oversample", 1.0)),
                forced=tuple(row.get("forced", ())),
                generic=tuple(row.get("generic", ())),
                replaces=tuple(tuple(c) for c in row.get("replaces", ())),
                keep_in_generic=bool(row.get("keep_in_generic", False)),
                mixture=bool(row.get("mixture", True)),
                in_data=bool(row.get("in_data", False)),
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{where}: stratum {name!r}: {exc}") from exc
        if (stratum.select is None) == (not stratum.channels):
            raise ConfigError(f"{where}: stratum {name!r}: give exactly one of select, channels")
        if stratum.select is not None and stratum.select not in SELECTORS:
            raise ConfigError(f"{where}: stratum {name!r}: unknown selector {stratum.select!r}")
        if stratum.code not in MODES:
            raise ConfigError(f"{where}: stratum {name!r}: unknown truth code {stratum.code}")
        out[name] = stratum
    return out


# ---------------------------------------------------------------------------- Pythia tables


def _pythia(settings: tuple[str, ...], seed: int) -> Any:
    import pythia8mc

    pythia = pythia8mc.Pythia("", False)
    for line in (
        *COMMON_SETTINGS,
        f"Random:seed = {seed % 900_000_000 + 1}",
        "ProcessLevel:all = off",
        *settings,
    ):
        if not pythia.readString(line):
            raise ConfigError(f"Pythia rejected setting {line!r}")
    if not pythia.init():
        raise ConfigError("Pythia failed to initialise the B decayer")
    return pythia


#: Pythia's onMode of a channel it decays the particle (not the antiparticle) through: 1 (both)
#: or 2 (the particle only); 3 is the antiparticle's only.
_PARTICLE_ON = (1, 2)


@cache
def _table(parent: int) -> tuple[tuple[tuple[int, ...], float], ...]:
    """Pythia's decay channels of the particle ``parent`` (products, normalised fraction).

    Only the channels Pythia decays the particle through (:data:`_PARTICLE_ON`). Its B tables
    also list channels (mostly quark-level ones) once for the particle and once for
    the antiparticle (27 % of the B+ table's sum each, 32 % of the B0's); until stop 49 both
    were normalised over, which made every stratum's branching fraction taken from the table
    21 % (B+) and 24 % (B0) too small (B+ -> D(*) l nu 0.138 where Pythia decays 0.176).
    """
    entry = _pythia((), 1).particleData.particleDataEntryPtr(parent)
    rows = []
    for i in range(entry.sizeChannels()):
        ch = entry.channel(i)
        if ch.onMode() not in _PARTICLE_ON:
            continue
        rows.append((tuple(ch.product(j) for j in range(ch.multiplicity())), ch.bRatio()))
    total = sum(br for _, br in rows)
    return tuple((products, br / total) for products, br in rows)


def _same(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return sorted(a) == sorted(b)


def stratum_channels(stratum: Stratum, parent: int) -> list[tuple[tuple[int, ...], float]]:
    """The channels of Pythia's table (for ``parent``) a stratum takes, with their fractions."""
    rows = _table(parent)
    if stratum.select is not None:
        selector = SELECTORS[stratum.select]
        return [(p, br) for p, br in rows if selector(tuple(abs(x) for x in p))]
    return [(p, br) for p, br in rows if any(_same(p, c) for c in stratum.channels)]


def stratum_bf(stratum: Stratum, parent: int) -> float:
    """Branching fraction of the stratum (its ``bf`` or the sum over Pythia's channels)."""
    if stratum.bf is not None:
        return float(stratum.bf)
    return sum(br for _, br in stratum_channels(stratum, parent))


def _settings(species: int, stratum: Stratum | None, strata: Mapping[str, Stratum]) -> tuple:
    """Pythia settings of the decayer of one library."""
    parent = abs(species)
    if stratum is not None:  # a forced library: only this stratum's channels
        lines = [f"{parent}:onMode = off"]
        known = [p for p, _ in stratum_channels(stratum, parent)]
        for products in known:
            lines.append(f"{parent}:onIfMatch = {' '.join(map(str, products))}")
        for products in stratum.channels:
            if not any(_same(products, k) for k in known):
                lines.append(f"{parent}:addChannel = 1 1.0 0 {' '.join(map(str, products))}")
        return (*lines, *stratum.forced)
    lines = []
    for other in strata.values():
        # a control mode leaves the generic decays only if nature makes it
        if parent not in other.parents or not (other.mixture or other.in_data):
            continue
        lines.extend(other.generic)
        if other.keep_in_generic:
            continue
        for products in [p for p, _ in stratum_channels(other, parent)] + list(other.replaces):
            lines.append(f"{parent}:offIfMatch = {' '.join(map(str, products))}")
    return tuple(dict.fromkeys(lines))


# ---------------------------------------------------------------------------- libraries


@dataclass(frozen=True)
class Library:
    """Decays of one B species at rest: particles plus per-entry truth.

    Attributes:
        particles: Final-state particles in the B rest frame, production vertices relative
            to the B's decay point.
        code: Truth code per entry (:data:`MODES`).
        d_to_kl: Number of K_L per entry that come from a D decay.
        n_kl: Number of K_L per entry.
    """

    particles: Particles
    code: np.ndarray
    d_to_kl: np.ndarray
    n_kl: np.ndarray

    def __len__(self) -> int:
        return self.particles.n_events

    def save(self, path: str | Path) -> Path:
        """Write the library atomically as ``.npz``."""
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **_columns(self))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Library:
        """Read a library written by :meth:`save`."""
        with np.load(path) as z:
            if "vertex" not in z.files:
                raise SimulationError(
                    f"{path}: a decay library without production vertices (written before "
                    "they were kept); delete it and run the production again"
                )
            vertex = z["vertex"].astype(VERTEX_DTYPE, copy=False)
            parts = Particles(z["offsets"], z["pdg"], z["p4"], z["charge"], vertex=vertex)
            return cls(parts, z["code"], z["d_to_kl"], z["n_kl"])


def _columns(lib: Library) -> dict[str, np.ndarray]:
    p = lib.particles
    return {
        "offsets": p.offsets,
        "pdg": p.pdg,
        "p4": p.p4,
        "charge": p.charge,
        "vertex": p.vertices(),
        "code": lib.code,
        "d_to_kl": lib.d_to_kl,
        "n_kl": lib.n_kl,
    }


def build_library(species: int, stratum: str | None, n: int, seed: int) -> Library:
    """Decay ``n`` B mesons of one species (at rest) in one stratum (``None``: generic).

    Args:
        species: Signed PDG code (521, -521, 511, -511).
        stratum: A stratum name of configs/bdecays.yaml, or ``None`` for the generic library.
        n: Number of decays.
        seed: Pythia's seed.
    """
    strata = load_strata()
    row = None if stratum is None else strata[stratum]
    pythia = _pythia(_settings(species, row, strata), seed)
    event = pythia.event
    mass = M_B[abs(species)]
    pdg: list[int] = []
    mom: list[tuple[float, float, float, float]] = []
    vtx: list[tuple[float, float, float, float]] = []
    counts = np.zeros(n, dtype=np.int64)
    code = np.zeros(n, dtype=np.int8)
    d_to_kl = np.zeros(n, dtype=np.int8)
    n_kl = np.zeros(n, dtype=np.int8)
    for i in range(n):
        b, products = _decay(pythia, species, mass)
        code[i] = row.code if row is not None else classify(products)
        # Pythia gives the B a lifetime of its own: vertices are kept relative to its decay
        # point, and the pairing lets the B fly (``boost_sides``)
        origin = (b.tDec(), b.xDec(), b.yDec(), b.zDec())
        k = 0
        for j in range(event.size()):
            particle = event[j]
            if not particle.isFinal():
                continue
            ident = particle.id()
            pdg.append(ident)
            mom.append((particle.e(), particle.px(), particle.py(), particle.pz()))
            vtx.append(tuple(v - o for v, o in zip(vertex_of(particle), origin, strict=True)))
            k += 1
            if ident == 130:
                n_kl[i] += 1
                d_to_kl[i] += _from_d(event, j)
        counts[i] = k
    parts = particles_of(counts, pdg, mom, pythia.particleData, vtx)
    return Library(parts, code, d_to_kl, n_kl)


#: Spinless mesons: a B (spin 0) cannot decay to one of them and a real photon (helicity +-1
#: against a spinless recoil breaks angular momentum conservation; PDG lists no B -> K gamma,
#: the lightest b -> s gamma mode is K*(892) gamma).
PSEUDOSCALARS = frozenset({111, 211, 221, 331, 311, 321, 310, 130, 411, 421, 431})


def spin_forbidden(products: tuple[int, ...]) -> bool:
    """Whether a B's direct products (|PDG|) are a spinless meson and a photon.

    Pythia's inclusive b -> s gamma (matrix-element mode 31) collapses a light s-quark system
    into a single kaon in a third of the decays (5,000 B+ decays: K+ gamma 33 %, K*+ gamma
    17 %), which makes B+ -> K+ gamma with B = 1.0e-4 (a third of the channel's 3.1e-4): a
    lone hard kaon, signal-like once the photon is missed (stop 49: one such pair held 89 % of
    the HTA's squared weights in a default run). :func:`build_library` decays such a B again,
    so b -> s gamma is 2.5e-4 per B+ instead of Pythia's 3.5e-4 (PDG 3.49e-4).

    >>> spin_forbidden((22, 321)), spin_forbidden((321, 22)), spin_forbidden((22, 323))
    (True, True, False)
    """
    return len(products) == 2 and 22 in products and any(p in PSEUDOSCALARS for p in products)


def _decay(pythia: Any, species: int, mass: float) -> tuple[Any, tuple[int, ...]]:
    """One B decay at rest in ``pythia.event``: the decaying B and its direct products (|PDG|).

    A decay Pythia fails or that :func:`spin_forbidden` rejects is drawn again.
    """
    event = pythia.event
    while True:
        event.reset()
        event.append(species, 1, 0, 0, 0.0, 0.0, 0.0, mass, mass)
        if not pythia.next():
            continue
        b = event[1]
        while b.id() != species and abs(b.id()) == abs(species) and b.daughter1() > 0:
            b = event[b.daughter1()]  # follow B0 mixing to the decaying B
        products = tuple(abs(event[k].id()) for k in b.daughterList())
        if not spin_forbidden(products):
            return b, products


def _from_d(event: Any, index: int) -> bool:
    """Whether particle ``index`` descends from a weakly decaying charm hadron."""
    mother = event[index].mother1()
    while mother > 1:
        if abs(event[mother].id()) in _D_GROUND:
            return True
        mother = event[mother].mother1()
    return False


# ---------------------------------------------------------------------------- the mixture


def library_jobs(generic: int, stratum: int) -> list[tuple[int, str | None, int]]:
    """(species, stratum or None for generic, entries) of every library a production needs.

    >>> len(library_jobs(10, 1)) == 4 + sum(len(s.parents) * 2 for s in load_strata().values())
    True
    """
    out: list[tuple[int, str | None, int]] = []
    for species in (521, -521, 511, -511):
        out.append((species, None, generic))
        out += [
            (species, name, stratum)
            for name, row in load_strata().items()
            if abs(species) in row.parents
        ]
    return out


@dataclass(frozen=True)
class Mixture:
    """All libraries of a production, concatenated, with the draw probabilities.

    ``draws[species]`` is a tuple of (first entry, entries, probability q, weight bf/q) per
    stratum of the species' mixture (generic first); control strata are drawn only when asked
    for by name.
    """

    library: Library
    draws: dict[int, tuple[tuple[int, int, float, float], ...]]
    control: dict[tuple[int, str], tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def from_libraries(cls, libraries: Mapping[tuple[int, str | None], Library]) -> Mixture:
        """Concatenate libraries keyed by (species, stratum name or None for generic)."""
        strata = load_strata()
        order = list(libraries)
        starts = np.cumsum([0] + [len(libraries[k]) for k in order])
        start = {k: int(s) for k, s in zip(order, starts[:-1], strict=True)}
        draws: dict[int, tuple[tuple[int, int, float, float], ...]] = {}
        control: dict[tuple[int, str], tuple[int, int]] = {}
        for species in {k[0] for k in order}:
            rows = []
            forced_q = forced_bf = 0.0
            for (sp, name), lib in libraries.items():
                if sp != species or name is None:
                    continue
                row = strata[name]
                if not row.mixture:
                    control[(sp, name)] = (start[(sp, name)], len(lib))
                    continue
                bf = stratum_bf(row, abs(sp))
                q = bf * row.oversample
                rows.append((start[(sp, name)], len(lib), q, bf / q))
                forced_q += q
                forced_bf += bf
            if forced_q >= 1:
                raise ConfigError(f"B {species}: oversampled strata exceed probability 1")
            generic = (start[(species, None)], len(libraries[(species, None)]))
            rows.insert(0, (*generic, 1 - forced_q, (1 - forced_bf) / (1 - forced_q)))
            draws[species] = tuple(rows)
        merged = _concat([libraries[k] for k in order])
        return cls(merged, draws, control)

    def draw(
        self,
        species: np.ndarray,
        rng: np.random.Generator,
        natural: bool = False,
        bias: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Entries (indices into :attr:`library`) and weights for B mesons of given species.

        Args:
            species: Signed PDG code per B.
            rng: The random stream.
            natural: Draw every stratum at its branching fraction (weights 1), as nature
                does; for pseudo-data.
            bias: Importance factors per library entry (positive): an entry is drawn in
                proportion to its stratum's probability over its size times its factor, and
                carries the weight that undoes it exactly (:meth:`_draw_biased`).
        """
        entry = np.empty(len(species), dtype=np.int64)
        weight = np.empty(len(species))
        for sp in np.unique(species):
            mask = species == sp
            rows = self._rows(int(sp), natural)
            if bias is not None:
                entry[mask], weight[mask] = _draw_biased(rows, bias, int(mask.sum()), rng)
                continue
            probs = np.array([r[2] for r in rows])
            which = rng.choice(len(rows), size=int(mask.sum()), p=probs / probs.sum())
            first = np.array([r[0] for r in rows])[which]
            size = np.array([r[1] for r in rows])[which]
            entry[mask] = first + (rng.random(len(which)) * size).astype(np.int64)
            weight[mask] = np.array([r[3] for r in rows])[which]
        return entry, weight

    def _rows(self, species: int, natural: bool) -> tuple[tuple[int, int, float, float], ...]:
        rows = self.draws[species]
        if natural:
            return tuple((first, size, q * w, 1.0) for first, size, q, w in rows)
        return rows

    def draw_pairs(
        self,
        first: np.ndarray,
        rng: np.random.Generator,
        factor: np.ndarray,
        share: float,
        natural: bool = False,
        tag: tuple[np.ndarray, np.ndarray, float] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """B Bbar pairs with one B (either) drawn in proportion to a per-entry factor.

        The proposal for a pair (e1, e2) is the defensive mixture
        ``g = (1 - share) m(e1) m(e2) + share/2 [k(e1) m(e2) + m(e1) k(e2)]``: ``m`` is the
        untargeted draw (:meth:`draw`), ``k`` the same tilted by ``factor`` (``k = m f / Z``,
        ``Z = E_m[f]`` per species). So a B with a large factor (the signal-side B: a hard
        kaon and invisible energy) is drawn next to a B as nature makes it (the tag side), and
        no pair carries more than ``1 / (1 - share - tag_share)`` times its untargeted weight.
        Each pair carries its untargeted weight over ``(1 - share) + share/2 (f(e1)/Z +
        f(e2)/Z)`` (:meth:`density`): every weighted sum keeps its expectation exactly.

        ``tag = (a, b, tag_share)`` adds a component for the hadronic-tag analysis: in a
        further fraction ``tag_share`` of the pairs one B (either) is drawn in proportion to
        ``a`` (the HTA's signal side: a kaon among few charged particles) and the other in
        proportion to ``b`` (a B the tag can reconstruct); the untargeted share becomes
        ``1 - share - tag_share`` and the denominator gains
        ``tag_share/2 (a(e1) b(e2) + b(e1) a(e2)) / (Z_a Z_b)``.

        Args:
            first: Signed PDG code of the first B per pair (the second is its antiparticle).
            rng: The random stream.
            factor: Non-negative factor per library entry (zero: never drawn by ``k``).
            share: Fraction of pairs with a tilted B (0 < share < 1).
            natural: Strata at their branching fractions (the weighted nature stream).
            tag: Factors ``a``, ``b`` per library entry and the fraction of pairs drawn with
                them (``share + tag_share < 1``); None: no such component.

        Returns:
            First entries, second entries and weights.
        """
        n = len(first)
        a, b, tag_share = tag if tag is not None else (factor, factor, 0.0)
        # the normalisations first: a species no entry of which can be drawn is a config error
        self._norms(first, natural, (factor, a, b) if tag_share > 0 else (factor,))
        role = rng.random(n)
        e1, _ = self.draw(first, rng, natural=natural)
        e2, _ = self.draw(-first, rng, natural=natural)
        # (lower edge of role, upper edge, the first B's factor, the second B's)
        components = (
            (0.0, share / 2, factor, None),
            (share / 2, share, None, factor),
            (share, share + tag_share / 2, a, b),
            (share + tag_share / 2, share + tag_share, b, a),
        )
        self._redraw(first, (e1, e2), role, components, rng, natural)
        untargeted = self._untargeted(first, natural)
        density = self.density(first, e1, e2, factor, share, natural, tag)
        weight = untargeted[e1] * untargeted[e2] / density
        return e1, e2, weight

    def _redraw(
        self,
        first: np.ndarray,
        entries: tuple[np.ndarray, np.ndarray],
        role: np.ndarray,
        components: tuple[tuple[float, float, np.ndarray | None, np.ndarray | None], ...],
        rng: np.random.Generator,
        natural: bool,
    ) -> None:
        """Draw again, in place, the entries of the pairs whose ``role`` falls in a component.

        ``components``: (lower edge of role, upper edge, the first B's factor, the second
        B's); a factor None keeps that B's untargeted draw.
        """
        e1, e2 = entries
        for lo, hi, f1, f2 in components:
            on = (role >= lo) & (role < hi)
            if on.any() and f1 is not None:
                e1[on], _ = self.draw(first[on], rng, natural=natural, bias=f1)
            if on.any() and f2 is not None:
                e2[on], _ = self.draw(-first[on], rng, natural=natural, bias=f2)

    def _untargeted(self, first: np.ndarray, natural: bool) -> np.ndarray:
        """The untargeted weight per library entry: of the species in ``first``, both charges.

        Entries of other species get 0.
        """
        untargeted = np.zeros(len(self.library))
        for sp in np.unique(first):
            for species in (int(sp), -int(sp)):
                for start, size, _, w in self._rows(species, natural):
                    untargeted[start : start + size] = w
        return untargeted

    def density(
        self,
        first: np.ndarray,
        e1: np.ndarray,
        e2: np.ndarray,
        factor: np.ndarray,
        share: float,
        natural: bool = False,
        tag: tuple[np.ndarray, np.ndarray, float] | None = None,
    ) -> np.ndarray:
        """The proposal of :meth:`draw_pairs` over the untargeted draw, per pair.

        A pair's weight is its untargeted weight over this ratio, so the ratio under another
        proposal re-weights pairs already drawn (``benchmarks/study_targeting.py``).

        Args:
            first: Signed PDG code of the first B per pair.
            e1: The first B's library entries.
            e2: The second B's.
            factor: As for :meth:`draw_pairs`.
            share: As for :meth:`draw_pairs`.
            natural: As for :meth:`draw_pairs`.
            tag: As for :meth:`draw_pairs`.
        """
        a, b, tag_share = tag if tag is not None else (factor, factor, 0.0)
        norm = self._norms(first, natural, (factor, a, b) if tag_share > 0 else (factor,))

        def z(f: np.ndarray, species: int) -> float:
            return norm[(id(f), species)]

        density = np.full(len(first), 1.0 - share - tag_share)
        for sp in np.unique(first):
            on = first == sp
            i, j = e1[on], e2[on]
            s1, s2 = int(sp), -int(sp)
            density[on] += share / 2 * (factor[i] / z(factor, s1) + factor[j] / z(factor, s2))
            if tag_share > 0:
                density[on] += (
                    tag_share
                    / 2
                    * (a[i] * b[j] / (z(a, s1) * z(b, s2)) + b[i] * a[j] / (z(b, s1) * z(a, s2)))
                )
        return density

    def _norms(
        self, first: np.ndarray, natural: bool, factors: tuple[np.ndarray, ...]
    ) -> dict[tuple[int, int], float]:
        """E_m[f] per factor (keyed by its id) and species of the pairs (both signs)."""
        return {
            (id(f), s): self._mean_factor(s, natural, f)
            for f in factors
            for sp in np.unique(first)
            for s in (int(sp), -int(sp))
        }

    def species_of(self, entries: np.ndarray) -> np.ndarray:
        """Signed PDG code of the B whose library holds each entry (mixture strata only).

        >>> parts = Particles(np.arange(5), np.full(4, 22), np.zeros((4, 4)), np.zeros(4))
        >>> lib = Library(parts, np.zeros(4, int), np.zeros(4, int), np.zeros(4, int))
        >>> mix = Mixture(lib, {521: ((0, 3, 1.0, 1.0),), -521: ((3, 1, 1.0, 1.0),)})
        >>> mix.species_of(np.array([2, 3])).tolist()
        [521, -521]
        """
        out = np.zeros(len(entries), dtype=np.int64)
        for species, rows in self.draws.items():
            for start, size, _, _ in rows:
                out[(entries >= start) & (entries < start + size)] = species
        if (out == 0).any():
            raise ConfigError(f"library entries {entries[out == 0][:3].tolist()} in no stratum")
        return out

    def _mean_factor(self, species: int, natural: bool, factor: np.ndarray) -> float:
        """E_m[factor]: the factor's mean over the untargeted draw of a species."""
        rows = self._rows(species, natural)
        z = sum(q * float(factor[first : first + size].mean()) for first, size, q, _ in rows)
        z /= sum(q for *_, q, _ in rows)
        if z <= 0:
            raise ConfigError(f"B {species}: no library entry has a positive targeting factor")
        return z

    def draw_control(self, species: int, name: str, n: int, rng: np.random.Generator) -> Any:
        """Entries of a control stratum (weight 1: its rate is applied by its luminosity)."""
        first, size = self.control[(species, name)]
        return first + (rng.random(n) * size).astype(np.int64)


def _draw_biased(
    rows: tuple[tuple[int, int, float, float], ...],
    bias: np.ndarray,
    n: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Importance-sampled draws: ``n`` entries and their exact weights.

    Unbiased, an entry ``e`` of stratum ``r`` (``size`` entries, probability ``q``, weight
    ``w``) comes with probability ``q / size`` and weight ``w``. Here it comes with probability
    ``q b(e) / (size Z)``, ``Z = sum_r q mean_r(b)``, and weight ``w Z / b(e)``: every weighted
    sum keeps its expectation, and entries with a large factor ``b`` get the statistics.

    >>> rows = ((0, 2, 1.0, 1.0),)
    >>> e, w = _draw_biased(rows, np.array([1.0, 3.0]), 4000, np.random.default_rng(1))
    >>> round(float(np.mean(e == 1)), 1), sorted(set(np.round(w, 3).tolist()))
    (0.8, [0.667, 2.0])
    """
    probs = np.array([q * float(bias[f : f + s].mean()) for f, s, q, _ in rows])
    z = probs.sum()
    which = rng.choice(len(rows), size=n, p=probs / z)
    entry = np.empty(n, dtype=np.int64)
    weight = np.empty(n)
    for k, (first, size, _, w) in enumerate(rows):
        sel = which == k
        if not sel.any():
            continue
        cdf = np.cumsum(bias[first : first + size])
        picked = np.searchsorted(cdf, rng.random(int(sel.sum())) * cdf[-1], side="right")
        entry[sel] = first + np.minimum(picked, size - 1)
        weight[sel] = w * z / bias[entry[sel]]
    return entry, weight


def invisible_energy(lib: Library) -> np.ndarray:
    """Energy of the invisible particles (neutrinos, K_L, neutrons) per entry, B rest frame.

    What makes a B Bbar event look like signal to the ITA: large missing energy.
    """
    return invisible_energy_of(lib.particles)


def invisible_energy_of(p: Particles) -> np.ndarray:
    """Energy of the neutrinos, K_L and neutrons per event of a particle table."""
    invisible = np.isin(np.abs(p.pdg), (12, 14, 16, 130, 2112))
    return p.per_event_sum(np.where(invisible, p.p4[:, 0], 0.0))


def hardest_momentum(lib: Library, kaons: bool = True) -> np.ndarray:
    """Largest charged-kaon (or other charged, ``kaons=False``) momentum per entry.

    GeV in the B rest frame, 0 where there is none. What makes a B the signal side of an ITA
    background event: a hard kaon, or a hard track taken for one (a fake).
    """
    p = lib.particles
    kaon = np.abs(p.pdg) == 321
    pick = kaon if kaons else (p.charge != 0) & ~kaon
    out = np.zeros(len(lib))
    entry = np.repeat(np.arange(len(lib)), p.counts())
    np.maximum.at(out, entry[pick], np.sqrt(np.sum(p.p4[pick, 1:] ** 2, axis=1)))
    return out


def hta_sides(
    lib: Library,
    slope: float,
    tag_slope: float,
    photon_slope: float = 0.0,
    misid: float = 0.0,
    photon_loss: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The hadronic-tag analysis' factors per entry: (signal side, tag side).

    Signal side: ``exp(-slope (n_charged - 1) - photon_slope E_photons)`` for an entry with a
    charged kaon among its final-state particles, ``misid`` times that for an entry with
    charged particles but no kaon (a lepton or pion taken for the kaon), else 0: the HTA keeps
    exactly one signal-side track, the kaon, and little extra neutral energy (``E_extra``, its
    BDTh's main input); ``E_photons`` is the photons' energy in the B rest frame (pi0 decays
    included). With ``photon_loss`` each photon counts ``photon_loss + (1 - photon_loss)
    exp(-photon_slope E)``: a photon the calorimeter misses adds no E_extra, so an entry with
    one hard photon still reaches the HTA's signal region in that fraction of its decays.
    Tag side: ``exp(-tag_slope n_charged)`` for an entry with no neutrino, K_L or
    (anti)neutron, else 0: a B the hadronic tag can reconstruct, in proportion to its tag
    probability (:class:`~knunu.simulation.reconstruction.TagModel`, ``correct_slope``), so
    that the tag weight p / q varies less among the drawn pairs.

    Four entries: K+ (1.0 GeV); K- (0.5 GeV) pi+; a neutrino; K+ (1.2 GeV) and a 0.5 GeV photon.

    >>> p4 = np.zeros((6, 4))
    >>> p4[:, 0] = p4[:, 1] = [1.0, 0.5, 0.3, 1.0, 1.2, 0.5]
    >>> parts = Particles(np.array([0, 1, 3, 4, 6]), np.array([321, -321, 211, 12, 321, 22]),
    ...                   p4, np.array([1, -1, 1, 0, 1, 0]))
    >>> lib = Library(parts, *np.zeros((3, 4), int))
    >>> [f.round(3).tolist() for f in hta_sides(lib, 1.0, 0.5)]
    [[1.0, 0.368, 0.0, 1.0], [0.607, 0.368, 0.0, 0.607]]
    >>> hta_sides(lib, 1.0, 0.5, photon_slope=2.0)[0].round(3).tolist()
    [1.0, 0.368, 0.0, 0.368]
    >>> hta_sides(lib, 1.0, 0.5, misid=0.1)[0].round(3).tolist()  # the neutrino: no track
    [1.0, 0.368, 0.0, 1.0]
    >>> hta_sides(lib, 1.0, 0.5, photon_slope=2.0, photon_loss=0.1)[0].round(3).tolist()
    [1.0, 0.368, 0.0, 0.431]
    """
    p = lib.particles
    entry = np.repeat(np.arange(len(lib)), p.counts())
    n = len(lib)
    charged = np.bincount(entry[p.charge != 0], minlength=n)
    invisible = np.bincount(entry[np.isin(np.abs(p.pdg), (12, 14, 16, 130, 2112))], minlength=n)
    kaons = np.bincount(entry[np.abs(p.pdg) == 321], minlength=n) > 0
    photon = p.pdg == 22
    kept = photon_loss + (1.0 - photon_loss) * np.exp(-photon_slope * p.p4[photon, 0])
    photons = np.bincount(entry[photon], weights=np.log(kept), minlength=n)
    track = np.exp(-slope * (charged - 1.0) + photons)
    signal = np.where(kaons, track, np.where(charged > 0, misid * track, 0.0))
    return signal, np.where(invisible == 0, np.exp(-tag_slope * charged), 0.0)


def _concat(libs: list[Library]) -> Library:
    counts = np.concatenate([lib.particles.counts() for lib in libs])
    return Library(
        Particles(
            np.concatenate([[0], np.cumsum(counts)]),
            np.concatenate([lib.particles.pdg for lib in libs]),
            np.concatenate([lib.particles.p4 for lib in libs]),
            np.concatenate([lib.particles.charge for lib in libs]),
            vertex=np.concatenate([lib.particles.vertices() for lib in libs]),
        ),
        np.concatenate([lib.code for lib in libs]),
        np.concatenate([lib.d_to_kl for lib in libs]),
        np.concatenate([lib.n_kl for lib in libs]),
    )


def b_pair_momenta(
    sqrt_s: np.ndarray, rng: np.random.Generator, mass: float = M_B[521]
) -> tuple[np.ndarray, np.ndarray]:
    """Four-momenta (CM) of the two B mesons of Upsilon(4S) -> B Bbar (sin^2 theta)."""
    n = len(sqrt_s)
    cos_t = kin.sample_sin2(n, rng)
    phi = rng.uniform(0, 2 * np.pi, n)
    sin_t = np.sqrt(1 - cos_t**2)
    axis = np.stack([sin_t * np.cos(phi), sin_t * np.sin(phi), cos_t], axis=1)
    return kin.two_body(sqrt_s, mass, mass, axis)


def boost_sides(
    first: Particles,
    second: Particles,
    p_first: np.ndarray,
    rng: np.random.Generator,
    c_tau_mm: float,
) -> Particles:
    """Let two rest-frame B decays fly, boost them back to back (first along ``p_first``), merge.

    Each B decays after an exponential proper time (mean ``c_tau_mm``): its particles'
    rest-frame vertices are moved to that decay point and boosted with their momenta, so
    the merged table's vertices are CM-frame positions relative to the Upsilon(4S) decay.
    It carries ``side`` (0: first B, 1: second B) per particle.
    """
    beta = kin.beta_of(p_first)

    def fly(part: Particles, b: np.ndarray) -> Particles:
        counts = part.counts()
        vertex = part.vertices().astype(np.float64)
        vertex[:, 0] += np.repeat(rng.exponential(c_tau_mm, part.n_events), counts)
        per_particle = np.repeat(b, counts, axis=0)
        return Particles(
            part.offsets,
            part.pdg,
            kin.boost(part.p4, per_particle),
            part.charge,
            vertex=kin.boost(vertex, per_particle).astype(VERTEX_DTYPE),
        )

    return merge(fly(first, beta), fly(second, -beta))
