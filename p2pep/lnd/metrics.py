"""Prometheus metrics about lnd nodes, as the services that hold a node's client see them.

lnd's own ``/metrics`` (``--prometheus.enable``) has its gRPC and Go runtime metrics but not
what an operator of a microgrid watches: liquidity and fees. So each service exports these
about the node it holds: a meter about its own node (from its balance cache), the anchor
service about the operator's hub. ``node`` is the node's name (a meter's node is named after
its meter; the operator's node is ``hub``): bounded by enrollment.

* ``p2pep_lnd_channel_balance_sat{node, side="local"|"remote"}``: over the node's open channels;
* ``p2pep_lnd_wallet_balance_sat{node}``: confirmed on-chain balance;
* ``p2pep_lnd_forwarding_fees_msat_total{node}``, ``p2pep_lnd_forwards_total{node}``,
  ``p2pep_lnd_forwarded_msat_total{node}``: the forwarding history (counted from the node's
  first forward each time the service starts: a restart is a counter reset);
* ``p2pep_lnd_poll_errors_total{node}``: failed polls (the values above are then stale).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

CHANNEL_BALANCE = Gauge("p2pep_lnd_channel_balance_sat", "Channel balance over open channels, by side",
                        ["node", "side"])
WALLET_BALANCE = Gauge("p2pep_lnd_wallet_balance_sat", "Confirmed on-chain wallet balance", ["node"])
FORWARD_FEES = Counter("p2pep_lnd_forwarding_fees_msat", "Fees earned forwarding payments, msat", ["node"])
FORWARDS = Counter("p2pep_lnd_forwards", "Payments forwarded", ["node"])
FORWARDED_MSAT = Counter("p2pep_lnd_forwarded_msat", "Amount forwarded (outgoing), msat", ["node"])
POLL_ERRORS = Counter("p2pep_lnd_poll_errors", "Failed polls of the node for these metrics", ["node"])


def observe_balances(node: str, *, local_sat: int, remote_sat: int, wallet_sat: int) -> None:
    CHANNEL_BALANCE.labels(node, "local").set(local_sat)
    CHANNEL_BALANCE.labels(node, "remote").set(remote_sat)
    WALLET_BALANCE.labels(node).set(wallet_sat)


def known_node(node: str) -> None:
    """Create the node's counters at 0, so the first forward or error is seen by rate()."""
    for c in (FORWARD_FEES, FORWARDS, FORWARDED_MSAT, POLL_ERRORS):
        c.labels(node)


@dataclass(frozen=True)
class Forward:
    fee_msat: int
    amt_out_msat: int


def observe_forwards(node: str, events: Iterable[Forward]) -> int:
    """Count newly seen forwards; returns how many."""
    n = 0
    for e in events:
        FORWARD_FEES.labels(node).inc(e.fee_msat)
        FORWARDED_MSAT.labels(node).inc(e.amt_out_msat)
        n += 1
    FORWARDS.labels(node).inc(n)
    return n
