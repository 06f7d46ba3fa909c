"""``MeterLink.reachable``: settlement waits for a meter's channel to be READY before asking it
to sign a contract, but only while the meter is heard from. On a lossy link a reset handshake
leaves the channel between connection attempts, where a call fails at once although the meter
is alive (scenarios/lossy.toml once rejected a window's contracts that way); a meter that went
silent is not waited for, so its contracts are rejected at once and the other party rematched."""

from __future__ import annotations

import time

import grpc

from p2pep.regtest.ports import free_port
from services.settlement.live import MeterLink
from services.settlement.store import MeterRow

FAST = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 200)]


def link_to(port: int, heard_s_ago: float) -> MeterLink:
    row = MeterRow("meter-7", "02" + "11" * 32, "03" + "22" * 32, f"127.0.0.1:{port}", "consumer")
    link = MeterLink(row, dial=lambda address, _meter_id: grpc.aio.insecure_channel(address, options=FAST))
    link.last_seen = time.monotonic() - heard_s_ago
    return link


async def test_a_heard_meter_is_waited_for_until_its_channel_is_ready() -> None:
    port = free_port()
    link = link_to(port, heard_s_ago=0.0)
    link.connect()  # refused: nothing listens yet, the channel backs off between attempts
    server = grpc.aio.server()
    server.add_insecure_port(f"127.0.0.1:{port}")
    try:
        await server.start()  # the meter's server comes (back) up
        await link.reachable(silence_s=30.0)
        assert link._channel is not None
        assert link._channel.get_state() is grpc.ChannelConnectivity.READY
    finally:
        await server.stop(None)
        if link._channel is not None:
            await link._channel.close()


async def test_a_silent_meter_is_not_waited_for() -> None:
    link = link_to(free_port(), heard_s_ago=60.0)  # nothing listens, and no reading for a minute
    t = time.monotonic()
    await link.reachable(silence_s=15.0)
    assert time.monotonic() - t < 1.0
    assert link._channel is not None and link._channel.get_state() is not grpc.ChannelConnectivity.READY
    await link._channel.close()


async def test_a_meter_heard_until_it_goes_silent_is_waited_for_no_longer() -> None:
    link = link_to(free_port(), heard_s_ago=0.0)  # it read a moment ago, then died
    t = time.monotonic()
    await link.reachable(silence_s=1.5, poll_s=0.2)
    assert 1.0 < time.monotonic() - t < 3.0
    assert link._channel is not None
    await link._channel.close()


async def test_a_meter_registering_again_while_waited_for_is_waited_for_on_its_new_channel() -> None:
    import asyncio
    from dataclasses import replace

    link = link_to(free_port(), heard_s_ago=0.0)  # its old address: nothing listens
    port = free_port()
    server = grpc.aio.server()
    server.add_insecure_port(f"127.0.0.1:{port}")
    waiting = asyncio.create_task(link.reachable(silence_s=30.0, poll_s=0.2))
    try:
        await asyncio.sleep(0)  # the wait is on the old channel now
        old = link._channel
        await server.start()
        await link.reconnect(replace(link.row, address=f"127.0.0.1:{port}"))  # the old one closes
        assert old is not None
        await old.close()
        await asyncio.wait_for(waiting, 10)  # no "Channel is closed": the new channel is READY
        assert link._channel is not None and link._channel is not old
        assert link._channel.get_state() is grpc.ChannelConnectivity.READY
    finally:
        waiting.cancel()
        await server.stop(None)
        await link.close()
