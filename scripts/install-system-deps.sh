#!/usr/bin/env bash
# Debian packages the project needs beyond the base image. Idempotent.
# Not Go: Debian's is too old for the pinned lnd (regtest/go.mod); the build
# scripts fetch the release it names when `go` is missing or older
# (scripts/go_toolchain.py), which needs python3 and CA certificates.
set -euo pipefail
need=()
[ -e /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
command -v sqlite3 >/dev/null || need+=(sqlite3)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${need[@]}"
fi
