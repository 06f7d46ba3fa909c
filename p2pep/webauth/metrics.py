"""Counters of the sign-in machinery (labels bounded: the site and a fixed set of reasons)."""

from __future__ import annotations

from prometheus_client import Counter

SIGNINS = Counter("p2pep_webauth_signins_total", "Sign-in attempts by site and outcome (ok, wrong, limited)",
                  ["site", "outcome"])
REFUSED = Counter("p2pep_webauth_refused_total",
                  "HTTP requests refused by site and reason (host, csrf, unauthenticated)", ["site", "reason"])
