"""Run directories: everything one analysis run made, with a manifest, written atomically.

Outputs are written to a temporary file beside their destination and renamed into place, so
an interrupted run never leaves a half-written file that looks complete.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import json
import logging
import os
import platform
import tempfile
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from knunu.errors import DiskFullError, InputError, KnunuError, RunLockedError

log = logging.getLogger(__name__)

#: Distributions whose versions every manifest records.
TRACKED_DISTRIBUTIONS = (
    "knunu",
    "numpy",
    "awkward",
    "uproot",
    "coffea",
    "dask",
    "distributed",
    "dask-jobqueue",
    "hist",
    "xgboost-cpu",
    "pyhf",
    "jax",
    "scipy",
    "iminuit",
    "pythia8mc",
)


#: The errnos of a write that ran out of space: disk full, quota exceeded.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _reraise_disk_full(exc: OSError, what: str) -> None:
    """Raise :class:`DiskFullError` (``what``: the message's start) if ``exc`` is a full disk."""
    if exc.errno in DISK_FULL:
        raise DiskFullError(
            f"{what}: disk full ({exc.strerror}); free space and run again"
        ) from None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path that is renamed to ``path`` only if the block succeeds.

    A full disk (or quota) while the block writes raises :class:`~knunu.errors.DiskFullError`
    naming ``path``; the temporary file is removed either way.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_path(d / "out.txt") as tmp:
    ...     _ = tmp.write_text("done")
    >>> (d / "out.txt").read_text()
    'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        try:
            yield tmp
        except OSError as exc:
            _reraise_disk_full(exc, f"{path} (finished outputs are kept)")
            raise
        # mkstemp makes the file private (0600); outputs get the usual umask-given mode
        mask = os.umask(0)
        os.umask(mask)
        tmp.chmod(0o666 & ~mask)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically (sorted keys, indented) and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write text atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


LOCK = ".lock"


def input_file(path: str | Path, error: type[KnunuError] = InputError) -> Path:
    """``path`` if it is a regular file this process can read, else one line saying why.

    Checked before opening: a directory, a FIFO or device (reading one would block), a
    symbolic-link loop, a missing or unreadable file each raise ``error`` naming the path.

    >>> input_file("/nonexistent/x.json")
    Traceback (most recent call last):
    knunu.errors.InputError: /nonexistent/x.json: file not found
    """
    import stat

    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except OSError as exc:  # ELOOP, EACCES on a parent, ENAMETOOLONG, ...
        raise error(f"{path}: cannot read ({exc.strerror})") from None
    if stat.S_ISDIR(mode):
        raise error(f"{path}: is a directory, not a file")
    if not stat.S_ISREG(mode):
        raise error(f"{path}: not a regular file (a FIFO, socket or device)")
    if not os.access(path, os.R_OK):
        raise error(f"{path}: cannot read (permission denied)")
    return path


def output_directory(path: str | Path) -> Path:
    """``path`` as a directory to write into (created), else one line saying why not.

    Raises:
        InputError: the path exists and is not a directory, or cannot be created.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise InputError(f"{path}: a symbolic link that loops or leads nowhere (the run directory)")
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: exists and is not a directory (the run directory)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{path}: cannot create the run directory ({exc.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"{path}: the run directory is not writable")
    return path


@contextlib.contextmanager
def run_lock(path: str | Path) -> Iterator[Path]:
    """Hold the run directory's lock (``<run>/.lock``) while a command writes into it.

    An exclusive ``flock``: the kernel releases it when the holder exits, however it ends, so
    a killed run leaves no stale lock. The file records who holds it.

    Raises:
        RunLockedError: another process holds the lock (the message names it).
    """
    import fcntl
    import socket

    run = output_directory(path)
    with open(run / LOCK, "a+b", buffering=0) as handle:  # unbuffered: nothing left to flush
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().decode(errors="replace").strip() or "a process"
            raise RunLockedError(
                f"{run}: in use by {holder}; wait for it to end or use another run directory "
                "(-o DIR)"
            ) from None
        handle.seek(0)
        handle.truncate()
        started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        try:
            handle.write(
                f"knunu pid {os.getpid()} on {socket.gethostname()} since {started}\n".encode()
            )
        except OSError as exc:
            _reraise_disk_full(exc, str(run))
            raise
        try:
            yield run
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def adler32(path: str | Path, chunk: int = 1 << 22) -> str:
    """The Adler-32 checksum of a file (8 hex digits), as grid storage and Rucio keep it.

    Any single changed byte changes it; about 2-3 GB/s on one core here (``make bench``).

    >>> import tempfile, pathlib
    >>> with tempfile.NamedTemporaryFile(delete=False) as f:
    ...     _ = f.write(b"Wikipedia")
    >>> adler32(f.name), pathlib.Path(f.name).unlink()
    ('11e60398', None)
    """
    import zlib

    value = 1
    with open(path, "rb") as f:
        while block := f.read(chunk):
            value = zlib.adler32(block, value)
    return f"{value:08x}"


def versions() -> dict[str, str]:
    """Versions of Python and of the tracked distributions (``"absent"`` if not installed)."""
    out = {"python": platform.python_version()}
    for dist in TRACKED_DISTRIBUTIONS:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "absent"
    return out


class RunDir:
    """A run directory and its manifest (``manifest.json``).

    Args:
        path: The directory; created if needed.
        config: The validated configuration of the run (recorded with its seed).
    """

    MANIFEST = "manifest.json"

    def __init__(self, path: str | Path, config: dict[str, Any]) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.manifest: dict[str, Any] = {
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "config": {k: v for k, v in config.items() if not k.startswith("_")},
            "config_source": config.get("_source"),
            "seed": config.get("seed"),
            "versions": versions(),
            "inputs": {},
            "outputs": {},
            "stages": {},
        }

    def record_input(self, path: str | Path) -> None:
        """Record an input file with its hash."""
        self.manifest["inputs"][str(Path(path).resolve())] = sha256(path)

    def record_output(self, path: str | Path) -> None:
        """Record an output file (inside the run directory) with its hash."""
        path = Path(path)
        key = str(path.relative_to(self.path)) if path.is_relative_to(self.path) else str(path)
        self.manifest["outputs"][key] = sha256(path)

    def record_stage(self, stage: str, status: str, **info: Any) -> None:
        """Record what a stage did: ``done``, ``up to date``, ``failed``."""
        self.manifest["stages"][stage] = {"status": status, **info}

    def write_manifest(self) -> Path:
        """Write ``manifest.json`` atomically."""
        return write_json(self.path / self.MANIFEST, self.manifest)


def from_a_run(path: str | Path, run_dir: str | Path) -> bool:
    """Whether a file comes from a run: inside ``run_dir`` or any directory with a manifest.

    Data from a run are its pseudo-data (or the real data a run imported): what blinding hides.

    >>> from_a_run("/tmp/run/histograms.root", "/tmp/run")
    True
    """
    path = Path(os.path.realpath(path))  # no error for a link loop: the reader says what is wrong
    if path.is_relative_to(Path(os.path.realpath(run_dir))):
        return True
    return any((parent / RunDir.MANIFEST).is_file() for parent in path.parents)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Save a matplotlib figure atomically (the format from the suffix, PNG by default)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=110)
    return path
