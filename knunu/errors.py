"""The one exceptions module of knunu.

Every error knunu raises on purpose derives from :class:`KnunuError`; the CLI turns any of
them into one line on stderr and exit code 2. Messages name the file and the problem.
"""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    r"""The first line of an exception's message (its type when the message is empty).

    >>> first_line(ValueError("bad basket\nat offset 12")), first_line(KeyError())
    ('bad basket', 'KeyError')
    """
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class KnunuError(Exception):
    """Base class of every error knunu raises on purpose."""


class ConfigError(KnunuError):
    """A configuration file is missing, unreadable or fails its schema."""


class InputError(KnunuError):
    """An input file (ntuple, histogram file, model) is missing or malformed."""


class WorkspaceError(InputError):
    """A pyhf workspace file is missing, not JSON, or fails the HistFactory schema."""


class FitError(KnunuError):
    """A fit did not converge after every fallback strategy."""


class LimitAboveBoundError(FitError):
    """The CLs upper limit lies above the POI's upper bound (too little data to set one)."""


class ClusterError(KnunuError):
    """A Dask cluster backend is unknown or could not be started."""


class SimulationError(KnunuError):
    """A simulation task failed (the production stops and writes no catalogue)."""


class ModelError(InputError):
    """A BDT model or transform file is missing, malformed, or does not fit its inputs."""


class ProcessingError(KnunuError):
    """A processor run lost events or chunks, or its inputs do not match the catalogue."""


class DiskFullError(KnunuError):
    """A write ran out of disk space or quota; the file being written is not left behind."""


class RunLockedError(KnunuError):
    """Another knunu process is writing into the same run directory."""
