"""knunu: a distributed re-implementation of the Belle II B+ -> K+ nu nubar search.

The card's top-level folders install as subpackages: ``knunu.simulation``,
``knunu.processors``, ``knunu.mva``, ``knunu.cluster``, ``knunu.fits`` and the packaged
default configuration ``knunu.configs``.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("knunu")
except PackageNotFoundError:  # pragma: no cover - only when run from an uninstalled tree
    __version__ = "0+unknown"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["__version__"]
