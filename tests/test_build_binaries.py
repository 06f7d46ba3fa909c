"""scripts/build-binaries.sh's contract and progress, with a fake `go` (seconds, not the real build).

The fake answers what the script asks (``env``, ``list -m``, ``list -deps``, ``build -v``)
and makes each "binary" a shell script; the real build is exercised by the regtest tests.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAKE_GO = r"""#!/bin/sh
case "$1 $2" in
  "env GOROOT") echo "$FAKE_GOROOT"; echo go1.99.0 ;;
  "env GOVERSION") echo go1.99.0 ;;
  "list -m") case "$5" in *lnd) echo v0.21.3-beta ;; *) echo v0.25.0 ;; esac ;;
  "list -deps")
    echo "go: downloading example.com/dep v1.0.0" >&2
    for p in a b c; do echo "example.com/$p"; done ;;
  "build -v")
    out=""; prev=""
    for a in "$@"; do [ "$prev" = -o ] && out=$a; prev=$a; done
    name=$(basename "$out")
    echo "example.com/a" >&2
    sleep "$FAKE_BUILD_S"
    echo "example.com/b" >&2
    if [ "$FAKE_FAIL" = "$name" ]; then echo "example.com/b/x.go:1:2: undefined: y" >&2; exit 1; fi
    printf '#!/bin/sh\necho %s\n' "$name" > "$out"; chmod +x "$out"
    echo "$name" >> "$FAKE_BUILDS" ;;
  *) echo "fake go: unexpected $*" >&2; exit 3 ;;
esac
"""


def run_script(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    goroot = tmp_path / "goroot"
    (goroot / "bin").mkdir(parents=True, exist_ok=True)
    go = goroot / "bin" / "go"
    go.write_text(FAKE_GO)
    go.chmod(0o755)
    settings = {"FAKE_GOROOT": str(goroot), "FAKE_BUILDS": str(tmp_path / "builds"), "FAKE_BUILD_S": "0",
                "FAKE_FAIL": "", "P2PEP_BIN_CACHE": str(tmp_path / "bin"), "P2PEP_BUILD_HEARTBEAT_S": "1"}
    env = dict(os.environ, PATH=f"{goroot / 'bin'}:/usr/bin:/bin", **(settings | extra))
    env.pop("GOROOT", None)
    return subprocess.run(["bash", str(ROOT / "scripts" / "build-binaries.sh")], env=env,
                          capture_output=True, text=True, timeout=120)


def builds(tmp_path: Path) -> list[str]:
    f = tmp_path / "builds"
    return f.read_text().split() if f.exists() else []


ALL = ["lnd", "lncli", "btcd", "btcctl", "toxiproxy-server"]


def test_builds_five_with_progress_then_uses_the_cache(tmp_path: Path) -> None:
    proc = run_script(tmp_path, FAKE_BUILD_S="2.5")
    assert proc.returncode == 0, proc.stderr
    out_dir = Path(proc.stdout.strip().splitlines()[-1])
    assert out_dir.parent == tmp_path / "bin" and out_dir.name.startswith("lnd-v0.21.3-beta-btcd-v0.25.0-")
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(ALL)
    # Toxiproxy has its own cache dir, keyed by its version, linked into the binaries' dir
    tp = out_dir / "toxiproxy-server"
    assert tp.is_symlink() and tp.resolve().parent == tmp_path / "bin" / "toxiproxy-v0.25.0"
    assert builds(tmp_path) == ALL
    err = proc.stderr
    for i, name in enumerate(ALL, 1):
        assert f"[{i}/5] {name}: compiling (up to 3 packages" in err
        assert f"[{i}/5] {name} built in 0m0" in err and "(2 packages compiled)" in err
    heartbeats = [line for line in err.splitlines() if "elapsed" in line]
    assert len(heartbeats) >= 4, err
    assert any("modules downloaded" in h for h in heartbeats) or any("packages compiled" in h for h in heartbeats)
    assert any("of up to 3 packages compiled" in h for h in heartbeats), err
    assert "lnd, lncli, btcd and btcctl built in" in err

    again = run_script(tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == str(out_dir)
    assert "binaries cached" in again.stderr
    assert builds(tmp_path) == ALL


def test_a_machine_with_lnd_cached_builds_only_toxiproxy(tmp_path: Path) -> None:
    first = run_script(tmp_path)
    assert first.returncode == 0, first.stderr
    out_dir = Path(first.stdout.strip().splitlines()[-1])
    for p in (tmp_path / "bin").glob("toxiproxy-*"):
        (p / "toxiproxy-server").unlink()
        p.rmdir()
    (out_dir / "toxiproxy-server").unlink()
    (tmp_path / "builds").unlink()
    again = run_script(tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == str(out_dir)
    assert builds(tmp_path) == ["toxiproxy-server"]
    assert "[1/1] toxiproxy-server: compiling" in again.stderr
    assert os.access(out_dir / "toxiproxy-server", os.X_OK)


def test_a_failed_build_shows_its_error_and_keeps_no_binaries(tmp_path: Path) -> None:
    proc = run_script(tmp_path, FAKE_FAIL="btcd")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "undefined: y" in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("build-binaries: btcd: `go build") and "btcd.log" in last
    assert [p.name for p in (tmp_path / "bin").iterdir()][0].endswith(".tmp")
    assert not [p for p in (tmp_path / "bin").iterdir() if not p.name.endswith(".tmp")]


def test_bad_heartbeat_setting_is_refused(tmp_path: Path) -> None:
    proc = run_script(tmp_path, P2PEP_BUILD_HEARTBEAT_S="soon")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "build-binaries: P2PEP_BUILD_HEARTBEAT_S must be a positive number of seconds"]
