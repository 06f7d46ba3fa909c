"""Pages of a list RPC: bounded size, an opaque token, and a client helper that follows them.

A server lists in a stable order in which items are only ever appended (contracts by when they
were proposed, payments by when they settled) and cuts a page at an offset into it; the token
names the offset of the next page. So a client following the tokens sees every item that
existed when it started, in order; an item added meanwhile is on a later page (or, if it sorts
among the items already read, may repeat one at a page boundary): never one missed.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from p2pep.refusals import InvalidArgument

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_PREFIX = "p2pep-page:"


def page_size(requested: int) -> int:
    """0: the default; above the maximum: the maximum (AIP-158)."""
    return DEFAULT_PAGE_SIZE if requested <= 0 else min(requested, MAX_PAGE_SIZE)


def encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"{_PREFIX}{offset}".encode()).decode().rstrip("=")


def decode_token(token: str) -> int:
    """The offset a token names (0 for no token); InvalidArgument for one this server did not give."""
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        if text.startswith(_PREFIX) and (offset := int(text.removeprefix(_PREFIX))) >= 0:
            return offset
    except (ValueError, UnicodeDecodeError):
        pass
    raise InvalidArgument("page_token", "not a token this service gave (use next_page_token of the previous page)")


def cut(items: Sequence[T], requested_size: int, token: str) -> tuple[list[T], str]:
    """The page of ``items`` (the whole ordered list) that ``token`` starts, and the next token."""
    start, size = decode_token(token), page_size(requested_size)
    page = list(items[start:start + size])
    return page, encode_token(start + size) if start + size < len(items) else ""


async def all_pages(fetch: Callable[[str], Awaitable[tuple[Sequence[T], str]]], start: str = "") -> list[T]:
    """Every item of a paged list from the page ``start`` names (empty: the first):
    ``fetch(token)`` returns one page and the next token."""
    out: list[T] = []
    token = start
    while True:
        items, token = await fetch(token)
        out.extend(items)
        if not token:
            return out


async def follow(call: Callable[..., Awaitable[Any]], req: Any, field: str, timeout: float) -> list[Any]:
    """Every item of a paged gRPC list: ``call(req, timeout=...)`` page after page, the
    request's ``page_token`` set from each response's ``next_page_token`` (starting from the
    request's own); ``field`` is the response's repeated field."""
    async def fetch(token: str) -> tuple[list[Any], str]:
        page = type(req)()
        page.CopyFrom(req)
        page.page_token = token
        resp = await call(page, timeout=timeout)
        return list(getattr(resp, field)), str(resp.next_page_token)

    return await all_pages(fetch, str(req.page_token))
