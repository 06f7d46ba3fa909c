"""`p2pep regtest up|status|mine|down` as a user runs them (separate processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.regtest


def p2pep(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "p2pep.cli", *args], env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_up_status_mine_down(tmp_path: Path) -> None:
    env = dict(os.environ, P2PEP_RUN_DIR=str(tmp_path / "run"))
    try:
        up = p2pep("regtest", "up", "--meters", "1", env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        again = p2pep("regtest", "up", env=env)
        assert again.returncode == 2 and "already running" in again.stdout
        st = json.loads(p2pep("regtest", "status", "--json", env=env).stdout)
        assert [n["name"] for n in st["nodes"]] == ["hub", "meter-1"]
        for n in st["nodes"]:
            assert len(n["pubkey"]) == 66 and Path(n["tlscertpath"]).exists() and Path(n["macaroonpath"]).exists()
            assert list(n["service_macaroons"]) == (["anchor"] if n["name"] == "hub" else ["meter"])
            assert all(Path(p).exists() for p in n["service_macaroons"].values())
            assert n["channels"][0]["active"]
            with urllib.request.urlopen(n["metrics"], timeout=10) as resp:  # lnd's own Prometheus endpoint
                assert b"grpc_server_handled_total" in resp.read()
        assert Path(st["binaries"]["lncli"]).exists() and Path(st["btcd"]["rpccert"]).exists()
        h = st["btcd"]["height"]
        mined = json.loads(p2pep("regtest", "mine", "2", env=env).stdout)
        assert mined["height"] == h + 2
    finally:
        down = p2pep("regtest", "down", "--purge", env=env)
    assert down.returncode == 0 and not (tmp_path / "run").exists()
