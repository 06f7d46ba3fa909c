#!/usr/bin/env bash
# Builds the images here, without a registry or a Docker engine (podman from Debian):
#   p2pep-services:<version>  the Python services (no pandas/pvlib)
#   p2pep-meter:<version>     the same plus the `sim` extra (a simulating meter)
#   p2pep-lnd:<lnd version>, p2pep-btcd:<btcd version>  from scripts/build-binaries.sh's output
# The base `debian:bookworm-slim` is made from Debian's packages with mmdebstrap and imported
# once; the Python wheels are built on the host (pip inside a build container has no index
# here) into containers/wheels/. podman runs with runc, cgroupfs, no default ulimits and its
# own storage and network definitions under $P2PEP_PODMAN_ROOT (default ~/.cache/p2pep/podman):
# no system file changes. netavark (with aardvark-dns) gives a podman network DNS names.
# Usage: scripts/build-images.sh [services|meter|lnd|btcd ...]  (default: all); prints sizes.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
root=${P2PEP_PODMAN_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/p2pep/podman}
mkdir -p "$root"
bash scripts/install-system-deps.sh  # podman, runc, netavark, aardvark-dns, catatonit, mmdebstrap
cat > "$root/containers.conf" <<CONF
[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
[network]
network_backend = "netavark"
network_config_dir = "$root/networks"
CONF
cat > "$root/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$root/storage"
runroot = "$root/run"
CONF
export CONTAINERS_CONF="$root/containers.conf" CONTAINERS_STORAGE_CONF="$root/storage.conf"
say() { echo "build-images: $*" >&2; }

base=docker.io/library/debian:bookworm-slim
if ! podman image exists "$base"; then
  say "base image from Debian's packages (mmdebstrap, a few minutes)"
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' bookworm "$root/base.tar"
  podman import --quiet "$root/base.tar" "$base" >/dev/null
  rm -f "$root/base.tar"
fi
build() { podman build --pull=never --isolation=chroot -q "$@" . >/dev/null; }
version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')
targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=(services meter lnd btcd)
for t in "${targets[@]}"; do
  case "$t" in
    services|meter)
      [ -d p2pep/v1 ] || { say "gRPC stubs missing: run make proto"; exit 2; }
      extras=""; [ "$t" = meter ] && extras=sim
      say "wheels on the host (containers/wheels)"
      sed -e '/--hash=/d' -e 's/ \\$//' requirements.lock > "$root/constraints.txt"
      # a fixed SOURCE_DATE_EPOCH makes the project's wheel the same bytes when its sources are
      # (its metadata files would carry the build's time): the image layers stay cached
      SOURCE_DATE_EPOCH=315532800 .venv/bin/pip wheel -q -w containers/wheels -c "$root/constraints.txt" \
        ".${extras:+[$extras]}"
      say "p2pep-$t:$version"
      build -f containers/services.Containerfile --build-arg EXTRAS="$extras" -t "p2pep-$t:$version" ;;
    lnd|btcd)
      bins=$(bash scripts/build-binaries.sh)
      mkdir -p build/bin && cp "$bins"/lnd "$bins"/lncli "$bins"/btcd "$bins"/btcctl build/bin/
      ver=$(basename "$bins" | sed -E "s/^lnd-([^-]+-beta)-btcd-(.*)-[0-9a-f]{8}$/\1 \2/")
      if [ "$t" = lnd ]; then tag=${ver% *}; cli=lncli; else tag=${ver#* }; cli=btcctl; fi
      say "p2pep-$t:$tag"
      build -f containers/lnd.Containerfile --build-arg BIN="$t" --build-arg CLI="$cli" -t "p2pep-$t:$tag" ;;
    *) say "unknown image $t (services, meter, lnd, btcd)"; exit 2 ;;
  esac
done
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep p2pep- >&2 || true
