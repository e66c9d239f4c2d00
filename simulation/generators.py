"""Pythia 8 event generation: continuum q qbar, tau pairs and Upsilon(4S) -> B Bbar.

Events are generated in the CM frame and copied out of Pythia into a columnar
:class:`Particles` table: in bulk (``Pythia.nextBatch`` and numpy) for beam-generated
processes, in one tight loop per event for a hand-placed resonance. Particles
with a proper lifetime above 100 mm/c (pi+-, K+-, K_L, mu, n) are left undecayed for the
detector simulation; K_S and Lambda decay. Each particle keeps its production vertex
(Pythia's ``vProd``: daughters of D, tau, K_S and Lambda decays are displaced by the
mother's sampled lifetime), so the detector can measure impact parameters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, NamedTuple

import awkward as ak
import numpy as np

log = logging.getLogger(__name__)

UPSILON_4S = 300553
M_UPSILON_4S = 10.5794
#: Fraction of charged B pairs in Upsilon(4S) decays.
F_CHARGED = 0.516
#: Events per ``nextBatch`` call in bulk generation (bounds the awkward record in memory).
BATCH_EVENTS = 2000
#: Production vertices are stored in single precision (mm: 0.1 nm at 1 mm), which halves
#: what the decay libraries add to a worker's memory.
VERTEX_DTYPE = np.float32

COMMON_SETTINGS = (
    "Next:numberCount = 0",
    "Print:quiet = on",
    "Random:setSeed = on",
    "ParticleDecays:limitTau0 = on",
    "ParticleDecays:tau0Max = 100.",
)


#: Weakly decaying charm hadrons (|PDG|): a :class:`DecayBias` scales their semileptonic channels.
CHARM_HADRONS = (411, 421, 431, 4122, 4132, 4232, 4332)
K0 = 311
K_LONG = 130
_LEPTONS_NU = (11, 12, 13, 14)


@dataclass(frozen=True)
class DecayBias:
    """Decays that make missing energy drawn more often, each with its exact weight.

    The continuum's signal-region events carry large missing energy from a K_L (75-82 % of
    them) or the neutrino of a semileptonic charm decay. Pythia picks a decay channel in
    proportion to its branching ratio among the open channels, so multiplying the
    semileptonic channels of every weakly decaying charm hadron by ``semileptonic`` and K0 ->
    K_L by ``k_long`` draws those decays more often without changing anything else. A biased
    decay of a species whose boosted channels hold the fraction f of its table carries
    ``p / q``: ``(s f + 1 - f) / s`` when a boosted channel was taken, ``s f + 1 - f``
    otherwise; an event carries the product over its decays, so every sum of weights stays
    that of the unbiased generation (up to Pythia's retries of a decay whose channel failed,
    e.g. closed by the masses drawn, which are rare).

    >>> DecayBias(k_long=3.0).factors(0.5, K0)
    (0.6666666666666666, 2.0)
    """

    semileptonic: float = 1.0
    k_long: float = 1.0

    def __post_init__(self) -> None:
        if not (self.semileptonic > 0 and self.k_long > 0):
            raise ValueError(f"decay bias scales must be positive: {self}")

    @property
    def active(self) -> bool:
        """Whether any decay is biased."""
        return self.semileptonic != 1.0 or self.k_long != 1.0

    def scale_of(self, species: int) -> float:
        """The boost of a species' boosted channels."""
        return self.k_long if species == K0 else self.semileptonic

    def factors(self, fraction: float, species: int) -> tuple[float, float]:
        """Weights (boosted channel taken, other channel taken) of a decay of ``species``."""
        s = self.scale_of(species)
        norm = s * fraction + 1.0 - fraction
        return norm / s, norm


class Process(NamedTuple):
    """A Pythia configuration for one physics process."""

    name: str
    settings: tuple[str, ...]
    hand_placed: int | None = None  # a resonance decayed with ProcessLevel:all = off


def _ee_to_ffbar(flavours: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    return (
        "Beams:idA = 11",
        "Beams:idB = -11",
        "Beams:eCM = 10.58",
        "PDF:lepton = on",
        "WeakSingleBoson:ffbar2gmZ = on",
        "23:onMode = off",
        f"23:onIfAny = {flavours}",
        "23:mMin = 4.0",
        *extra,
    )


#: The processes by sample name (flavours generated separately, as Pythia splits them by
#: charge squared; each is normalised to its own cross section downstream).
PROCESSES: dict[str, Process] = {
    "uubar": Process("uubar", _ee_to_ffbar("2")),
    "ddbar": Process("ddbar", _ee_to_ffbar("1")),
    "ssbar": Process("ssbar", _ee_to_ffbar("3")),
    "ccbar": Process("ccbar", _ee_to_ffbar("4")),
    "taupair": Process("taupair", _ee_to_ffbar("15", ("TauDecays:mode = 0",))),
    "bbbar": Process(
        "bbbar",
        (
            "ProcessLevel:all = off",
            f"{UPSILON_4S}:new = Upsilon(4S) void 3 0 0 {M_UPSILON_4S} 0.0205 10.52 10.64 0",
            f"{UPSILON_4S}:addChannel = 1 {F_CHARGED} 0 521 -521",
            f"{UPSILON_4S}:addChannel = 1 {1 - F_CHARGED} 0 511 -511",
        ),
        hand_placed=UPSILON_4S,
    ),
}


@dataclass(frozen=True)
class Particles:
    """Final-state particles of a batch of events (CM frame), columnar.

    Attributes:
        offsets: event ``i`` owns rows ``offsets[i]:offsets[i+1]``.
        pdg: PDG code per particle.
        p4: (E, px, py, pz) per particle, GeV.
        charge: electric charge per particle (units of e).
        side: which B the particle comes from (0, 1), -1 for none (continuum); ``None``
            when not tracked.
        vertex: production vertex (c t, x, y, z) per particle in mm, in the frame of ``p4``
            (a four-vector: it boosts as the momenta do; float32, :data:`VERTEX_DTYPE`);
            ``None``: every particle at the origin.
    """

    offsets: np.ndarray
    pdg: np.ndarray
    p4: np.ndarray
    charge: np.ndarray
    side: np.ndarray | None = None
    vertex: np.ndarray | None = None

    def sides(self) -> np.ndarray:
        """The ``side`` column, -1 where it is not tracked."""
        if self.side is None:
            return np.full(len(self.pdg), -1, dtype=np.int8)
        return self.side

    def vertices(self) -> np.ndarray:
        """The ``vertex`` column, zeros (the origin) where it is not tracked."""
        if self.vertex is None:
            return np.zeros((len(self.pdg), 4), dtype=VERTEX_DTYPE)
        return self.vertex

    @property
    def n_events(self) -> int:
        """Number of events."""
        return len(self.offsets) - 1

    def counts(self) -> np.ndarray:
        """Particles per event."""
        return np.diff(self.offsets)

    def event_index(self) -> np.ndarray:
        """For each particle, the index of its event."""
        return np.repeat(np.arange(self.n_events), self.counts())

    def take(self, entries: np.ndarray) -> Particles:
        """The particles of the given events, in that order (events may repeat)."""
        offsets, rows = rows_of(self.offsets, entries)
        side = None if self.side is None else self.side[rows]
        vertex = None if self.vertex is None else self.vertex[rows]
        return Particles(offsets, self.pdg[rows], self.p4[rows], self.charge[rows], side, vertex)

    def per_event_sum(self, values: np.ndarray) -> np.ndarray:
        """Sum a per-particle column (first axis) within each event."""
        return per_event_sum(self.offsets, values)


def rows_of(offsets: np.ndarray, entries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the given events (in that order, repeats allowed) of a columnar table.

    Returns:
        (offsets of the new table, row indices into the old one).

    >>> new, rows = rows_of(np.array([0, 2, 2, 5]), np.array([2, 0]))
    >>> new.tolist(), rows.tolist()
    ([0, 3, 5], [2, 3, 4, 0, 1])
    """
    counts = np.diff(offsets)[entries]
    new = np.concatenate([[0], np.cumsum(counts)])
    rows = np.repeat(offsets[:-1][entries], counts) + (
        np.arange(int(new[-1])) - np.repeat(new[:-1], counts)
    )
    return new, rows


def per_event_sum(offsets: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Sum a per-row column (first axis) within each event of a columnar table.

    >>> per_event_sum(np.array([0, 2, 2, 3]), np.array([1.0, 2.0, 5.0])).tolist()
    [3.0, 0.0, 5.0]
    """
    counts = np.diff(offsets)
    out = np.zeros((len(counts), *values.shape[1:]), dtype=values.dtype)
    nonempty = counts > 0
    if nonempty.any():
        out[nonempty] = np.add.reduceat(values, offsets[:-1][nonempty], axis=0)
    return out


def particles_of(
    counts: np.ndarray,
    pdg: list[int],
    mom: list[tuple[float, float, float, float]],
    data: object,
    vertex: list[tuple[float, float, float, float]] | None = None,
) -> Particles:
    """Particles from per-event counts and per-particle PDG codes and (E, px, py, pz).

    ``data``: Pythia's particle table, for the charges; ``vertex``: (c t, x, y, z) in mm.
    """
    codes = np.asarray(pdg, dtype=np.int32)
    return Particles(
        offsets=np.concatenate([[0], np.cumsum(counts)]),
        pdg=codes,
        p4=np.asarray(mom, dtype=np.float64).reshape(-1, 4),
        charge=charges_of(data, codes),
        vertex=None if vertex is None else np.asarray(vertex, dtype=VERTEX_DTYPE).reshape(-1, 4),
    )


def charges_of(data: object, codes: np.ndarray) -> np.ndarray:
    """Electric charges of PDG codes from Pythia's particle table (one lookup per species)."""
    species, inverse = np.unique(codes, return_inverse=True)
    return np.array([data.charge(int(c)) for c in species], dtype=np.float64)[inverse]


class Generator:
    """A seeded Pythia instance for one process.

    Args:
        process: A key of :data:`PROCESSES`.
        seed: Pythia's random seed (1 .. 900000000).
        extra: Further ``readString`` settings (e.g. retuned branching fractions).
    """

    def __init__(
        self,
        process: str,
        seed: int,
        extra: tuple[str, ...] = (),
        bias: DecayBias | None = None,
    ) -> None:
        import pythia8mc

        self.process = PROCESSES[process]
        self.pythia = pythia8mc.Pythia("", False)
        for line in (
            *COMMON_SETTINGS,
            f"Random:seed = {seed % 900_000_000 + 1}",
            *self.process.settings,
            *extra,
        ):
            if not self.pythia.readString(line):
                raise ValueError(f"Pythia rejected setting {line!r}")
        #: Per biased species, the weights (boosted channel taken, other channel taken).
        self.decay_factors: dict[int, tuple[float, float]] = {}
        if bias is not None and bias.active:
            if self.process.hand_placed is not None:
                raise ValueError(f"{process}: decays are biased in bulk generation only")
            self.decay_factors = _bias_table(self.pythia.particleData, bias)
        if not self.pythia.init():
            raise RuntimeError(f"Pythia failed to initialise for {process}")

    def _next(self, sqrt_s: float) -> bool:
        if self.process.hand_placed is None:
            return self.pythia.next()
        # The resonance is made at the collision energy: its mass is the event's sqrt(s).
        event = self.pythia.event
        event.reset()
        event.append(self.process.hand_placed, 1, 0, 0, 0.0, 0.0, 0.0, sqrt_s, sqrt_s)
        return self.pythia.next()

    def generate(self, n: int, sqrt_s: np.ndarray | None = None) -> Particles:
        """Generate ``n`` events and copy their final-state particles out.

        Processes without a hand-placed resonance are generated in bulk (``nextBatch``) and
        extracted with numpy; the result is bit-identical to copying particles out after each
        ``next()`` with the same seed (same events, same order, failed events retried).

        Args:
            n: Number of events.
            sqrt_s: Per-event CM energy of a hand-placed resonance (Upsilon(4S) -> B Bbar);
                default 10.58 GeV. Continuum processes run at the fixed ``Beams:eCM``.

        Raises:
            ValueError: If ``n`` is negative, or if decays are biased (their weights are
                :meth:`generate_weighted`'s).
        """
        if self.decay_factors:
            raise ValueError("biased decays need their weights: use generate_weighted")
        if n < 0:
            raise ValueError(f"negative number of events {n}")
        if self.process.hand_placed is None:
            return self._generate_bulk(n)
        energies = np.full(n, 10.58) if sqrt_s is None else np.asarray(sqrt_s, dtype=float)
        return self._generate_loop(n, energies)

    def _generate_loop(self, n: int, energies: np.ndarray) -> Particles:
        """Generate event by event, copying the final-state particles out in Python."""
        pdg: list[int] = []
        mom: list[tuple[float, float, float, float]] = []
        vtx: list[tuple[float, float, float, float]] = []
        counts = np.zeros(n, dtype=np.int64)
        for i in range(n):
            while not self._next(float(energies[i])):
                log.debug("Pythia event failed; retrying")
            k = 0
            for particle in self.pythia.event:
                if particle.isFinal():
                    pdg.append(particle.id())
                    mom.append((particle.e(), particle.px(), particle.py(), particle.pz()))
                    vtx.append(vertex_of(particle))
                    k += 1
            counts[i] = k
        return particles_of(counts, pdg, mom, self.pythia.particleData, vtx)

    def generate_weighted(
        self, n: int, pythia_weights: bool = True
    ) -> tuple[Particles, np.ndarray]:
        """Generate ``n`` events in bulk with their weights (1 unless biased).

        Pythia's enhanced shower splittings (``Enhancements:doEnhance``) and other biasing
        settings make weighted events, as does an event beyond the cross-section maximum
        Pythia estimated at its start (``sigma / sigma_max``, up to about 1.2 for 1-6 % of the
        continuum events), and so does a :class:`DecayBias` (the product of its decays'
        weights); the weights keep every sum exact. ``pythia_weights=False``: the decay
        bias's weights alone (what unweighted events drawn as Pythia draws them carry).
        """
        parts, weights, _ = self.generate_counted(n, (), pythia_weights)
        return parts, weights

    def generate_counted(
        self, n: int, species: tuple[int, ...], pythia_weights: bool = True
    ) -> tuple[Particles, np.ndarray, dict[int, np.ndarray]]:
        """:meth:`generate_weighted`, and per event the decays of each of ``species``.

        Returns:
            (particles, weights, {species: (n_events, 2) counts of its decays in a boosted
            channel and in another, :func:`boosted_decays`}): what a study needs to weigh
            the same events for another :class:`DecayBias`.
        """
        if n < 0:
            raise ValueError(f"negative number of events {n}")
        weights: list[np.ndarray] = []
        decays: dict[int, list[np.ndarray]] = {k: [] for k in species}
        parts = self._generate_bulk(n, weights, decays, pythia_weights)
        return (
            parts,
            np.concatenate([np.zeros(0), *weights]),
            {k: np.concatenate([np.zeros((0, 2), dtype=np.int64), *v]) for k, v in decays.items()},
        )

    def _generate_bulk(
        self,
        n: int,
        weights: list[np.ndarray] | None = None,
        decays: dict[int, list[np.ndarray]] | None = None,
        pythia_weights: bool = True,
    ) -> Particles:
        """Generate with ``Pythia.nextBatch`` in batches of at most :data:`BATCH_EVENTS`.

        Failed events come back as ``None`` (error mode ``"none"``), are dropped and made up
        by the next call: Pythia's ``next()`` runs exactly as often, and in the same order, as
        in the event-by-event loop, so the events (and the generator state afterwards) are
        the same.
        """
        counts: list[np.ndarray] = []
        pdg: list[np.ndarray] = []
        p4: list[np.ndarray] = []
        vertex: list[np.ndarray] = []
        remaining = n
        failed = 0
        while remaining > 0:
            want = min(remaining, BATCH_EVENTS)
            batch = ak.drop_none(self.pythia.nextBatch(want, "none"), axis=0)
            n_ok = len(batch)
            failed += want - n_ok
            if n_ok:
                if weights is not None:
                    w = decay_weights(batch["prt"], self.decay_factors)
                    if pythia_weights:
                        w = w * np.asarray(ak.firsts(batch["info"]["weights"]), dtype=float)
                    weights.append(w)
                if decays:
                    for key, found in boosted_decays(batch["prt"], tuple(decays)).items():
                        decays[key].append(found)
                c, codes, mom, vtx = _final_state(batch["prt"])
                counts.append(c)
                pdg.append(codes)
                p4.append(mom)
                vertex.append(vtx)
            remaining -= n_ok
        if failed:
            log.debug("%d Pythia events failed; retried", failed)
        all_counts = np.concatenate([np.zeros(0, dtype=np.int64), *counts])
        codes = np.concatenate([np.zeros(0, dtype=np.int32), *pdg])
        return Particles(
            offsets=np.concatenate([[0], np.cumsum(all_counts)]),
            pdg=codes,
            p4=np.concatenate([np.zeros((0, 4)), *p4]),
            charge=charges_of(self.pythia.particleData, codes),
            vertex=np.concatenate([np.zeros((0, 4), dtype=VERTEX_DTYPE), *vertex]),
        )


def _open_channels(data: object, species: int) -> list[Any]:
    entry = data.particleDataEntryPtr(species)
    channels = [entry.channel(i) for i in range(entry.sizeChannels())]
    if any(ch.onMode() not in (0, 1) for ch in channels):
        raise ValueError(f"{species}: channels open for one charge only cannot be biased")
    return [ch for ch in channels if ch.onMode() == 1]


def _is_boosted(species: int, channel: Any) -> bool:
    """Whether a decay channel of Pythia's table is one that :class:`DecayBias` boosts."""
    products = [channel.product(k) for k in range(channel.multiplicity())]
    if species == K0:
        return products == [K_LONG]
    return any(abs(p) in _LEPTONS_NU for p in products)


def boosted_fraction(data: object, species: int) -> float:
    """The fraction of ``species``' open decay table that a :class:`DecayBias` boosts.

    Args:
        data: Pythia's particle table (``Pythia.particleData``).
        species: A |PDG| code of :data:`CHARM_HADRONS` or :data:`K0`.
    """
    on = _open_channels(data, species)
    total = sum(ch.bRatio() for ch in on)
    if total <= 0:
        raise ValueError(f"{species}: no open decay channel to bias")
    return sum(ch.bRatio() for ch in on if _is_boosted(species, ch)) / total


def _bias_table(data: object, bias: DecayBias) -> dict[int, tuple[float, float]]:
    """Scale the boosted channels in Pythia's decay table; each species' decay weights."""
    factors: dict[int, tuple[float, float]] = {}
    for species in (*CHARM_HADRONS, K0):
        scale = bias.scale_of(species)
        if scale == 1.0:
            continue
        factors[species] = bias.factors(boosted_fraction(data, species), species)
        for ch in _open_channels(data, species):
            if _is_boosted(species, ch):
                ch.bRatio(ch.bRatio() * scale)
    return factors


def boosted_decays(prt: ak.Array, species: tuple[int, ...]) -> dict[int, np.ndarray]:
    """Per event, the decays of each of ``species`` (either charge) in a boosted / other channel.

    Boosted: K0 -> K_L for the K0, a semileptonic channel (an e, mu or their neutrino among
    the direct products, the daughters ``daughter1 .. daughter2`` of the record) for a charm
    hadron (:class:`DecayBias`).

    Args:
        prt: The ``prt`` field of a ``nextBatch`` result (events without ``None``; record
            position = Pythia's index, 0 being the system entry).
        species: |PDG| codes of :data:`CHARM_HADRONS` or :data:`K0`.

    Returns:
        {species: (events, 2) counts: decays in a boosted channel, in another}.
    """
    per_event = np.asarray(ak.num(prt, axis=1), dtype=np.int64)
    flat = ak.flatten(prt, axis=1)
    ids = np.abs(np.asarray(flat["id"], dtype=np.int64))
    d1 = np.asarray(flat["daughter1"], dtype=np.int64)
    d2 = np.asarray(flat["daughter2"], dtype=np.int64)
    start = np.concatenate([[0], np.cumsum(per_event)[:-1]])
    event = np.repeat(np.arange(len(per_event)), per_event)
    leptons = np.concatenate([[0], np.cumsum(np.isin(ids, _LEPTONS_NU), dtype=np.int64)])
    n = len(per_event)
    out = {}
    for code in species:
        rows = np.flatnonzero((ids == code) & (d1 > 0))
        first = start[event[rows]] + d1[rows]
        last = start[event[rows]] + np.maximum(d1[rows], d2[rows])
        if code == K0:
            hit = (first == last) & (ids[first] == K_LONG)
        else:
            hit = leptons[last + 1] - leptons[first] > 0
        out[code] = np.stack(
            [
                np.bincount(event[rows[hit]], minlength=n),
                np.bincount(event[rows[~hit]], minlength=n),
            ],
            axis=1,
        )
    return out


def decay_weights(prt: ak.Array, factors: dict[int, tuple[float, float]]) -> np.ndarray:
    """Per event, the product of its biased decays' weights (1 for an unbiased generator).

    Args:
        prt: The ``prt`` field of a ``nextBatch`` result (events without ``None``).
        factors: :attr:`Generator.decay_factors`.
    """
    log_w = np.zeros(len(prt))
    if factors:
        for species, n in boosted_decays(prt, tuple(factors)).items():
            w_in, w_out = factors[species]
            log_w += n[:, 0] * np.log(w_in) + n[:, 1] * np.log(w_out)
    return np.exp(log_w)


def vertex_of(particle: object) -> tuple[float, float, float, float]:
    """A Pythia particle's production vertex as (c t, x, y, z) in mm."""
    return (particle.tProd(), particle.xProd(), particle.yProd(), particle.zProd())


def _final_state(prt: ak.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Final-state particles (``status > 0``, Pythia's ``isFinal()``) of a ``nextBatch`` array.

    Args:
        prt: The ``prt`` field of a ``nextBatch`` result (events without ``None``).

    Returns:
        (particles per event (int64), PDG codes (int32), (E, px, py, pz) rows (float64),
        production vertices (c t, x, y, z) in mm (float32; Pythia's ``vProd``, missing ones
        at the origin)), in Pythia's event-record order.
    """
    per_event = np.asarray(ak.num(prt, axis=1), dtype=np.int64)
    flat = ak.flatten(prt, axis=1)
    final = np.asarray(flat["status"]) > 0
    # final particles per event: differences of the running count at the event boundaries
    running = np.concatenate([[0], np.cumsum(final, dtype=np.int64)])
    bounds = np.concatenate([[0], np.cumsum(per_event)])
    counts = running[bounds[1:]] - running[bounds[:-1]]
    codes = np.asarray(flat["id"], dtype=np.int32)[final]
    p = flat["p"]
    mom = np.empty((len(codes), 4), dtype=np.float64)
    for k, field in enumerate(("e", "px", "py", "pz")):
        mom[:, k] = np.asarray(p[field], dtype=np.float64)[final]
    v = flat["vProd"]
    vtx = np.empty((len(codes), 4), dtype=VERTEX_DTYPE)
    for k, field in enumerate(("e", "px", "py", "pz")):
        vtx[:, k] = ak.to_numpy(ak.fill_none(v[field], 0.0))[final]
    return counts, codes, mom, vtx


def merge(a: Particles, b: Particles) -> Particles:
    """Event-by-event union of two tables of the same events (a's particles first).

    The result's ``side`` is 0 for a's particles and 1 for b's.
    """
    if a.n_events != b.n_events:
        raise ValueError("cannot merge tables of different event counts")
    counts = a.counts() + b.counts()
    offsets = np.concatenate([[0], np.cumsum(counts)])
    slot_a = np.repeat(offsets[:-1], a.counts()) + (
        np.arange(len(a.pdg)) - np.repeat(a.offsets[:-1], a.counts())
    )
    slot_b = np.repeat(offsets[:-1] + a.counts(), b.counts()) + (
        np.arange(len(b.pdg)) - np.repeat(b.offsets[:-1], b.counts())
    )
    total = int(offsets[-1])
    pdg = np.empty(total, dtype=np.int32)
    p4 = np.empty((total, 4))
    charge = np.empty(total)
    side = np.empty(total, dtype=np.int8)
    vertex = np.empty((total, 4), dtype=VERTEX_DTYPE)
    for k, (slots, src) in enumerate(((slot_a, a), (slot_b, b))):
        pdg[slots] = src.pdg
        p4[slots] = src.p4
        charge[slots] = src.charge
        side[slots] = k
        vertex[slots] = src.vertices()
    return Particles(offsets, pdg, p4, charge, side, vertex)
