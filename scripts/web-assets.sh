#!/usr/bin/env bash
# The household app's third-party browser assets (Chart.js), exactly as pinned in
# services/portal/web/package-lock.json (integrity-checked by `npm ci`), copied to
# p2pep/webauth/static/vendor/, from where the portal and the console serve them (/static/NAME):
# the page loads nothing from a CDN. Needs node and npm (scripts/install-system-deps.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
web="$here/services/portal/web"
vendor="$here/p2pep/webauth/static/vendor"
stamp="$vendor/.lock.sha256"
want="$(sha256sum "$web/package-lock.json" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -f "$vendor/chart.umd.js" ]]; then
  exit 0
fi
npm ci --prefix "$web" --ignore-scripts --no-audit --no-fund --loglevel=error
mkdir -p "$vendor"
cp "$web/node_modules/chart.js/dist/chart.umd.js" "$vendor/chart.umd.js"
cp "$web/node_modules/chart.js/LICENSE.md" "$vendor/chart.js.LICENSE.md"
echo "$want" > "$stamp"
echo "web assets: Chart.js $(node -p "require('$web/node_modules/chart.js/package.json').version") in $vendor"
