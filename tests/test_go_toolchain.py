"""scripts/go_toolchain.py: which Go is good enough, and fetching one from a module proxy.

The proxy and the checksum database here are a ``file://`` GOPROXY holding a fake
toolchain module (a shell script as ``bin/go``), so nothing leaves the machine.
"""

from __future__ import annotations

import importlib.util
import os
import stat
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("go_toolchain", ROOT / "scripts" / "go_toolchain.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["go_toolchain"] = module
    spec.loader.exec_module(module)
    return module


gt = _load()

FAKE_VERSION = "1.99.1"


def fake_go(version: str) -> str:
    """A `go` that answers `go env GOROOT GOVERSION` like the real one."""
    return f'#!/bin/sh\nif [ "$1" = env ]; then cd "$(dirname "$0")/.." && pwd; echo go{version}; fi\n'


def write_gomod(tmp_path: Path, version: str = FAKE_VERSION) -> Path:
    gomod = tmp_path / "go.mod"
    gomod.write_text(f"module example.com/x\n\ngo {version}\n\nrequire example.com/y v1.0.0\n")
    return gomod


def make_proxy(tmp_path: Path, version: str = FAKE_VERSION, tamper: bool = False) -> Path:
    """A GOPROXY directory serving golang.org/toolchain for this machine, and its sumdb lookup."""
    mod_version = f"v0.0.1-go{version}.{gt.go_os_arch()}"
    os_arch = gt.go_os_arch().replace("-", "_")
    proxy = tmp_path / "proxy"
    zip_path = proxy / "golang.org" / "toolchain" / "@v" / f"{mod_version}.zip"
    zip_path.parent.mkdir(parents=True)
    prefix = f"golang.org/toolchain@{mod_version}/"
    with zipfile.ZipFile(zip_path, "w") as z:
        z.writestr(prefix + "bin/go", fake_go(version))
        z.writestr(prefix + "bin/gofmt", "#!/bin/sh\n")
        z.writestr(prefix + f"pkg/tool/{os_arch}/compile", "#!/bin/sh\n")
        z.writestr(prefix + "lib/wasm/go_js_wasm_exec", "#!/bin/sh\n")
        z.writestr(prefix + "src/_go.mod", "module std\n")
        z.writestr(prefix + "src/cmd/_go.mod", "module cmd\n")
        z.writestr(prefix + "VERSION", f"go{version}\n")
    with zipfile.ZipFile(zip_path) as z:
        h1 = gt.zip_hash(z)
    if tamper:
        with zipfile.ZipFile(zip_path, "a") as z:
            z.writestr(prefix + "src/extra.go", "package evil\n")
    lookup = proxy / "sumdb" / "sum.golang.org" / "lookup" / f"golang.org/toolchain@{mod_version}"
    lookup.parent.mkdir(parents=True)
    lookup.write_text(f"4242\ngolang.org/toolchain {mod_version} {h1}\n"
                      f"golang.org/toolchain {mod_version}/go.mod h1:AAAA=\n\ngo.sum database tree\n")
    return proxy


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No `go` on PATH (only a dir the test may fill), a fresh cache, a file:// proxy."""
    bindir = tmp_path / "pathbin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    monkeypatch.setenv("P2PEP_GO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GOPROXY", f"file://{tmp_path / 'proxy'},direct")
    monkeypatch.delenv("GOSUMDB", raising=False)
    monkeypatch.delenv("GOROOT", raising=False)
    return bindir


def put_go_on_path(bindir: Path, tmp_path: Path, version: str) -> Path:
    """A `go` on PATH whose GOROOT is elsewhere, like Debian's /usr/bin/go."""
    goroot = tmp_path / f"goroot-{version}"
    go = bindir / "go"
    go.write_text(f'#!/bin/sh\nif [ "$1" = env ]; then echo {goroot}; echo go{version}; fi\n')
    go.chmod(0o755)
    return goroot


def test_version_order() -> None:
    order = ["1.19.8", "1.20", "1.20.1", "1.21", "1.21rc1", "1.21rc2", "1.21.0", "1.25.9", "1.25.13", "1.26rc1",
             "1.26.0"]
    keys = [gt.parse_version(v) for v in order]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert gt.parse_version("go1.26.8") == gt.parse_version("1.26.8")
    assert gt.toolchain_name("1.25") == "1.25.0" and gt.toolchain_name("1.25.13") == "1.25.13"
    with pytest.raises(gt.ToolchainError):
        gt.parse_version("devel")


def test_required_version_is_the_go_directive(tmp_path: Path) -> None:
    assert gt.required_version(write_gomod(tmp_path, "1.25.13")) == "1.25.13"
    (tmp_path / "bad.mod").write_text("module x\n")
    with pytest.raises(gt.ToolchainError, match="no `go` directive"):
        gt.required_version(tmp_path / "bad.mod")


def test_the_project_gomod_names_a_version() -> None:
    gt.parse_version(gt.required_version(gt.GOMOD))


def test_zip_hash_matches_go() -> None:
    """Known answer from Go's own dirhash.HashZip on the same three files."""
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("m@v1/b.txt", "second\n")
        z.writestr("m@v1/a/x.go", "package a\n")
        z.writestr("m@v1/A.md", "Upper first\n")
    with zipfile.ZipFile(buf) as z:
        assert gt.zip_hash(z) == "h1:vyqetosf47ho7c3pGolIo0IP24oXk8Vl+aIu1fvNQdM="


def test_new_enough_go_on_path_is_used(env: Path, tmp_path: Path) -> None:
    goroot = put_go_on_path(env, tmp_path, "1.99.3")
    assert gt.ensure_go(write_gomod(tmp_path), say=lambda m: None) == goroot / "bin"
    assert not (tmp_path / "cache").exists()


def test_missing_go_is_fetched_verified_and_unpacked(env: Path, tmp_path: Path) -> None:
    make_proxy(tmp_path)
    said: list[str] = []
    bindir = gt.ensure_go(write_gomod(tmp_path), say=said.append)
    root = tmp_path / "cache" / f"go{FAKE_VERSION}"
    assert bindir == root / "bin"
    for rel in ("bin/go", "bin/gofmt", f"pkg/tool/{gt.go_os_arch().replace('-', '_')}/compile",
                "lib/wasm/go_js_wasm_exec"):
        assert (root / rel).stat().st_mode & stat.S_IXUSR, rel
    assert not (root / "VERSION").stat().st_mode & stat.S_IXUSR
    assert (root / "src" / "go.mod").read_text() == "module std\n"
    assert (root / "src" / "cmd" / "go.mod").read_text() == "module cmd\n"
    assert any("checksum database" in m for m in said) and any("ready" in m for m in said)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"go{FAKE_VERSION}"]
    # second time: from the cache, nothing fetched
    (tmp_path / "proxy").rename(tmp_path / "gone")
    assert gt.ensure_go(write_gomod(tmp_path), say=lambda m: None) == bindir


def test_too_old_go_on_path_is_replaced(env: Path, tmp_path: Path) -> None:
    put_go_on_path(env, tmp_path, "1.19.8")
    make_proxy(tmp_path)
    said: list[str] = []
    bindir = gt.ensure_go(write_gomod(tmp_path), say=said.append)
    assert bindir == tmp_path / "cache" / f"go{FAKE_VERSION}" / "bin"
    assert any("go1.19.8" in m and FAKE_VERSION in m for m in said)


def test_checksum_mismatch_installs_nothing(env: Path, tmp_path: Path) -> None:
    make_proxy(tmp_path, tamper=True)
    with pytest.raises(gt.ToolchainError, match="checksum mismatch"):
        gt.ensure_go(write_gomod(tmp_path), say=lambda m: None)
    assert list((tmp_path / "cache").iterdir()) == []


def test_unknown_version_is_one_line_error(env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_proxy(tmp_path)
    assert gt.main(["--gomod", str(write_gomod(tmp_path, "1.99.2"))]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("go toolchain: no proxy served Go 1.99.2")


def test_gosumdb_off_skips_the_check(env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_proxy(tmp_path, tamper=True)
    monkeypatch.setenv("GOSUMDB", "off")
    said: list[str] = []
    gt.ensure_go(write_gomod(tmp_path), say=said.append)
    assert any("not checked" in m for m in said)


def test_goproxy_off_is_refused(env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOPROXY", "off")
    with pytest.raises(gt.ToolchainError, match="GOPROXY=off"):
        gt.ensure_go(write_gomod(tmp_path), say=lambda m: None)


def test_prints_the_bin_dir_last(env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    goroot = put_go_on_path(env, tmp_path, "1.99.1")
    assert gt.main(["--gomod", str(write_gomod(tmp_path))]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(goroot / "bin")
    assert os.environ["P2PEP_GO_CACHE"].startswith(str(tmp_path))
