"""Account names: a username or an e-mail address, compared case-insensitively."""

from __future__ import annotations

import re

MAX_LENGTH = 64
_NAME = re.compile(r"^[a-z0-9][a-z0-9._+-]{2,63}$")
_EMAIL = re.compile(r"^[a-z0-9._%+-]{1,64}@[a-z0-9-]+(\.[a-z0-9-]+)+$")


def normalize_name(raw: str) -> str:
    """The stored form of an account name (stripped, lower case)."""
    return raw.strip().lower()


def name_problem(name: str) -> str | None:
    """Why ``name`` (normalized) may not be an account name, or None if it may."""
    if len(name) > MAX_LENGTH:
        return f"must be at most {MAX_LENGTH} characters"
    if "@" in name:
        return None if _EMAIL.match(name) else "is not an e-mail address"
    if not _NAME.match(name):
        return "must be 3-64 characters: letters, digits, . _ + - (or an e-mail address)"
    return None
