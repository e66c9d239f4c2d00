"""The ITA processor on simulated ntuples: executors, chunking and accounting agree exactly."""

from __future__ import annotations

import numpy as np
import pytest
from coffea import processor

from knunu.cluster import get_client
from knunu.processors.ita import CUTFLOW_STEPS, ITAProcessor
from knunu.processors.schema import Belle2Schema
from knunu.simulation.production import FileTask, produce_file

pytestmark = pytest.mark.slow


entries: dict[str, int] = {}  # ITA entries written per dataset (after the prefilter)


@pytest.fixture(scope="module")
def fileset(tmp_path_factory, libraries):
    base = tmp_path_factory.mktemp("ntuples")
    tasks = [
        FileTask("signal", 400, 1, str(base / "signal.root"), libraries=libraries),
        FileTask("ccbar", 300, 2, str(base / "ccbar_a.root")),
        FileTask("ccbar", 300, 3, str(base / "ccbar_b.root")),
    ]
    entries.clear()
    for task in tasks:
        rec = produce_file(task)
        entries[task.sample] = entries.get(task.sample, 0) + rec.entries_ita
    return {
        "signal": {"files": {tasks[0].path: "ita"}},
        "ccbar": {"files": {tasks[1].path: "ita", tasks[2].path: "ita"}},
    }


def _run(fileset, executor, chunksize):
    runner = processor.Runner(executor=executor, schema=Belle2Schema, chunksize=chunksize)
    return runner(fileset, processor_instance=ITAProcessor(), treename="ita")


def _same(a, b):
    assert a.keys() == b.keys()
    for ds in a:
        assert a[ds]["events"] == b[ds]["events"]
        for name in ("cutflow", "cutflow_unweighted", "q2rec"):
            va, vb = a[ds][name].view(flow=True), b[ds][name].view(flow=True)
            if name == "cutflow_unweighted":  # counts: exactly equal
                assert np.array_equal(va, vb)
                continue
            # MC weights (library strata) are summed in another order per chunking: equal to
            # float rounding, sums of weights and of squared weights, flow bins included
            for field in ("value", "variance"):
                np.testing.assert_allclose(va[field], vb[field], rtol=1e-12, atol=0)


def test_every_event_processed_and_cutflow_monotonic(fileset):
    out = _run(fileset, processor.IterativeExecutor(status=False), 1000)
    assert out["signal"]["events"] == entries["signal"] > 0
    assert out["ccbar"]["events"] == entries["ccbar"] > 0
    for ds in out:
        flow = out[ds]["cutflow_unweighted"].values()
        assert flow[0] == out[ds]["events"]
        assert np.all(np.diff(flow) <= 0)
        assert list(out[ds]["cutflow"].axes[0]) == list(CUTFLOW_STEPS)
    # the selection prefers signal: higher efficiency than for c cbar
    eff = {ds: out[ds]["cutflow_unweighted"].values()[-1] / out[ds]["events"] for ds in out}
    assert eff["signal"] > eff["ccbar"] + 0.1


def test_independent_of_chunking_and_executor(fileset):
    reference = _run(fileset, processor.IterativeExecutor(status=False), 1000)
    _same(reference, _run(fileset, processor.IterativeExecutor(status=False), 97))
    with get_client("local", n_workers=2) as client:
        dask_out = _run(fileset, processor.DaskExecutor(client=client, status=False), 150)
    _same(reference, dask_out)
