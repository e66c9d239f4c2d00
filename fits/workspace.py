"""Loading pyhf workspaces and selecting the ITA, HTA or combined model from them."""

from __future__ import annotations

import json
import logging
import re
from importlib import resources
from pathlib import Path
from typing import Any

import pyhf

from knunu.errors import WorkspaceError
from knunu.rundir import input_file

log = logging.getLogger(__name__)

#: The published Belle II likelihood (PRD 109, 112006; HEPData 10.17182/hepdata.166082, CC0).
PUBLISHED_WORKSPACE = "belle2_knunu_2023_combined.json"

#: Which channels belong to which analysis, by channel-name pattern. The published file names
#: the ITA channels A__..D__ and the HTA channel sgn1_had; knunu's own use ita_/hta_ prefixes.
ANALYSIS_CHANNELS: dict[str, str] = {
    "ita": r"^(?:[ABCD]__|ita_)",
    "hta": r"(?:_had$|^hta_)",
}


def published_workspace_path() -> Path:
    """Path of the vendored published likelihood."""
    return Path(str(resources.files("knunu").joinpath("data", PUBLISHED_WORKSPACE)))


def load_workspace(path: str | Path) -> pyhf.Workspace:
    """Read a pyhf JSON workspace and validate it against pyhf's schema.

    Raises:
        WorkspaceError: one line naming the file and the problem.
    """
    path = input_file(path, WorkspaceError)  # not a directory, FIFO or link loop
    try:
        spec: Any = json.loads(path.read_text())
    except FileNotFoundError:
        raise WorkspaceError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise WorkspaceError(f"{path}: not a text (JSON) file") from None
    except json.JSONDecodeError as exc:
        raise WorkspaceError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(spec, dict):
        raise WorkspaceError(f"{path}: not a pyhf workspace (top level is not an object)")
    try:
        return pyhf.Workspace(spec)
    except pyhf.exceptions.InvalidSpecification as exc:
        where = "/".join(str(p) for p in getattr(exc, "path", []) or [])
        reason = getattr(exc, "reason", None) or str(exc).splitlines()[0]
        raise WorkspaceError(f"{path}: not a valid pyhf workspace at '{where}': {reason}") from None
    except pyhf.exceptions.PyhfException as exc:
        raise WorkspaceError(f"{path}: not a valid pyhf workspace: {exc}") from None


def analyses_in(workspace: pyhf.Workspace) -> list[str]:
    """The analyses a workspace holds: ``combined`` first when it holds both."""
    found = [
        name
        for name, pattern in ANALYSIS_CHANNELS.items()
        if any(re.search(pattern, c) for c in workspace.channels)
    ]
    return (["combined"] if len(found) > 1 else []) + found


def select(workspace: pyhf.Workspace, analysis: str) -> pyhf.Workspace:
    """The sub-workspace of one analysis (``combined`` returns the workspace itself).

    Raises:
        WorkspaceError: the workspace holds no channel of that analysis.
    """
    if analysis == "combined":
        return workspace
    if analysis not in ANALYSIS_CHANNELS:
        known = ", ".join(["combined", *ANALYSIS_CHANNELS])
        raise WorkspaceError(f"unknown analysis {analysis!r} (known: {known})")
    keep = [c for c in workspace.channels if re.search(ANALYSIS_CHANNELS[analysis], c)]
    if not keep:
        raise WorkspaceError(f"workspace holds no {analysis.upper()} channel")
    drop = [c for c in workspace.channels if c not in keep]
    return workspace.prune(channels=drop) if drop else workspace
