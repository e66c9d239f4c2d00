"""The measurement at 362 fb^-1: histogram-level pseudo-data, scaled templates, blinding."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import hist
import numpy as np
import pyhf
import pytest
import scipy.stats
import uproot

from knunu.config import load_config
from knunu.errors import InputError
from knunu.fits.catalogue import load_catalogue
from knunu.fits.infer import Likelihood
from knunu.measurement import headline_lines, measurement_histograms, run_measurement

_spec = importlib.util.spec_from_file_location(
    "histfile", Path(__file__).parents[1] / "fits" / "histfile.py"
)
histfile = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(histfile)

NATURE_WEIGHT = 0.05  # the nature stream: MC twenty times the data (variance = w x value)


def _with_nature(path: Path, hists: dict[str, np.ndarray], mu_true: float, weight=NATURE_WEIGHT):
    """Add ``{histogram}_nature_nominal``: nature's expectation at the data luminosity."""
    with uproot.update(path) as f:
        for name, samples in (
            ("ita_on", histfile.ITA_SAMPLES),
            ("ita_off", histfile.ITA_OFFRES_SAMPLES),
            ("hta", histfile.HTA_SAMPLES),
        ):
            total = sum(
                hists[f"{name}_{s}_nominal"] * (mu_true if s == "signal" else 1.0) for s in samples
            )
            h = _hist(total.ndim)
            h.view().value = total
            h.view().variance = total * weight
            f[f"{name}_nature_nominal"] = h


def _hist(ndim: int) -> hist.Hist:
    if ndim == 2:
        return hist.Hist(
            hist.axis.Variable(histfile.ETA_EDGES, name="eta"),
            hist.axis.Variable(histfile.Q2_EDGES, name="q2rec"),
            storage=hist.storage.Weight(),
        )
    return hist.Hist(hist.axis.Regular(6, 0.4, 1.0, name="eta"), storage=hist.storage.Weight())


@pytest.fixture
def histograms(tmp_path):
    path = tmp_path / "histograms.root"
    hists = histfile.write_histogram_file(path, load_catalogue())
    _with_nature(path, hists, mu_true=1.0)
    return path, hists


def test_templates_keep_their_mc_errors_and_pseudo_data_are_poisson(histograms, tmp_path):
    path, hists = histograms
    lum, target = {"on": 0.5, "off": 0.05}, {"on": 362.0, "off": 42.0}
    scaled = measurement_histograms(path, tmp_path / "m.root", lum, target, seed=11)
    f_on, f_off = 362.0 / 0.5, 42.0 / 0.05
    assert scaled.factors == {"on": f_on, "off": f_off}
    with uproot.open(path) as a, uproot.open(scaled.path) as b:
        for key, factor in (("ita_on_ccbar_nominal", f_on), ("ita_off_uubar_nominal", f_off)):
            np.testing.assert_allclose(b[key].values(), a[key].values() * factor, rtol=1e-12)
            # a larger luminosity is not a larger MC: the relative MC error is unchanged
            np.testing.assert_allclose(
                b[key].variances(), a[key].variances() * factor**2, rtol=1e-12
            )
        key = "hta_bbbar_extra_energy_up"
        if key in a:
            np.testing.assert_allclose(b[key].values(), a[key].values() * f_on, rtol=1e-12)
        data = b["ita_on_data_nominal"].values()
        expected = a["ita_on_nature_nominal"].values() * f_on
        assert "ita_on_nature_nominal" not in b  # nature is seen only through its counts
    assert np.all(data == np.round(data))
    pulls = (data - expected) / np.sqrt(expected)
    assert np.all(np.abs(pulls) < 5)
    assert scaled.pseudo_data["ita_on"] == data.sum()
    # reproducible from the seed, different for another seed
    again = measurement_histograms(path, tmp_path / "m2.root", lum, target, seed=11)
    other = measurement_histograms(path, tmp_path / "m3.root", lum, target, seed=12)
    assert again.pseudo_data == scaled.pseudo_data
    assert other.pseudo_data != scaled.pseudo_data
    # the pseudo-data come from the nature stream alone: other templates, the same counts
    with uproot.update(path) as f:
        f["ita_on_ccbar_nominal"] = f["ita_on_ccbar_nominal"].to_hist() * 3.0
    changed = measurement_histograms(path, tmp_path / "m4.root", lum, target, seed=11)
    assert changed.pseudo_data == scaled.pseudo_data
    # effective MC events: (sum w)^2 / sum w^2 over the signal region (eta > 0.94)
    bkg = next(m for m in scaled.mc if m.histogram == "ita_on" and m.sample == "background")
    values = sum(
        hists[f"ita_on_{s}_nominal"][1:] for s in histfile.ITA_SAMPLES if s != "signal"
    ).sum()
    assert bkg.effective == pytest.approx(values / histfile.MC_WEIGHT, rel=1e-9)
    assert bkg.min_ratio == pytest.approx(1 / (histfile.MC_WEIGHT * f_on), rel=1e-9)
    assert scaled.merged == ()


def test_a_bin_without_template_mc_keeps_its_pseudo_data_merged(histograms, tmp_path):
    """Pseudo-data where no template MC is are kept; the workspace merges their bin."""
    from knunu.fits.build import write_workspaces

    path, _ = histograms
    with uproot.update(path) as f:
        for sample in histfile.ITA_OFFRES_SAMPLES:
            h = f[f"ita_off_{sample}_nominal"].to_hist()
            h.view().value[3, 0] = 0.0
            h.view().variance[3, 0] = 0.0
            f[f"ita_off_{sample}_nominal"] = h
    lum, target = {"on": 1.0, "off": 1.0}, {"on": 100.0, "off": 100.0}
    scaled = measurement_histograms(path, tmp_path / "m.root", lum, target, seed=3)
    assert [(d[0], d[1]) for d in scaled.merged] == [("ita_off", 9)]
    events = scaled.merged[0][2]
    assert events > 0
    with uproot.open(scaled.path) as b:
        assert b["ita_off_data_nominal"].values()[3, 0] == events
    paths = write_workspaces(scaled.path, tmp_path / "ws", load_catalogue(), 0.0, ("ita",))
    spec = json.loads(paths["ita"].read_text())
    observed = {o["name"]: sum(o["data"]) for o in spec["observations"]}
    off = sum(n for name, n in observed.items() if name.startswith("ita_off"))
    assert off == scaled.pseudo_data["ita_off"]  # every pseudo-data event is in the fit
    bins = json.loads((tmp_path / "ws" / "bins.json").read_text())
    merged = [b["label"] for c, d in bins.items() if c.startswith("ita_off") for b in d["bins"]]
    assert any(" + " in label for label in merged)  # the plots name the merged bin


def test_a_run_without_nature_stream_is_an_input_error(tmp_path):
    path = tmp_path / "histograms.root"
    histfile.write_histogram_file(path, load_catalogue())
    with pytest.raises(InputError, match="no nature stream"):
        measurement_histograms(
            path, tmp_path / "m.root", {"on": 1, "off": 1}, {"on": 2, "off": 2}, 1
        )


def test_event_level_and_histogram_level_pseudo_data_give_the_same_fitted_mu(tmp_path):
    """The fit sees counts per bin: events drawn one by one and binned, or Poisson counts per
    bin of the same expectation (through the measurement's own pseudo-data function), give
    the same distribution of the fitted mu."""
    edges = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    n_sig, n_bkg = 40.0, 400.0  # expected events (signal at mu = 1)
    # densities on [0, 1]: signal rises as 2x, background falls as 2(1 - x)
    sig = np.diff(edges**2)
    bkg = -np.diff((1 - edges) ** 2)
    model = pyhf.simplemodels.uncorrelated_background(
        list(n_sig * sig), list(n_bkg * bkg), list(0.03 * n_bkg * bkg)
    )
    spec = {
        "channels": model.spec["channels"],
        "observations": [{"name": "singlechannel", "data": list(n_sig * sig + n_bkg * bkg)}],
        "measurements": [
            {"name": "m", "config": {"poi": "mu", "parameters": [
                {"name": "mu", "bounds": [[-5.0, 10.0]]}]}}
        ],
        "version": "1.0.0",
    }  # fmt: skip
    lh = Likelihood.from_workspace(pyhf.Workspace(spec))
    nmain = len(sig)
    aux = lh.data[nmain:]
    rng = np.random.default_rng(5)
    toys = 300

    def fit(counts):
        return lh.with_data(np.concatenate([counts, aux])).fit().x[lh.poi]

    event_level = []
    for _ in range(toys):
        x_sig = np.sqrt(rng.random(rng.poisson(n_sig)))  # density 2x
        x_bkg = 1 - np.sqrt(rng.random(rng.poisson(n_bkg)))  # density 2(1 - x)
        counts = np.histogram(np.concatenate([x_sig, x_bkg]), edges)[0].astype(float)
        event_level.append(fit(counts))
    # histogram level: nature's expectation in a histogram file, Poisson counts drawn from it
    h = hist.Hist(hist.axis.Variable(edges, name="eta"), storage=hist.storage.Weight())
    h.view().value = n_sig * sig + n_bkg * bkg
    h.view().variance = h.values() * 0.01
    path = tmp_path / "h.root"
    with uproot.recreate(path) as f:
        f["hta_nature_nominal"] = h
        for sample, values in (("signal", n_sig * sig), ("bbbar", n_bkg * bkg)):
            t = h.copy()
            t.view().value = values
            f[f"hta_{sample}_nominal"] = t
        for sample in ("uds", "ccbar"):
            t = h.copy()
            t.view().value = np.zeros(nmain)
            t.view().variance = np.zeros(nmain)
            f[f"hta_{sample}_nominal"] = t
    histogram_level = []
    one = {"on": 1.0, "off": 1.0}
    for k in range(toys):
        out = measurement_histograms(path, tmp_path / "p.root", one, one, seed=k)
        with uproot.open(out.path) as f:
            histogram_level.append(fit(f["hta_data_nominal"].values()))
    a, b = np.asarray(event_level), np.asarray(histogram_level)
    assert scipy.stats.ks_2samp(a, b).pvalue > 0.001
    assert abs(a.mean() - b.mean()) < 4 * np.hypot(a.std(), b.std()) / np.sqrt(toys)
    assert abs(a.mean() - 1.0) < 4 * a.std() / np.sqrt(toys)  # both are unbiased
    assert 0.8 < a.std() / b.std() < 1.25


SECRET = 3.1415


@pytest.fixture
def run_dir(tmp_path):
    """A run directory with histograms whose nature stream carries signal at SECRET."""
    run = tmp_path / "run"
    (run / "ntuples").mkdir(parents=True)
    lum = {"data_on": 1.0, "data_off": 0.116, "nature_on": 1.0, "nature_off": 0.116}
    catalogue = {"datasets": {k: {"luminosity_fb": v} for k, v in lum.items()}}
    (run / "ntuples" / "catalogue.json").write_text(json.dumps(catalogue))
    hists = histfile.write_histogram_file(run / "histograms.root", load_catalogue())
    _with_nature(run / "histograms.root", hists, mu_true=SECRET)
    return run


def _config(blind: bool):
    config = copy.deepcopy(load_config())
    config["blind"] = blind
    config["seed"] = 5
    config["simulation"]["mu_true"] = SECRET
    config["simulation"]["luminosity_fb"] = {"on_resonance": 20.0, "off_resonance": 2.32}
    config["measurement"].update(
        injection_mu=[0.0, 5.0], injection_toys=4, gof_toys=10, impacts=blind
    )
    return config


@pytest.mark.slow
def test_blinded_until_unblinded_then_mu_true_is_recovered(run_dir):
    summary = run_measurement(_config(blind=True), run_dir)
    text = "\n".join(headline_lines(summary))
    assert "BLINDED" in text
    assert summary["observed"] is None
    assert "mu_true" not in summary
    # neither the secret nor any observed mu is printed or stored before unblinding
    for path in (run_dir / "measurement").rglob("*.json"):
        assert "3.141" not in path.read_text(), path
    assert "3.141" not in text
    assert "mu_true" not in text
    assert {r["analysis"] for r in summary["expected"]} == {"combined", "ita", "hta"}
    for r in summary["expected"]:
        assert r["mu"] == pytest.approx(4.6, abs=1e-3)  # Asimov at expected_mu, not the truth
        assert 0 < r["mu_hesse"] < 10
        # what its sigma(mu) is made of: the same total, every share below it
        parts = summary["breakdown"][r["analysis"]]
        assert parts["sigma"] == pytest.approx(r["mu_hesse"], rel=1e-4)
        assert parts["stat"] == pytest.approx(r["stat"], rel=1e-4)
        assert all(0 <= s["share"] <= parts["sigma"] for s in parts["shares"])
    assert "What limits" not in text  # the report's table; the headline has a line per model
    assert sum(line.startswith("expected sigma(mu) ") for line in text.splitlines()) == 3
    assert all(0 <= q["p_value"] <= 1 for q in summary["fit_quality"].values())
    assert summary["injection"]["failed"] == 0

    summary = run_measurement(_config(blind=False), run_dir)
    text = "\n".join(headline_lines(summary))
    assert "UNBLINDED" in text
    assert f"mu_true = {SECRET:g}" in text
    for r in summary["observed"]:
        assert abs(r["mu"] - SECRET) < 2 * r["mu_hesse"], r["analysis"]


def test_a_production_without_nature_stream_is_its_own_measurement(run_dir):
    """The belle2 scale has no nature stream: its event-level pseudo-data are the measurement."""
    path = run_dir / "ntuples" / "catalogue.json"
    doc = json.loads(path.read_text())
    del doc["datasets"]["nature_on"], doc["datasets"]["nature_off"]
    path.write_text(json.dumps(doc))
    summary = run_measurement(_config(blind=True), run_dir)
    assert "no nature stream" in summary["skipped"]
    assert headline_lines(summary)[0].startswith("Measurement at Belle II's luminosity: no nature")


def test_factorised_templates_replace_the_filled_ones_with_their_systematic(histograms, tmp_path):
    """Loose histograms in the file: the configured ITA templates are factorised (every
    variation), carry the factorisation systematic, and the workspace fits with it."""
    from knunu.fits import factorise as fz
    from knunu.fits.build import write_workspaces
    from knunu.measurement import factorisation_systematics

    path, hists = histograms
    rng = np.random.default_rng(21)
    centres = (fz.LOOSE_EDGES[:-1] + fz.LOOSE_EDGES[1:]) / 2
    shape = (1 - centres)[:, None] ** 1.5 * np.array([0.2, 0.3, 0.5])[None, :]
    with uproot.open(path) as f:
        names = [k.split(";")[0] for k in f.keys()]  # noqa: SIM118 - a ROOT directory
        variations = [k[len("ita_on_ccbar_") :] for k in names if k.startswith("ita_on_ccbar_")]
    thin = next(v for v in variations if v != "nominal")
    with uproot.update(path) as f:
        for variation in variations:
            h = hist.Hist(
                hist.axis.Regular(50, 0.5, 1.0, name="eta"),
                hist.axis.Variable(histfile.Q2_EDGES, name="q2rec"),
                storage=hist.storage.Weight(),
            )
            values = rng.poisson(2000 * shape / shape.sum() * 50) * 0.01
            variances = values * 0.01
            if variation == "nominal":
                loose_values = [values[30:, j] * 362.0 / 0.5 for j in range(3)]
                nominal_loose = values[30:].sum(axis=0)
                nominal_values = values
            if variation == thin:  # one event per q2rec bin: too few to fit a shape
                values = np.zeros_like(values)
                values[40] = [0.2, 0.3, 0.5]
                variances = values**2
            h.view().value = values
            h.view().variance = variances
            f[f"ita_on_loose_ccbar_{variation}"] = h
    spec = {"samples": ["ccbar", "uubar"], "loose_eta": 0.8, "replicas": 50}
    lum, target = {"on": 0.5, "off": 0.05}, {"on": 362.0, "off": 42.0}
    scaled = measurement_histograms(path, tmp_path / "m.root", lum, target, 11, spec)
    assert list(scaled.factorised) == ["ita_on_ccbar"]  # uubar has no loose histogram
    done = scaled.factorised["ita_on_ccbar"]
    assert done["slope"] == pytest.approx(1.5, abs=0.5)
    assert done["sideband_closure"]["ndf"] == 12
    # the closure correction per eta row, from the sidebands of the one factorised sample (the
    # mean of the windows'): the loose histograms are a power law, so it is 1 within a few per
    # cent of MC statistics
    correction = scaled.corrections["ita_on"]
    assert list(correction) == ["ratio", "error", "windows"]
    ratio, error = np.asarray(correction["ratio"]), np.asarray(correction["error"])
    assert np.shape(correction["windows"]) == (len(fz.SIDEBANDS), 4)
    np.testing.assert_allclose(np.mean(correction["windows"], axis=0), ratio, rtol=1e-12)
    assert np.all(np.abs(ratio - 1) < 0.1), ratio
    assert np.all(error < 0.15), error
    with uproot.open(scaled.path) as b:
        made = b["ita_on_ccbar_nominal"]
        up, down = b["ita_on_ccbar_factorisation_up"], b["ita_on_ccbar_factorisation_down"]
        # per q2rec bin: the power law fitted to the loose histogram of that bin x the
        # correction; the systematic's up and down: x (ratio +- error)
        v, up_v, down_v = made.values(), up.values(), down.values()
        for j in range(3):
            k = fz.fit_slope(loose_values[j], fz.LOOSE_EDGES[30:])
            expected = fz._fractions(histfile.ETA_EDGES, 0.8, 1.0, k) * ratio
            np.testing.assert_allclose(v[:, j] / v[:, j].sum(), expected / expected.sum(), 1e-9)
        np.testing.assert_allclose(up_v, v * ((ratio + error) / ratio)[:, None], rtol=1e-9)
        np.testing.assert_allclose(down_v, v * ((ratio - error) / ratio)[:, None], rtol=1e-9)
        assert v.sum() != pytest.approx(hists["ita_on_ccbar_nominal"].sum() * 724, rel=1e-3)
        assert np.all(down_v > 0)
        assert np.all(made.variances() > 0)
        # a variation too thin to fit: the factorised nominal scaled per q2rec bin by its
        # loose events over the nominal's
        ratio = np.array([0.2, 0.3, 0.5]) / nominal_loose
        np.testing.assert_allclose(b[f"ita_on_ccbar_{thin}"].values(), v * ratio, rtol=1e-9)
        # every variation is factorised too, not left as filled
        for variation in variations:
            filled = hists[f"ita_on_ccbar_{variation}"].sum() * 724
            assert b[f"ita_on_ccbar_{variation}"].values().sum() != pytest.approx(filled, 1e-3)
    # a sample too thin for eta > 0.8 (here: no cut holds 1e9 effective events) is fitted
    # above the loosest of looser_eta, and so is each of its variations
    thin_spec = {**spec, "looser_eta": [0.7, 0.6], "min_loose_effective": 1e9}
    stepped = measurement_histograms(path, tmp_path / "s.root", lum, target, 11, thin_spec)
    assert stepped.factorised["ita_on_ccbar"]["loose_eta"] == 0.6
    ratio = np.asarray(stepped.corrections["ita_on"]["ratio"])
    with uproot.open(stepped.path) as b:
        made = b["ita_on_ccbar_nominal"].values()
        for j in range(3):
            k = fz.fit_slope(nominal_values[10:, j], fz.LOOSE_EDGES[10:])
            expected = fz._fractions(histfile.ETA_EDGES, 0.6, 1.0, k) * ratio
            np.testing.assert_allclose(
                made[:, j] / made[:, j].sum(), expected / expected.sum(), 1e-9
            )
        thin_ratio = np.array([0.2, 0.3, 0.5]) / nominal_values[10:].sum(axis=0)
        np.testing.assert_allclose(b[f"ita_on_ccbar_{thin}"].values(), made * thin_ratio, rtol=1e-9)
    catalogue = load_catalogue() + factorisation_systematics(scaled.factorised)
    paths = write_workspaces(scaled.path, tmp_path / "ws", catalogue, 0.0, ("ita",))
    model = pyhf.Workspace(json.loads(paths["ita"].read_text())).model()
    # one shape parameter for every factorised template (the correction is the channel's)
    assert [p for p in model.config.parameters if "factorisation" in p] == ["factorisation"]
    modified = [
        (c["name"], smp["name"])
        for c in pyhf.Workspace(json.loads(paths["ita"].read_text()))["channels"]
        for smp in c["samples"]
        if any(m["name"] == "factorisation" for m in smp["modifiers"])
    ]
    assert {smp for _, smp in modified} == {"ccbar"}
    # its MC statistical uncertainty: the replicas' principal components, not a staterror
    spec = pyhf.Workspace(json.loads(paths["ita"].read_text()))
    for channel in (c for c in spec["channels"] if c["name"].startswith("ita_on")):
        for smp in channel["samples"]:
            types = {m["name"]: m["type"] for m in smp["modifiers"]}
            mcstat = [n for n in types if n.startswith("mcstat_on_ccbar_")]
            staterror = [t for t in types.values() if t == "staterror"]
            if smp["name"] == "ccbar":
                assert mcstat, channel["name"]
                assert not staterror
                assert {types[n] for n in mcstat} == {"histosys"}
            else:
                assert not mcstat
                assert staterror


def test_nature_takes_the_factorised_templates_eta_shape_and_its_own_loose_events(
    histograms, tmp_path
):
    """A factorised sample's nature expectation: nature's events above the template's loose
    cut, per q2rec bin, x the template's eta fractions; a thin nature source is not
    extrapolated by its own fitted power (it would scatter by factors in the top row)."""
    from knunu.fits import factorise as fz
    from knunu.measurement import _scaled_templates

    path, _ = histograms
    rng = np.random.default_rng(31)
    centres = (fz.LOOSE_EDGES[:-1] + fz.LOOSE_EDGES[1:]) / 2
    q2 = np.array([0.2, 0.3, 0.5])
    shape = (1 - centres)[:, None] ** 1.5 * q2[None, :]
    shape /= shape[30:].sum()  # per event above eta 0.8

    def loose_hist(values, variances):
        h = hist.Hist(
            hist.axis.Regular(50, 0.5, 1.0, name="eta"),
            hist.axis.Variable(histfile.Q2_EDGES, name="q2rec"),
            storage=hist.storage.Weight(),
        )
        h.view().value, h.view().variance = values, variances
        return h

    template = rng.poisson(20_000 * shape) * 1.0  # the templates' MC: 20k events above 0.8
    # nature's ccbar: 15 events of weight 0.1 above 0.8 (its own power fit would scatter)
    thin = rng.poisson(15 * shape) * 0.1
    with uproot.update(path) as f:
        f["ita_on_loose_ccbar_nominal"] = loose_hist(template, template)
        nature = f["ita_on_nature_nominal"].to_hist()
        rest = nature.values() - np.add.reduceat(thin[42:], [0, 2, 4, 6], axis=0)
        others = np.zeros((50, 3))  # the other sources: filled, in the fit rows only
        others[42:] = np.repeat(rest / 2, 2, axis=0)
        f["ita_on_source_ccbar_nominal"] = loose_hist(thin, thin * 0.1)
        f["ita_on_source_charged_nominal"] = loose_hist(others, others * 0.05)
    spec = {"samples": ["ccbar"], "loose_eta": 0.8, "replicas": 0}
    one = {"on": 1.0, "off": 1.0}
    written, natures, done, used, corrections = _scaled_templates(path, one, spec, 3)
    assert used == {"ita_on": {"ccbar": 0.8}}
    assert list(corrections) == ["ita_on"]  # the off-resonance ccbar has no loose histogram
    assert list(done) == ["ita_on_ccbar"]
    made = written["ita_on_ccbar_nominal"].values()
    fractions = made / template[30:].sum(axis=0)
    expected = np.add.reduceat(others[42:], [0, 2, 4, 6], axis=0) + thin[30:].sum(0) * fractions
    np.testing.assert_allclose(natures["ita_on"].values(), expected, rtol=1e-9)
    # its ccbar's top row: the truth's fraction of its 15 events, not a 15-event power fit
    top = (thin[30:].sum(axis=0) * fractions[-1]).sum()
    truth = (thin[30:].sum(axis=0) * shape[48:].sum(axis=0) / shape[30:].sum(axis=0)).sum()
    assert top == pytest.approx(truth, rel=0.1)
