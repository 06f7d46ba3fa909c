#!/usr/bin/env bash
# Pins every Python dependency of pyproject.toml (with the `dev` and `sim` extras), with
# hashes, into requirements.lock: what `make setup` and CI install, so a fresh
# machine gets exactly the versions CI tested. Resolved for Python 3.11 on
# linux x86_64. Pins already in the lock are kept unless pyproject.toml rules
# them out; pass --upgrade (or --upgrade-package NAME) to move them.
# The resolver is uv, pinned here and installed into its own venv in the cache.
set -euo pipefail
UV_VERSION=0.13.8
here=$(cd "$(dirname "$0")/.." && pwd)
tools=${XDG_CACHE_HOME:-$HOME/.cache}/p2pep/uv-$UV_VERSION
if [ ! -x "$tools/bin/uv" ]; then
  echo "lock: installing uv $UV_VERSION into $tools" >&2
  rm -rf "$tools"
  python3 -m venv "$tools"
  "$tools/bin/pip" install -q "uv==$UV_VERSION"
fi
cd "$here"
"$tools/bin/uv" pip compile pyproject.toml --extra dev --extra sim --generate-hashes \
  --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
  --custom-compile-command "make lock" --quiet -o requirements.lock "$@"
echo "lock: requirements.lock has $(grep -c '^[a-z0-9].*==' requirements.lock) pinned packages" >&2
