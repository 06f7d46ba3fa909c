"""Generate every gRPC stub the project uses; never edit the output by hand.

* ``proto/p2pep/v1/*.proto`` -> ``p2pep/v1/*_pb2*.py`` (+ ``.pyi``).
* LND's protos, read from the lnd module pinned in ``regtest/go.mod`` (the Go
  module cache, filled by ``scripts/build-binaries.sh``) -> ``p2pep/lndrpc/``.

LND's protos import each other by bare names (``import "lightning.proto"``),
which protoc turns into top-level Python imports (``import lightning_pb2``).
So the protos are staged under ``build/lndproto/p2pep/lndrpc/`` with their
import lines re-rooted there; the generated modules then import
``p2pep.lndrpc.lightning_pb2``. Message and service names are unchanged.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from go_toolchain import ToolchainError, ensure_go  # scripts/, this script's directory
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
LND_PROTOS = [
    "lightning.proto",
    "stateservice.proto",
    "walletunlocker.proto",
    "routerrpc/router.proto",
    "walletrpc/walletkit.proto",
    "signrpc/signer.proto",
    "invoicesrpc/invoices.proto",
    "chainrpc/chainnotifier.proto",
    "peersrpc/peers.proto",
]
WELL_KNOWN = str(Path(protoc.__file__).parent / "_proto")


def run_protoc(include: Path, files: list[str], out: Path) -> None:
    """Messages, services, and mypy-protobuf's typed stubs of both (``.pyi``)."""
    plugins = Path(sys.executable).parent  # mypy-protobuf's protoc plugins, in the venv
    args = [
        "protoc",
        f"-I{include}",
        f"-I{WELL_KNOWN}",
        f"--plugin=protoc-gen-mypy={plugins / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugins / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--mypy_out=quiet:{out}",
        f"--grpc_python_out={out}",
        f"--mypy_grpc_out=quiet:{out}",
        *files,
    ]
    if protoc.main(args) != 0:
        sys.exit(f"protoc failed for {include}")


def touch_packages(top: Path, stop: Path) -> None:
    for d in [top, *[p for p in top.rglob("*") if p.is_dir()]]:
        if d.name != "__pycache__":
            (d / "__init__.py").touch()
    # parents between stop and top (exclusive of stop)
    p = top.parent
    while p != stop and stop in p.parents:
        (p / "__init__.py").touch()
        p = p.parent


def gen_p2pep() -> None:
    src = ROOT / "proto"
    files = sorted(str(p.relative_to(src)) for p in (src / "p2pep").rglob("*.proto"))
    out = ROOT / "p2pep" / "v1"
    shutil.rmtree(out, ignore_errors=True)
    if not files:
        return
    run_protoc(src, files, ROOT)
    touch_packages(out, ROOT / "p2pep")


def go_command() -> tuple[str, dict[str, str]]:
    """The `go` that can read regtest/go.mod (fetched if need be) and its environment."""
    try:
        gobin = ensure_go(ROOT / "regtest" / "go.mod")
    except ToolchainError as e:
        sys.exit(f"go toolchain: {e}")
    env = dict(os.environ, GOTOOLCHAIN="local", GOFLAGS="-mod=mod", GOROOT=str(gobin.parent),
               PATH=f"{gobin}{os.pathsep}{os.environ.get('PATH', '')}")
    return str(gobin / "go"), env


def lnd_module_dir() -> Path:
    go, env = go_command()
    out = subprocess.run(
        [go, "list", "-m", "-f", "{{.Dir}}", "github.com/lightningnetwork/lnd"],
        cwd=ROOT / "regtest", env=env, check=True, capture_output=True, text=True,
    ).stdout.strip()
    if not out or not Path(out).is_dir():
        subprocess.run(
            [go, "mod", "download", "github.com/lightningnetwork/lnd"],
            cwd=ROOT / "regtest", env=env, check=True,
        )
        return lnd_module_dir()
    return Path(out)


def gen_lnd() -> None:
    src = lnd_module_dir() / "lnrpc"
    stage = ROOT / "build" / "lndproto"
    shutil.rmtree(stage, ignore_errors=True)
    prefix = "p2pep/lndrpc/"
    for rel in LND_PROTOS:
        text = (src / rel).read_text()
        text = re.sub(r'^import "(?!google/)([^"]+)";', rf'import "{prefix}\1";', text, flags=re.M)
        dest = stage / prefix / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
    out = ROOT / "p2pep" / "lndrpc"
    shutil.rmtree(out, ignore_errors=True)
    run_protoc(stage, [prefix + rel for rel in LND_PROTOS], ROOT)
    touch_packages(out, ROOT / "p2pep")
    (out / "VERSION").write_text(src.parent.name + "\n")


if __name__ == "__main__":
    gen_p2pep()
    gen_lnd()
    print("stubs generated: p2pep/v1, p2pep/lndrpc")
