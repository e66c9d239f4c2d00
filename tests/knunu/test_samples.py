from __future__ import annotations

import pytest

from knunu.errors import ConfigError
from knunu.samples import load_samples


def test_catalogue_holds_the_fit_samples():
    cat = load_samples()
    assert list(cat) == [
        "signal",
        "charged",
        "mixed",
        "uubar",
        "ddbar",
        "ssbar",
        "ccbar",
        "taupair",
        "jpsi_k",
        "pi_k0",
    ]
    # B+B- and B0B0bar split the 1.11 nb BBbar cross section with f+- = 0.516.
    assert cat["charged"].cross_section_nb + cat["mixed"].cross_section_nb == pytest.approx(1.11)
    assert cat["charged"].cross_section_nb / 1.11 == pytest.approx(0.516)


def test_duplicate_process_code_is_rejected(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(
        "samples:\n"
        "  a: {kind: bbbar, process_code: 1, cross_section_nb: 1.0, label: a}\n"
        "  b: {kind: bbbar, process_code: 1, cross_section_nb: 1.0, label: b}\n"
    )
    with pytest.raises(ConfigError, match="process_code values are not unique"):
        load_samples(f)


def test_unknown_kind_is_rejected(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("samples:\n  a: {kind: bogus, process_code: 1, cross_section_nb: 1.0, label: a}\n")
    with pytest.raises(ConfigError, match=r"key 'samples.a.kind'"):
        load_samples(f)
