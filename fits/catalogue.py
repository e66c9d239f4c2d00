"""The systematics catalogue: which nuisance parameters the ITA and HTA workspaces carry.

Data in ``configs/systematics.yaml``, validated by ``knunu/schemas/systematics.schema.json``
and by the consistency checks here: pyhf combines parameters by name silently and keeps only one
of two same-type modifiers of one name on a sample, so clashes must be caught before building.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import NamedTuple

from knunu.config import packaged_config_path, read_yaml, validate
from knunu.errors import ConfigError

log = logging.getLogger(__name__)

ANALYSES = ("ita", "hta")


class Systematic(NamedTuple):
    """One row of the catalogue."""

    name: str
    type: str
    correlated: bool
    samples: dict[str, tuple[str, ...]]
    size: float | None = None
    variation: str | None = None
    channels: tuple[str, ...] | None = None
    #: Its parameters are the sample's MC statistical uncertainty (no staterror where it
    #: applies): rows made by code, e.g. the factorised templates' principal components.
    mc_statistics: bool = False

    @property
    def analyses(self) -> tuple[str, ...]:
        """The analyses that carry this parameter."""
        return tuple(a for a in ANALYSES if a in self.samples)


def load_catalogue(path: str | Path | None = None) -> tuple[Systematic, ...]:
    """Read, validate and check a systematics catalogue.

    Args:
        path: A catalogue YAML; ``None`` for the packaged ``systematics.yaml``.

    Raises:
        ConfigError: schema violation or an inconsistent name (see :func:`check_catalogue`).

    >>> cat = load_catalogue()
    >>> sorted(s.name for s in cat if s.correlated)[:3]
    ['corr_DKL_c1', 'corr_KLKL_c1', 'corr_br_c1']
    """
    source = Path(path) if path is not None else packaged_config_path("systematics.yaml")
    data = read_yaml(source)
    validate(data, "systematics", source)
    rows = tuple(
        Systematic(
            name=row["name"],
            type=row["type"],
            correlated=row["correlated"],
            samples={a: tuple(s) for a, s in row["samples"].items()},
            size=row.get("size"),
            variation=row.get("variation"),
            channels=tuple(row["channels"]) if "channels" in row else None,
        )
        for row in data["systematics"]
    )
    check_catalogue(rows, source)
    return rows


def check_catalogue(rows: tuple[Systematic, ...], source: str | Path = "<catalogue>") -> None:
    """Consistency checks pyhf would not make.

    - a correlated name is carried by both analyses;
    - a name has one type everywhere;
    - no name acts twice on the same (analysis, sample) (pyhf keeps only one of them);
    - an uncorrelated name used in both analyses is fine: the combination renames it per analysis.

    Raises:
        ConfigError: naming the file and the offending parameter.
    """
    types: dict[str, str] = {}
    seen: Counter[tuple[str, str, str, tuple[str, ...] | None]] = Counter()
    for row in rows:
        if row.correlated and set(row.analyses) != set(ANALYSES):
            raise ConfigError(
                f"{source}: key 'systematics.{row.name}': correlated but not in both analyses"
            )
        if types.setdefault(row.name, row.type) != row.type:
            raise ConfigError(
                f"{source}: key 'systematics.{row.name}': used as both {types[row.name]} "
                f"and {row.type}"
            )
        for analysis, samples in row.samples.items():
            for sample in samples:
                seen[(row.name, analysis, sample, row.channels)] += 1
    for (name, analysis, sample, _), count in seen.items():
        if count > 1:
            raise ConfigError(
                f"{source}: key 'systematics.{name}': acts {count} times on {analysis} "
                f"sample {sample!r} (pyhf would keep only one)"
            )
    correlated = {r.name for r in rows if r.correlated}
    uncorrelated = {r.name for r in rows if not r.correlated}
    both = correlated & uncorrelated
    if both:
        raise ConfigError(
            f"{source}: key 'systematics.{sorted(both)[0]}': both correlated and uncorrelated"
        )
