"""Production: planning per scale, pseudo-data, bookkeeping of every event, safe filter."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import uproot

from knunu.config import load_config
from knunu.errors import ConfigError
from knunu.mva.bdt import fold_events, fold_of
from knunu.processors.reuse import entry_sums, extra_variance, groups
from knunu.samples import load_samples
from knunu.simulation.ntuple import read_event_tree
from knunu.simulation.production import (
    PREFILTER,
    FileTask,
    Targeting,
    luminosity_fb,
    plan_production,
    produce_file,
    write_catalogue,
)


@pytest.fixture(scope="module")
def produced(libraries, tmp_path_factory):
    out = tmp_path_factory.mktemp("production")
    tasks = [
        FileTask("signal", 300, 1, str(out / "signal.root"), libraries=libraries),
        FileTask("charged", 400, 2, str(out / "charged.root"), libraries=libraries),
        FileTask("mixed", 300, 3, str(out / "mixed.root"), libraries=libraries),
        FileTask("ccbar", 300, 4, str(out / "ccbar.root")),
        FileTask("ccbar", 200, 5, str(out / "ccbar_off.root"), off_resonance=True),
        FileTask("taupair", 200, 6, str(out / "taupair.root")),
        FileTask("jpsi_k", 100, 7, str(out / "jpsi_k.root"), libraries=libraries),
        FileTask("uubar", 300, 8, str(out / "data.root"), data=True, libraries=libraries),
    ]
    records = [produce_file(t) for t in tasks]
    catalogue = write_catalogue(out / "catalogue.json", records, {"data_on": 0.1})
    return tasks, records, json.loads(catalogue.read_text())["datasets"]


def test_every_generated_event_is_accounted_for(produced):
    tasks, records, datasets = produced
    assert datasets["ccbar"]["generated"] == 300
    assert datasets["ccbar_offres"]["generated"] == 200
    assert datasets["data_on"]["luminosity_fb"] == 0.1
    for task, rec in zip(tasks, records, strict=True):
        with uproot.open(task.path) as f:
            ita, hta = f["ita"], f["hta"]
            assert ita.num_entries == rec.entries_ita <= task.n_events
            assert hta.num_entries == rec.entries_hta
            events = ita["__event__"].array(library="np")
            assert len(np.unique(events)) == len(events)
            assert events.max(initial=0) < task.n_events
            if task.data:
                assert "mcProcess" not in ita.keys()  # noqa: SIM118 - a TTree  # data carry no truth
                truth = [k for k in hta.keys() if k.startswith("mc") or "mc" in k.split("_")[-1]]  # noqa: SIM118
                assert not truth, truth  # nor does their HTA tree (tag, kaon, cluster origins)
                assert set(ita["__weight__"].array(library="np").tolist()) <= {1.0}
            else:
                code = load_samples()[task.sample].process_code
                assert set(ita["mcProcess"].array(library="np").tolist()) <= {code}


def test_the_catalogue_counts_generated_weight_by_k_long_from_d(produced):
    tasks, records, datasets = produced
    for task, rec in zip(tasks, records, strict=True):
        sums = rec.d_to_kl_sum_weights
        if task.data:
            assert sums == ()
            continue
        with uproot.open(task.path) as f:  # the written events hold no count it does not
            n = f["ita"]["mcDtoKL"].array(library="np")
        assert n.max(initial=0) < len(sums)
    assert len(datasets["charged"]["d_to_kl_sum_weights"]) > 1  # B decays make them
    assert len(datasets["ccbar"]["d_to_kl_sum_weights"]) == 1  # no K_L-from-D truth: all 0
    assert "d_to_kl_sum_weights" not in datasets["data_on"]


def test_the_counts_by_k_long_from_d_are_those_of_the_written_events(libraries, tmp_path):
    """Without the prefilter every generated event is written: the record's weight per
    number of K_L from D decays is the file's, count by count."""
    task = FileTask("charged", 400, 21, str(tmp_path / "c.root"), libraries=libraries)
    rec = produce_file(dataclasses.replace(task, prefilter=False))
    with uproot.open(task.path) as f:
        t = f["ita"].arrays(["mcDtoKL", "__weight__"], library="np")
    assert len(t["mcDtoKL"]) == 400
    written = np.bincount(t["mcDtoKL"], weights=t["__weight__"])
    np.testing.assert_allclose(rec.d_to_kl_sum_weights, written, rtol=1e-6)  # float32 weights
    assert len(written) > 1


def test_truth_branches(produced):
    tasks, _, _ = produced
    with uproot.open(tasks[0].path) as f:
        q2 = f["ita"]["q2gen"].array(library="np")
        assert np.all((q2 >= 0) & (q2 < 22.9))
        assert set(f["ita"]["mcB1Mode"].array(library="np").tolist()) == {13}
    with uproot.open(tasks[3].path) as f:
        assert np.all(f["ita"]["q2gen"].array(library="np") == -1.0)
        assert set(f["ita"]["mcB2Mode"].array(library="np").tolist()) == {-1}
    with uproot.open(tasks[6].path) as f:
        assert set(f["ita"]["mcB1Mode"].array(library="np").tolist()) <= {14}
    # K_L clusters: their energy is part of the hadronic cluster energy
    with uproot.open(tasks[1].path) as f:
        t = f["ita"].arrays(["mcE_KL", "mcKLclusters", "mcE_hadronic", "nKL", "nLeptons"])
    assert np.all(t.mcE_KL <= t.mcE_hadronic + 1e-9)
    assert np.all((t.mcKLclusters > 0) == (t.mcE_KL > 0))
    assert np.all(t.mcKLclusters <= t.nKL)
    assert 0 < np.mean(t.nLeptons > 0) < 1


def test_same_seed_same_file_content(libraries, tmp_path):
    a = FileTask("charged", 200, 11, str(tmp_path / "a.root"), libraries=libraries)
    b = FileTask("charged", 200, 11, str(tmp_path / "b.root"), libraries=libraries)
    produce_file(a), produce_file(b)
    with uproot.open(a.path) as fa, uproot.open(b.path) as fb:
        for tree in ("ita", "hta"):
            for name in fa[tree].keys():  # noqa: SIM118 - a TTree, not a dict
                x = fa[tree][name].array(library="ak").tolist()
                assert x == fb[tree][name].array(library="ak").tolist(), name


def test_neutral_pairs_give_the_hta_share_to_the_kaon_side(libraries, tmp_path):
    """The HTA tags charged B only: B0B0bar pairs draw its share as kaon-side pairs.

    The same seed with (kaon 0.7, HTA 0.2) and with (kaon 0.9, no HTA) makes the same file
    for B0B0bar, and different files for B+B-.
    """
    kaon = dict(kaon_p_gev=1.1, slope=1.5, cap_gev=3.5, mix=0.5)
    split = Targeting(**kaon, kaon_share=0.7, hta_share=0.2)
    joined = Targeting(**kaon, kaon_share=0.9, hta_share=0.0)
    for sample, same in (("mixed", True), ("charged", False)):
        paths = [tmp_path / f"{sample}_{k}.root" for k in ("split", "joined")]
        for path, aim in zip(paths, (split, joined), strict=True):
            produce_file(FileTask(sample, 300, 12, str(path), libraries=libraries, targeting=aim))
        with uproot.open(paths[0]) as fa, uproot.open(paths[1]) as fb:
            columns = ("__weight__", "mcB1Entry", "mcB2Entry")
            a, b = (f["ita"].arrays(columns, library="np") for f in (fa, fb))
            # 0.7 + 0.2 is 0.9 up to rounding: the weights agree to 1e-12
            equal = all(np.array_equal(a[c], b[c]) for c in columns[1:])
            equal = equal and np.allclose(a[columns[0]], b[columns[0]], rtol=1e-12, atol=0)
        assert equal == same, sample


def test_the_candidate_layout_holds_the_same_events(libraries, tmp_path):
    """`simulation.layout: candidate` writes the events of the event layout, a row a candidate."""
    records = {}
    for layout in ("event", "candidate"):
        path = str(tmp_path / f"{layout}.root")
        task = FileTask("charged", 1000, 11, path, libraries=libraries, layout=layout)
        records[layout] = produce_file(task)
    event, candidate = records["event"], records["candidate"]
    assert candidate.layout == "candidate"
    assert (candidate.entries_ita, candidate.entries_hta) == (event.entries_ita, event.entries_hta)
    assert candidate.adler32 != event.adler32
    for tree, prefix in (("ita", "K_"), ("hta", "Btag_")):
        want = read_event_tree(event.path, tree, keep_empty=False)
        with uproot.open(candidate.path) as f:
            rows = f[tree].arrays(library="np")
        ((_, (offsets, columns)),) = want.collections.items()
        counts = np.diff(offsets)
        assert len(rows["__candidate__"]) == counts.sum() > 0
        for name, values in want.columns.items():
            np.testing.assert_array_equal(rows[name], np.repeat(values, counts), err_msg=name)
        for name, values in columns.items():
            assert name.startswith(prefix)
            np.testing.assert_array_equal(rows[name], values, err_msg=name)


def test_prefilter_is_safe(libraries, tmp_path):
    """Filtered and unfiltered files give the same events after the basic selection."""
    selected = {}
    for prefilter in (True, False):
        path = tmp_path / f"f{prefilter}.root"
        produce_file(FileTask("ssbar", 600, 21, str(path), prefilter=prefilter))
        with uproot.open(path) as f:
            t = f["ita"].arrays(
                ["__event__", "nTracks", "E_tot", "K_kaonID", "K_dr", "K_dz", "K_q2rec"]
            )
        good = (t.K_kaonID > 0.9) & (t.K_dr < 0.5) & (abs(t.K_dz) < 3)
        ok = (t.nTracks >= 4) & (t.nTracks <= 10) & (t.E_tot > 4) & (np.sum(good, axis=1) > 0)
        selected[prefilter] = t[ok]
    assert len(selected[True]) == len(selected[False]) > 50
    for name in selected[True].fields:
        assert selected[True][name].tolist() == selected[False][name].tolist(), name


def test_prefilter_keeps_the_prescaled_pion_stream(libraries, tmp_path):
    """Every event the pion processor can select (pion candidate, its prescale) is kept."""
    config = load_config()
    cfg, prescale = config["ita"]["pion"], config["simulation"]["pion_prescale"]
    assert cfg["prescale"] % prescale == 0
    assert cfg["kaon_id_max"] <= PREFILTER["pion_kaon_id_max"]
    tables = {}
    for prefilter in (True, False):
        path = tmp_path / f"p{prefilter}.root"
        task = FileTask("charged", 1500, 23, str(path), libraries=libraries, prefilter=prefilter)
        produce_file(dataclasses.replace(task, pion_prescale=prescale))
        with uproot.open(path) as f:
            t = f["ita"].arrays(["__event__", "nTracks", "E_tot", "K_kaonID", "K_dr", "K_dz"])
        pion = (t.K_kaonID < cfg["kaon_id_max"]) & (t.K_dr < 0.5) & (abs(t.K_dz) < 3)
        kaon = (t.K_kaonID > 0.9) & (t.K_dr < 0.5) & (abs(t.K_dz) < 3)
        basic = (t.nTracks >= 4) & (t.nTracks <= 10) & (t.E_tot > 4)
        stream = basic & (np.sum(pion, axis=1) > 0) & (t.__event__ % cfg["prescale"] == 0)
        tables[prefilter] = (t, stream, basic & (np.sum(kaon, axis=1) > 0))
    (kept, stream, kaons), (full, stream_full, _) = tables[True], tables[False]
    assert np.sum(stream) == np.sum(stream_full) > 20
    assert kept.__event__[stream].tolist() == full.__event__[stream_full].tolist()
    # outside the stream, only events with a kaon candidate were kept
    outside = ~(kaons | (kept.__event__ % prescale == 0))
    assert not np.any(outside)


def test_luminosity_bookkeeping():
    cat = load_samples()
    assert luminosity_fb(cat["ccbar"], 1_300_000) == pytest.approx(1.0)
    # signal: 1985 produced B+- -> K+ nu nubar in 362 fb^-1 at mu = 1 (notes)
    assert 362 / luminosity_fb(cat["signal"], 1) == pytest.approx(1985, rel=0.06)


def test_plan_scales_and_pseudo_data(tmp_path):
    config = load_config()
    config["scale"] = "tiny"
    plan = plan_production(config, tmp_path)
    fraction = config["simulation"]["scales"]["tiny"]["luminosity_fraction"]
    assert plan.data_luminosity["data_on"] == pytest.approx(362 * fraction)
    by, nature = {}, {}
    for t in plan.files:
        if t.weight is not None:  # the nature stream
            key = (t.sample, t.off_resonance)
            nature[key] = nature.get(key, 0.0) + t.n_events * t.weight
            assert t.data
            assert t.tag_boost == config["simulation"]["hta_tag_boost"]
            assert t.path.split("/")[-2] == ("nature_off" if t.off_resonance else "nature_on")
            continue
        key = (t.sample, t.off_resonance, t.data)
        by[key] = by.get(key, 0) + t.n_events
    # MC: 2x the data luminosity for continuum, 5x for B Bbar; data: Poisson, nature's norm
    xs_cc = load_samples()["ccbar"].cross_section_nb * 1e6 * 362 * fraction
    assert by[("ccbar", False, False)] == round(2 * xs_cc)
    assert by[("ccbar", False, True)] == pytest.approx(1.4 * xs_cc, rel=5 / np.sqrt(xs_cc))
    assert ("charged", True, False) not in by  # no B Bbar off resonance
    # the nature stream: every sample nature makes, its weights summing to nature's exact
    # expectation at the data luminosity (continuum x continuum_norm, signal x mu_true)
    assert nature[("ccbar", False)] == pytest.approx(1.4 * xs_cc, rel=1e-12)
    xs_sig = load_samples()["charged"].cross_section_nb * 1e6 * 362 * fraction * 2 * 4.97e-6
    mu_true = config["simulation"]["mu_true"]
    assert nature[("signal", False)] == pytest.approx(mu_true * xs_sig, rel=1e-12)
    assert ("charged", True) not in nature
    assert ("ccbar", True) in nature
    # nature makes B+ -> pi+ K0 (in_data) at its rate; J/psi K+ is a control MC only
    big = load_config()
    big["scale"] = "belle2"
    pik0 = sum(
        t.n_events
        for t in plan_production(big, tmp_path).files
        if t.sample == "pi_k0" and t.data and t.weight is None
    )
    expected = load_samples()["charged"].cross_section_nb * 1e6 * 362 * 2 * 2.38e-5
    assert abs(pik0 - expected) < 3 * np.sqrt(expected)  # a Poisson count (seeded)
    assert ("jpsi_k", False, True) not in by
    assert len({t.seed for t in plan.files}) == len(plan.files)
    assert plan == plan_production(config, tmp_path)  # same seed, same plan
    assert list(tmp_path.iterdir()) == []  # planning writes nothing


def test_off_resonance_mc_has_its_own_factor(tmp_path):
    config = load_config()
    config["scale"] = "tiny"
    tiny = config["simulation"]["scales"]["tiny"]
    fraction = tiny["luminosity_fraction"]

    def events(cfg):
        by = {}
        for t in plan_production(cfg, tmp_path).files:
            if t.weight is None:
                key = (t.sample, t.off_resonance, t.data)
                by[key] = by.get(key, 0) + t.n_events
        return by

    before = events(config)
    tiny["mc_factor_off_resonance"] = {"continuum": 8}
    after = events(config)
    xs_off = load_samples()["ccbar"].cross_section_nb * 1e6 * 42 * fraction
    assert before[("ccbar", True, False)] == round(2 * xs_off)
    assert after[("ccbar", True, False)] == round(8 * xs_off)
    # the rest is untouched: on-resonance MC, tau pairs off resonance, the data
    changed = {k for k in after if after[k] != before[k]}
    assert changed == {(s, True, False) for s in ("uubar", "ddbar", "ssbar", "ccbar")}


def test_off_resonance_nature_has_its_own_factor(tmp_path):
    """More off-resonance nature events, each lighter: nature's expectation stays."""
    config = load_config()
    config["scale"] = "default"
    spec = config["simulation"]["scales"]["default"]["nature"]

    def nature(cfg):
        by = {}
        for t in plan_production(cfg, tmp_path).files:
            if t.weight is not None:
                events, total = by.get((t.sample, t.off_resonance), (0, 0.0))
                by[(t.sample, t.off_resonance)] = (
                    events + t.n_events,
                    total + t.n_events * t.weight,
                )
        return by

    before = nature(config)
    spec["mc_factor_off_resonance"] = {"continuum": 20}
    after = nature(config)
    changed = {k for k in after if after[k][0] != before[k][0]}
    assert changed == {(s, True) for s in ("uubar", "ddbar", "ssbar", "ccbar")}
    for key in changed:
        factor = spec["mc_factor"]["continuum"]
        assert after[key][0] == pytest.approx(before[key][0] * 20 / factor, rel=1e-4)
        assert after[key][1] == pytest.approx(before[key][1], rel=1e-9)  # the same expectation


def test_off_resonance_data_have_their_own_luminosity(tmp_path):
    """More off-resonance pseudo-data (the BDTc's), the MC unchanged, nature's weights with them."""
    config = load_config()
    config["scale"] = "default"
    scale = config["simulation"]["scales"]["default"]

    def plan_of(cfg):
        by = {}
        plan = plan_production(cfg, tmp_path)
        for t in plan.files:
            key = (t.sample, t.off_resonance, t.data, t.weight is not None)
            events, total = by.get(key, (0, 0.0))
            by[key] = (events + t.n_events, total + t.n_events * (t.weight or 1.0))
        return plan, by

    scale["off_resonance_data_factor"] = 1
    plan_before, before = plan_of(config)
    scale["off_resonance_data_factor"] = 10
    plan_after, after = plan_of(config)
    off = plan_before.data_luminosity["data_off"]
    assert plan_after.data_luminosity["data_off"] == pytest.approx(10 * off, rel=1e-12)
    assert plan_after.data_luminosity["nature_off"] == pytest.approx(10 * off, rel=1e-12)
    for name in ("data_on", "nature_on"):
        assert plan_after.data_luminosity[name] == plan_before.data_luminosity[name]
    xs_cc = load_samples()["ccbar"].cross_section_nb * 1e6
    data_off = after[("ccbar", True, True, False)][0]
    assert data_off == pytest.approx(1.4 * xs_cc * 10 * off, rel=5 / np.sqrt(data_off))
    # nature's off-resonance events: as many, each 10x heavier (nature's expectation there)
    nature = after[("ccbar", True, True, True)]
    assert nature[0] == before[("ccbar", True, True, True)][0]
    assert nature[1] == pytest.approx(1.4 * xs_cc * 10 * off, rel=1e-12)
    changed = {k for k in after if after[k] != before[k]}
    offres = ("uubar", "ddbar", "ssbar", "ccbar", "taupair")
    offres_data = {(s, True, True, w) for s in offres for w in (False, True)}
    assert changed == {k for k in offres_data if k in after}  # the MC and on resonance: as before
    assert ("ccbar", True, False, False) in after


def test_belle2_scale_injects_mu_true():
    config = load_config()
    config["scale"] = "belle2"
    plan = plan_production(config, "/nonexistent")
    signal = sum(
        t.n_events for t in plan.files if t.sample == "signal" and t.data and not t.embedded
    )
    expected = 4.6 * 1985  # mu_true x produced signal in 362 fb^-1 (notes)
    assert signal == pytest.approx(expected, abs=5 * np.sqrt(expected) + 0.06 * expected)
    continuum = sum(t.n_events for t in plan.files if t.data and t.sample.endswith("bar"))
    assert continuum == pytest.approx(1.4 * 3.69e6 * 404, rel=1e-3)  # on + off, x 1.4


def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path):
    with pytest.raises(ConfigError, match="unknown sample 'bogus'"):
        produce_file(FileTask("bogus", 10, 1, str(tmp_path / "x.root")))
    with pytest.raises(ConfigError, match="no B Bbar production off resonance"):
        produce_file(FileTask("signal", 10, 1, str(tmp_path / "y.root"), off_resonance=True))
    config = load_config()
    config["simulation"]["luminosity_fb"]["on_resonance"] = -1.0
    with pytest.raises(ConfigError, match="on-resonance luminosity"):
        plan_production(config, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_every_continuum_sample_has_a_generator():
    from knunu.simulation.generators import PROCESSES

    for name, sample in load_samples().items():
        if sample.kind in ("continuum", "taupair"):
            assert name in PROCESSES


def _weighted_hist(path, branch, edges):
    with uproot.open(path) as f:
        t = f["ita"]
        x = t[branch].array(library="np")
        w = t["__weight__"].array(library="np")
    return np.histogram(x, edges, weights=w)[0], np.histogram(x, edges, weights=w**2)[0]


@pytest.mark.parametrize(
    ("sample", "aim", "einv_tail"),
    [
        ("charged", Targeting(slope=1.5, cap_gev=2.0, threshold_gev=2.5, keep_below=0.3), True),
        ("ccbar", Targeting(threshold_gev=1.0, keep_below=0.3), True),
        # decays biased towards missing energy (charm semileptonic, K0 -> K_L), exact weights
        ("ccbar", Targeting(semileptonic=3.0, k_long=3.0), False),
        ("uubar", Targeting(k_long=3.0, threshold_gev=1.0, keep_below=0.3), True),
        # the kaon side: aims at hard kaons, not at the E_inv tail (test_kaon_side_pairs_...)
        ("mixed", Targeting(slope=1.5, cap_gev=3.5, mix=0.5, kaon_p_gev=1.1, threshold_gev=2.5,
                            keep_below=0.3), False),
    ],
)  # fmt: skip
def test_targeted_and_untargeted_production_agree(libraries, tmp_path, sample, aim, einv_tail):
    """Targeting moves statistics, not expectations: weighted sums agree within MC errors."""
    n = 6000
    plain = produce_file(FileTask(sample, n, 21, str(tmp_path / "a.root"), libraries=libraries))
    aimed = produce_file(
        FileTask(sample, n, 22, str(tmp_path / "b.root"), libraries=libraries, targeting=aim)
    )
    # the sum of weights estimates the natural events made: exact up to its MC error
    with uproot.open(tmp_path / "b.root") as f:
        assert f["ita"]["mcEinv"].array(library="np").min() >= 0
    assert plain.sum_weights == pytest.approx(plain.generated, rel=0.02)
    assert aimed.sum_weights == pytest.approx(aimed.generated, rel=0.05)
    if aim.keep_below < 1:
        assert aimed.generated > n  # thinned: more events made than written
    # the signal-region-like tail (large invisible energy) gets the statistics
    edges = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 6.0])
    values, variances = {}, {}
    for key, path, rec in (("plain", "a.root", plain), ("aimed", "b.root", aimed)):
        v, v2 = _weighted_hist(tmp_path / path, "mcEinv", edges)
        values[key], variances[key] = v / rec.sum_weights, v2 / rec.sum_weights**2
    pull = (values["aimed"] - values["plain"]) / np.sqrt(variances["aimed"] + variances["plain"])
    assert np.all(np.abs(pull) < 4), pull
    chi2 = float(np.sum(pull**2))
    assert chi2 < 20, chi2  # 5 bins
    # ... with smaller relative errors in the large-E_inv bins than the untargeted sample
    rel = {k: np.sqrt(variances[k][-2:]) / values[k][-2:] for k in values}
    if einv_tail:
        assert np.all(rel["aimed"] < rel["plain"])


def test_biased_library_draws_carry_exact_weights(libraries):
    from knunu.simulation.production import entry_bias, load_mixture

    mix = load_mixture(libraries)
    rng = np.random.default_rng(3)
    species = np.full(200_000, 521)
    plain, w0 = mix.draw(species, rng)
    aimed, w1 = mix.draw(species, rng, bias=entry_bias(libraries, 2.0, 2.0))
    einv = entry_bias(libraries, 1.0, 100.0)  # exp(E_inv): any function of the entry will do
    for f in (np.ones_like(einv), np.log(einv), mix.library.n_kl.astype(float)):
        a, b = np.mean(w0 * f[plain]), np.mean(w1 * f[aimed])
        err = np.hypot(np.std(w0 * f[plain]), np.std(w1 * f[aimed])) / np.sqrt(len(species))
        assert abs(a - b) < 5 * err
    assert np.mean(np.log(einv)[aimed]) > np.mean(np.log(einv)[plain]) + 0.3


def test_the_nature_stream_is_weighted_data_with_boosted_tags(libraries, tmp_path):
    def make(name, boost):
        task = FileTask(
            "charged", 3000, 31, str(tmp_path / name), data=True, libraries=libraries,
            weight=0.5, tag_boost=boost,
        )  # fmt: skip
        return produce_file(task)

    plain, boosted = make("plain.root", 1.0), make("boosted.root", 50.0)
    assert boosted.nature
    assert boosted.entries_hta > 5 * plain.entries_hta  # tags drawn 50x more often
    with uproot.open(tmp_path / "boosted.root") as f:
        assert "mcProcess" not in f["ita"].keys()  # noqa: SIM118 - a TTree: no truth
        assert set(f["ita"]["__weight__"].array(library="np").tolist()) == {0.5}
        hta = f["hta"]["__weight__"].array(library="np")
    assert np.all(hta <= 0.5)  # nature's weight times the tag probability p / q
    assert np.any(hta < 0.5)


@pytest.mark.parametrize(
    ("natural", "hta_share", "hta"),
    [
        (False, 0.0, ()),
        (True, 0.0, ()),
        (False, 0.1, (1.5,)),
        (True, 0.1, (1.5,)),
        (False, 0.1, (1.5, 3.0)),
        (True, 0.1, (1.5, 3.0)),
        (False, 0.1, (1.5, 3.0, 0.03)),
        (True, 0.1, (1.5, 3.0, 0.2, 0.047)),
    ],
)
def test_kaon_side_pairs_carry_exact_weights(libraries, natural, hta_share, hta):
    """The kaon-side proposal (and the HTA's share) moves pairs, not expectations.

    MC and the weighted nature stream; with ``hta_share`` a tenth of the pairs go to a kaon
    among few charged particles next to a fully visible B (the hadronic tag's events), also
    with the photon-energy tilt of the HTA's signal side, its fakes (``hta_misid``) and
    the photons the calorimeter misses (``hta_photon_loss``).
    """
    from knunu.simulation.production import (
        entry_hardest,
        entry_hta_factors,
        entry_invisible_energy,
        entry_kaon_factor,
        load_mixture,
    )

    mix = load_mixture(libraries)
    rng = np.random.default_rng(5)
    first = np.where(rng.random(200_000) < 0.5, 521, -521)
    share = 0.9 - hta_share
    factor = entry_kaon_factor(libraries, 1.1, 1.5, 3.5, 0.5, 0.06)
    signal_side, tag_side = entry_hta_factors(libraries, *(hta or (1.5,)))
    tag = (signal_side, tag_side, hta_share) if hta_share else None
    e1, e2, w = mix.draw_pairs(first, rng, factor, share, natural=natural, tag=tag)
    p1, w1 = mix.draw(first, rng, natural=natural)
    p2, w2 = mix.draw(-first, rng, natural=natural)
    w0 = w1 * w2
    kaon, einv = entry_hardest(libraries), entry_invisible_energy(libraries)
    hard = (np.maximum(kaon[e1], kaon[e2]) > 1.1).astype(float)
    hard0 = (np.maximum(kaon[p1], kaon[p2]) > 1.1).astype(float)

    def hta_like(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # a lone kaon, a visible B
        lone = signal_side > 0.5
        return ((lone[a] & (tag_side[b] > 0)) | (lone[b] & (tag_side[a] > 0))).astype(float)

    for f, f0 in (
        (np.ones(len(w)), np.ones(len(w))),  # the weights' mean: 1, exactly in expectation
        (einv[e1] + einv[e2], einv[p1] + einv[p2]),
        (hard, hard0),
        (hard * einv[e1], hard0 * einv[p1]),
        (mix.library.code[e2] == 1, mix.library.code[p2] == 1),  # B -> D(*) l nu
        (hta_like(e1, e2), hta_like(p1, p2)),
    ):
        a, b = np.mean(w * f), np.mean(w0 * f0)
        err = np.hypot(np.std(w * f), np.std(w0 * f0)) / np.sqrt(len(w))
        assert abs(a - b) < 5 * err, (a, b, err)
    assert abs(np.mean(w0) - 1) < 0.01
    # a hard kaon in most pairs (about 10 % without targeting) ...
    assert hard.mean() > 0.6 > 0.2 > hard0.mean()
    # ... the HTA's pairs 10x more often with its share than without ...
    if hta_share:
        assert hta_like(e1, e2).mean() > 10 * np.average(hta_like(p1, p2), weights=w0)
    # ... and no pair heavier than 1 / (1 - share) times its untargeted weight
    untargeted = np.zeros(len(mix.library))
    for sp in (521, -521):
        for start, size, _, weight in mix._rows(sp, natural):
            untargeted[start : start + size] = weight
    limit = 1 / (1 - share - hta_share)
    assert np.all(w <= untargeted[e1] * untargeted[e2] * limit * (1 + 1e-12))
    # the weight is the untargeted one over Mixture.density (what study_targeting re-weights
    # with), also for factors passed as new arrays
    again = None if tag is None else (signal_side.copy(), tag_side.copy(), hta_share)
    ratio = mix.density(first, e1, e2, factor.copy(), share, natural, again)
    assert np.allclose(w * ratio, untargeted[e1] * untargeted[e2], rtol=1e-12, atol=0)


def test_kaon_side_factor_counts_fakes_and_needs_a_hard_kaon(libraries):
    from knunu.simulation.production import entry_hardest, entry_kaon_factor, load_mixture

    factor = entry_kaon_factor(libraries, 1.1, 1.5, 3.5, 0.5, 0.06)
    kaon = entry_hardest(libraries) > 1.1
    other = entry_hardest(libraries, kaons=False) > 1.1
    assert np.all(factor[~kaon & ~other] == 0)
    assert np.all(factor[kaon] > 0)
    fake = ~kaon & other
    assert fake.any()
    assert factor[fake].max() < 0.06 * factor[kaon].max() * (1 + 1e-12)
    mix = load_mixture(libraries)
    with pytest.raises(ConfigError, match="no library entry has a positive targeting factor"):
        mix.draw_pairs(np.array([521]), np.random.default_rng(1), np.zeros(len(mix.library)), 0.5)


def test_neutral_pairs_count_fakes_by_their_own_misid(libraries):
    """``kaon_misid_neutral`` sets the fakes' factor of the B0B0bar pairs only."""
    from knunu.simulation.production import Targeting, entry_kaon_factor, pair_proposal

    aim = Targeting(kaon_p_gev=1.1, slope=1.5, cap_gev=3.5, mix=0.5, kaon_share=0.5,
                    kaon_misid=0.02, kaon_misid_neutral=0.2, hta_share=0.3)  # fmt: skip
    charged, share_c, tag = pair_proposal(libraries, aim, neutral=False)
    neutral, share_n, none = pair_proposal(libraries, aim, neutral=True)
    assert np.array_equal(charged, entry_kaon_factor(libraries, 1.1, 1.5, 3.5, 0.5, 0.02))
    assert np.array_equal(neutral, entry_kaon_factor(libraries, 1.1, 1.5, 3.5, 0.5, 0.2))
    assert (share_c, share_n, none) == (0.5, 0.8, None)
    assert tag is not None
    same = dataclasses.replace(aim, kaon_misid_neutral=None)
    assert np.array_equal(pair_proposal(libraries, same, neutral=True)[0], charged)
    with pytest.raises(ConfigError, match="invalid"):
        dataclasses.replace(aim, kaon_misid_neutral=1.5)


def test_soft_kaons_count_their_share_of_a_hard_kaon(libraries):
    """``soft = (p, s)``: a kaon between p and the hard threshold counts s of a hard kaon."""
    from knunu.simulation.production import (
        entry_hardest,
        entry_invisible_energy,
        entry_kaon_factor,
    )

    base = entry_kaon_factor(libraries, 1.1, 1.5, 3.5, 1.0, 0.06)
    soft = entry_kaon_factor(libraries, 1.1, 1.5, 3.5, 1.0, 0.06, (0.7, 0.25))
    kaon = entry_hardest(libraries)
    near = (kaon > 0.7) & (kaon <= 1.1)
    assert near.any()
    assert np.array_equal(soft[~near], base[~near])
    # a quarter of a hard kaon's E_inv tilt, or the fake's factor where that is larger
    tilt = np.exp(1.5 * np.minimum(entry_invisible_energy(libraries), 3.5))
    assert np.allclose(soft[near], np.maximum(0.25 * tilt[near], base[near]), rtol=1e-12)
    assert (soft[near] > base[near]).any()


def test_detector_copies_split_the_weight_and_share_their_generated_event(tmp_path):
    """Copies: the events Pythia made once, the class's again through the detector."""
    n, aim = 3000, Targeting(k_long=2.0, copies=4, copy_kaon_p_gev=1.2, copy_e_inv_gev=1.0)
    kw = {"prefilter": False}  # every entry in the ITA tree
    biased = Targeting(k_long=2.0)  # the same generation, one detector pass
    plain = produce_file(FileTask("ssbar", n, 31, str(tmp_path / "a.root"), targeting=biased, **kw))
    task = FileTask("ssbar", n, 31, str(tmp_path / "b.root"), targeting=aim, **kw)
    copied = produce_file(task)
    names = ["__run__", "__event__", "__weight__", "mcCopyOf", "mcEinv", "nTracks", "E_miss"]
    with uproot.open(tmp_path / "a.root") as f:
        a = f["ita"].arrays(names, library="np")
    with uproot.open(tmp_path / "b.root") as f:
        b = f["ita"].arrays(names, library="np")
    # the same generated events (one seed), every one accounted for, the weights' sum kept
    assert copied.generated == plain.generated == copied.events == n
    assert copied.sum_weights == pytest.approx(plain.sum_weights, rel=1e-12)
    assert len(b["__event__"]) == n + copied.copies
    np.testing.assert_array_equal(b["__event__"], np.arange(n + copied.copies))
    np.testing.assert_array_equal(b["mcEinv"][:n], a["mcEinv"])
    source = b["mcCopyOf"]
    in_class = source[:n] >= 0
    assert 0.1 < in_class.mean() < 0.5  # a quarter of ssbar (K_L x2) is in the class
    np.testing.assert_array_equal(source[:n][in_class], np.flatnonzero(in_class))
    assert np.all(source[n:] >= 0)
    assert copied.copies == 3 * in_class.sum()
    assert np.all(b["mcEinv"][in_class.nonzero()[0]] > 1.0)
    # each copy: the event it copies, a quarter of its weight, and a detector of its own
    np.testing.assert_array_equal(b["mcEinv"][n:], a["mcEinv"][source[n:]])
    per_event = np.bincount(np.where(source >= 0, source, b["__event__"]), b["__weight__"])
    np.testing.assert_allclose(per_event, a["__weight__"], rtol=1e-6)
    same = (b["nTracks"][n:] == b["nTracks"][source[n:]]) & (
        b["E_miss"][n:] == b["E_miss"][source[n:]]
    )
    assert same.mean() < 0.5
    # one fold per generated event: a BDT never scores a copy of an event it trained on
    folds = fold_of(b["__run__"], fold_events(b), 5)
    np.testing.assert_array_equal(folds[n:], folds[source[n:]])


def test_detector_copies_keep_expectations_and_add_statistics(tmp_path):
    """Weighted E_miss spectra of a copied and a plain production agree within the
    group-aware MC errors, and the copies shrink the errors of the large-E_miss tail."""
    n, edges = 6000, np.array([0.0, 2.0, 3.0, 4.0, 5.0, 11.0])
    aim = Targeting(copies=4, copy_kaon_p_gev=1.0, copy_e_inv_gev=1.0)
    values, variances = {}, {}
    for key, seed, target in (("plain", 41, None), ("copied", 42, aim)):
        path = tmp_path / f"{key}.root"
        rec = produce_file(FileTask("ssbar", n, seed, str(path), prefilter=False, targeting=target))
        with uproot.open(path) as f:
            cols = f["ita"].arrays(["__run__", "__weight__", "mcCopyOf", "E_miss"], library="np")
        flat = np.digitize(cols["E_miss"], edges) - 1
        flat[(flat < 0) | (flat >= len(edges) - 1)] = -1
        inside, w = flat >= 0, cols["__weight__"]
        v = np.bincount(flat[inside], w[inside], minlength=len(edges) - 1)
        v2 = np.bincount(flat[inside], w[inside] ** 2, minlength=len(edges) - 1)
        v2 = v2 + extra_variance(entry_sums(groups(cols), flat, len(edges) - 1, w), len(edges) - 1)
        values[key], variances[key] = v / rec.sum_weights, v2 / rec.sum_weights**2
    pull = (values["copied"] - values["plain"]) / np.sqrt(variances["copied"] + variances["plain"])
    assert np.all(np.abs(pull) < 4), pull
    assert float(np.sum(pull**2)) < 20, pull
    tail = np.sqrt(variances["copied"][-2:]) / values["copied"][-2:]
    assert np.all(tail < np.sqrt(variances["plain"][-2:]) / values["plain"][-2:])


def test_copies_are_for_mc_only(tmp_path):
    """Pseudo-data and the nature stream are made as nature makes them: one detector each."""
    aim = Targeting(copies=4)
    rec = produce_file(
        FileTask("ssbar", 300, 51, str(tmp_path / "d.root"), data=True, targeting=aim)
    )
    assert rec.copies == 0
    assert rec.entries_ita <= 300
    with pytest.raises(ConfigError, match="invalid"):
        Targeting(copies=0)
