#!/usr/bin/env bash
# Builds kube-apiserver from the k8s.io/kubernetes version pinned in regtest/kube-apiserver/go.mod
# and fetches etcd (Debian's etcd-server package, unpacked, never installed: installing it would
# start a system etcd service), for the opt-in real-API check (`make k8s-api-check`,
# tests/test_k8s_kubeapi.py). Not part of `make setup`: the first build takes about 14 minutes
# on 2 cores and fills Go's caches with about 3.4 GB.
#
#   $cache/kube-apiserver-<version>/kube-apiserver   built once per version (CGO off, -trimpath)
#   $cache/etcd-<deb version>/etcd                   unpacked once per package version
#   $cache/kube-apiserver-<version>/etcd             a link to the latter
#
# $cache is $P2PEP_BIN_CACHE, else ~/.cache/p2pep/bin (as scripts/build-binaries.sh). Prints the
# kube-apiserver directory on its last line; progress (a heartbeat every $P2PEP_BUILD_HEARTBEAT_S
# seconds, default 20, with the packages compiled so far) goes to stderr. A second run with the
# same versions builds nothing. GOMODCACHE and GOCACHE are Go's own: set them to reuse caches
# filled elsewhere (e.g. GOMODCACHE=/x/gomod GOCACHE=/x/gocache bash scripts/build-kube-apiserver.sh),
# else they are Go's defaults. Go: as build-binaries.sh, the `go` on PATH if new enough for the
# module's `go` directive, else that release fetched once by scripts/go_toolchain.py.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
mod="$here/regtest/kube-apiserver"
heartbeat_s=${P2PEP_BUILD_HEARTBEAT_S:-20}
case "$heartbeat_s" in
  '' | *[!0-9]* | 0) echo "build-kube-apiserver: P2PEP_BUILD_HEARTBEAT_S must be a positive number of seconds" >&2; exit 2 ;;
esac
say() { echo "build-kube-apiserver: $*" >&2; }
since() { local s=$(($(date +%s) - $1)); printf '%dm%02ds' $((s / 60)) $((s % 60)); }
cache_root=${P2PEP_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/p2pep/bin}

# --- kube-apiserver ----------------------------------------------------------------------------
ver=$(sed -n 's/^require k8s.io\/kubernetes \(v[0-9.]*\)$/\1/p' "$mod/go.mod")
[ -n "$ver" ] || { say "no 'require k8s.io/kubernetes vX.Y.Z' line in $mod/go.mod"; exit 2; }
out="$cache_root/kube-apiserver-$ver"
if [ -x "$out/kube-apiserver" ]; then
  say "kube-apiserver cached: $out/kube-apiserver"
else
  gobin=$(python3 "$here/scripts/go_toolchain.py" --gomod "$mod/go.mod")
  export PATH="$gobin:$PATH" GOROOT="${gobin%/bin}" GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
  major=${ver#v}; major=${major%%.*}
  minor=${ver#v*.}; minor=${minor%%.*}
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$ver -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  done
  mkdir -p "$out.tmp"
  logf="$out.tmp/build.log"
  start=$(date +%s)
  say "building kube-apiserver $ver with $(go env GOVERSION) into $out"
  say "(once, then cached: about 14 minutes on 2 idle cores; GOMODCACHE=$(go env GOMODCACHE) GOCACHE=$(go env GOCACHE))"
  cd "$mod"
  ( while sleep "$heartbeat_s"; do
      n=$(grep -cv -e '^go: ' -e ' ' "$logf" 2>/dev/null) || true
      d=$(grep -c '^go: downloading ' "$logf" 2>/dev/null) || true
      say "  $(since "$start") elapsed, ${d:-0} modules downloaded, ${n:-0} packages compiled"
    done ) &
  ticker=$!
  trap 'kill "$ticker" 2>/dev/null || true' EXIT
  rc=0
  nice -n 10 go build -v -trimpath -ldflags "$ldflags" -o "$out.tmp/kube-apiserver" \
    k8s.io/kubernetes/cmd/kube-apiserver >"$logf" 2>&1 || rc=$?
  kill "$ticker" 2>/dev/null || true
  wait "$ticker" 2>/dev/null || true
  trap - EXIT
  if [ "$rc" -ne 0 ]; then
    grep ' ' "$logf" | grep -v '^go: downloading ' | tail -n 30 >&2 || true
    say "go build failed (exit $rc); its whole output is in $logf"
    exit "$rc"
  fi
  rm -f "$logf"
  rm -rf "$out" && mv "$out.tmp" "$out"
  say "kube-apiserver $ver built in $(since "$start")"
fi

# --- etcd: Debian's etcd-server, unpacked (apt-get download needs no root) ----------------------
etcd_ver=$(apt-cache policy etcd-server 2>/dev/null | sed -n 's/^ *Candidate: \([0-9].*\)$/\1/p')
if [ -z "$etcd_ver" ]; then  # no apt, or no candidate: any etcd unpacked before will do
  etcd_dir=$(ls -d "$cache_root"/etcd-* 2>/dev/null | tail -n 1 || true)
  [ -n "$etcd_dir" ] || { say "no etcd-server package in apt (Debian/Ubuntu universe have one) and none cached"; exit 1; }
else
  etcd_dir="$cache_root/etcd-${etcd_ver//[:+~]/_}"
fi
if [ -x "$etcd_dir/etcd" ]; then
  say "etcd cached: $etcd_dir/etcd"
else
  say "fetching etcd-server $etcd_ver (apt-get download, unpacked into $etcd_dir)"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -q "etcd-server=$etcd_ver" >&2)
  dpkg-deb -x "$tmp"/etcd-server_*.deb "$tmp/root"
  mkdir -p "$etcd_dir"
  install -m 0755 "$tmp/root/usr/bin/etcd" "$etcd_dir/etcd"
  rm -rf "$tmp"
fi
ln -sfn "$etcd_dir/etcd" "$out/etcd"
etcd_says=$("$out/etcd" --version 2>&1) || { say "$out/etcd does not run: $etcd_says"; exit 1; }
say "${etcd_says%%$'\n'*}, kube-apiserver $ver: $out"
echo "$out"
