"""knunu: a distributed re-implementation of the Belle II B+ -> K+ nu nubar search.

The card's top-level folders install as subpackages: ``knunu.simulation``,
``knunu.processors``, ``knunu.mva``, ``knunu.cluster``, ``knunu.fits`` and the packaged
default configuration ``knunu.configs``.
"""

from __future__ import annotations

import logging
import os
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("knunu")
except PackageNotFoundError:  # pragma: no cover - only when run from an uninstalled tree
    __version__ = "0+unknown"

logging.getLogger(__name__).addHandler(logging.NullHandler())


def _no_hugepage_advice() -> None:
    """Stop numpy from marking its large arrays for transparent huge pages (MADV_HUGEPAGE).

    Where the kernel's huge-page defrag is ``madvise`` (Debian 12's default), every fault in
    such memory zeroes and may compact a 2 MB page synchronously, each time a temporary of 4
    MB or more is allocated again (numpy/numpy#31590). The simulation's 100k-event ccbar file
    took 24.3 s here with the advice and 14.0 s without it, 41 % of its CPU in the kernel's
    page clearing (``benchmarks/bench_simulation.py hugepage``). A ``NUMPY_MADVISE_HUGEPAGE``
    set by the user is kept.
    """
    if "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        return
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # pragma: no cover - a numpy without the switch
        return
    _set_madvise_hugepage(False)


_no_hugepage_advice()

__all__ = ["__version__"]
