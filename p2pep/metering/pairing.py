"""The pairing code a meter shows on its display (pure; the clock and randomness are passed in).

A household adds its meter to its portal account by typing the code the meter shows; the
portal redeems it with the meter (``MeterService.ClaimPairing``). Invariants:

* a code is random (8 symbols from a 32-letter alphabet without look-alikes: 40 bits), lives
  ``ttl_s`` seconds, and works **once**: a successful claim replaces it at once;
* the meter keeps the code in memory only (never in its database or logs); it compares
  hashes in constant time;
* after ``max_failures`` wrong codes the code is replaced (a guesser never gets more than
  ``max_failures`` tries at one code) and claims are refused for ``lockout_s``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I
LENGTH = 8


def new_code(choice: Callable[[str], str] = secrets.choice) -> str:
    return "".join(choice(ALPHABET) for _ in range(LENGTH))


def normalize_code(raw: str) -> str:
    """What the household typed, as a code: upper case, spaces and dashes dropped."""
    return "".join(c for c in raw.upper() if c not in " -")[: LENGTH * 4]


def display_code(code: str) -> str:
    """``ABCD-EFGH``: easier to read off a display."""
    return f"{code[:4]}-{code[4:]}"


def _digest(code: str) -> bytes:
    return hashlib.sha256(code.encode()).digest()


class PairingRefused(Exception):
    """A claim refused: ``locked`` says whether too many wrong codes were tried."""

    def __init__(self, message: str, locked: bool = False, retry_after_s: int = 0) -> None:
        super().__init__(message)
        self.locked, self.retry_after_s = locked, retry_after_s


@dataclass(frozen=True)
class Shown:
    code: str  # as displayed: ABCD-EFGH
    expires_in_s: int


class PairingCodes:
    def __init__(self, ttl_s: float = 600.0, max_failures: int = 5, lockout_s: float = 60.0, *,
                 clock: Callable[[], float] = time.monotonic, make_code: Callable[[], str] = new_code) -> None:
        self.ttl_s, self.max_failures, self.lockout_s = ttl_s, max_failures, lockout_s
        self._clock, self._make = clock, make_code
        self._code = ""
        self._expires = 0.0
        self._failures = 0
        self._locked_until = 0.0
        self.claims = 0
        self._renew()

    def _renew(self) -> None:
        self._code = self._make()
        self._expires = self._clock() + self.ttl_s
        self._failures = 0

    def current(self) -> Shown:
        """The code to display now (a fresh one once the last has expired)."""
        now = self._clock()
        if now >= self._expires:
            self._renew()
        return Shown(display_code(self._code), max(0, int(self._expires - now)))

    def claim(self, raw: str) -> None:
        """Redeem ``raw``; :class:`PairingRefused` if it is wrong, expired, or claims are locked."""
        now = self._clock()
        if now < self._locked_until:
            wait = int(self._locked_until - now) + 1
            raise PairingRefused(f"too many wrong pairing codes; try again in {wait} s", True, wait)
        if now >= self._expires:
            self._renew()
            raise PairingRefused("wrong or expired pairing code")
        if not hmac.compare_digest(_digest(normalize_code(raw)), _digest(self._code)):
            self._failures += 1
            if self._failures >= self.max_failures:
                self._locked_until = now + self.lockout_s
                self._renew()
            raise PairingRefused("wrong or expired pairing code")
        self.claims += 1
        self._renew()  # once only
