"""Where a benchmark's results go: ``bench/results/<name>.json`` (the folder is made if missing),
and the same JSON on stdout, so a run leaves a file to compare and a log to read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def save_results(name: str, results: dict[str, Any]) -> None:
    folder = Path("bench/results")
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2)
    (folder / f"{name}.json").write_text(text)
    print(text)
