"""Where a network's state lives: a run dir outside the repo, with state.json."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def default_run_dir() -> Path:
    env = os.environ.get("P2PEP_RUN_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "p2pep" / "regtest"


def state_path(run_dir: Path | None = None) -> Path:
    return (run_dir or default_run_dir()) / "state.json"


def load_state(run_dir: Path | None = None) -> dict[str, Any] | None:
    """The saved network (btcd, nodes, binaries), or None if no network was brought up."""
    p = state_path(run_dir)
    if not p.exists():
        return None
    state: dict[str, Any] = json.loads(p.read_text())
    return state


def save_state(run_dir: Path, state: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_path(run_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(state_path(run_dir))
