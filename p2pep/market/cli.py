"""``p2pep market clear ORDERS.jsonl --mode continuous|pay-as-clear``: the matching core, offline.

Orders in, one JSON object a line: ``id``, ``meter_id``, ``side`` (``supply``|``demand``),
``energy_wh``, ``price_msat_per_kwh``, optional ``partners`` (meter ids). Blank lines are
skipped. Trades out on stdout, one a line (``buy_order``, ``sell_order``, ``buyer``,
``seller``, ``energy_wh``, ``price_msat_per_kwh``, ``tier``), then one summary line
(``matched_wh``, ``clearing_price_msat_per_kwh`` — null in continuous mode — ``orders``,
``trades``, ``mode``, and what stays unmatched).

``continuous`` submits the orders in file order (pay-as-bid at the resting order's price);
``pay-as-clear`` puts them all in the book and runs one uniform-price clearing. If any
line is bad, the bad lines are reported on stderr as ``FILE:LINE: field: problem`` (the first
20, then a count), one line each, then a summary line; nothing is cleared and the exit status
is 2. Whatever the file holds (binary, a directory, JSON of any shape), the answer is such
lines, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from p2pep.market.auction import clear
from p2pep.market.errors import InvalidOrder
from p2pep.market.matching import Market
from p2pep.market.model import Order, Trade
from p2pep.market.validation import make_order
from p2pep.oneline import one_line

MODES = ("continuous", "pay-as-clear")
REQUIRED = ("id", "meter_id", "side", "energy_wh", "price_msat_per_kwh")
OPTIONAL = ("partners",)
MAX_LINE = 65_536  # an order is a few hundred characters
MAX_SHOWN = 20  # bad lines reported one by one; the rest are counted


def parse_line(text: str) -> Order:
    """One JSONL line to an :class:`Order`; :class:`InvalidOrder` names the bad field."""
    try:
        doc: Any = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidOrder("json", f"not valid JSON ({e.msg} at column {e.colno})") from None
    except (ValueError, RecursionError) as e:  # integers of more than 4300 digits, nesting too deep
        raise InvalidOrder("json", f"not usable JSON ({type(e).__name__}: {one_line(str(e), 80)})") from None
    if not isinstance(doc, dict):
        raise InvalidOrder("json", "each line must be a JSON object")
    for key in REQUIRED:
        if key not in doc:
            raise InvalidOrder(key, "missing")
    unknown = sorted(set(doc) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise InvalidOrder(one_line(ascii(unknown[0])[1:-1], 60),
                           f"unknown field (expected {', '.join(REQUIRED + OPTIONAL)})")
    if doc["side"] not in ("supply", "demand"):
        raise InvalidOrder("side", f"unknown side {one_line(repr(doc['side']), 60)} (supply or demand)")
    partners = doc.get("partners", [])
    if not isinstance(partners, list):
        raise InvalidOrder("partners", "must be a list of meter ids")
    try:
        return make_order(
            order_id=doc["id"], meter_id=doc["meter_id"], side=doc["side"], energy_wh=doc["energy_wh"],
            price_msat_per_kwh=doc["price_msat_per_kwh"], partners=partners, now_ms=0,
        )
    except InvalidOrder as e:
        raise InvalidOrder("id" if e.field == "order_id" else e.field, e.message) from None


def read_orders(path: Path) -> tuple[list[Order], list[str]]:
    """All orders of the file, or the list of problems (``FILE:LINE: field: message``)."""
    orders: list[Order] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            if len(line) > MAX_LINE:
                problems.append(one_line(f"{path}:{lineno}: json: line longer than {MAX_LINE} characters", 400))
                continue
            try:
                o = parse_line(line)
            except InvalidOrder as e:
                problems.append(one_line(f"{path}:{lineno}: {e.field}: {e.message}", 400))
                continue
            if o.id in seen:
                problems.append(f"{path}:{lineno}: id: duplicate order id {o.id!r} (first on line {seen[o.id]})")
                continue
            seen[o.id] = lineno
            orders.append(o)
    return orders, problems


def trade_json(t: Trade) -> dict[str, Any]:
    return {
        "buy_order": t.buy_order,
        "sell_order": t.sell_order,
        "buyer": t.buyer,
        "seller": t.seller,
        "energy_wh": t.energy_wh,
        "price_msat_per_kwh": t.price_msat_per_kwh,
        "tier": int(t.tier),
    }


def run_clear(orders: list[Order], mode: str, out: TextIO) -> dict[str, Any]:
    """Match ``orders`` in ``mode``, write trades and the summary line to ``out``."""
    market = Market()
    price: int | None = None
    trades: list[Trade] = []
    if mode == "continuous":
        for o in orders:
            trades.extend(market.submit(o, now_ms=0).trades)
    else:
        for o in orders:
            market.add(o)
        result = clear(market, now_ms=0)
        price = result.price
        trades = result.trades
    for t in trades:
        out.write(json.dumps(trade_json(t), separators=(",", ":")) + "\n")
    summary = {
        "matched_wh": sum(t.energy_wh for t in trades),
        "clearing_price_msat_per_kwh": price,
        "orders": len(orders),
        "trades": len(trades),
        "mode": mode,
        "unmatched_supply_wh": market.book.supply.volume_wh,
        "unmatched_demand_wh": market.book.demand.volume_wh,
    }
    out.write(json.dumps(summary, separators=(",", ":")) + "\n")
    return summary


def cmd_clear(args: argparse.Namespace) -> int:
    path = Path(args.orders)
    try:
        orders, problems = read_orders(path)
    except OSError as e:
        print(one_line(f"p2pep market clear: cannot read {path}: {e.strerror or e}"), file=sys.stderr)
        return 2
    except UnicodeDecodeError as e:
        print(one_line(f"p2pep market clear: {path} is not UTF-8 text: {e.reason}"), file=sys.stderr)
        return 2
    if problems:
        for p in problems[:MAX_SHOWN]:
            print(p, file=sys.stderr)
        if len(problems) > MAX_SHOWN:
            print(f"{path}: ... and {len(problems) - MAX_SHOWN} more bad line(s)", file=sys.stderr)
        print(f"p2pep market clear: {len(problems)} bad line(s); nothing cleared", file=sys.stderr)
        return 2
    run_clear(orders, args.mode, sys.stdout)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    market = subparsers.add_parser("market", help="the matching core, offline (what-if studies)")
    sub = market.add_subparsers(dest="market_command", required=True)
    p = sub.add_parser(
        "clear",
        help="match orders from a JSONL file; trades and a summary as JSONL on stdout",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("orders", metavar="ORDERS.jsonl", help="one order per line")
    p.add_argument("--mode", choices=MODES, default="continuous",
                   help="continuous = pay-as-bid in file order; pay-as-clear = one uniform-price auction")
    p.set_defaults(func=cmd_clear)


__all__ = ["register", "read_orders", "run_clear", "parse_line"]
