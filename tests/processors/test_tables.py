"""Training tables: every selected event once, whatever an earlier run left in the folder."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from knunu.processors.stage import make_tables

pytestmark = pytest.mark.slow


def _rows_on_disk(folder) -> dict[str, int]:
    return {
        ds.name: sum(len(pd.read_parquet(f)) for f in ds.glob("*.parquet"))
        for ds in folder.iterdir()
        if ds.is_dir()
    }


def test_a_rerun_with_other_chunks_leaves_each_event_once(production, cfg, tmp_path, caplog):
    """Table files are named by source file and entry range: other chunks, other names."""
    folder = tmp_path / "tables"
    small = {**cfg["ita"], "chunksize": 1000}
    make_tables(production, small, folder)
    first = _rows_on_disk(folder)
    assert sum(first.values()) > 0
    files_before = {p.name for p in folder.rglob("*.parquet")}
    make_tables(production, cfg["ita"], folder)  # chunks of 5000: files split anew
    assert files_before - {p.name for p in folder.rglob("*.parquet")}  # those went
    assert _rows_on_disk(folder) == first  # not twice the rows
    rows = json.loads((folder / "tables.json").read_text())["rows"]
    assert {ds: n for ds, n in rows.items() if n} == {ds: n for ds, n in first.items() if n}
    assert "table file(s) of an earlier run with other chunks" in caplog.text
