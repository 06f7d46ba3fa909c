"""Fan-out of match events to StreamEvents calls, per meter or for everyone."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from p2pep.v1 import matcher_pb2


class SubscriberLagging(Exception):
    """The subscriber's queue overflowed; it must reconnect with ``from_seq``."""


@dataclass(eq=False)
class Subscription:
    meters: frozenset[str]  # empty: every meter
    queue: asyncio.Queue[matcher_pb2.MatchEvent | None] = field(default_factory=asyncio.Queue)
    lagging: bool = False


class EventHub:
    """Publishes events (already persisted) to subscribers' bounded queues."""

    def __init__(self, queue_size: int) -> None:
        self._queue_size = queue_size
        self._all: set[Subscription] = set()
        self._by_meter: dict[str, set[Subscription]] = {}
        self.closed = False

    def subscribe(self, meters: frozenset[str]) -> Subscription:
        sub = Subscription(meters, asyncio.Queue(maxsize=self._queue_size))
        if self.closed:
            sub.queue.put_nowait(None)
        elif meters:
            for m in meters:
                self._by_meter.setdefault(m, set()).add(sub)
        else:
            self._all.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._all.discard(sub)
        for m in sub.meters:
            subs = self._by_meter.get(m)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_meter[m]

    def publish(self, events: list[matcher_pb2.MatchEvent]) -> None:
        for ev in events:
            for sub in (*self._all, *self._by_meter.get(ev.meter_id, ())):
                if sub.lagging:
                    continue
                try:
                    sub.queue.put_nowait(ev)
                except asyncio.QueueFull:
                    sub.lagging = True
                    self.unsubscribe(sub)
                    _force_put(sub.queue, None)

    def close(self) -> None:
        """End every stream (server shutdown)."""
        self.closed = True
        for sub in {*self._all, *(s for subs in self._by_meter.values() for s in subs)}:
            _force_put(sub.queue, None)
        self._all.clear()
        self._by_meter.clear()


def _force_put(q: asyncio.Queue[matcher_pb2.MatchEvent | None], item: None) -> None:
    while True:
        try:
            q.put_nowait(item)
            return
        except asyncio.QueueFull:
            q.get_nowait()
