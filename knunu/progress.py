"""Where a long stage is: handed to a progress callback after every finished unit of work.

A leaf module (the simulation and the processor runs both report through it; the CLI prints).
"""

from __future__ import annotations

from typing import NamedTuple


class Progress(NamedTuple):
    """Where a run is, after each finished unit (a chunk, or a simulation task).

    >>> p = Progress("file", 2, 4, 500, 1000, 2.0, unit="files")
    >>> p.rate_hz
    250.0
    """

    label: str
    chunks_done: int
    chunks_total: int
    events_done: int
    events_total: int
    elapsed: float
    unit: str = "chunks"

    @property
    def rate_hz(self) -> float:
        """Events per second so far."""
        return self.events_done / max(self.elapsed, 1e-9)
