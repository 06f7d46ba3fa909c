"""Password hashing (argon2id via argon2-cffi) and the rules a new password must meet.

Hashing is deliberately slow and memory-hard: call :meth:`Passwords.hash` and
:meth:`Passwords.verify` off the event loop (:func:`asyncio.to_thread`); :class:`~.web.WebAuth`
does. Verifying against no stored hash (an unknown account) still runs one hash, so an
answer's timing does not tell which account names exist.
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_LENGTH = 10
MAX_LENGTH = 256


def password_problem(password: str) -> str | None:
    """Why ``password`` may not be used for a new account, or None if it may."""
    if len(password) < MIN_LENGTH:
        return f"must be at least {MIN_LENGTH} characters"
    if len(password) > MAX_LENGTH:
        return f"must be at most {MAX_LENGTH} characters"
    if password.strip() == "" or len(set(password)) < 4:
        return "is too simple (use at least 4 different characters)"
    return None


class Passwords:
    """An argon2id hasher; ``hasher`` lets tests use cheap parameters."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self._h = hasher or PasswordHasher()
        self._dummy = self._h.hash("p2pep dummy password for unknown accounts")

    def hash(self, password: str) -> str:
        if len(password) > MAX_LENGTH:
            raise ValueError(f"password must be at most {MAX_LENGTH} characters")
        return self._h.hash(password)

    def verify(self, stored: str | None, password: str) -> bool:
        """Whether ``password`` matches ``stored`` (None: an unknown account, always False)."""
        if len(password) > MAX_LENGTH:
            return False
        try:
            self._h.verify(stored if stored is not None else self._dummy, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return stored is not None

    def needs_rehash(self, stored: str) -> bool:
        """Whether ``stored`` was made with other parameters than this hasher's."""
        try:
            return self._h.check_needs_rehash(stored)
        except InvalidHashError:
            return True


def cheap_passwords() -> Passwords:
    """Fast parameters for tests only (never for stored accounts)."""
    return Passwords(PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
