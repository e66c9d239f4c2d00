"""Every CLI argument that names a path, swept with the kinds of path that are not a file to
read (or a directory to write): a directory, an empty file, a symlink loop, a FIFO, a path
that is not there, a file without read permission, a run directory where nothing may be
written and one on a full disk: one line naming the path and exit code 2 each, never a
traceback or a hang (a FIFO would block a reader)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from knunu.cli import main
from knunu.fits.workspace import published_workspace_path

KNUNU = shutil.which("knunu", path=str(Path(sys.executable).parent)) or "knunu"


def _make(kind: str, where) -> str:
    path = where / kind.replace(" ", "_")
    if kind == "directory":
        path.mkdir()
    elif kind == "empty file":
        path.write_text("")
    elif kind == "symlink loop":
        path.symlink_to(path.name)
    elif kind == "FIFO":
        os.mkfifo(path)
    elif kind == "not there":
        pass
    return str(path)


KINDS = ("directory", "empty file", "symlink loop", "FIFO", "not there")
#: A run directory that is not one ("not there" is created, a directory is one).
RUN_DIR_KINDS = ("empty file", "symlink loop", "FIFO")
#: (argument list with {p} for the swept path and {o} for a fresh run directory, kinds)
ARGUMENTS = {
    "fit --workspace": (["fit", "--workspace", "{p}", "-o", "{o}", "--toys", "0"], KINDS),
    "fit --histograms": (["fit", "--histograms", "{p}", "-o", "{o}", "--toys", "0"], KINDS),
    "-c (config)": (["fit", "-c", "{p}", "--workspace", "{ws}", "-o", "{o}", "--toys", "0"],
                    ("directory", "symlink loop", "FIFO", "not there")),
    "-o (run directory)": (["fit", "--workspace", "{ws}", "-o", "{p}", "--toys", "0"],
                           ("empty file", "symlink loop", "FIFO")),
    "train -o": (["train", "-o", "{p}"], ("empty file", "symlink loop", "FIFO", "not there")),
    "simulate -o": (["simulate", "--scale", "tiny", "-o", "{p}"], RUN_DIR_KINDS),
    "process -o": (["process", "-o", "{p}"], RUN_DIR_KINDS),
    "run -o": (["run", "-o", "{p}"], RUN_DIR_KINDS),
    "reinterpret -o": (["reinterpret", "-o", "{p}"], RUN_DIR_KINDS),
    "run --catalogue": (["run", "--catalogue", "{p}", "-o", "{o}"], KINDS),
    "checksum CATALOGUE": (["checksum", "{p}"], KINDS),
    # configuration keys that name a path (the config file written with the key set to it)
    "config catalogue": (["run", "-c", "{c}"], KINDS, "catalogue: {p}\noutput_dir: {o}\n"),
    "config output_dir": (["run", "-c", "{c}"], RUN_DIR_KINDS, "output_dir: {p}\n"),
    "config fit.workspace": (["fit", "-c", "{c}", "--toys", "0"], KINDS,
                             "fit: {{workspace: {p}}}\noutput_dir: {o}\n"),
}  # fmt: skip


def _argv(argument: str, path: str, where: Path) -> list[str]:
    """The command line of ``argument`` with ``path`` swept in (its config file written)."""
    template, _, *config = ARGUMENTS[argument]
    names = {
        "p": path,
        "o": str(where / "run"),
        "ws": str(published_workspace_path()),
        "c": str(where / "config.yaml"),
    }
    if config:
        (where / "config.yaml").write_text(config[0].format(**names))
    return [a.format(**names) for a in template]


def _assert_one_line(code: int, err: list[str], named: tuple[str, ...], *context: str) -> None:
    """Exit 2 and one error line that names one of ``named``."""
    assert code == 2, (*context, code, err)
    assert len(err) == 1, (*context, err)
    assert err[0].startswith("knunu: error: "), (*context, err)
    assert any(n in err[0] for n in named), (*context, err)


@pytest.mark.parametrize("argument", list(ARGUMENTS))
def test_a_path_that_cannot_be_used_ends_in_one_line(argument, tmp_path, capsys):
    for kind in ARGUMENTS[argument][1]:
        where = tmp_path / argument.replace(" ", "_").replace("(", "").replace(")", "")
        where.mkdir(exist_ok=True)
        path = _make(kind, where)
        code = main(_argv(argument, path, where))
        err = capsys.readouterr().err.strip().splitlines()
        _assert_one_line(code, err, (path, "catalogue"), argument, kind)


#: The arguments that read the path they name, and those that write a run directory there.
READ = (
    "fit --workspace",
    "fit --histograms",
    "-c (config)",
    "run --catalogue",
    "checksum CATALOGUE",
    "config catalogue",
    "config fit.workspace",
)
WRITE = (
    "-o (run directory)",
    "train -o",
    "simulate -o",
    "process -o",
    "run -o",
    "reinterpret -o",
    "config output_dir",
)
#: Root reads and writes whatever the permissions say: as root the installed command runs
#: without the capabilities that let it (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), as any user.
AS_A_USER = (
    ("setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--")
    if os.geteuid() == 0
    else ()
)


def _one_line(argument: str, path: str, where: Path, as_a_user: bool) -> None:
    """The installed command on ``argument`` with ``path``: one line and exit 2."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    done = subprocess.run(
        [*(AS_A_USER if as_a_user else ()), KNUNU, *_argv(argument, path, where)],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    _assert_one_line(done.returncode, done.stderr.strip().splitlines(), (path,), argument)


@pytest.mark.parametrize("argument", READ)
def test_a_file_without_read_permission_ends_in_one_line(argument, tmp_path):
    where = tmp_path / "w"
    where.mkdir()
    path = where / "unreadable"
    path.write_text("{}\n")
    path.chmod(0)
    _one_line(argument, str(path), where, as_a_user=True)


@pytest.mark.parametrize("argument", WRITE)
def test_a_run_directory_without_write_permission_ends_in_one_line(argument, tmp_path):
    where = tmp_path / "w"
    (where / "locked").mkdir(parents=True)
    (where / "locked").chmod(0o555)
    _one_line(argument, str(where / "locked" / "run"), where, as_a_user=True)


@pytest.mark.parametrize("argument", WRITE)
def test_a_run_directory_on_a_full_disk_ends_in_one_line(argument, full_disk, tmp_path):
    where = tmp_path / "w"
    where.mkdir()
    _one_line(argument, str(full_disk / "run"), where, as_a_user=False)
