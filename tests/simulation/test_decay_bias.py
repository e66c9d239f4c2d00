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
        hit, miss = (int(x.sum()) for x in boosted_decays(batch["prt"], species))
        n = hit + miss
        assert n > 300
        assert abs(hit / n - want) < 4 * np.sqrt(want * (1 - want) / n), (species, hit / n, want)


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
    # Pythia's own weights: 1, up to about 1.07 where the cross section's maximum was exceeded
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
