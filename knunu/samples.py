"""The sample catalogue: a validated table of the processes knunu simulates and fits."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from knunu.config import packaged_config_path, read_yaml, validate
from knunu.errors import ConfigError


class Sample(NamedTuple):
    """One process of the catalogue."""

    name: str
    kind: str
    process_code: int
    cross_section_nb: float | None
    label: str
    stratum: str | None = None  # control samples: the B decay stratum of one B


def load_samples(path: str | Path | None = None) -> dict[str, Sample]:
    """Read and validate a sample catalogue.

    Args:
        path: A catalogue YAML; ``None`` for the packaged ``samples.yaml``.

    Returns:
        Samples by name, in file order.

    >>> cat = load_samples()
    >>> cat["ccbar"].cross_section_nb
    1.3
    >>> sorted({s.kind for s in cat.values()})
    ['bbbar', 'continuum', 'control', 'signal', 'taupair']
    """
    source = Path(path) if path is not None else packaged_config_path("samples.yaml")
    data = read_yaml(source)
    validate(data, "samples", source)
    samples = {name: Sample(name=name, **entry) for name, entry in data["samples"].items()}
    codes = [s.process_code for s in samples.values()]
    if len(set(codes)) != len(codes):
        raise ConfigError(f"{source}: key 'samples': process_code values are not unique")
    return samples


def names_of(*kinds: str) -> tuple[str, ...]:
    """The packaged catalogue's samples of these kinds, in its order.

    >>> names_of("bbbar")
    ('charged', 'mixed')
    """
    return tuple(s.name for s in load_samples().values() if s.kind in kinds)


#: The samples the analysis trains on and fits, by kind (``configs/samples.yaml``, in its
#: order): every list of samples in knunu is one of these or made of them.
SIGNAL = "signal"
BBBAR = names_of("bbbar")
CONTINUUM = names_of("continuum")  # the quark pairs
BACKGROUNDS = names_of("bbbar", "continuum", "taupair")  # on resonance
OFFRES = names_of("continuum", "taupair")  # made off resonance too
