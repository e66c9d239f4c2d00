"""knunu turns numpy's huge-page advice off wherever it runs, unless the user set it."""

from __future__ import annotations

import os
import subprocess
import sys

from numpy._core.multiarray import _get_madvise_hugepage

from knunu.cluster import get_client
from knunu.simulation.production import file_seed

_ADVICE = "import knunu, numpy._core.multiarray as m; print(m._get_madvise_hugepage())"


def _advice_after_import(env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"} | env
    out = subprocess.run(
        [sys.executable, "-c", _ADVICE], env=clean, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_importing_knunu_turns_the_advice_off_and_keeps_a_users_choice():
    assert _advice_after_import({}) == "False"
    assert _advice_after_import({"NUMPY_MADVISE_HUGEPAGE": "1"}) == "True"


def test_workers_running_knunu_tasks_have_the_advice_off():
    """The simulation runs on Dask workers: they import knunu with their first task."""
    with get_client("local", n_workers=2) as client:
        seeds = client.gather(client.map(file_seed, [1, 2, 3], ["a", "b", "c"]))
        assert seeds == [file_seed(1, "a"), file_seed(2, "b"), file_seed(3, "c")]
        assert set(client.run(_get_madvise_hugepage).values()) == {False}
