"""A Go toolchain new enough for the pinned lnd; prints its bin directory.

The version needed is the ``go`` directive of ``regtest/go.mod``. If the ``go`` on
PATH is at least that, its ``$GOROOT/bin`` is printed. Otherwise that exact
version is fetched, once, into ``$P2PEP_GO_CACHE`` (default
``${XDG_CACHE_HOME:-~/.cache}/p2pep/go``) as ``go<version>/``, the way ``go``
itself fetches toolchains under ``GOTOOLCHAIN``: the module
``golang.org/toolchain@v0.0.1-go<version>.<os>-<arch>`` from the first usable
entry of ``$GOPROXY`` (default the public proxy), its ``h1:`` hash checked
against the checksum database ``$GOSUMDB`` (looked up through the proxy, as
``go`` does, then directly), then unpacked with the execute bits and ``go.mod``
files that ``go`` restores after such a download. The database's signature and
inclusion proof are not checked: a proxy serving both a forged zip and a forged
lookup would pass, a corrupt or truncated download would not.

Only the standard library: this runs with the system ``python3`` before the
project's venv exists. Messages go to stderr, the bin directory is the last
line on stdout; any failure is one line on stderr and exit status 1.

Usage: ``python3 scripts/go_toolchain.py [--gomod PATH]``
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

ROOT = Path(__file__).resolve().parent.parent
GOMOD = ROOT / "regtest" / "go.mod"
TOOLCHAIN_MODULE = "golang.org/toolchain"
DEFAULT_GOPROXY = "https://proxy.golang.org,direct"
DEFAULT_GOSUMDB = "sum.golang.org"
PROGRESS_EVERY_S = 10.0
TIMEOUT_S = 60.0

Say = Callable[[str], None]
VersionKey = tuple[int, int, int, int, int]


class ToolchainError(Exception):
    """Why no usable Go toolchain could be had, in one line."""


def say_stderr(msg: str) -> None:
    print(f"go toolchain: {msg}", file=sys.stderr, flush=True)


def required_version(gomod: Path) -> str:
    """The ``go`` directive of ``gomod`` (e.g. ``1.25.13``)."""
    try:
        text = gomod.read_text()
    except OSError as e:
        raise ToolchainError(f"cannot read {gomod}: {e.strerror}") from None
    m = re.search(r"^go\s+(\S+)\s*$", text, re.M)
    if not m:
        raise ToolchainError(f"{gomod} has no `go` directive")
    parse_version(m.group(1))
    return m.group(1)


def parse_version(v: str) -> VersionKey:
    """Order Go versions as ``go`` does: 1.21 < 1.21rc1 < 1.21.0 < 1.21.1 < 1.22rc1.

    Before 1.21, ``1.20`` named the release itself (1.20.0), not the language.
    """
    m = re.fullmatch(r"(?:go)?(\d+)\.(\d+)(?:\.(\d+)|(rc|beta)(\d+))?", v)
    if not m:
        raise ToolchainError(f"not a Go version: {v!r}")
    major, minor = int(m.group(1)), int(m.group(2))
    if m.group(3) is not None:
        return (major, minor, 2, int(m.group(3)), 0)
    if m.group(4) is not None:
        return (major, minor, 1, 0 if m.group(4) == "beta" else 1, int(m.group(5)))
    if (major, minor) < (1, 21):
        return (major, minor, 2, 0, 0)
    return (major, minor, 0, 0, 0)


def toolchain_name(version: str) -> str:
    """The release to fetch for a ``go`` directive: ``1.25`` (a language version) means ``1.25.0``."""
    key = parse_version(version)
    return f"{version}.0" if key[2] == 0 else version


def go_os_arch() -> str:
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
            "i386": "386", "i686": "386", "armv6l": "armv6l", "armv7l": "armv6l"}.get(machine)
    if arch is None:
        raise ToolchainError(f"no Go toolchain is published for this machine ({machine})")
    return f"{sys.platform}-{arch}"


def go_env(go: Path | str, env: dict[str, str] | None = None) -> tuple[Path, str]:
    """``(GOROOT, GOVERSION)`` of a ``go`` binary, asked with ``GOTOOLCHAIN=local``."""
    run_env = dict(env if env is not None else os.environ, GOTOOLCHAIN="local")
    try:
        out = subprocess.run([str(go), "env", "GOROOT", "GOVERSION"], env=run_env, cwd=tempfile.gettempdir(),
                             capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    except (OSError, subprocess.SubprocessError) as e:
        raise ToolchainError(f"`{go} env` failed: {e}") from None
    if len(out) != 2:
        raise ToolchainError(f"`{go} env GOROOT GOVERSION` printed {out!r}")
    return Path(out[0]), out[1]


def usable_go_on_path(need: str) -> tuple[Path | None, str]:
    """``$GOROOT/bin`` of the ``go`` on PATH if it is at least ``need``, else why not."""
    found = shutil.which("go")
    if not found:
        return None, f"no `go` on PATH (Go {need} or newer is needed)"
    try:
        goroot, version = go_env(found)
        ok = parse_version(version.split()[0]) >= parse_version(need)
    except ToolchainError as e:
        return None, f"ignoring {found}: {e}"
    if not ok:
        return None, f"{found} is {version}, older than the Go {need} that regtest/go.mod needs"
    return goroot / "bin", ""


def cache_root() -> Path:
    if os.environ.get("P2PEP_GO_CACHE"):
        return Path(os.environ["P2PEP_GO_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "p2pep" / "go"


def proxies() -> list[str]:
    """The URL entries of ``$GOPROXY`` in order (``direct`` cannot serve a toolchain)."""
    value = os.environ.get("GOPROXY") or DEFAULT_GOPROXY
    urls: list[str] = []
    for entry in re.split(r"[,|]", value):
        entry = entry.strip()
        if entry == "off":
            break
        if entry and entry != "direct":
            urls.append(entry.rstrip("/"))
    if not urls:
        raise ToolchainError(f"GOPROXY={value} names no module proxy to fetch the Go toolchain from")
    return urls


def sumdb() -> tuple[str, str] | None:
    """``(name, direct URL)`` of ``$GOSUMDB``, or None when it is ``off``."""
    value = os.environ.get("GOSUMDB") or DEFAULT_GOSUMDB
    if value == "off":
        return None
    fields = value.split()
    name = fields[0].split("+")[0]
    return name, (fields[1] if len(fields) > 1 else f"https://{name}").rstrip("/")


def open_url(url: str) -> BinaryIO:
    try:
        return urllib.request.urlopen(url, timeout=TIMEOUT_S)  # type: ignore[no-any-return]
    except urllib.error.HTTPError as e:
        raise ToolchainError(f"{url}: HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        raise ToolchainError(f"{url}: {getattr(e, 'reason', e)}") from None


def download(url: str, dest: BinaryIO, say: Say) -> None:
    """Copy ``url`` into ``dest``, saying how far it got every few seconds."""
    with open_url(url) as resp:
        total = int(getattr(resp, "headers", {}).get("Content-Length") or 0)
        got, start, last = 0, time.monotonic(), time.monotonic()
        while chunk := resp.read(1 << 20):
            dest.write(chunk)
            got += len(chunk)
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY_S:
                last = now
                of = f"/{total / 1e6:.1f} MB ({100 * got // total}%)" if total else " MB"
                say(f"downloaded {got / 1e6:.1f}{of}, {now - start:.0f}s")
        say(f"downloaded {got / 1e6:.1f} MB in {time.monotonic() - start:.0f}s")


def zip_hash(zf: zipfile.ZipFile) -> str:
    """The module's ``h1:`` hash, as ``go`` computes it (golang.org/x/mod/sumdb/dirhash.Hash1)."""
    summary = hashlib.sha256()
    for name in sorted(i.filename for i in zf.infolist()):
        if "\n" in name:
            raise ToolchainError(f"file name with a newline in the toolchain zip: {name!r}")
        h = hashlib.sha256()
        with zf.open(name) as f:
            while block := f.read(1 << 20):
                h.update(block)
        summary.update(f"{h.hexdigest()}  {name}\n".encode())
    return "h1:" + base64.b64encode(summary.digest()).decode()


def lookup_hash(module: str, version: str, proxy_urls: list[str], db: tuple[str, str]) -> str:
    """The ``h1:`` hash the checksum database records for ``module@version``."""
    name, direct = db
    urls = [f"{p}/sumdb/{name}/lookup/{module}@{version}" for p in proxy_urls] + [f"{direct}/lookup/{module}@{version}"]
    errors: list[str] = []
    for url in urls:
        try:
            with open_url(url) as resp:
                text = resp.read().decode("utf-8", "replace")
        except ToolchainError as e:
            errors.append(str(e))
            continue
        m = re.search(rf"^{re.escape(module)} {re.escape(version)} (h1:\S+)$", text, re.M)
        if m:
            return m.group(1)
        errors.append(f"{url}: no h1 line for {module} {version}")
    raise ToolchainError(f"checksum database {name} has no hash for {module}@{version}: {'; '.join(errors)}")


def unpack(zf: zipfile.ZipFile, prefix: str, dest: Path) -> None:
    """Extract the files under ``prefix`` into ``dest``, then do what ``go`` does after
    fetching a toolchain module: set execute bits on ``bin/``, ``pkg/tool/`` and
    ``lib/go_*_*_exec``, and copy each ``_go.mod`` to ``go.mod`` (the zip renames them so
    that the toolchain's own modules do not become part of the toolchain module)."""
    for info in zf.infolist():
        rel = info.filename[len(prefix):] if info.filename.startswith(prefix) else ""
        if not rel or rel.startswith("/") or ".." in rel.split("/"):
            raise ToolchainError(f"unexpected path in the toolchain zip: {info.filename!r}")
        target = dest / rel
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    for path in dest.rglob("*"):
        if not path.is_file():
            continue
        rel = path.relative_to(dest).as_posix()
        if rel.startswith(("bin/", "pkg/tool/")) or re.fullmatch(r"lib/(.*/)?go_[^/]+_[^/]+_exec", rel):
            path.chmod(path.stat().st_mode | 0o111)
        if path.name == "_go.mod":
            shutil.copyfile(path, path.with_name("go.mod"))


def fetch(version: str, dest: Path, say: Say) -> None:
    """Fetch, verify and unpack Go ``version`` into ``dest`` (which must not exist yet)."""
    mod_version = f"v0.0.1-go{version}.{go_os_arch()}"
    urls = proxies()
    db = sumdb()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp:
        zip_path = Path(tmp) / "toolchain.zip"
        errors: list[str] = []
        for proxy in urls:
            url = f"{proxy}/{TOOLCHAIN_MODULE}/@v/{mod_version}.zip"
            say(f"downloading {TOOLCHAIN_MODULE}@{mod_version} from {proxy}")
            try:
                with open(zip_path, "wb") as f:
                    download(url, f, say)
                break
            except ToolchainError as e:
                errors.append(str(e))
        else:
            raise ToolchainError(f"no proxy served Go {version} for {go_os_arch()}: {'; '.join(errors)}")
        try:
            zf = zipfile.ZipFile(zip_path)
        except zipfile.BadZipFile:
            raise ToolchainError(f"the Go {version} toolchain download is not a zip file") from None
        with zf:
            if db is None:
                say("GOSUMDB=off: the toolchain's hash is not checked")
            else:
                want = lookup_hash(TOOLCHAIN_MODULE, mod_version, urls, db)
                say("checking the download's hash against the checksum database")
                got = zip_hash(zf)
                if got != want:
                    raise ToolchainError(f"checksum mismatch for {TOOLCHAIN_MODULE}@{mod_version}: "
                                         f"downloaded {got}, {db[0]} has {want}")
            say("unpacking")
            staged = Path(tmp) / "go"
            unpack(zf, f"{TOOLCHAIN_MODULE}@{mod_version}/", staged)
        goroot, got_version = go_env(staged / "bin" / "go", dict(os.environ, GOROOT=str(staged)))
        if got_version != f"go{version}":
            raise ToolchainError(f"the fetched toolchain reports {got_version}, not go{version}")
        try:
            staged.rename(dest)
        except OSError:
            if not (dest / "bin" / "go").is_file():  # else another run installed it meanwhile
                raise
    say(f"Go {version} ready in {dest}")


def ensure_go(gomod: Path = GOMOD, say: Say = say_stderr) -> Path:
    """The bin directory of a Go toolchain that can build ``gomod``; fetched if need be."""
    need = required_version(gomod)
    found, why = usable_go_on_path(need)
    if found is not None:
        return found
    name = toolchain_name(need)
    dest = cache_root() / f"go{name}"
    if (dest / "bin" / "go").is_file():
        say(f"{why}; using Go {name} from {dest}")
    else:
        say(f"{why}; fetching Go {name} once")
        fetch(name, dest, say)
    return dest / "bin"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--gomod", type=Path, default=GOMOD, help="go.mod whose `go` directive to satisfy")
    args = parser.parse_args(argv)
    try:
        print(ensure_go(args.gomod))
    except ToolchainError as e:
        print(f"go toolchain: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
