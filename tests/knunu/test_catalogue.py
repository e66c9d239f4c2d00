"""A user's dataset catalogue (YAML): basf2 ntuples in, the same histograms out.

The tiny production is rewritten as a Belle II analyst's ntuples would be: candidate-based
trees (VariablesToNtuple), basf2's variable names behind aliases, another weight branch and
other tree names. A catalogue describing them must give the histograms the simulation's own
catalogue gives, and the README's worked example must run on such files.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest
import yaml

from knunu.catalogue import dataset_name, import_catalogue, load_user_catalogue
from knunu.cli import main
from knunu.errors import ConfigError, InputError
from knunu.processors import run as runner
from knunu.processors.ita import ITAProcessor
from knunu.processors.layouts import root_compatible
from knunu.simulation.ntuple import Tree, write_ntuple

_spec = importlib.util.spec_from_file_location(
    "test_layouts", Path(__file__).parents[1] / "processors" / "test_layouts.py"
)
_layouts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_layouts)

README = Path(__file__).parents[2] / "README.md"
#: The file trees of the rewritten ntuples (a user's own tree names).
TREES = {"ita": "B2KNuNu_ITA", "hta": "B2KNuNu_HTA"}


def write_user_ntuples(production, where: Path, datasets: list[str]) -> dict[str, dict]:
    """Each dataset's files as candidate-based trees with basf2 names, under ``where/<ds>``."""
    described = {}
    for ds in datasets:
        aliases = {}
        for f in production.datasets[ds]["files"]:
            trees = {}
            for tree, name in TREES.items():
                candidate = _layouts.read_tree(f["path"], tree, keep_empty=False)
                trees[name], aliases[tree] = _layouts.basf2_names(candidate)
            dst = where / ds / Path(f["path"]).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            write_ntuple(dst, trees, f["seed"], "candidate")
        described[ds] = aliases
    return described


def user_entry(production, ds: str, aliases: dict, files: str) -> dict:
    entry = production.datasets[ds]
    out = {
        "kind": "data" if entry["data"] else "mc",
        "resonance": "off" if entry["off_resonance"] else "on",
        "files": [files],
        "trees": TREES,
        "aliases": aliases,
        "weight_branch": "mcWeight",
    }
    if entry["data"]:
        out["luminosity_fb"] = entry["luminosity_fb"]
    else:
        out |= {"sample": entry["samples"][0], "luminosity_fb": entry["luminosity_fb"]}
    return out


@pytest.fixture(scope="module")
def user(production, tmp_path_factory):
    """(catalogue YAML, imported catalogue) of the rewritten signal, charged and data_on."""
    base = tmp_path_factory.mktemp("user")
    sets = ["signal", "charged", "data_on"]
    aliases = write_user_ntuples(production, base / "ntuples", sets)
    doc = {
        "datasets": {
            f"my_{ds}": user_entry(production, ds, aliases[ds], f"ntuples/{ds}/*.root")
            for ds in sets
        }
    }
    path = base / "catalogue.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path, runner.Catalogue.load(import_catalogue(path, base / "run" / "catalogue.json"))


def test_the_import_describes_the_files_as_the_simulation_did(production, user):
    _, imported = user
    assert set(imported.datasets) == {"signal", "charged", "data_on"}
    for ds, entry in imported.datasets.items():
        made = production.datasets[ds]
        for tree in ("ita", "hta"):
            assert entry[f"entries_{tree}"] == made[f"entries_{tree}"] > 0
        assert entry["luminosity_fb"] == pytest.approx(made["luminosity_fb"], rel=1e-12)
        assert [f["layout"] for f in entry["files"]] == ["candidate"] * len(made["files"])
        assert entry["data"] == made["data"]


def test_a_user_catalogue_gives_the_simulations_histograms(production, user, trained, cfg):
    _, imported = user
    proc = ITAProcessor(str(trained[0] / "models"), cfg["ita"])
    sets = ["signal", "charged", "data_on"]
    ref, _ = runner.run(production, sets, proc, "ita", None, 1000)
    out, report = runner.run(imported, sets, proc, "ita", None, 1000)
    assert report.events_processed == report.events_in
    _layouts.assert_identical(out, ref)


def test_two_campaigns_of_a_sample_are_merged(production, user, tmp_path):
    path, _ = user
    doc = yaml.safe_load(path.read_text())
    doc["datasets"]["my_charged_2"] = dict(doc["datasets"]["my_charged"])
    merged = path.parent / "merged.yaml"
    merged.write_text(yaml.safe_dump(doc))
    out = runner.Catalogue.load(import_catalogue(merged, tmp_path / "c.json"))
    charged = out.datasets["charged"]
    assert charged["labels"] == ["my_charged", "my_charged_2"]
    lum = production.datasets["charged"]["luminosity_fb"]
    assert charged["luminosity_fb"] == pytest.approx(2 * lum, rel=1e-12)
    assert len(charged["files"]) == 2 * len(production.datasets["charged"]["files"])
    # here both campaigns are the same files: the run refuses to count them twice
    with pytest.raises(InputError, match=r"\.root: listed twice in dataset charged"):
        runner.run(out, ["charged"], _layouts.Best(), "ita", None, 1000)


def test_a_changed_file_changes_the_imported_catalogue(user, tmp_path):
    path, _ = user
    first = import_catalogue(path, tmp_path / "a.json").read_text()
    doc = yaml.safe_load(path.read_text())
    pattern = doc["datasets"]["my_charged"]["files"][0]
    victim = sorted(path.parent.glob(pattern))[0]
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # rewritten in place
    second = import_catalogue(path, tmp_path / "b.json").read_text()
    assert first != second  # so every stage after the import runs again


def test_merged_data_keep_one_luminosity_and_layouts_do_not_mix(production, user, tmp_path):
    path, _ = user
    doc = yaml.safe_load(path.read_text())
    data = doc["datasets"]["my_data_on"]
    second = {**data, "files": data["files"]}
    second.pop("luminosity_fb")
    doc["datasets"]["my_data_on_2"] = second
    merged = path.parent / "merged_data.yaml"
    merged.write_text(yaml.safe_dump(doc))
    with pytest.raises(InputError, match=r"a second entry of data_on needs its own luminosity_fb"):
        import_catalogue(merged, tmp_path / "c.json")
    doc["datasets"].pop("my_data_on_2")
    # the simulation's own (event-based) charged files as a second campaign
    folder = Path(production.datasets["charged"]["files"][0]["path"]).parent
    doc["datasets"]["sim_charged"] = {
        "kind": "mc",
        "sample": "charged",
        "luminosity_fb": 1.0,
        "files": [str(folder / "*.root")],
    }
    mixed = path.parent / "mixed.yaml"
    mixed.write_text(yaml.safe_dump(doc))
    with pytest.raises(InputError, match=r"charged would mix the candidate and event layouts"):
        import_catalogue(mixed, tmp_path / "d.json")


BAD = {
    "unknown sample": (
        {"sample": "bbar"},
        ConfigError,
        r"dataset 'my_charged': sample 'bbar' is not one of",
    ),
    "no normalisation": (
        {"luminosity_fb": None},
        ConfigError,
        r"give either generated_events or luminosity_fb",
    ),
    "no file matches": (
        {"files": ["nowhere/*.root"]},
        InputError,
        r"dataset 'my_charged': no file matches 'nowhere/\*\.root'",
    ),
    "wrong tree name": (
        {"trees": {"ita": "ntuple", "hta": "B2KNuNu_HTA"}},
        InputError,
        r"no tree 'ntuple' \(ita; the file has: B2KNuNu_ITA, B2KNuNu_HTA\)",
    ),
    "layout said wrong": ({"layout": "event"}, InputError, r"appears more than once"),
    "missing alias target": (
        {"aliases": {"ita": {"K_pstar": "useCMSFrame(E)"}}},
        InputError,
        r"no branch 'useCMSFrame__boE__bc' \(alias of 'K_pstar'\)",
    ),
    "schema": ({"kind": "simulation"}, ConfigError, r"key 'datasets\.my_charged\.kind'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_catalogue_ends_in_one_line(user, tmp_path, case):
    path, _ = user
    change, error, message = BAD[case]
    doc = yaml.safe_load(path.read_text())
    entry = doc["datasets"]["my_charged"]
    for key, value in change.items():
        if value is None:
            entry.pop(key)
        else:
            entry[key] = value
    bad = path.parent / f"bad_{case.replace(' ', '_')}.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(error, match=message) as err:
        import_catalogue(bad, tmp_path / "c.json")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "c.json").exists()
    assert main(["process", "--catalogue", str(bad), "-o", str(tmp_path / "run")]) == 2


def _readme_example() -> str:
    """The YAML block of the README's worked example."""
    text = README.read_text()
    section = text[text.index("### Your own ntuples: a worked example") :]
    return re.search(r"```yaml\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_is_a_valid_catalogue(tmp_path):
    path = tmp_path / "my_catalogue.yaml"
    path.write_text(_readme_example())
    doc = load_user_catalogue(path)
    assert {dataset_name(e) for e in doc["datasets"].values()} >= {"data_on", "signal"}


@pytest.mark.slow
def test_the_readme_worked_example_runs(production, tmp_path, run_cli):
    """The README's catalogue on files written as it describes them, through `knunu run`.

    The files are the tiny production's, so the example's normalisations (luminosities,
    generated events) are replaced by theirs; everything else is the README's.
    """
    doc = yaml.safe_load(_readme_example())
    sets = sorted({dataset_name(e) for e in doc["datasets"].values()})
    write_readme_ntuples(production, tmp_path, doc)
    text = _readme_example()
    for entry in doc["datasets"].values():
        made = production.datasets[dataset_name(entry)]
        for key, value in (
            ("generated_events", made["sum_weights"]),
            ("luminosity_fb", made["luminosity_fb"]),
        ):
            if key in entry:
                text = text.replace(f"{key}: {_yaml_number(entry[key])}", f"{key}: {value!r}", 1)
    lum = {k: production.datasets[f"data_{k}"]["luminosity_fb"] for k in ("on", "off")}
    text = re.sub(
        r"luminosity_fb: \{on: [^}]*\}",
        f"luminosity_fb: {{on: {lum['on']!r}, off: {lum['off']!r}}}",
        text,
    )
    assert text != _readme_example()
    (tmp_path / "my_catalogue.yaml").write_text(text)
    done = run_cli(
        "run", "--catalogue", "my_catalogue.yaml", "-c", str(_tiny_config(tmp_path)), "-o", "run"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "imported" in done.stdout
    imported = runner.Catalogue.load(tmp_path / "run" / "ntuples" / "catalogue.json")
    assert sorted(imported.datasets) == sets
    assert (tmp_path / "run" / "histograms.root").exists()
    assert (tmp_path / "run" / "report.md").exists()
    # a second run: the import and every stage after it are up to date
    again = run_cli(
        "run", "--catalogue", "my_catalogue.yaml", "-c", str(_tiny_config(tmp_path)), "-o", "run"
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("up to date (skipped)") >= 3


def _yaml_number(value: float) -> str:
    """A number as the README writes it (``2.0e+6``, ``1444.0``)."""
    text = _readme_example()
    for form in (f"{value:.1e}".replace("e+0", "e+"), repr(float(value)), str(value)):
        if form in text:
            return form
    raise AssertionError(f"{value} not found in the README's example")


def write_readme_ntuples(production, where: Path, doc: dict) -> None:
    """Files where the README's globs look, made from the production's datasets of the same
    name, as the example describes them: candidate-based, its tree names, the aliased
    variables under their basf2 names, its weight branch."""
    for entry in doc["datasets"].values():
        ds = dataset_name(entry)
        trees = entry.get("trees", {"ita": "ita", "hta": "hta"})
        table = entry.get("aliases", {})
        (pattern,) = entry["files"]
        folder = where / Path(pattern).parent
        folder.mkdir(parents=True, exist_ok=True)
        for k, f in enumerate(production.datasets[ds]["files"]):
            out = {}
            for tree, name in trees.items():
                aliases = {a: b for a, b in table.items() if isinstance(b, str)}
                aliases |= table.get(tree, {})
                renames = {a: root_compatible(b) for a, b in aliases.items()}
                if "weight_branch" in entry:
                    renames["__weight__"] = entry["weight_branch"]
                out[name] = renamed(_layouts.read_tree(f["path"], tree, keep_empty=False), renames)
            dst = folder / Path(pattern).name.replace("*", f"{k:03d}")
            write_ntuple(dst, out, f["seed"], entry.get("layout", "candidate"))


def renamed(tree: Tree, renames: dict[str, str]) -> Tree:
    """The tree with some columns under other names."""
    columns = {renames.get(k, k): v for k, v in tree.columns.items()}
    ((prefix, (offsets, candidates)),) = tree.collections.items()
    candidates = {renames.get(k, k): v for k, v in candidates.items()}
    return Tree(columns, {prefix: (offsets, candidates)})


def _tiny_config(where: Path) -> Path:
    path = where / "tiny.yaml"
    toys = {"injection_toys": 5, "gof_toys": 20, "factorise": {"replicas": 20}}
    tiny = {"scale": "tiny", "measurement": toys, "validation": {"injection_toys": 5}}
    path.write_text(yaml.safe_dump(tiny))
    return path
