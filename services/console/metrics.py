"""The console's Prometheus metrics."""

from prometheus_client import Counter

REQUESTS = Counter("p2pep_console_requests_total", "Console API requests, by route and HTTP status",
                   ["route", "status"])
