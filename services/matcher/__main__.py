"""``python -m services.matcher``: the market service (config: ``P2PEP_MATCHER_*``)."""

from __future__ import annotations

import asyncio

from p2pep.servicekit import configure_logging, load_settings, run_service
from p2pep.settings.matcher import MatcherSettings
from services.matcher.app import start_matcher


async def main(stop: asyncio.Event) -> None:
    settings = load_settings(MatcherSettings, "matcher")
    configure_logging(settings.log_level, json=settings.log_json, service="matcher")
    app = await start_matcher(settings)
    await app.host.wait_and_stop(stop)


if __name__ == "__main__":
    raise SystemExit(run_service(main))
