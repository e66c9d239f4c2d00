"""Every CLI argument that names a path, swept with the kinds of path that are not a file to
read (or a directory to write): one line naming the path and exit code 2 each, never a
traceback or a hang (a FIFO would block a reader)."""

from __future__ import annotations

import os

import pytest

from knunu.cli import main
from knunu.fits.workspace import published_workspace_path


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


@pytest.mark.parametrize("argument", list(ARGUMENTS))
def test_a_path_that_cannot_be_used_ends_in_one_line(argument, tmp_path, capsys):
    template, kinds, *config = ARGUMENTS[argument]
    for kind in kinds:
        where = tmp_path / argument.replace(" ", "_").replace("(", "").replace(")", "")
        where.mkdir(exist_ok=True)
        path = _make(kind, where)
        ws = str(published_workspace_path())
        names = {"p": path, "o": str(where / "run"), "ws": ws, "c": str(where / "config.yaml")}
        if config:
            (where / "config.yaml").write_text(config[0].format(**names))
        argv = [a.format(**names) for a in template]
        code = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, (argument, kind, err)
        assert len(err) == 1, (argument, kind, err)
        assert err[0].startswith("knunu: error: "), (argument, kind, err)
        assert path in err[0] or "catalogue" in err[0], (argument, kind, err)
