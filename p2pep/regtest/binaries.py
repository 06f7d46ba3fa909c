"""Where the pinned lnd/btcd (and Toxiproxy) builds are (see scripts/build-binaries.sh)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from p2pep.regtest.errors import BinaryMissing, RegtestError

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Binaries:
    dir: Path

    def path(self, name: str) -> Path:
        p = self.dir / name
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise BinaryMissing(name, p)
        return p

    @property
    def lnd(self) -> Path:
        return self.path("lnd")

    @property
    def lncli(self) -> Path:
        return self.path("lncli")

    @property
    def btcd(self) -> Path:
        return self.path("btcd")

    @property
    def btcctl(self) -> Path:
        return self.path("btcctl")

    @property
    def toxiproxy(self) -> Path:
        """toxiproxy-server: the lossy links between meters and services (p2pep.scenario.links)."""
        return self.path("toxiproxy-server")


def find_binaries() -> Binaries:
    """``P2PEP_BIN_DIR`` if set, else the cache dir the build script reports (building if needed)."""
    env = os.environ.get("P2PEP_BIN_DIR")
    if env:
        return Binaries(Path(env))
    script = REPO / "scripts" / "build-binaries.sh"
    if not script.exists():
        raise RegtestError("P2PEP_BIN_DIR is not set and scripts/build-binaries.sh is not available")
    # stderr is not captured: the first build takes many minutes and reports its progress there.
    out = subprocess.run(["bash", str(script)], stdout=subprocess.PIPE, text=True)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise RegtestError(f"scripts/build-binaries.sh failed (exit {out.returncode}); its messages are above")
    return Binaries(Path(lines[-1]))
