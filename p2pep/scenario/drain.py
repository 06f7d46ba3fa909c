"""Planning a "consumer cannot pay" drain (pure).

To make a consumer run dry mid-contract, the runner pays most of its channel
balance to its channel peer (the hub) and leaves about ``keep_increments``
increments spendable. What is *spendable* is not the channel's local balance: the
channel reserve, the commitment fee the initiator must keep and the fee of one
more HTLC all come off it, and lnd does not report the result. So the runner
measures it by probing (an HTLC with a payment hash nobody knows, which the peer
refuses with INCORRECT_PAYMENT_DETAILS when the amount got there) and binary
searches the largest amount that reaches the peer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from p2pep.regtest.lnd_node import FORWARD_BASE_FEE_MSAT, FORWARD_FEE_PPM

# Each drain payment stays below 2^32 msat so nothing needs wumbo payments or MPP.
MAX_CHUNK_MSAT = 4_000_000_000

# A hub forwards for its base fee plus a proportional part, as the regtest nodes are set up.
HUB_BASE_FEE_MSAT = FORWARD_BASE_FEE_MSAT
HUB_FEE_PPM = FORWARD_FEE_PPM


def increment_cost_msat(increment_wh: int, price_msat_per_kwh: int, routed: bool = True) -> int:
    """Upper bound of what paying one increment takes from the payer's channel."""
    amount = -(-increment_wh * price_msat_per_kwh // 1000)
    fee = HUB_BASE_FEE_MSAT + -(-amount * HUB_FEE_PPM // 1_000_000) if routed else 0
    return amount + fee


def keep_msat(keep_increments: int, increment_wh: int, price_msat_per_kwh: int, routed: bool = True) -> int:
    """Spendable msat to leave so that about ``keep_increments`` increments can still be paid."""
    return keep_increments * increment_cost_msat(increment_wh, price_msat_per_kwh, routed)


def drain_amount_msat(spendable_msat: int, keep: int) -> int:
    """How much to pay away so that ``keep`` msat stay spendable (0 if there is not more)."""
    return max(0, spendable_msat - keep)


async def max_sendable(
    can_send: Callable[[int], Awaitable[bool]], upper_msat: int, resolution_msat: int = 1_000,
    lower_msat: int = 0,
) -> int:
    """The largest amount in ``[lower_msat, upper_msat]`` for which ``can_send`` holds, to within
    ``resolution_msat`` (assumes it is monotonic: true up to some amount, false above).
    ``lower_msat`` is a hint that is checked, not trusted. Returns 0 if nothing can be sent."""
    if upper_msat <= 0:
        return 0
    if await can_send(upper_msat):
        return upper_msat
    lo = 0
    if 0 < lower_msat < upper_msat and await can_send(lower_msat):
        lo = lower_msat
    hi = upper_msat  # can_send(hi) is false; can_send(lo) is true (or lo == 0)
    while hi - lo > resolution_msat:
        mid = (lo + hi) // 2
        if await can_send(mid):
            lo = mid
        else:
            hi = mid
    return lo
