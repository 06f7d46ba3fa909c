"""A real bitcoin regtest network (btcd) with real LND nodes, driven from Python.

``NetworkSpec`` and ``RegtestNetwork`` are imported on first use: they need the
generated LND stubs (``p2pep/lndrpc``), and ``p2pep.regtest.errors`` or ``.run_dir``
must stay importable without them (the CLI's ``--help`` runs before ``make setup``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from p2pep.regtest.errors import BinaryMissing, PortInUse, ProcessFailed, RegtestError
from p2pep.regtest.waiting import timeout_scale, wait_for

if TYPE_CHECKING:
    from p2pep.regtest.network import NetworkSpec, RegtestNetwork

_LAZY = {"NetworkSpec": "p2pep.regtest.network", "RegtestNetwork": "p2pep.regtest.network"}

__all__ = [
    "BinaryMissing",
    "NetworkSpec",
    "PortInUse",
    "ProcessFailed",
    "RegtestError",
    "RegtestNetwork",
    "timeout_scale",
    "wait_for",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
