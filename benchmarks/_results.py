"""Where the benchmarks and studies write what they measured: ``benchmarks/results/<name>.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def write_results(name: str, data: Any, echo: bool = False) -> Path:
    """Write ``results/<name>.json`` (indented) and return its path; ``echo`` prints it too."""
    text = json.dumps(data, indent=2)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(text + "\n")
    if echo:
        print(text)
    return out
