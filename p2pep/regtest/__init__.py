"""A real bitcoin regtest network (btcd) with real LND nodes, driven from Python."""

from p2pep.regtest.errors import BinaryMissing, PortInUse, ProcessFailed, RegtestError
from p2pep.regtest.network import NetworkSpec, RegtestNetwork
from p2pep.regtest.waiting import timeout_scale, wait_for

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
