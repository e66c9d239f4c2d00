"""Warnings said once: collected per stage into its stamp, listed once in the report."""

import json
import logging

from knunu import stamps
from knunu.logs import Warned, collect_warnings
from knunu.report import _warnings


def test_a_stage_s_warnings_reach_its_stamp_and_the_report(tmp_path):
    out = tmp_path / "out.txt"
    out.write_text("x")
    build = logging.getLogger("knunu.fits.build")
    with collect_warnings() as warned:
        for _ in range(5):
            build.warning("channel %s: samples %s dropped", "hta_sr", "uds")
        build.error("a fit failed")
        build.info("not a warning")
        logging.getLogger("elsewhere").warning("not knunu's")
    assert warned == [
        Warned("knunu.fits.build", "WARNING", "channel hta_sr: samples uds dropped", 5),
        Warned("knunu.fits.build", "ERROR", "a fit failed", 1),
    ]
    assert _warnings(tmp_path)[0].startswith("None logged by the stages in their last run")
    stamps.write_stamp(tmp_path, "fit", "key", [out], warned)
    assert stamps.load_stamp(tmp_path, "fit").warnings == tuple(warned)
    assert _warnings(tmp_path)[2:] == [
        "- fit: WARNING knunu.fits.build: channel hta_sr: samples uds dropped (5 times)",
        "- fit: ERROR knunu.fits.build: a fit failed",
    ]
    # a stamp without the field (written before stop 35) reads as a stage without warnings
    path = stamps.stamp_path(tmp_path, "fit")
    doc = json.loads(path.read_text())
    del doc["warnings"]
    path.write_text(json.dumps(doc))
    assert stamps.load_stamp(tmp_path, "fit") == stamps.Stamp("fit", "key", doc_outputs(doc))


def doc_outputs(doc):
    return {k: stamps.FileDigest(*v) for k, v in doc["outputs"].items()}
