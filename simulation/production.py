"""Producing MC and pseudo-data ntuples: generate -> detector -> filter -> reconstruct -> write.

A production is planned from the configuration (:func:`plan_production`): decay libraries
first (:class:`LibraryTask`), then output files (:class:`FileTask`), one seed each. Every task
is independent, runs as a Dask task on any cluster backend and writes its file atomically.
The dataset catalogue records, per dataset, the files, the events generated and kept, the sum
of the MC weights of all generated events and the equivalent luminosity, so every generated
event is accounted for.

Pseudo-data are unweighted: continuum, tau pairs and B Bbar drawn with Poisson counts for the
configured luminosity, signal injected at ``mu_true``, and nature differing from the nominal
MC where the real analysis had to correct (:class:`Nature`, each a switch).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from knunu.errors import ConfigError, DiskFullError, SimulationError
from knunu.progress import Progress
from knunu.rundir import DISK_FULL, adler32, write_json
from knunu.samples import Sample, load_samples
from knunu.simulation import bdecays
from knunu.simulation.detector import KAON_ID_CUT, DetectorConfig, DetectorEvents, simulate_detector
from knunu.simulation.generators import DecayBias, Generator, Particles
from knunu.simulation.kinematics import OFF_RESONANCE, ON_RESONANCE, sample_beams
from knunu.simulation.ntuple import TREE_HTA, TREE_ITA, Tree, write_ntuple
from knunu.simulation.reconstruction import (
    HTA_TRUTH_COLUMNS,
    M_PI,
    TagModel,
    hta_variables,
    ita_truth,
    ita_variables,
    track_p4,
)
from knunu.simulation.signal import signal_decays

log = logging.getLogger(__name__)

EXPERIMENT = 1003  # a made-up experiment number for simulated files
#: Branching fraction behind one signal event: B(B+ -> K+ nu nubar) at mu = 1.
SIGNAL_BF = 4.97e-6
#: The cheap filter: events outside it cannot pass the ITA basic selection (the ITA
#: processor's cuts are as tight or tighter; a test checks it) and are not reconstructed.
#: Besides events with a kaon candidate it keeps a prescaled stream (``__event__`` divisible
#: by the task's ``pion_prescale``, ``simulation.pion_prescale``) of events with a pion
#: candidate (kaon ID below ``pion_kaon_id_max``): the pion-enriched sideband and the
#: B+ -> pi+ K0 closure of the ITA machinery.
PREFILTER = {
    "n_tracks": (4, 10),
    "e_tot_min": 4.0,
    "kaon_id": KAON_ID_CUT,
    "dr": 0.5,
    "dz": 3.0,
    "pion_kaon_id_max": 0.1,
}
#: Most detector copies of a generated event (:attr:`Targeting.copies`).
COPIES_MAX = 64
#: Continuum pseudo-data multiplicity shape: accept with min(1, exp(-slope (n_ch - pivot))).
CONTINUUM_SHAPE = {"slope": 0.05, "pivot": 6}


@dataclass(frozen=True)
class Nature:
    """How nature (the pseudo-data) differs from the nominal MC."""

    continuum_norm: float = 1.0
    continuum_shape: bool = False
    d_to_kl_scale: float = 1.0
    kl_efficiency_scale: float = 1.0
    hadronic_energy_scale: float = 1.0

    def detector(self, nominal: DetectorConfig) -> DetectorConfig:
        """The detector as nature has it."""
        return replace(
            nominal,
            kl_ecl_efficiency=nominal.kl_ecl_efficiency * self.kl_efficiency_scale,
            hadronic_energy_scale=nominal.hadronic_energy_scale * self.hadronic_energy_scale,
        )


@dataclass(frozen=True)
class Targeting:
    """B Bbar events targeted at the ITA signal region, every step with an exact weight.

    Signal-region B Bbar events carry a large invisible energy E_inv (neutrinos, K_L,
    neutrons; 3.2-3.9 GeV for the middle half of them against 1.2-2.8 GeV for all events,
    measured on the default production). So library entries are drawn in proportion to
    ``exp(slope x min(E_inv, cap_gev))`` (:meth:`~knunu.simulation.bdecays.Mixture.draw`),
    and pairs whose summed E_inv is below ``threshold_gev`` are kept with probability
    ``keep_below`` before the detector (weight ``1 / keep_below``). ``sides``: the tilt acts on
    both B mesons (2) or on the first only (1), leaving the other B as nature draws it (the
    hadronic tag wants a B without invisible particles). ``mix``: the fraction of draws from the
    tilted distribution, the rest natural (a defensive mixture: an entry's weight stays below
    ``1 / (1 - mix)`` per B, so the few untilted B Bbar events that reach a signal region, e.g.
    the HTA's fully visible tag sides, cannot carry a weight of the tilt's full range).

    With ``kaon_p_gev`` > 0 the tilt acts on one B per pair instead, the *kaon side*
    (:meth:`~knunu.simulation.bdecays.Mixture.draw_pairs`): in a fraction ``kaon_share`` of the
    pairs one B (either, at random) is drawn among the entries with a charged kaon above
    ``kaon_p_gev`` in the B rest frame, in proportion to ``exp(slope x min(E_inv, cap_gev))``,
    and the other B as without targeting; the rest of the pairs are untargeted. Signal-region
    B Bbar events have a hard kaon (p* 1.5-2.2 GeV for the middle 80 % of their weight) from
    one B with invisible energy and a visible other B (the rest of the event); 1-4 % of the B
    decays have a kaon above 1.0-1.3 GeV. ``mix`` is then the tilted fraction of the kaon-side
    draws (the rest: any hard kaon; :func:`entry_kaon_factor`); a B whose hardest charged
    particle above ``kaon_p_gev`` is not a kaon gets ``kaon_misid`` of a kaon's factor (the
    detector takes 1.2 % of the pions for kaons at 1.5 GeV, and keeps 68 % of the kaons);
    B0B0bar pairs use ``kaon_misid_neutral`` instead where it is given (their signal region
    takes 2-3x the B+B- share of its weight from fakes, stop 46). An entry whose hardest kaon
    is below ``kaon_p_gev`` but above ``kaon_soft_p_gev`` counts ``kaon_soft`` (at least) of a
    hard kaon's factor (:func:`entry_kaon_factor`). ``sides`` does not apply.

    ``semileptonic`` and ``k_long`` (continuum and tau pairs) bias Pythia's decays towards
    missing energy with exact weights: semileptonic channels of charm hadrons and K0 -> K_L
    drawn that many times more often (:class:`~knunu.simulation.generators.DecayBias`).

    ``copies`` > 1 (continuum and tau pair MC; never pseudo-data or the nature stream): each
    generated event of the class :func:`copy_class` (a charged kaon above ``copy_kaon_p_gev``
    in the CM frame and invisible energy above ``copy_e_inv_gev``) passes the detector and the
    reconstruction ``copies`` times, each copy an entry of its own carrying 1/``copies`` of
    the event's weight (:func:`with_copies`). Which continuum event reaches the ITA signal
    region is decided largely by the detector (a K_L cluster missed, a track lost), and a copy
    costs about half of a generated event (``benchmarks/study_continuum.py --copies``).

    ``hta_share`` > 0 (kaon-side pairs only) gives a further fraction of the B+B- pairs to the
    hadronic-tag analysis (B0B0bar pairs give it to the kaon side: the HTA tags charged B
    only; :func:`entry_hta_factors`): one B among the entries with a charged
    kaon, in proportion to ``exp(-hta_slope x (charged particles - 1) - hta_photon_slope x
    photon energy)`` (the HTA keeps events with exactly one signal-side track, the kaon, and
    little extra neutral energy; an entry with tracks but no kaon counts ``hta_misid`` of
    that, stop 46: one B+B- pair with a lepton taken for the kaon, drawn by the untargeted
    share, held most of the HTA's squared weights on a default run; each photon counts
    ``hta_photon_loss + (1 - hta_photon_loss) exp(-hta_photon_slope E)``, a missed photon
    adding no extra energy: :func:`~knunu.simulation.bdecays.hta_sides`), the other among the
    fully visible
    entries (no neutrino, K_L or neutron: what the hadronic tag reconstructs, in proportion
    to its tag probability ``exp(-0.3 x charged particles)``). Measured on
    the HTA-selected B+B- events with a correct tag: 88 % of their weight has a B with a kaon
    among at most 3 charged particles next to a fully visible B, 15 % and 38 % of the B
    decays.
    """

    slope: float = 0.0
    cap_gev: float = 10.0
    threshold_gev: float = 0.0
    keep_below: float = 1.0
    sides: int = 2
    mix: float = 1.0
    kaon_p_gev: float = 0.0
    kaon_share: float = 0.9
    kaon_misid: float = 0.02
    kaon_misid_neutral: float | None = None
    kaon_soft_p_gev: float = 0.0
    kaon_soft: float = 0.0
    hta_share: float = 0.0
    hta_slope: float = 1.5
    hta_photon_slope: float = 0.0
    hta_misid: float = 0.0
    hta_photon_loss: float = 0.0
    semileptonic: float = 1.0
    k_long: float = 1.0
    copies: int = 1
    copy_kaon_p_gev: float = 0.0
    copy_e_inv_gev: float = 0.0

    def __post_init__(self) -> None:
        bad = self.sides not in (1, 2) or self.slope < 0 or self.cap_gev <= 0
        bad = bad or not (0 < self.mix <= 1) or self.kaon_p_gev < 0
        bad = bad or not (0 < self.kaon_share < 1) or not (0 <= self.kaon_misid <= 1)
        bad = bad or not (0 <= self.hta_share < 1 - self.kaon_share) or self.hta_slope < 0
        bad = bad or not (0 <= (self.kaon_misid_neutral or 0.0) <= 1)
        bad = bad or not (0 <= self.kaon_soft <= 1) or self.kaon_soft_p_gev < 0
        bad = bad or not (0 <= self.hta_misid <= 1) or not (0 <= self.hta_photon_loss < 1)
        bad = bad or self.hta_photon_slope < 0 or self.semileptonic <= 0 or self.k_long <= 0
        bad = bad or not (isinstance(self.copies, int) and 1 <= self.copies <= COPIES_MAX)
        if bad or not (0 < self.keep_below <= 1):
            raise ConfigError(f"simulation.targeting: invalid {self}")


@dataclass(frozen=True)
class LibraryTask:
    """One decay library: a species, a stratum (``None``: generic), entries, seed, file."""

    species: int
    stratum: str | None
    n: int
    seed: int
    path: str


@dataclass(frozen=True)
class FileTask:
    """One output file.

    Attributes:
        sample: A sample of configs/samples.yaml.
        n_events: MC: events to generate; data: events to keep (nature's accept-reject may
            generate more).
        seed: The seed of everything random in this file.
        path: The ROOT file to write.
        off_resonance: Off-resonance beams (continuum and tau pairs only).
        data: Pseudo-data (unweighted, nature applied, no MC truth branches).
        libraries: Directory of the decay libraries (samples with B mesons).
        nature: Nature's differences (data only).
        prefilter: Apply :data:`PREFILTER` before reconstructing the ITA variables.
        pion_prescale: The prefilter keeps pion-candidate events whose ``__event__`` is a
            multiple of this.
        tag_boost: Hadronic tags drawn this much more often, weighted back (MC and the nature
            stream; 1 for pseudo-data).
        embedded: Signal embedded in data events (the J/psi K+ embedding sample, dataset
            :data:`EMBEDDED`): a signal B with nature's other B and detector, as data.
        weight: The nature stream (with ``data``): events made as nature makes them (nature
            applied, no MC truth) but as many as an MC sample, each carrying this weight, so
            that the dataset sums to nature's expectation at the data luminosity; hadronic
            tags are boosted (``tag_boost``) and weighted as in MC.
        targeting: B Bbar MC (and the nature stream) targeted at the signal regions with
            exact weights (:class:`Targeting`); None: untargeted.
    """

    sample: str
    n_events: int
    seed: int
    path: str
    off_resonance: bool = False
    data: bool = False
    libraries: str | None = None
    nature: Nature = field(default_factory=Nature)
    prefilter: bool = True
    pion_prescale: int = 4
    tag_boost: float = 1.0
    embedded: bool = False
    weight: float | None = None
    targeting: Targeting | None = None
    layout: str = "event"


@dataclass(frozen=True)
class FileRecord:
    """What one task wrote (an entry of the dataset catalogue)."""

    sample: str
    path: str
    data: bool
    off_resonance: bool
    seed: int
    generated: int
    sum_weights: float
    entries_ita: int
    entries_hta: int
    seconds: float
    events: int = 0  # events written (generated counts nature's accept-reject attempts too)
    embedded: bool = False
    nature: bool = False  # the nature stream (weighted, data-like)
    adler32: str = ""  # of the written file, verified before processing
    layout: str = "event"  # basf2's event- or candidate-based trees
    copies: int = 0  # entries that are detector copies of an event written (Targeting.copies)
    #: MC: the sum of the generated events' weights by their number of K_L from D decays
    #: (``mcDtoKL`` = 0, 1, ...), so that a correction of B(D -> K_L X) can keep the number
    #: of events it is applied to (:func:`knunu.mva.corrections.d_to_kl_norm`)
    d_to_kl_sum_weights: tuple[float, ...] = ()


# ---------------------------------------------------------------------------- generation


@lru_cache(maxsize=2)
def entry_invisible_energy(directory: str) -> np.ndarray:
    """Invisible energy (GeV, B rest frame) per library entry of a production (cached)."""
    return bdecays.invisible_energy(load_mixture(directory).library)


@lru_cache(maxsize=4)
def entry_bias(directory: str, slope: float, cap: float, mix: float = 1.0) -> np.ndarray:
    """Importance factor per library entry (cached).

    ``b = exp(slope x min(E_inv, cap))``, mixed with a constant: ``(1 - mix) mean(b) + mix b``
    (a factor is defined up to its normalisation, which :meth:`Mixture.draw` applies exactly).
    """
    tilt = np.exp(slope * np.minimum(entry_invisible_energy(directory), cap))
    return (1.0 - mix) * float(tilt.mean()) + mix * tilt


@lru_cache(maxsize=4)
def entry_hardest(directory: str, kaons: bool = True) -> np.ndarray:
    """Largest charged-kaon (or other charged) momentum per library entry (cached)."""
    return bdecays.hardest_momentum(load_mixture(directory).library, kaons)


@lru_cache(maxsize=4)
def entry_kaon_factor(
    directory: str,
    p_min: float,
    slope: float,
    cap: float,
    mix: float = 1.0,
    misid: float = 0.0,
    soft: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Kaon-side factor per library entry (cached).

    ``h ((1 - mix) mean(t) + mix t)`` with ``t = exp(slope x min(E_inv, cap))`` (the mean over
    the entries with a hard kaon) and ``h`` 1 for an entry with a charged kaon above ``p_min``,
    ``misid`` for one with another charged particle above it (the fake kaons), else 0. A
    hard-kaon B without invisible energy (the missing energy then comes from the other B)
    keeps a share ``1 - mix`` of the draws. ``soft = (p_soft, s)``: an entry without a hard
    kaon whose hardest kaon is above ``p_soft`` gets at least ``s`` (the softer kaons of the
    ITA's looser eta region, where the factorised templates take their events).
    """
    kaon_p = entry_hardest(directory, True)
    kaon = kaon_p > p_min
    fake = ~kaon & (entry_hardest(directory, False) > p_min)
    tilt = np.exp(slope * np.minimum(entry_invisible_energy(directory), cap))
    mean = float(tilt[kaon].mean()) if kaon.any() else 0.0
    hard = np.where(kaon, 1.0, np.where(fake, misid, 0.0))
    p_soft, s = soft
    hard = np.where(~kaon & (kaon_p > p_soft), np.maximum(hard, s), hard)
    return hard * ((1.0 - mix) * mean + mix * tilt)


@lru_cache(maxsize=4)
def entry_hta_factors(
    directory: str,
    slope: float,
    photon_slope: float = 0.0,
    misid: float = 0.0,
    photon_loss: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The HTA's factors per library entry (cached): (signal side, tag side).

    :func:`~knunu.simulation.bdecays.hta_sides` with the tag side tilted as the emulated
    tag's probability (``TagModel.correct_slope``).
    """
    lib = load_mixture(directory).library
    return bdecays.hta_sides(lib, slope, TagModel.correct_slope, photon_slope, misid, photon_loss)


def pair_proposal(
    directory: str, aim: Targeting, neutral: bool
) -> tuple[np.ndarray, float, tuple[np.ndarray, np.ndarray, float] | None]:
    """The kaon-side factor, its share and the HTA component of targeted B Bbar pairs.

    What :meth:`~knunu.simulation.bdecays.Mixture.draw_pairs` takes for a production with
    ``kaon_p_gev > 0``. B0B0bar pairs (``neutral``) give the HTA share to the kaon side (the
    HTA tags charged B only) and, with ``kaon_misid_neutral``, count their fakes by it.
    """
    misid = aim.kaon_misid
    if neutral and aim.kaon_misid_neutral is not None:
        misid = aim.kaon_misid_neutral
    soft = (aim.kaon_soft_p_gev, aim.kaon_soft)
    factor = entry_kaon_factor(
        directory, aim.kaon_p_gev, aim.slope, aim.cap_gev, aim.mix, misid, soft
    )
    if aim.hta_share <= 0 or neutral:
        return factor, aim.kaon_share + (aim.hta_share if neutral else 0.0), None
    hta = entry_hta_factors(
        directory, aim.hta_slope, aim.hta_photon_slope, aim.hta_misid, aim.hta_photon_loss
    )
    return factor, aim.kaon_share, (*hta, aim.hta_share)


@lru_cache(maxsize=2)
def load_mixture(directory: str) -> bdecays.Mixture:
    """The decay libraries of a production (cached per worker process)."""
    libraries = {}
    for path in sorted(Path(directory).glob("*.npz")):
        species, name = path.stem.split("_", 1)
        key = (int(species), None if name == "generic" else name)
        libraries[key] = bdecays.Library.load(path)
    if not libraries:
        raise ConfigError(f"{directory}: no decay libraries")
    return bdecays.Mixture.from_libraries(libraries)


def library_path(directory: str | Path, species: int, stratum: str | None) -> Path:
    """File of one decay library."""
    return Path(directory) / f"{species}_{stratum or 'generic'}.npz"


def build_library_file(task: LibraryTask) -> str:
    """Build and save one decay library (a cluster task)."""
    bdecays.build_library(task.species, task.stratum, task.n, task.seed).save(task.path)
    return task.path


@dataclass(frozen=True)
class GeneratedEvents:
    """Generated events (CM frame) with per-event truth and MC weights.

    Attributes:
        parts: Final-state particles (``side`` set for events with B mesons).
        total: Per-event e+e- four-momenta (lab) the events were made at, or ``None``.
        truth: Per-event ``weight`` and truth columns, and ``generated`` (events made,
            including those nature's accept-reject refused).
    """

    parts: Particles
    total: np.ndarray | None
    truth: dict[str, np.ndarray]


def generate_events(task: FileTask, rng: np.random.Generator) -> GeneratedEvents:
    """Generate the events of one task (before the detector)."""
    samples = load_samples()
    if task.sample not in samples:
        raise ConfigError(f"unknown sample {task.sample!r} (known: {', '.join(samples)})")
    sample = samples[task.sample]
    if task.off_resonance and sample.kind not in ("continuum", "taupair"):
        raise ConfigError(f"{task.sample}: no B Bbar production off resonance")
    if task.n_events < 0:
        raise ConfigError(f"{task.path}: negative number of events {task.n_events}")
    return _GENERATORS[sample.kind](task, sample, task.n_events, rng)


def _continuum(task: FileTask, sample: Sample, n: int, rng: np.random.Generator) -> GeneratedEvents:
    """Continuum or tau pairs: nature's shape for pseudo-data, thinning for targeted MC.

    Nature's continuum shape is an accept-reject on the generated charged multiplicity. The
    targeted MC (and nature stream) keeps events whose generator-level invisible energy
    (neutrinos, K_L, neutrons) is below ``targeting.threshold_gev`` with probability
    ``keep_below`` before the detector, with the weight ``1 / keep_below``.
    """
    extra = ("Beams:eCM = 10.52",) if task.off_resonance else ()
    shape = task.data and task.nature.continuum_shape
    aim = task.targeting if not task.data or task.weight is not None else None
    thin = aim is not None and aim.keep_below < 1
    bias = None if aim is None else DecayBias(semileptonic=aim.semileptonic, k_long=aim.k_long)
    gen = Generator(task.sample, seed=task.seed, extra=extra, bias=bias)
    # MC carries Pythia's event weights (above 1, up to 1.2, for the 1-6 % of the events where
    # the cross-section maximum Pythia found at init was exceeded: +0.05-0.5 % in all, seed by
    # seed; ignored until stop 43) and the decay bias's. Pseudo-data are unweighted events as
    # Pythia draws them, and the nature stream stands for them: the decay bias's weights only.
    mc = not task.data

    def draw(m: int) -> tuple[Particles, np.ndarray]:
        if mc or gen.decay_factors:
            return gen.generate_weighted(m, pythia_weights=mc)
        return gen.generate(m), np.ones(m)

    if not (shape or thin):
        parts, weight = draw(n)
        return GeneratedEvents(parts, None, {"weight": weight, "generated": np.array(n)})
    kept: list[Particles] = []
    weights: list[np.ndarray] = []
    generated = have = 0
    rate = 1.0 / 1.4  # kept fraction, first guess; measured as it goes when thinning
    while have < n:
        parts, weight = draw(max(64, int((n - have) / rate)))
        generated += parts.n_events
        keep = np.ones(parts.n_events, dtype=bool)
        if shape:
            n_ch = parts.per_event_sum((parts.charge != 0).astype(np.int64))
            accept = np.minimum(
                1.0, np.exp(-CONTINUUM_SHAPE["slope"] * (n_ch - CONTINUUM_SHAPE["pivot"]))
            )
            keep &= rng.random(parts.n_events) < accept
        if thin:
            assert aim is not None
            low = bdecays.invisible_energy_of(parts) < aim.threshold_gev
            keep &= ~low | (rng.random(parts.n_events) < aim.keep_below)
            weight = np.where(low, weight / aim.keep_below, weight)
        idx = np.flatnonzero(keep)[: n - have]
        kept.append(parts.take(idx))
        weights.append(weight[idx])
        have += len(idx)
        if thin:
            rate = max(have / generated, 0.01)
    weight = np.concatenate(weights)
    if task.weight is not None and thin:
        # the nature stream's weight counts written events: its kept weights (which sum to
        # the events that passed nature's shape, not to those written) scaled to mean 1
        weight = weight * (len(weight) / weight.sum())
    truth = {"weight": weight, "generated": np.array(generated)}
    return GeneratedEvents(_concat(kept), None, truth)


def copy_class(parts: Particles, kaon_p_gev: float, e_inv_gev: float) -> np.ndarray:
    """The events :attr:`Targeting.copies` copies: a hard charged kaon and invisible energy.

    A charged kaon above ``kaon_p_gev`` (CM frame) and invisible energy (neutrinos, K_L,
    neutrons) above ``e_inv_gev``.

    They are 24 % of the ssbar and 16 % of the ccbar events at (1.2, 1.0) GeV and hold 92 and
    95 % of those that reach eta > 0.8 (stop 47, ``benchmarks/study_continuum.py``).
    """
    kaon = np.abs(parts.pdg) == 321
    p = np.linalg.norm(parts.p4[kaon, 1:], axis=1)
    hardest = np.zeros(parts.n_events)
    np.maximum.at(hardest, parts.event_index()[kaon], p)
    return (hardest > kaon_p_gev) & (bdecays.invisible_energy_of(parts) > e_inv_gev)


def with_copies(batch: GeneratedEvents, aim: Targeting) -> tuple[GeneratedEvents, np.ndarray]:
    """The events of ``batch`` followed by ``aim.copies - 1`` more copies of those in the class.

    Every entry of a copied event carries 1/``copies`` of its weight, so the sum of the
    weights is unchanged; the detector gives each copy its own response.

    Returns:
        The entries, and per entry the index of the generated event it copies (the original
        entry's, which is the event's ``__event__``), -1 for events not copied.
    """
    n = batch.parts.n_events
    copied = copy_class(batch.parts, aim.copy_kaon_p_gev, aim.copy_e_inv_gev)
    order = np.concatenate([np.arange(n), np.tile(np.flatnonzero(copied), aim.copies - 1)])
    share = np.where(copied[order], 1.0 / aim.copies, 1.0)
    truth = {k: (v[order] if np.ndim(v) and len(v) == n else v) for k, v in batch.truth.items()}
    truth["weight"] = truth["weight"] * share
    total = None if batch.total is None else batch.total[order]
    entries = GeneratedEvents(batch.parts.take(order), total, truth)
    return entries, np.where(copied[order], order, -1).astype(np.int64)


def _concat(tables: list[Particles]) -> Particles:
    counts = np.concatenate([t.counts() for t in tables])
    return Particles(
        np.concatenate([[0], np.cumsum(counts)]),
        np.concatenate([t.pdg for t in tables]),
        np.concatenate([t.p4 for t in tables]),
        np.concatenate([t.charge for t in tables]),
        vertex=np.concatenate([t.vertices() for t in tables]),
    )


class _Proposal(NamedTuple):
    """How a file draws its B pairs from the libraries (targeting or not)."""

    aim: Targeting | None
    pairs: bool  # the kaon-side pair proposal (else each B on its own)
    bias: Any
    share: float
    tag: Any
    neutral: bool
    natural: bool  # pseudo-data or nature: branching fractions as nature has them


def _proposal(task: FileTask, sample: Sample) -> _Proposal:
    """The proposal of a B Bbar file: targeted for MC and the weighted nature stream."""
    # targeted: MC and the (weighted) nature stream; pseudo-data stay unweighted
    aim = task.targeting
    if sample.kind != "bbbar" or (task.data and task.weight is None):
        aim = None
    pairs = aim is not None and aim.kaon_p_gev > 0  # the kaon-side proposal
    bias, share, tag = None, 0.0, None
    neutral = sample.name == "mixed"
    if aim is not None and pairs:
        bias, share, tag = pair_proposal(task.libraries, aim, neutral)
    elif aim is not None and aim.slope:
        bias = entry_bias(task.libraries, aim.slope, aim.cap_gev, aim.mix)
    return _Proposal(aim, pairs, bias, share, tag, neutral, task.data)


def _draw_batch(
    task: FileTask, sample: Sample, m: int, rng: np.random.Generator, prop: _Proposal
) -> tuple[np.ndarray, ...]:
    """``m`` drawn pairs: (charge, first entry, second entry, weight, accepted)."""
    mix = load_mixture(task.libraries)
    lib = mix.library
    aim, natural = prop.aim, prop.natural
    charge = np.where(rng.random(m) < 0.5, 1, -1)
    first = (511 if prop.neutral else 521) * charge
    if prop.pairs:
        first_entry, second_entry, w2 = mix.draw_pairs(
            first, rng, prop.bias, prop.share, natural=natural, tag=prop.tag
        )
    else:
        two_sided = prop.bias if aim and aim.sides == 2 else None
        second_entry, w2 = mix.draw(-first, rng, natural=natural, bias=two_sided)
    if sample.kind == "signal":
        first_entry, w1 = np.full(m, -1), np.ones(m)
    elif sample.kind == "control":
        first_entry = np.empty(m, dtype=np.int64)
        for c in (1, -1):
            on = charge == c
            first_entry[on] = mix.draw_control(521 * c, sample.stratum, int(on.sum()), rng)
        w1 = np.ones(m)
    elif prop.pairs:
        w1 = np.ones(m)  # the pair's weight is in w2
    else:
        first_entry, w1 = mix.draw(first, rng, natural=natural, bias=prop.bias)
    accept = np.ones(m, dtype=bool)
    if natural and task.nature.d_to_kl_scale != 1:
        accept = _d_to_kl_accept(lib.d_to_kl, first_entry, second_entry, task, rng)
    weight = w1 * w2
    if aim is not None and aim.keep_below < 1:  # thinned before the detector
        einv = entry_invisible_energy(task.libraries)
        low = einv[first_entry] + einv[second_entry] < aim.threshold_gev
        accept &= ~low | (rng.random(m) < aim.keep_below)
        weight = np.where(low, weight / aim.keep_below, weight)
    return charge, first_entry, second_entry, weight, accept


def _d_to_kl_accept(
    d_to_kl: np.ndarray,
    first_entry: np.ndarray,
    second_entry: np.ndarray,
    task: FileTask,
    rng: np.random.Generator,
) -> np.ndarray:
    """Nature's B(D -> K_L X) x ``scale``: accept a pair with probability scale^n / its most.

    ``n`` counts the pair's K_L from D decays (``mcDtoKL``), so each one is ``scale`` times
    likelier, as the MC's correction weights them (``scale^n`` over its mean,
    :func:`knunu.mva.corrections.nominal_mc`); the most is scale to the library's largest
    count per B, on each side that comes from the library. Until stop 56 nature scaled a B
    that held any (the MC each K_L): on 200k pairs the shares of events with one came to
    0.4984 and 0.5075.
    """
    scale = task.nature.d_to_kl_scale
    has_first = first_entry >= 0
    n = d_to_kl[second_entry] + np.where(has_first, d_to_kl[np.maximum(first_entry, 0)], 0)
    most = int(d_to_kl.max()) * (1 + int(has_first.any()))
    if scale < 1:  # fewer: the pair without any is the likeliest
        return rng.random(len(n)) < scale ** n.astype(float)
    return rng.random(len(n)) * scale**most < scale ** n.astype(float)


def _b_pairs(task: FileTask, sample: Sample, n: int, rng: np.random.Generator) -> GeneratedEvents:
    """Upsilon(4S) -> B Bbar with the first B in the sample's mode (or generic)."""
    if task.libraries is None:
        raise ConfigError(f"{task.path}: sample {task.sample!r} needs decay libraries")
    lib = load_mixture(task.libraries).library
    prop = _proposal(task, sample)
    einv = entry_invisible_energy(task.libraries)
    entries: list[tuple[np.ndarray, ...]] = []
    generated = have = 0
    reject = prop.natural and task.nature.d_to_kl_scale != 1  # nature's accept-reject
    rate = 0.5  # its accepted fraction: measured as it goes
    while have < n:
        m = max(64, int(1.1 * (n - have) / rate)) if reject else n - have
        *drawn, accept = _draw_batch(task, sample, m, rng, prop)
        generated += m
        idx = np.flatnonzero(accept)[: n - have]
        entries.append(tuple(column[idx] for column in drawn))
        have += len(idx)
        rate = max(have / generated, 0.01)
    charge, first_entry, second_entry, weight = (
        np.concatenate(c) for c in zip(*entries, strict=True)
    )
    total = sample_beams(ON_RESONANCE, n, rng)
    sqrt_s = np.sqrt(total[:, 0] ** 2 - np.sum(total[:, 1:] ** 2, axis=1))
    mass = bdecays.M_B[511 if sample.name == "mixed" else 521]
    p_first, _ = bdecays.b_pair_momenta(sqrt_s, rng, mass)
    if sample.kind == "signal":
        side0, q2 = signal_decays(charge, rng)
        code1 = np.full(n, 13)
        dkl1 = np.zeros(n)
    else:
        side0 = lib.particles.take(first_entry)
        code1, dkl1 = lib.code[first_entry], lib.d_to_kl[first_entry]
        q2 = np.full(n, -1.0)
    c_tau = bdecays.C_TAU_B_MM[511 if sample.name == "mixed" else 521]
    parts = bdecays.boost_sides(side0, lib.particles.take(second_entry), p_first, rng, c_tau)
    truth = {
        # invisible energy of each B (rest frame); the signal B's: its neutrino pair
        "mcB1Einv": (
            bdecays.invisible_energy_of(side0) if sample.kind == "signal" else einv[first_entry]
        ).astype(np.float32),
        "mcB2Einv": einv[second_entry].astype(np.float32),
        "weight": weight,
        "generated": np.array(generated),
        "mcB1Mode": code1.astype(np.int32),
        "mcB2Mode": lib.code[second_entry].astype(np.int32),
        "mcDtoKL": (dkl1 + lib.d_to_kl[second_entry]).astype(np.int32),
        "q2gen": q2,
        # the library entries of the pair (-1: the signal B), for MC errors that know reuse
        "mcB1Entry": first_entry.astype(np.int64),
        "mcB2Entry": second_entry.astype(np.int64),
    }
    return GeneratedEvents(parts, total, truth)


_GENERATORS = {
    "continuum": _continuum,
    "taupair": _continuum,
    "bbbar": _b_pairs,
    "signal": _b_pairs,
    "control": _b_pairs,
}


def prefilter_mask(seen: DetectorEvents, pion_prescale: int = FileTask.pion_prescale) -> np.ndarray:
    """Events that can pass the ITA basic selection (:data:`PREFILTER`).

    They have a kaon candidate or, if ``__event__`` is a multiple of ``pion_prescale``, a pion
    candidate.
    """
    tr = seen.tracks
    n_tracks = np.diff(tr.offsets)
    lo, hi = PREFILTER["n_tracks"]
    e_track = track_p4(seen, M_PI)[1][:, 0]  # the pion hypothesis, as the ITA's E_tot
    e_tot = np.add.reduceat(np.append(e_track, 0.0), tr.offsets[:-1]) * (n_tracks > 0)
    cl = seen.clusters
    e_cl = np.add.reduceat(np.append(cl.p4_cm[:, 0], 0.0), cl.offsets[:-1])
    e_cl = e_cl * (np.diff(cl.offsets) > 0)
    good = (tr.dr < PREFILTER["dr"]) & (np.abs(tr.dz) < PREFILTER["dz"])
    track_event = np.repeat(np.arange(len(n_tracks)), n_tracks)

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(track_event[mask], minlength=len(n_tracks))

    has_kaon = count(good & (tr.kaon_id > PREFILTER["kaon_id"])) > 0
    has_pion = count(good & (tr.kaon_id < PREFILTER["pion_kaon_id_max"])) > 0
    # the event number of an entry is its index in the file (__event__)
    prescaled = np.arange(len(n_tracks)) % pion_prescale == 0
    return (
        (n_tracks >= lo)
        & (n_tracks <= hi)
        & (e_tot + e_cl > PREFILTER["e_tot_min"])
        & (has_kaon | (has_pion & prescaled))
    )


def produce_file(task: FileTask, detector: DetectorConfig | None = None) -> FileRecord:
    """Generate, simulate, filter, reconstruct and write one file (runs on a worker)."""
    start = time.perf_counter()
    rng = np.random.default_rng(task.seed)
    batch = generate_events(task, rng)
    copy_of = None
    if not task.data and task.targeting is not None and task.targeting.copies > 1:
        batch, copy_of = with_copies(batch, task.targeting)
    beams = OFF_RESONANCE if task.off_resonance else ON_RESONANCE
    parts = batch.parts
    nominal = detector or DetectorConfig()
    cfg = task.nature.detector(nominal) if task.data else nominal
    seen = simulate_detector(parts, beams, cfg, rng, batch.total)
    header = _header(task, batch, copy_of)
    # HTA first: it uses the random stream, the ITA reconstruction does not
    tags = TagModel(boost=task.tag_boost)  # pseudo-data: 1 (the plan); nature: boosted
    hta_idx, tag_w, hta_event, btag = hta_variables(parts, seen, tags, rng)
    ita_tree = _ita_tree(task, seen, header)
    hta_header = {k: v[hta_idx] for k, v in header.items()}
    if task.data:
        for name in HTA_TRUTH_COLUMNS:
            del hta_event[name]
        del btag["Btag_mcCorrect"]  # truth: whether the tag is the right B
    # pseudo-data draw tags without a boost, so their tag weights are exactly 1
    hta_header["__weight__"] = hta_header["__weight__"] * tag_w
    # the HTA tree's event-shape inputs come from the full event reconstruction
    hta_seen = seen.take(hta_idx)
    hta_shapes = {k: v for k, v in ita_variables(hta_seen)[0].items() if k in _HTA_SHAPES}
    if not task.data:  # their K_L and hadronic cluster energies, for the MC corrections
        hta_shapes |= ita_truth(hta_seen)[0]
    trees = {
        TREE_ITA: ita_tree,
        TREE_HTA: Tree(
            {**hta_header, **hta_event, **hta_shapes},
            {"Btag_": (np.arange(len(hta_idx) + 1), btag)},
        ),
    }
    written = write_ntuple(task.path, trees, task.seed, task.layout)
    return FileRecord(
        sample=task.sample,
        path=task.path,
        data=task.data,
        off_resonance=task.off_resonance,
        seed=task.seed,
        generated=int(batch.truth["generated"]),
        sum_weights=float(np.sum(batch.truth["weight"])),
        copies=len(header["__event__"]) - task.n_events,
        entries_ita=written[TREE_ITA],
        entries_hta=written[TREE_HTA],
        seconds=time.perf_counter() - start,
        events=task.n_events,
        embedded=task.embedded,
        nature=task.weight is not None,
        layout=task.layout,
        adler32=adler32(task.path),
        d_to_kl_sum_weights=() if task.data else _by_d_to_kl(batch),
    )


def _by_d_to_kl(batch: GeneratedEvents) -> tuple[float, ...]:
    """The generated events' summed MC weights by their number of K_L from D decays."""
    weight = batch.truth["weight"]
    n = batch.truth.get("mcDtoKL", np.zeros(len(weight), np.int64))
    return tuple(np.bincount(np.asarray(n, np.int64), weights=weight).tolist())


def _ita_tree(task: FileTask, seen: DetectorEvents, header: dict[str, np.ndarray]) -> Tree:
    """The ITA tree: every kaon candidate of the events the prefilter keeps (truth for MC)."""
    if task.prefilter:
        ita_idx = np.flatnonzero(prefilter_mask(seen, task.pion_prescale))
    else:
        ita_idx = np.arange(len(header["__event__"]))
    ita_seen = seen.take(ita_idx)
    event, candidates = ita_variables(ita_seen)
    if not task.data:
        truth_event, truth_candidates = ita_truth(ita_seen)
        event |= truth_event
        candidates |= truth_candidates
    return Tree(
        {**{k: v[ita_idx] for k, v in header.items()}, **event},
        {"K_": (ita_seen.tracks.offsets, candidates)},
    )


def _header(
    task: FileTask, batch: GeneratedEvents, copy_of: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The event-level bookkeeping of every entry; MC truth too for MC.

    An entry is a generated event or a detector copy of one (:func:`with_copies`).
    """
    n = len(batch.truth["weight"])
    parts = batch.parts
    header = {
        "__experiment__": np.full(n, EXPERIMENT, np.int32),
        "__run__": np.full(n, task.seed % (1 << 31), np.int32),
        "__event__": np.arange(n, dtype=np.int64),
        "__weight__": _event_weights(task, batch.truth["weight"]),
    }
    if task.data:
        return header
    truth = batch.truth
    return header | {
        "mcProcess": np.full(n, load_samples()[task.sample].process_code, np.int32),
        "mcB1Mode": truth.get("mcB1Mode", np.full(n, -1, np.int32)),
        "mcB2Mode": truth.get("mcB2Mode", np.full(n, -1, np.int32)),
        "mcDtoKL": truth.get("mcDtoKL", np.zeros(n, np.int32)),
        "nKL": parts.per_event_sum((parts.pdg == 130).astype(np.int64)).astype(np.int32),
        "q2gen": truth.get("q2gen", np.full(n, -1.0)),
        # generator-level invisible energy (neutrinos, K_L, neutrons) in the CM frame
        "mcEinv": bdecays.invisible_energy_of(parts).astype(np.float32),
        "mcB1Einv": truth.get("mcB1Einv", np.zeros(n, np.float32)),
        "mcB2Einv": truth.get("mcB2Einv", np.zeros(n, np.float32)),
        "mcB1Entry": truth.get("mcB1Entry", np.full(n, -1, np.int64)),
        "mcB2Entry": truth.get("mcB2Entry", np.full(n, -1, np.int64)),
        # the __event__ of the generated event this entry is a detector copy of (-1: none)
        "mcCopyOf": np.full(n, -1, np.int64) if copy_of is None else copy_of,
    }


def _event_weights(task: FileTask, mc_weight: np.ndarray) -> np.ndarray:
    """``__weight__``: MC weights; 1 for pseudo-data; the stream's weight for nature."""
    if task.weight is not None:  # nature's weight; targeted B Bbar also carries its own
        return float(task.weight) * mc_weight
    return np.ones(len(mc_weight)) if task.data else mc_weight


_HTA_SHAPES = ("thrust", "R2", "cos_thrust_axis", "nTracks", "nClusters", "E_miss", "p_miss")


# ---------------------------------------------------------------------------- bookkeeping


def sample_cross_section_nb(sample: Sample) -> float:
    """Cross section of a sample; signal and control: B+B- x 2 x their branching fraction."""
    if sample.cross_section_nb is not None:
        return sample.cross_section_nb
    bf = SIGNAL_BF
    if sample.kind == "control":
        bf = bdecays.stratum_bf(bdecays.load_strata()[sample.stratum], 521)
    return load_samples()["charged"].cross_section_nb * 2 * bf


def luminosity_fb(sample: Sample, generated: float) -> float:
    """Integrated luminosity (fb^-1) equivalent to ``generated`` (weighted) events."""
    return generated / (sample_cross_section_nb(sample) * 1e6)


#: The dataset of signal embedded in data events (signal-efficiency validation).
EMBEDDED = "embedded"
#: The nature stream's datasets (histogram-level pseudo-data at the measurement luminosity).
NATURE = {False: "nature_on", True: "nature_off"}


def dataset_name(
    sample: str, off_resonance: bool, data: bool, embedded: bool = False, nature: bool = False
) -> str:
    """Catalogue key of a dataset (``data_on``, ``ccbar_offres``, ``embedded`` ...).

    >>> dataset_name("ccbar", True, False), dataset_name("ccbar", True, True, nature=True)
    ('ccbar_offres', 'nature_off')
    """
    if embedded:
        return EMBEDDED
    if nature:
        return NATURE[off_resonance]
    if data:
        return "data_off" if off_resonance else "data_on"
    return sample + ("_offres" if off_resonance else "")


def write_catalogue(
    path: str | Path, records: list[FileRecord], data_luminosity: Mapping[str, float] = {}
) -> Path:
    """The dataset catalogue: files (paths relative to it), entries, events, weights, luminosity.

    Args:
        path: The JSON file to write.
        records: What every file task wrote.
        data_luminosity: ``{"data_on": L, "data_off": L}`` in fb^-1 for the pseudo-data.
    """
    samples = load_samples()
    out: dict[str, dict[str, Any]] = {}
    here = Path(path).resolve().parent
    for rec in records:
        name = dataset_name(rec.sample, rec.off_resonance, rec.data, rec.embedded, rec.nature)
        entry = out.setdefault(
            name,
            {
                "data": rec.data,
                "nature": rec.nature,
                "off_resonance": rec.off_resonance,
                "samples": [],
                "files": [],
                "generated": 0,
                "sum_weights": 0.0,
                "entries_ita": 0,
                "entries_hta": 0,
                "events": 0,
                "copies": 0,
                "layout": rec.layout,
            },
        )
        if rec.sample not in entry["samples"]:
            entry["samples"].append(rec.sample)
        # relative to the catalogue: the run directory can move, batch jobs get absolute paths
        if rec.layout != entry["layout"]:
            raise ValueError(
                f"dataset {name}: files in both the {rec.layout} and the {entry['layout']} layout"
            )
        record = {k: v for k, v in asdict(rec).items() if k != "layout"}  # the dataset's
        entry["files"].append({**record, "path": os.path.relpath(Path(rec.path).resolve(), here)})
        for key in ("generated", "sum_weights", "entries_ita", "entries_hta", "events", "copies"):
            entry[key] += getattr(rec, key)
        if not rec.data:
            entry["d_to_kl_sum_weights"] = _padded_sum(
                entry.get("d_to_kl_sum_weights", []), rec.d_to_kl_sum_weights
            )
    for name, entry in out.items():
        if entry["data"]:
            entry["luminosity_fb"] = data_luminosity.get(name)
            continue
        sample = samples[entry["samples"][0]]
        entry["process_code"] = sample.process_code
        entry["cross_section_nb"] = sample_cross_section_nb(sample)
        entry["luminosity_fb"] = luminosity_fb(sample, entry["sum_weights"])
    return write_json(path, {"datasets": out})


def _padded_sum(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Element-wise sum of two lists of different lengths.

    >>> _padded_sum([1.0, 2.0], [3.0])
    [4.0, 2.0]
    """
    n = max(len(a), len(b))
    return [(a[i] if i < len(a) else 0.0) + (b[i] if i < len(b) else 0.0) for i in range(n)]


# ---------------------------------------------------------------------------- planning


def file_seed(base: int, *key: object) -> int:
    """A reproducible seed for one task from the run seed and the task's identity."""
    digest = hashlib.sha256(repr((base, *key)).encode()).digest()
    return int.from_bytes(digest[:4], "little") % 900_000_000


@dataclass(frozen=True)
class Plan:
    """Everything a production runs: library tasks first, then file tasks."""

    libraries: tuple[LibraryTask, ...]
    files: tuple[FileTask, ...]
    data_luminosity: dict[str, float]
    directory: str
    #: seconds without any Dask worker before the production stops (processing's setting)
    no_workers_timeout: float = 600.0


def plan_production(config: Mapping[str, Any], directory: str | Path) -> Plan:
    """Plan the production of a scale (``config['scale']``) into ``directory``.

    Raises:
        ConfigError: an unknown scale or a non-positive luminosity.
    """
    sim = config["simulation"]
    scales = sim.get("scales", {})
    if config["scale"] not in scales:
        raise ConfigError(f"scale {config['scale']!r} is not defined in simulation.scales")
    scale = scales[config["scale"]]
    seed = int(config["seed"])
    directory = Path(directory)
    lum = {
        "on": sim["luminosity_fb"]["on_resonance"] * scale["luminosity_fraction"],
        "off": sim["luminosity_fb"]["off_resonance"] * scale["luminosity_fraction"],
    }
    for key, value in lum.items():
        if value <= 0:
            raise ConfigError(f"simulation.luminosity_fb: {key}-resonance luminosity {value} <= 0")
    # the off-resonance pseudo-data (and the nature stream's weights) may have more luminosity
    # than the scale's: the BDTc learns on these events (the paper: 42 fb^-1); the MC's event
    # counts stay relative to the scale's luminosity
    off_factor = float(scale.get("off_resonance_data_factor", 1))
    data_lum = {"on": lum["on"], "off": lum["off"] * off_factor}
    nature = Nature(**sim.get("nature", {}))
    jobs_lib = bdecays.library_jobs(scale["library"]["generic"], scale["library"]["stratum"])
    # the libraries' directory is named by what they hold, so a rerun reuses them safely
    lib_dir = (
        directory
        / "libraries"
        / str(file_seed(seed, jobs_lib, sorted(map(repr, bdecays.load_strata().values()))))
    )
    libraries = tuple(
        LibraryTask(
            sp, st, n, file_seed(seed, "library", sp, st), str(library_path(lib_dir, sp, st))
        )
        for sp, st, n in jobs_lib
    )
    samples = load_samples()
    rng = np.random.default_rng(file_seed(seed, "data-counts"))
    jobs = [
        job
        for s in samples.values()
        for job in _sample_jobs(s, scale, sim, nature, (lum, data_lum), rng)
    ]
    jobs += _nature_jobs(scale.get("nature"), samples, sim, nature, (lum, data_lum))
    files = [
        task
        for job in jobs
        for task in _file_tasks(
            job, (seed, scale["events_per_file"]), sim, nature, (directory, lib_dir)
        )
    ]
    datasets = {"data_on": data_lum["on"], "data_off": data_lum["off"]}
    datasets |= {NATURE[False]: data_lum["on"], NATURE[True]: data_lum["off"]}
    wait = float(config.get("processing", {}).get("no_workers_timeout_s", 600.0))
    return Plan(libraries, tuple(files), datasets, str(directory), wait)


def _file_tasks(
    job: _Job,
    seeding: tuple[int, int],
    sim: Mapping[str, Any],
    nature: Nature,
    dirs: tuple[Path, Path],
) -> list[FileTask]:
    """The files of one job into ``<directory>/<dataset>/``.

    ``seeding``: (the production's seed, events per file); ``dirs``: (the production's
    directory, the libraries').
    """
    seed, per_file = seeding
    directory, lib_dir = dirs
    dataset = dataset_name(job.sample, job.off, job.data, job.embedded, job.weight is not None)
    targeting = _targeting(sim, job.sample)  # one per job, shared by its files
    files = []
    for k, first in enumerate(range(0, job.events, per_file)):
        stem = f"{job.sample}_{k:04d}" if job.data else f"{k:04d}"
        files.append(
            FileTask(
                sample=job.sample,
                n_events=min(per_file, job.events - first),
                seed=file_seed(seed, dataset, job.sample, k),
                path=str(directory / dataset / f"{stem}.root"),
                off_resonance=job.off,
                data=job.data,
                embedded=job.embedded,
                libraries=str(lib_dir),
                nature=nature if job.data else Nature(),
                prefilter=bool(sim.get("prefilter", True)),
                pion_prescale=int(sim.get("pion_prescale", FileTask.pion_prescale)),
                tag_boost=float(sim.get("hta_tag_boost", 1.0))
                if not job.data or job.weight is not None
                else 1.0,
                weight=job.weight,
                targeting=targeting,
                layout=sim.get("layout", "event"),
            )
        )
    return files


def _sample_jobs(
    sample: Sample,
    scale: Mapping[str, Any],
    sim: Mapping[str, Any],
    nature: Nature,
    lums: tuple[Mapping[str, float], Mapping[str, float]],
    rng: np.random.Generator,
) -> list[_Job]:
    """A sample's MC and pseudo-data jobs (data counts Poisson-drawn from ``rng``, in order).

    ``lums``: the luminosity (on, off) the MC's event counts are relative to, and the data's.
    """
    lum, data_lum = lums
    name = sample.name
    xs = sample_cross_section_nb(sample) * 1e6  # events per fb^-1
    if sample.kind == "signal":
        return [
            _Job(name, scale["signal_events"]),
            _Job(name, int(rng.poisson(sim["mu_true"] * xs * lum["on"])), data=True),
            # the J/psi K+ embedding: signal B decays in nature's events (data-like, its own
            # dataset, as many events as a control sample)
            _Job(name, scale["control_events"], data=True, embedded=True),
        ]
    if sample.kind == "control":
        jobs = [_Job(name, scale["control_events"])]
        if bdecays.load_strata()[sample.stratum].in_data:  # nature makes it at its rate
            jobs.append(_Job(name, int(rng.poisson(xs * lum["on"])), data=True))
        return jobs
    factor = {"on": scale["mc_factor"].get(sample.kind)}
    # off-resonance MC may have its own factor: its templates are 1/8.6 the on-resonance
    # events for the same ratio to the data, so more of them is the cheap MC statistics
    factor["off"] = scale.get("mc_factor_off_resonance", {}).get(sample.kind, factor["on"])
    norm = nature.continuum_norm if sample.kind == "continuum" else 1.0
    places = ("on", "off") if sample.kind in ("continuum", "taupair") else ("on",)
    jobs = []
    for place in places:
        off = place == "off"
        jobs.append(_Job(name, round(factor[place] * xs * lum[place]), off))
        jobs.append(_Job(name, int(rng.poisson(norm * xs * data_lum[place])), off, data=True))
    return jobs


def _targeting(sim: Mapping[str, Any], sample: str) -> Targeting | None:
    """The targeting of a sample's MC (``simulation.targeting``: by name, else kind), or None."""
    table = sim.get("targeting") or {}
    kind = load_samples()[sample].kind
    spec = table.get(sample, table.get(kind))
    aim = Targeting(**spec) if spec else None
    if aim is not None and kind == "bbbar" and (aim.semileptonic, aim.k_long) != (1.0, 1.0):
        raise ConfigError(f"simulation.targeting: {sample}: decays are biased for continuum only")
    return aim


class _Job(NamedTuple):
    """Events of one sample for one dataset (split into files by the planner)."""

    sample: str
    events: int
    off: bool = False
    data: bool = False
    embedded: bool = False
    weight: float | None = None  # the nature stream's weight per event


def _nature_jobs(
    spec: Mapping[str, Any] | None,
    samples: Mapping[str, Sample],
    sim: Mapping[str, Any],
    nature: Nature,
    lums: tuple[Mapping[str, float], Mapping[str, float]],
) -> list[_Job]:
    """The nature stream: every sample nature makes, as many events as ``spec`` says.

    Events are made as nature makes them (nature's detector, B(D -> K_L X), continuum shape;
    no MC truth); each carries the weight that makes its sample sum to nature's expectation
    at the data luminosity: ``norm x cross section x L_data / events`` (signal at ``mu_true``,
    continuum at ``continuum_norm``). ``spec``: ``mc_factor`` (events = factor x cross
    section x the scale's luminosity, per kind), optionally ``mc_factor_off_resonance`` (the
    same off resonance; default ``mc_factor``) and ``signal_events``; None: no nature stream.
    ``lums``: the scale's luminosity (on, off) and the data's.
    """
    if not spec:
        return []
    lum, data_lum = lums
    jobs = []
    for name, sample in samples.items():
        xs = sample_cross_section_nb(sample) * 1e6
        if sample.kind == "signal":
            places, norm = ("on",), float(sim["mu_true"])
        elif sample.kind == "control":
            if not bdecays.load_strata()[sample.stratum].in_data:
                continue
            places, norm = ("on",), 1.0
        else:
            places = ("on", "off") if sample.kind in ("continuum", "taupair") else ("on",)
            norm = nature.continuum_norm if sample.kind == "continuum" else 1.0
        for place in places:
            if sample.kind in ("signal", "control"):
                events = int(spec["signal_events"])
            else:
                factor = spec["mc_factor"][sample.kind]
                if place == "off":
                    factor = spec.get("mc_factor_off_resonance", {}).get(sample.kind, factor)
                events = round(factor * xs * lum[place])
            if events <= 0 or norm <= 0:
                continue
            weight = norm * xs * data_lum[place] / events
            jobs.append(_Job(name, events, place == "off", data=True, weight=weight))
    return jobs


# ---------------------------------------------------------------------------- running


def run_production(
    plan: Plan, client: Any, progress: Callable[[Progress], None] | None = None
) -> Path:
    """Run a planned production on a Dask client; returns the catalogue written.

    ``progress`` is called with a :class:`~knunu.progress.Progress` after every finished
    task (decay libraries: their B decays; files: their events).

    Every finished task leaves a record beside its file (:func:`done_path`: the task's
    fingerprint, its result and the file's Adler-32). A production started again, after a
    kill, a full disk or a lost cluster, reuses what it finds finished with the same
    fingerprint and checksum and makes the rest, so it ends with the same files. A task that
    fails fails the production loudly, naming the file; no catalogue is written then.

    Raises:
        SimulationError: one or more tasks failed.
    """
    libs = plan.libraries
    done_libs = {t.path for t in libs if _finished(t) is not None}
    log.info("decay libraries: %d to build, %d reused", len(libs) - len(done_libs), len(done_libs))
    todo_libs = [t for t in libs if t.path not in done_libs]
    wait = plan.no_workers_timeout
    _gather(client, build_library_file, todo_libs, "library", progress, wait)
    finished = {t.path: _finished(t) for t in plan.files}
    reused = {k: FileRecord(**v) for k, v in finished.items() if v is not None}
    if reused:
        log.info("files: %d of %d finished before, reused", len(reused), len(plan.files))
    todo = [t for t in plan.files if t.path not in reused]
    made = {r.path: r for r in _gather(client, produce_file, todo, "file", progress, wait)}
    records = [reused.get(t.path) or made[t.path] for t in plan.files]
    path = write_catalogue(Path(plan.directory) / "catalogue.json", records, plan.data_luminosity)
    log.info("production done: %d files, catalogue %s", len(records), path)
    return path


def done_path(path: str | Path) -> Path:
    """The record a finished task leaves beside its file (a hidden JSON file)."""
    path = Path(path)
    return path.with_name(f".{path.name}.done.json")


@lru_cache(maxsize=1)
def _code() -> str:
    from knunu.stamps import code_digest

    return code_digest(("knunu.simulation.production",))


def _fingerprint(task: FileTask | LibraryTask) -> str:
    """What a task's file depends on: the task itself and the simulation code and tables."""
    return hashlib.sha256(f"{task!r}|{_code()}".encode()).hexdigest()


def _finished(task: FileTask | LibraryTask) -> dict[str, Any] | None:
    """The result a task recorded when it finished, if its file is still that file."""
    try:
        doc = json.loads(done_path(task.path).read_text())
        if doc["fingerprint"] == _fingerprint(task) and adler32(task.path) == doc["adler32"]:
            return doc["result"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # none, damaged or stale: the task runs again
    return None


def _record(task: FileTask | LibraryTask, result: Any) -> None:
    doc = asdict(result) if isinstance(result, FileRecord) else result
    write_json(
        done_path(task.path),
        {"fingerprint": _fingerprint(task), "adler32": adler32(task.path), "result": doc},
    )


class _Failed(NamedTuple):
    """An I/O error a task met, returned as its result (no traceback in the worker logs)."""

    problem: str


#: A task's line when its disk filled (the failure names the task's file).
_DISK_FULL = "disk full; free space and run again: finished files are kept and reused"


def _captured(func: Any, task: Any) -> Any:
    try:
        return func(task)
    except DiskFullError:  # from an atomic write, which removed its temporary file
        return _Failed(_DISK_FULL)
    except OSError as exc:
        if exc.errno in DISK_FULL:
            return _Failed(f"{_DISK_FULL} ({exc.strerror})")
        return _Failed(f"{type(exc).__name__}: {exc}")


#: What the progress line calls each kind of task and the work in it.
_PROGRESS = {"library": ("simulate: decay libraries", "libraries"), "file": ("simulate", "files")}


def _collect(result: Any, task: Any, limit: Any, results: list[Any], k: int) -> str | None:
    """One finished task's result into ``results[k]`` (recorded beside its file), or its problem.

    ``result`` is what the task returned or the exception it raised (its workers died).
    """
    from knunu.cluster.backends import worker_death

    if isinstance(result, BaseException):  # reported with the task, then raised by the caller
        return worker_death(result, limit) or f"{type(result).__name__}: {result}"
    if isinstance(result, _Failed):
        return result.problem
    try:
        _record(task, result)
    except (OSError, DiskFullError) as exc:  # a convenience: without it the task reruns
        log.warning("%s: no finished-task record (%s)", task.path, exc)
    results[k] = result
    return None


def _gather(
    client: Any,
    func: Any,
    tasks: list[Any],
    what: str,
    progress: Callable[[Progress], None] | None = None,
    no_workers_timeout: float = 600.0,
) -> list[Any]:
    """Run ``func`` on every task on the cluster; their results in task order.

    Finished results are released at once (a result the scheduler still holds is recomputed
    when its worker dies, and the file written again, other bytes, after its checksum was
    taken). A cluster left without workers for ``no_workers_timeout`` seconds stops the
    production with one line; finished files are kept and reused when it runs again.

    Raises:
        SimulationError: a task failed (every failure is counted, the first named), or no
            workers.
    """
    from knunu.cluster.backends import completed

    if not tasks:
        return []
    futures = client.map(_captured, [func] * len(tasks), tasks, pure=False)
    results: list[Any] = [None] * len(tasks)
    failures = []
    size = [t.n_events if hasattr(t, "n_events") else t.n for t in tasks]
    label, unit = _PROGRESS[what]
    start, done_events, total = time.perf_counter(), 0, sum(size)
    watched = completed(client, futures, label, unit, no_workers_timeout, _no_workers)
    with closing(watched) as finished:
        for n, (k, result, limit) in enumerate(finished, 1):
            task = tasks[k]
            problem = _collect(result, task, limit, results, k)
            if problem is not None:
                failures.append(f"{task.path}: {problem}")
            else:
                log.info("%s %d/%d done", what, n, len(tasks))
            done_events += size[k]  # finished, made or failed: the line reaches the end
            if progress is not None:
                elapsed = time.perf_counter() - start
                progress(Progress(label, n, len(tasks), done_events, total, elapsed, unit))
    if failures:
        raise SimulationError(f"{len(failures)} {what} task(s) failed; first: {failures[0]}")
    return results


def _no_workers(message: str) -> SimulationError:
    return SimulationError(f"{message}; finished files are kept: run again to resume")
