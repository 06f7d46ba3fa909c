"""Text from outside (a file's content, a caller's key) made safe for a one-line message (pure)."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line: control characters and line separators escaped (``\\n``,
    ``\\x00``...), lone surrogates escaped (so it can be printed or encoded as UTF-8),
    at most ``limit`` characters (cut with ``...``)."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
    return text if len(text) <= limit else text[:limit - 3] + "..."
