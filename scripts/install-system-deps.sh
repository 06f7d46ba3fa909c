#!/usr/bin/env bash
# Debian packages the project needs beyond the base image. Idempotent.
set -euo pipefail
need=()
command -v go >/dev/null || need+=(golang-go)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
command -v sqlite3 >/dev/null || need+=(sqlite3)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${need[@]}"
fi
