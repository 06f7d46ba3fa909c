#!/usr/bin/env bash
# Debian packages the project needs beyond the base image. Idempotent, and
# quiet when everything is present.
# Not Go: Debian's is too old for the pinned lnd (regtest/go.mod); the build
# scripts fetch the release it names when `go` is missing or older
# (scripts/go_toolchain.py), which needs python3 and CA certificates.
# `prometheus` brings `promtool` (`make test` checks the scrape config, the
# rules and their unit tests with it) and the server `p2pep up` and the
# monitoring test start on loopback themselves, with their own data dir. The
# package's own service is never relied on: without recommends (no
# node-exporter), and with no init system here nothing starts it.
set -euo pipefail
need=()
[ -e /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
command -v sqlite3 >/dev/null || need+=(sqlite3)
{ command -v promtool && command -v prometheus; } >/dev/null || need+=(prometheus)
# node + npm install the household app's browser assets (Chart.js) exactly as its
# package-lock.json pins them (scripts/web-assets.sh); Debian's chromium is the browser the
# app's Playwright test drives (a browser download by `playwright install` is not used).
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
[ -x /usr/bin/chromium ] || need+=(chromium)
# kubectl >= 1.27 (kustomize v5; tests/test_k8s.py renders k8s/ with `kubectl kustomize`): the
# `kubectl` package of the Kubernetes or Google Cloud apt repository when one is configured
# (Debian's own `kubernetes-client` is 1.20, too old); otherwise say how to get it.
if ! command -v kubectl >/dev/null; then
  if apt-cache policy kubectl 2>/dev/null | grep -q 'Candidate: [0-9]'; then need+=(kubectl)
  else echo "install-system-deps: kubectl missing: add the apt repository of https://pkgs.k8s.io and install kubectl" >&2; fi
fi
# Container images and the pod-level run (`make images`, tests/test_k8s_pods.py): podman with
# runc (crun fails on this kind of host's hybrid cgroups), netavark + aardvark-dns (the podman
# network's DNS: pods reach each other by name; Debian's CNI plugins have no DNS), catatonit
# (the pods' pause process) and mmdebstrap (the base image from Debian's packages, no registry).
# iptables: netavark 1.4 sets up a network's bridge and NAT with it; Debian lists it for netavark
# as nothing (not even a recommend), and without it every container on the network fails to
# start with "netavark: No such file or directory (os error 2)" (seen on a fresh machine).
for pkg in podman runc netavark aardvark-dns catatonit mmdebstrap iptables; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
