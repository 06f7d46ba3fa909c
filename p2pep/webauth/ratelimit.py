"""A sliding-window rate limiter with bounded memory (pure; the clock is passed in).

At most ``limit`` events per key in any ``window_s`` seconds. Callers decide what an event
is: sign-in counts failed attempts (per account and per client address), registration counts
every attempt per client. Memory is bounded: beyond ``max_keys`` keys the least recently
used key is forgotten (an attacker rotating keys gains at most a fresh window for old ones).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable


class RateLimiter:
    def __init__(self, limit: int, window_s: float, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 10_000) -> None:
        if limit < 1 or window_s <= 0 or max_keys < 1:
            raise ValueError("limit and max_keys must be >= 1 and window_s > 0")
        self.limit, self.window_s, self.max_keys = limit, window_s, max_keys
        self._clock = clock
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str, now: float) -> deque[float] | None:
        q = self._events.get(key)
        if q is None:
            return None
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if not q:
            del self._events[key]
            return None
        return q

    def retry_after(self, key: str) -> int:
        """0 if another event for ``key`` is allowed now, else whole seconds until it is."""
        now = self._clock()
        q = self._recent(key, now)
        if q is None or len(q) < self.limit:
            return 0
        return max(1, math.ceil(q[0] + self.window_s - now))

    def hit(self, key: str) -> None:
        """Count one event for ``key``."""
        now = self._clock()
        q = self._recent(key, now)
        if q is None:
            q = self._events[key] = deque(maxlen=self.limit)
        q.append(now)
        self._events.move_to_end(key)
        while len(self._events) > self.max_keys:
            self._events.popitem(last=False)

    def reset(self, key: str) -> None:
        self._events.pop(key, None)
