"""Files written by ROOT itself (its TTree baskets and compression), in both of basf2's layouts.

ROOT comes from its PyPI wheel (``root``, the one ``benchmarks/bench_rdataframe.py`` uses),
installed once into ``build/test-root`` (about 25 s; PyPI must be reachable): never a
dependency of knunu. A PyROOT script writes the first 150 events of a tiny-production file as
basf2 does: event-based with C arrays behind a counter (``K_p[nK]/D``) and candidate-based with
a row per candidate, each with ZLIB, LZMA, ZSTD and LZ4. knunu must read every one of them to
the histograms of the uproot-written event-based file.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from knunu.processors import run as runner
from knunu.simulation.ntuple import candidate_rows, read_event_tree, write_ntuple

pytestmark = [pytest.mark.root, pytest.mark.slow]

ROOT_WHEEL = "root==0.1a12"  # ROOT 6.40 (as benchmarks/bench_rdataframe.py)
#: ROOT's compression settings: algorithm x 100 + level.
COMPRESSIONS = {"ZLIB": 101, "LZMA": 207, "ZSTD": 505, "LZ4": 404}
#: numpy dtype -> ROOT leaf type code
LEAF = {"f4": "F", "f8": "D", "i4": "I", "i8": "L", "u4": "i", "u8": "l", "b1": "O", "i2": "S"}

WRITER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import ROOT

    spec = json.loads(open(sys.argv[1]).read())
    data = np.load(spec["arrays"])
    for out in spec["files"]:
        f = ROOT.TFile(out["path"], "RECREATE", "", out["compression"])
        for tree in out["trees"]:
            t = ROOT.TTree(tree["name"], tree["name"])
            buffers = {}
            for b in tree["branches"]:
                values = data[b["key"]]
                size = int(data[b["counter_key"]].max()) if b.get("counter") else 1
                buffers[b["name"]] = np.zeros(max(size, 1), dtype=values.dtype)
                shape = f"[{b['counter']}]" if b.get("counter") else ""
                leaf = f"{b['name']}{shape}/{b['leaf']}"
                t.Branch(b["name"], buffers[b["name"]], leaf)
            n, starts = tree["entries"], {}
            for b in tree["branches"]:
                if b.get("counter"):
                    counts = data[b["counter_key"]]
                    starts[b["name"]] = np.concatenate([[0], np.cumsum(counts)])
            for i in range(n):
                for b in tree["branches"]:
                    values = data[b["key"]]
                    if b.get("counter"):
                        lo, hi = starts[b["name"]][i], starts[b["name"]][i + 1]
                        buffers[b["name"]][: hi - lo] = values[lo:hi]
                    else:
                        buffers[b["name"]][0] = values[i]
                t.Fill()
            t.Write()
        f.Close()
    """
)


@pytest.fixture(scope="module")
def root_python() -> Path:
    """A Python with ROOT's wheel (``build/test-root``, made once)."""
    env = Path(__file__).resolve().parents[2] / "build" / "test-root"
    python = env / "bin" / "python"
    if not (env / ".installed").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(env)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", ROOT_WHEEL, "numpy"], check=True)
        (env / ".installed").touch()
    return python


def _branches(tree, layout: str, tag: str, arrays: dict) -> list[dict]:
    """The branch specs of one tree and the arrays they read (keys into ``arrays``)."""
    out = []
    ((prefix, (offsets, columns)),) = tree.collections.items()
    if layout == "candidate":
        for name, values in candidate_rows(tree).items():
            arrays[f"{tag}/{name}"] = values
            out.append({"name": name, "key": f"{tag}/{name}", "leaf": LEAF[values.dtype.str[1:]]})
        return out
    counter = f"n{prefix.rstrip('_')}"
    arrays[f"{tag}/{counter}"] = np.diff(offsets).astype(np.int32)
    out.append({"name": counter, "key": f"{tag}/{counter}", "leaf": "I"})
    for name, values in tree.columns.items():
        arrays[f"{tag}/{name}"] = values
        out.append({"name": name, "key": f"{tag}/{name}", "leaf": LEAF[values.dtype.str[1:]]})
    for name, values in columns.items():
        arrays[f"{tag}/{name}"] = values
        out.append(
            {
                "name": name,
                "key": f"{tag}/{name}",
                "leaf": LEAF[values.dtype.str[1:]],
                "counter": counter,
                "counter_key": f"{tag}/{counter}",
            }
        )
    return out


_spec = importlib.util.spec_from_file_location(
    "test_layouts", Path(__file__).with_name("test_layouts.py")
)
_layouts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_layouts)


def test_files_written_by_root_read_the_same(root_python, production, tmp_path):
    f = production.datasets["charged"]["files"][0]
    trees = {t: _layouts.head(read_event_tree(f["path"], t), 150) for t in ("ita", "hta")}
    reference = tmp_path / "uproot.root"
    write_ntuple(reference, trees, f["seed"], "event")
    arrays: dict[str, np.ndarray] = {}
    files = []
    for layout in ("event", "candidate"):
        specs = [
            {
                "name": name,
                "branches": _branches(tree, layout, f"{layout}/{name}", arrays),
                "entries": len(candidate_rows(tree)["__candidate__"])
                if layout == "candidate"
                else len(tree.columns["__event__"]),
            }
            for name, tree in trees.items()
        ]
        for algorithm, setting in COMPRESSIONS.items():
            path = tmp_path / f"root-{layout}-{algorithm}.root"
            files.append((layout, algorithm, path))
            files_spec = {"path": str(path), "compression": setting, "trees": specs}
            arrays_path = tmp_path / "arrays.npz"
            spec = {"arrays": str(arrays_path), "files": [files_spec]}
            (tmp_path / f"{layout}-{algorithm}.json").write_text(json.dumps(spec))
    np.savez(tmp_path / "arrays.npz", **arrays)
    script = tmp_path / "write.py"
    script.write_text(WRITER)
    for layout, algorithm, _ in files:
        subprocess.run(
            [str(root_python), str(script), str(tmp_path / f"{layout}-{algorithm}.json")],
            check=True,
            capture_output=True,
        )

    def catalogue(path: Path, layout: str) -> runner.Catalogue:
        entry = {"path": str(path), "entries_ita": 150, "entries_hta": 150}
        return runner.Catalogue(tmp_path, {"charged": {"layout": layout, "files": [entry]}})

    ref, _ = runner.run(
        catalogue(reference, "event"), ["charged"], _layouts.Best(), "ita", None, 40
    )
    assert ref["charged"]["events"] == 150
    for layout, algorithm, path in files:
        import uproot

        with uproot.open(path) as rf:  # written by ROOT, compressed as asked
            assert rf.file.fCompress == COMPRESSIONS[algorithm]
        out, _ = runner.run(catalogue(path, layout), ["charged"], _layouts.Best(), "ita", None, 40)
        _layouts.assert_identical(out, ref)
