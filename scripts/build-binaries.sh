#!/usr/bin/env bash
# Builds lnd, lncli, btcd and btcctl from the module versions pinned in
# regtest/go.mod, into a cache outside the repo keyed by those versions and the
# lnd build tags, and toxiproxy-server (the lossy links of scenarios/lossy.toml)
# from the version pinned in regtest/toxiproxy/go.mod, into a cache dir keyed by
# that version and linked into the first. A second run with the same keys
# rebuilds nothing; a machine whose lnd/btcd are cached builds only Toxiproxy.
# Prints the directory holding the binaries on its last line; everything else
# goes to stderr: which binary is being built (1/5 .. 5/5), and while one is,
# a heartbeat every $P2PEP_BUILD_HEARTBEAT_S seconds (default 20) with the time
# elapsed, modules downloaded and packages compiled. On a failure the tail of
# the go command's output is shown and the full output kept in a log file.
# Go: the `go` on PATH if it satisfies regtest/go.mod's `go` directive, else that
# exact release, fetched once into the cache by scripts/go_toolchain.py.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
heartbeat_s=${P2PEP_BUILD_HEARTBEAT_S:-20}
case "$heartbeat_s" in
  '' | *[!0-9]* | 0) echo "build-binaries: P2PEP_BUILD_HEARTBEAT_S must be a positive number of seconds" >&2; exit 2 ;;
esac
gobin=$(python3 "$here/scripts/go_toolchain.py")
export PATH="$gobin:$PATH" GOROOT="${gobin%/bin}"
export GOTOOLCHAIN=local
export GOFLAGS=-mod=mod
LND_TAGS="signrpc walletrpc chainrpc invoicesrpc peersrpc routerrpc monitoring"
cd "$here/regtest/toxiproxy"
tp_ver=$(go list -m -f '{{.Version}}' github.com/Shopify/toxiproxy/v2)
cd "$here/regtest"
lnd_ver=$(go list -m -f '{{.Version}}' github.com/lightningnetwork/lnd)
btcd_ver=$(go list -m -f '{{.Version}}' github.com/btcsuite/btcd)
tags_key=$(printf '%s' "$LND_TAGS" | sha256sum | cut -c1-8)
cache_root=${P2PEP_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/p2pep/bin}
out="$cache_root/lnd-$lnd_ver-btcd-$btcd_ver-$tags_key"
tp_out="$cache_root/toxiproxy-$tp_ver"
lnd_cached=false tp_cached=false
if [ -x "$out/lnd" ] && [ -x "$out/lncli" ] && [ -x "$out/btcd" ] && [ -x "$out/btcctl" ]; then
  lnd_cached=true
fi
[ -x "$tp_out/toxiproxy-server" ] && tp_cached=true
if $lnd_cached && $tp_cached; then
  ln -sfn "$tp_out/toxiproxy-server" "$out/toxiproxy-server"
  echo "binaries cached: $out" >&2
  echo "$out"
  exit 0
fi

say() { echo "build-binaries: $*" >&2; }
since() {  # START -> "12m05s" elapsed since START (epoch seconds)
  local s=$(($(date +%s) - $1))
  printf '%dm%02ds' $((s / 60)) $((s % 60))
}
count() {  # PATTERN-KIND LOG -> lines of LOG that are module downloads or package names
  local n
  case "$1" in
    downloads) n=$(grep -c '^go: downloading ' "$2" 2>/dev/null) || true ;;
    packages) n=$(grep -cv -e '^go: ' -e ' ' "$2" 2>/dev/null) || true ;;
  esac
  echo "${n:-0}"
}

# Prints a heartbeat for LABEL every $heartbeat_s seconds until killed (TERM).
ticker() {  # LABEL START LOG TOTAL
  local sp="" msg
  trap '[ -n "$sp" ] && kill "$sp" 2>/dev/null; exit 0' TERM
  while :; do
    sleep "$heartbeat_s" &
    sp=$!
    wait "$sp" || true
    msg="$1: $(since "$2") elapsed"
    [ "$(count downloads "$3")" -eq 0 ] || msg+=", $(count downloads "$3") modules downloaded"
    [ "$4" -eq 0 ] || msg+=", $(count packages "$3") of up to $4 packages compiled"
    say "  $msg"
  done
}

ticker_pid=""
stop_ticker() {
  if [ -n "$ticker_pid" ]; then
    kill "$ticker_pid" 2>/dev/null || true
    wait "$ticker_pid" 2>/dev/null || true
    ticker_pid=""
  fi
}
trap stop_ticker EXIT

# Runs CMD with its output in LOG and a ticker going; sets step_start.
run() {  # LABEL LOG TOTAL CMD...
  local label=$1 logf=$2 total=$3 rc=0
  shift 3
  step_start=$(date +%s)
  ticker "$label" "$step_start" "$logf" "$total" >/dev/null &
  ticker_pid=$!
  "$@" >"$logf" 2>&1 || rc=$?
  stop_ticker
  if [ "$rc" -ne 0 ]; then
    grep ' ' "$logf" | grep -v '^go: downloading ' | tail -n 30 >&2 || true
    say "$label: \`$*\` failed (exit $rc); its whole output is in $logf"
    exit "$rc"
  fi
}

steps=0 step=0
$lnd_cached || steps=$((steps + 4))
$tp_cached || steps=$((steps + 1))
build() {  # DIR NAME PACKAGE BUILD-FLAGS... (into DIR)
  local dir=$1 name=$2 pkg=$3 total
  shift 3
  step=$((step + 1))
  say "[$step/$steps] $name: listing its packages$([ "$step" = 1 ] && echo ' (downloads the pinned modules the first time)')"
  run "$name" "$dir/$name.deps" 0 go list -deps "$@" "$pkg"
  total=$(count packages "$dir/$name.deps")
  say "[$step/$steps] $name: compiling (up to $total packages; those in Go's build cache are skipped)"
  run "$name" "$dir/$name.log" "$total" go build -v "$@" -o "$dir/$name" "$pkg"
  say "[$step/$steps] $name built in $(since "$step_start") ($(count packages "$dir/$name.log") packages compiled)"
}

start=$(date +%s)
if ! $lnd_cached; then
  mkdir -p "$out.tmp"
  say "building lnd $lnd_ver and btcd $btcd_ver with $(go env GOVERSION) into $out"
  say "(once, then cached: about 8 minutes on 2 idle cores, longer on a busy machine)"
  ldflags="-s -w -X github.com/lightningnetwork/lnd/build.Commit=$lnd_ver"
  build "$out.tmp" lnd github.com/lightningnetwork/lnd/cmd/lnd -trimpath -ldflags "$ldflags" -tags "$LND_TAGS"
  build "$out.tmp" lncli github.com/lightningnetwork/lnd/cmd/lncli -trimpath -ldflags "$ldflags" -tags "$LND_TAGS"
  build "$out.tmp" btcd github.com/btcsuite/btcd -trimpath -ldflags "-s -w"
  build "$out.tmp" btcctl github.com/btcsuite/btcd/cmd/btcctl -trimpath -ldflags "-s -w"
  rm -f "$out.tmp"/*.deps "$out.tmp"/*.log
  rm -rf "$out" && mv "$out.tmp" "$out"
  say "lnd, lncli, btcd and btcctl built in $(since "$start")"
fi
if ! $tp_cached; then
  cd "$here/regtest/toxiproxy"
  mkdir -p "$tp_out.tmp"
  say "building toxiproxy-server $tp_ver with $(go env GOVERSION) into $tp_out (about a minute, then cached)"
  build "$tp_out.tmp" toxiproxy-server github.com/Shopify/toxiproxy/v2/cmd/server -trimpath -ldflags "-s -w"
  rm -f "$tp_out.tmp"/*.deps "$tp_out.tmp"/*.log
  rm -rf "$tp_out" && mv "$tp_out.tmp" "$tp_out"
fi
ln -sfn "$tp_out/toxiproxy-server" "$out/toxiproxy-server"
echo "$out"
