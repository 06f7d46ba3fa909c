"""Monitoring: Prometheus scrape configuration, a loopback Prometheus, Grafana dashboards as code.

The rules, their unit tests, the generated dashboards and the Kubernetes variant live in the
repository's ``monitoring/`` folder (see monitoring/README.md).
"""
