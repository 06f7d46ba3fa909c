"""`p2pep --help` on a checkout whose gRPC stubs are not generated yet.

The stubs (``p2pep/v1``, ``p2pep/lndrpc``) are gitignored and made by ``make setup``.
Each run below is a subprocess in which importing them fails exactly as on a fresh
checkout, whether or not this checkout has them: a meta-path finder placed before
every other one (the editable install's finder included) refuses those packages.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs `python -m p2pep.cli ARGS...` with the stub packages unimportable.
HIDE_STUBS = """
import runpy, sys

class HideStubs:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[:2] in (["p2pep", "v1"], ["p2pep", "lndrpc"]):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, HideStubs)
sys.argv = ["p2pep", *sys.argv[1:]]
runpy.run_module("p2pep.cli", run_name="__main__", alter_sys=True)
"""


def run_cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, P2PEP_RUN_DIR=str(tmp_path / "run"))
    return subprocess.run([sys.executable, "-c", HIDE_STUBS, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_stubs_are_hidden(tmp_path: Path) -> None:
    code = HIDE_STUBS.split("sys.argv")[0] + "import p2pep.lndrpc\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "p2pep.lndrpc" in proc.stderr


@pytest.mark.parametrize("args", [
    ["--help"],
    ["regtest", "--help"],
    ["regtest", "up", "--help"],
    ["up", "--help"],
    ["scenario", "run", "--help"],
    ["contract", "export", "--help"],
    ["verify", "--help"],
    ["market", "clear", "--help"],
])
def test_help_works_without_stubs(args: list[str], tmp_path: Path) -> None:
    proc = run_cli(*args, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: p2pep")
    assert proc.stderr == ""


@pytest.mark.parametrize("args", [
    ["regtest", "status"],
    ["contract", "export", "c-1", "--settlement", "127.0.0.1:1"],
])
def test_command_needing_stubs_says_run_make_setup(args: list[str], tmp_path: Path) -> None:
    proc = run_cli(*args, tmp_path=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "make setup" in lines[0], proc.stderr


def test_scenario_list_needs_no_stubs(tmp_path: Path) -> None:
    proc = run_cli("scenario", "list", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "hackathon" in proc.stdout
