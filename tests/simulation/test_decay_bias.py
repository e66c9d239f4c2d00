"""Decays biased towards missing energy: exact weights, unchanged expectations."""

import awkward as ak
import numpy as np
import pytest

from knunu.simulation.bdecays import invisible_energy_of
from knunu.simulation.generators import (
    CHARM_HADRONS,
    K0,
    DecayBias,
    Generator,
    boosted_decays,
    boosted_fraction,
)

SPECIES = (*CHARM_HADRONS, K0)
BIAS = DecayBias(semileptonic=3.0, k_long=3.0)


def test_pythia_draws_the_biased_channels_at_the_biased_rate():
    gen = Generator("ccbar", seed=41, bias=BIAS)
    batch = ak.drop_none(gen.pythia.nextBatch(3000, "none"), axis=0)
    for species in (K0, 421, 411):
        f = boosted_fraction(Generator("ccbar", seed=1).pythia.particleData, species)
        want = 3 * f / (3 * f + 1 - f)
        hit, miss = (int(x) for x in boosted_decays(batch["prt"], (species,))[species].sum(0))
        n = hit + miss
        assert n > 300
        assert abs(hit / n - want) < 4 * np.sqrt(want * (1 - want) / n), (species, hit / n, want)


def test_decays_are_classified_from_the_record():
    """Two hand-made events: K0 -> K_L and K0 -> K_S, a semileptonic and a hadronic D0."""

    def record(rows):
        return [{"id": i, "daughter1": a, "daughter2": b} for i, a, b in rows]

    prt = ak.Array(
        [
            record([(90, 0, 0), (311, 3, 0), (-311, 4, 4), (130, 0, 0), (310, 5, 6)]),
            # D0 -> K- e+ nu_e (daughters 2-4) and D0bar -> K+ pi- (5-6), leptons at the edges
            record([(90, 0, 0), (421, 2, 4), (11, 0, 0), (-321, 0, 0), (-12, 0, 0),
                    (-421, 6, 7), (321, 0, 0), (-211, 0, 0)]),
        ]
    )  # fmt: skip
    got = boosted_decays(prt, (K0, 421, 411))
    assert got[K0].tolist() == [[1, 1], [0, 0]]
    assert got[421].tolist() == [[0, 0], [1, 1]]
    assert got[411].tolist() == [[0, 0], [0, 0]]


def test_semileptonic_fractions_are_pythias_tables():
    data = Generator("ccbar", seed=1).pythia.particleData
    assert boosted_fraction(data, K0) == pytest.approx(0.5)
    # D+ e and mu semileptonic about 2 x 16 % (PDG 2024: K0bar e+ nu 8.7 %, inclusive e+ 16.1 %)
    assert 0.25 < boosted_fraction(data, 411) < 0.40
    assert 0.10 < boosted_fraction(data, 421) < 0.17


def test_weights_keep_expectations_and_move_statistics():
    """Weighted rates of the biased generation equal the unbiased ones within MC errors."""
    n = 6000
    plain, w0, c0 = Generator("ccbar", seed=43).generate_counted(n, SPECIES)
    aimed, w1, c1 = Generator("ccbar", seed=44, bias=BIAS).generate_counted(n, SPECIES)
    # Pythia's own weights: 1, up to about 1.2 where its cross-section maximum was exceeded
    assert abs(w0.mean() - 1.0) < 0.005
    assert abs(w1.mean() - 1.0) < 4 * w1.std() / np.sqrt(n)  # sum of weights = events made

    def rate(mask, w):
        return (w * mask).sum() / n, np.sqrt((w**2 * mask).sum()) / n

    def has_kl(c):
        return c[K0][:, 0] > 0

    def has_sl(c):
        return sum(c[k][:, 0] for k in CHARM_HADRONS) > 0

    for flag in (has_kl, has_sl):
        (a, ea), (b, eb) = rate(flag(c0), w0), rate(flag(c1), w1)
        assert abs(a - b) < 4 * np.hypot(ea, eb), (flag.__name__, a, b)
    # the missing-energy tail: same rate, more events drawn into it
    tail0 = invisible_energy_of(plain) > 2.5
    tail1 = invisible_energy_of(aimed) > 2.5
    (a, ea), (b, eb) = rate(tail0, w0), rate(tail1, w1)
    assert abs(a - b) < 4 * np.hypot(ea, eb), (a, b)
    assert tail1.sum() > 1.5 * tail0.sum()


def test_biased_generation_is_reproducible_and_needs_weights():
    a = Generator("uubar", seed=5, bias=BIAS).generate_weighted(300)
    b = Generator("uubar", seed=5, bias=BIAS).generate_weighted(300)
    assert np.array_equal(a[0].pdg, b[0].pdg)
    assert np.array_equal(a[1], b[1])
    assert a[1].std() > 0
    with pytest.raises(ValueError, match="generate_weighted"):
        Generator("uubar", seed=5, bias=BIAS).generate(10)
    with pytest.raises(ValueError, match="bulk"):
        Generator("bbbar", seed=5, bias=BIAS)
    with pytest.raises(ValueError, match="positive"):
        DecayBias(k_long=0.0)
    assert not DecayBias().active
    assert Generator("uubar", seed=5, bias=DecayBias()).decay_factors == {}


def test_nature_stream_carries_the_bias_weights_only_and_pseudo_data_none(tmp_path):
    """The nature stream stands for unweighted pseudo-data: decay-bias weights (mean 1), no
    Pythia weights; the pseudo-data themselves stay unweighted."""
    from knunu.simulation.production import FileTask, Targeting, produce_file

    aim = Targeting(semileptonic=2.0, k_long=2.0)
    n = 3000
    stream = produce_file(
        FileTask("ccbar", n, 7, str(tmp_path / "n.root"), data=True, weight=0.5, targeting=aim)
    )
    data = produce_file(FileTask("ccbar", n, 7, str(tmp_path / "d.root"), data=True))
    mc = produce_file(FileTask("ccbar", n, 7, str(tmp_path / "m.root"), targeting=aim))
    assert data.sum_weights == n
    assert stream.sum_weights != n
    assert stream.sum_weights == pytest.approx(n, rel=0.04)
    # the same events with Pythia's weights on top (all >= 1) in the MC
    assert mc.sum_weights >= stream.sum_weights
