"""The nominal MC corrections as the training and the processors apply them."""

from __future__ import annotations

import numpy as np
import pytest
import uproot

from knunu.mva.corrections import (
    HTAShift,
    KLongLoss,
    corrected_hta_inputs,
    d_to_kl_norm,
    event_uniform,
    nominal_mc,
)
from knunu.processors.variations import WEIGHT_VARIATIONS, Context
from knunu.simulation.detector import DetectorConfig
from knunu.simulation.production import FileTask, Nature, generate_events, produce_file


def _columns(n: int, seed: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_kl = rng.choice([0, 1, 2], size=n, p=[0.6, 0.3, 0.1]).astype(np.int32)
    e_kl = n_kl * rng.uniform(0.1, 0.8, n)
    return {
        "__run__": np.full(n, 17, np.int32),
        "__event__": np.arange(n, dtype=np.int64),
        "mcKLclusters": n_kl,
        "mcE_KL": e_kl,
        "mcE_hadronic": e_kl + rng.uniform(0, 0.3, n),
        "nClusters": (n_kl + rng.integers(0, 8, n)).astype(np.int32),
        "E_tot": rng.uniform(5, 10, n),
        "E_miss": rng.uniform(0.5, 5, n),
        "K_roe_deltaE": rng.uniform(-1, 0.5, n),
        "K_roe_mass": rng.uniform(2, 5, n),
        "sqrt_s": np.full(n, 10.58),
    }


def test_kl_loss_removes_clusters_at_the_missing_efficiency():
    cols = _columns(200_000)
    out = KLongLoss(0.83)(cols)
    lost = cols["mcKLclusters"] - out["mcKLclusters"]
    assert np.all((lost >= 0) & (lost <= cols["mcKLclusters"]))
    # each K_L cluster survives with probability 0.83 (binomial per event)
    survived = out["mcKLclusters"].sum() / cols["mcKLclusters"].sum()
    assert survived == pytest.approx(0.83, abs=0.004)
    two = cols["mcKLclusters"] == 2
    assert np.mean(lost[two] == 2) == pytest.approx(0.17**2, abs=0.005)
    # the lost energy leaves the visible energy and goes to the missing energy
    d_e = out["E_tot"] - cols["E_tot"]
    np.testing.assert_allclose(d_e, out["mcE_KL"] - cols["mcE_KL"])
    np.testing.assert_allclose(out["E_tot"] + out["E_miss"], cols["E_tot"] + cols["E_miss"])
    np.testing.assert_allclose(out["mcE_hadronic"] - cols["mcE_hadronic"], d_e)
    np.testing.assert_array_equal(out["nClusters"], cols["nClusters"] - lost)
    assert np.all(out["mcE_KL"][out["mcKLclusters"] == 0] == pytest.approx(0.0, abs=1e-12))
    untouched = lost == 0
    np.testing.assert_array_equal(out["K_roe_mass"][untouched], cols["K_roe_mass"][untouched])
    assert KLongLoss(1.0)(cols)["E_tot"] is cols["E_tot"]  # no correction: nothing changes


def test_kl_loss_does_not_depend_on_chunking():
    cols = _columns(10_000)
    whole = KLongLoss(0.83)(cols)
    parts = [
        KLongLoss(0.83)({k: v[a:b] for k, v in cols.items()}) for a, b in ((0, 37), (37, 10_000))
    ]
    for name in ("mcKLclusters", "E_tot", "K_roe_mass"):
        np.testing.assert_array_equal(np.concatenate([p[name] for p in parts]), whole[name])


def test_event_uniform_is_uniform_and_reproducible():
    run = np.repeat(np.arange(5), 40_000)
    event = np.tile(np.arange(40_000), 5)
    u = event_uniform(run, event)
    np.testing.assert_array_equal(u, event_uniform(run, event))
    counts, _ = np.histogram(u, bins=20, range=(0, 1))
    assert np.all(np.abs(counts / len(u) - 0.05) < 0.003)
    assert not np.array_equal(u, event_uniform(run, event, salt=1))


@pytest.fixture(scope="module")
def hta_trees(libraries, tmp_path_factory):
    """The HTA trees of the same B+B- events seen by the nominal detector and by nature's."""
    out = tmp_path_factory.mktemp("hta_corrections")
    nature = Nature(kl_efficiency_scale=0.83, hadronic_energy_scale=0.9)
    trees = {}
    for name, detector in (
        ("nominal", DetectorConfig()),
        ("nature", nature.detector(DetectorConfig())),
    ):
        path = str(out / f"{name}.root")
        # every event tagged (tag_boost saturates q), so the trees hold 20k+ events each
        task = FileTask("charged", 40_000, 11, path, libraries=libraries, tag_boost=1000.0)
        produce_file(task, detector)
        with uproot.open(path) as f:
            trees[name] = f["hta"].arrays(filter_name=HTA_INPUTS, library="np")
    return trees


HTA_INPUTS = [
    "__run__", "__event__", "E_extra", "nExtraClusters", "E_miss_all", "m2_miss_all", "E_miss",
    "nClusters", "mcEextra_hadronic", "mcEextra_hadronic_cm", "mcEextra_KL", "mcEextra_KL_cm",
    "mcKLextraClusters", "mcE_hadronic", "mcE_KL", "mcKLclusters",
]  # fmt: skip


def test_hta_corrections_make_the_mc_look_like_natures_detector(hta_trees):
    """MC corrected with nature's K_L efficiency and hadronic scale agrees with nature's detector.

    Means over 20k+ tagged B+B- events: the corrected MC within 3 sigma of nature for the extra
    clusters' hadronic energy and K_L count, E_extra and E_miss; the uncorrected MC differs
    from nature by more than 4 sigma in the first two (the test can tell).
    """
    nominal, nature = hta_trees["nominal"], hta_trees["nature"]
    corrections = {"d_to_kl_scale": 1.3, "kl_efficiency_scale": 0.83, "hadronic_energy_scale": 0.9}
    corrected = corrected_hta_inputs(nominal, corrections)

    def pull(a: np.ndarray, b: np.ndarray) -> float:
        err = np.hypot(a.std() / np.sqrt(len(a)), b.std() / np.sqrt(len(b)))
        return float((a.mean() - b.mean()) / err)

    for name in ("mcEextra_hadronic", "mcKLextraClusters", "E_extra", "E_miss", "nExtraClusters"):
        assert abs(pull(corrected[name], nature[name])) < 3, name
    for name in ("mcEextra_hadronic", "mcKLextraClusters"):
        assert abs(pull(nominal[name], nature[name])) > 4, name
    # the corrections only take energy and clusters away, and keep the event count
    assert np.all(corrected["E_extra"] <= nominal["E_extra"] + 1e-6)
    assert np.all(corrected["nExtraClusters"] <= nominal["nExtraClusters"])
    assert len(corrected["E_extra"]) == len(nominal["E_extra"])


def test_hta_shift_is_the_identity_without_corrections_and_chunking_free(hta_trees):
    cols = hta_trees["nominal"]
    same = HTAShift(1.0, 1.0)(cols)
    for name in HTA_INPUTS:
        np.testing.assert_allclose(same[name], cols[name], rtol=1e-6, err_msg=name)
    whole = HTAShift(0.83, 0.9)(cols)
    parts = [
        HTAShift(0.83, 0.9)({k: v[a:b] for k, v in cols.items()}) for a, b in ((0, 99), (99, None))
    ]
    for name in ("E_extra", "nClusters", "m2_miss_all"):
        np.testing.assert_array_equal(np.concatenate([p[name] for p in parts]), whole[name])


def test_kl_efficiency_variation_migrates_clusters():
    """The K_L-efficiency systematic corrects the uncorrected inputs again at 0.83 x (1 +- 0.08):
    with the same per-event random number, a cluster kept at the lower efficiency is kept at
    the nominal and the higher one, so events migrate one way per direction; events without a
    K_L cluster do not move, and each direction keeps its clusters at its efficiency."""
    from knunu.mva.corrections import corrected_inputs
    from knunu.processors.variations import CORRECTION_VARIATIONS

    cols = _columns(200_000)
    nominal = {"d_to_kl_scale": 1.3, "kl_efficiency_scale": 0.83, "hadronic_energy_scale": 0.9}
    moved = CORRECTION_VARIATIONS["kl_efficiency"]
    kept = {
        sign: corrected_inputs(cols, moved.corrections(nominal, sign))["mcKLclusters"]
        for sign in (-1.0, 0.0, 1.0)
    }
    assert np.all(kept[-1.0] <= kept[0.0])
    assert np.all(kept[0.0] <= kept[1.0])
    assert np.any(kept[-1.0] < kept[0.0])
    assert np.any(kept[0.0] < kept[1.0])
    total = cols["mcKLclusters"].sum()
    for sign, efficiency in ((-1.0, 0.83 * 0.92), (0.0, 0.83), (1.0, 0.83 * 1.08)):
        assert kept[sign].sum() / total == pytest.approx(efficiency, abs=0.004)
    none = cols["mcKLclusters"] == 0
    down = corrected_inputs(cols, moved.corrections(nominal, -1.0))
    up = corrected_inputs(cols, moved.corrections(nominal, 1.0))
    np.testing.assert_array_equal(down["E_miss"][none], up["E_miss"][none])
    # fewer K_L clusters seen: more missing energy
    assert np.all(down["E_miss"] >= up["E_miss"] - 1e-12)


def test_kl_efficiency_variation_without_a_correction_stays_physical():
    """With no K_L correction (scale 1) the up variation cannot see more clusters than the MC:
    it is the nominal, and no input turns NaN."""
    from knunu.mva.corrections import corrected_inputs
    from knunu.processors.variations import CORRECTION_VARIATIONS

    cols = _columns(10_000)
    nominal = {"d_to_kl_scale": 1.0, "kl_efficiency_scale": 1.0, "hadronic_energy_scale": 1.0}
    moved = CORRECTION_VARIATIONS["kl_efficiency"]
    up = corrected_inputs(cols, moved.corrections(nominal, 1.0))
    np.testing.assert_array_equal(up["mcKLclusters"], cols["mcKLclusters"])
    down = corrected_inputs(cols, moved.corrections(nominal, -1.0))
    assert np.all(np.isfinite(down["E_miss"]))
    assert np.all(down["mcKLclusters"] >= 0)


def _pairs(libraries: str, data: bool, n: int = 40000) -> dict[str, np.ndarray]:
    nature = Nature(d_to_kl_scale=1.3) if data else Nature()
    task = FileTask("charged", n, 9, "unused.root", data=data, libraries=libraries, nature=nature)
    return generate_events(task, np.random.default_rng(9)).truth


def test_the_d_to_kl_correction_keeps_the_number_of_b_decays(libraries):
    """B(D -> K_L X) x1.3 is a change of branching fractions: nature (accept-reject at a fixed
    number of B decays) and the corrected MC agree on how many events there are and on how
    many K_L from D decays they hold; the correction without its norm made 1.16x the events."""
    mc, nature = _pairs(libraries, data=False), _pairs(libraries, data=True)
    n, w = mc["mcDtoKL"], mc["weight"]
    sums = np.bincount(n, weights=w)
    norm = d_to_kl_norm(sums, 1.3)
    assert 1.10 < norm < 1.25  # what the correction added: a quarter of B decays hold one
    weight, _ = nominal_mc(
        {"__weight__": w, "mcDtoKL": n}, {"d_to_kl_scale": 1.3}, lambda c, _: c, norm
    )
    assert weight.sum() == pytest.approx(w.sum(), rel=1e-12)
    # the events by their number of K_L from D (0, 1, 2, >= 3): nature's counts against the
    # corrected MC's shares, with both samples' errors (nature scales each K_L, since stop 56)
    top = 3
    counts = np.bincount(np.minimum(nature["mcDtoKL"], top), minlength=top + 1)
    shares = np.bincount(np.minimum(n, top), weights=weight, minlength=top + 1) / weight.sum()
    variance = np.bincount(np.minimum(n, top), weights=weight**2, minlength=top + 1)
    total = counts.sum()
    expected = shares * total
    sigma2 = expected + variance / weight.sum() ** 2 * total**2
    chi2 = float(np.sum((counts - expected) ** 2 / sigma2))
    assert chi2 < 16.3, chi2  # 4 bins, p = 0.003
    # nature has more of them: 1.3^n over the norm (1.17), 1.11x the events with one
    assert counts[1] / total > 1.05 * np.mean(n == 1)
    assert counts[2] / total > 1.3 * np.mean(n == 2)  # 1.44x


def test_the_d_to_kl_variation_moves_the_share_not_the_number():
    n = np.array([0, 0, 0, 1, 1, 2])
    sums = np.bincount(n).astype(float)
    ctx = Context("charged", np.ones(len(n)), tuple(sums), 1.3)
    nominal = 1.3**n / d_to_kl_norm(sums, 1.3)
    up, down = WEIGHT_VARIATIONS["d_to_kl"]({"mcDtoKL": n}, ctx)
    for f in (up, down):
        assert (nominal * f).sum() == pytest.approx(len(n), rel=1e-12)
    assert up[n == 2][0] > up[n == 1][0] > 1 > up[n == 0][0]
    assert down[n == 2][0] < down[n == 1][0] < 1 < down[n == 0][0]
