"""A running scenario's state file: where its services listen, their pids and logs.

Lives in ``<run dir>/scenario/state.json`` next to the regtest network's own
state, so other commands (``p2pep contract export``, ``p2pep scenario down``) find
the services of the scenario running there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from p2pep.regtest.process import pid_alive
from p2pep.regtest.run_dir import write_private


def scenario_dir(run_dir: Path) -> Path:
    return run_dir / "scenario"


def state_file(run_dir: Path) -> Path:
    return scenario_dir(run_dir) / "state.json"


def load(run_dir: Path) -> dict[str, Any] | None:
    p = state_file(run_dir)
    if not p.exists():
        return None
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def save(run_dir: Path, state: dict[str, Any]) -> None:
    p = state_file(run_dir)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_private(p, json.dumps(state, indent=2))


def is_our_service(pid: int) -> bool:
    """Is ``pid`` alive and one of our service processes (``python -m services.X``, or the
    lossy links' ``toxiproxy-server``)?
    Guards against signalling a pid the OS has since given to something else."""
    if not pid_alive(pid):
        return False
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(part.startswith(b"services.") for part in cmd) or (bool(cmd) and cmd[0].endswith(b"/toxiproxy-server"))


def live_services(state: dict[str, Any] | None) -> dict[str, int]:
    """Services of a recorded scenario that still run: name -> pid."""
    if not state:
        return {}
    out = {}
    for name, svc in state.get("services", {}).items():
        pid = svc.get("pid")
        if isinstance(pid, int) and pid != os.getpid() and is_our_service(pid):
            out[name] = pid
    links = state.get("toxiproxy") or {}  # the lossy links' proxy (p2pep.scenario.toxiproxy)
    pid = links.get("pid") if isinstance(links, dict) else None
    if isinstance(pid, int) and is_our_service(pid):
        out["toxiproxy"] = pid
    return out
