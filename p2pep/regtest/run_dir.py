"""Where a network's state lives: a run dir outside the repo, with state.json.

state.json holds secrets (the faucet's private key, btcd's RPC credentials), so it is
written owner-only (0600), atomically, and never readable by others even for a moment.
"""

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


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically, the file owner-only (0600) from its creation."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a stale .tmp may have had other modes
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            fd = -1
            f.write(text)
    finally:
        if fd >= 0:
            os.close(fd)
    tmp.replace(path)


def save_state(run_dir: Path, state: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_private(state_path(run_dir), json.dumps(state, indent=2))
