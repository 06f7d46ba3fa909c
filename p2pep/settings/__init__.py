"""Each service's settings: the configuration interface of ``python -m services.<name>``.

One pydantic-settings class per service (pure: fields and validators, no I/O), read from
environment variables by the service itself (:func:`p2pep.servicekit.load_settings`) and
written by whoever starts it (:func:`p2pep.servicekit.settings.settings_env`, e.g.
:mod:`p2pep.scenario.launch`). They live here, not in ``services/<name>/``, for the same
reason the gRPC contracts live in ``proto/``: other processes need them, and nothing in
``p2pep/`` imports ``services/``.
"""

from p2pep.servicekit.settings import BaseServiceSettings
from p2pep.settings.anchor import AnchorSettings
from p2pep.settings.console import ConsoleSettings
from p2pep.settings.matcher import MatcherSettings
from p2pep.settings.meter import MeterSettings
from p2pep.settings.portal import PortalSettings
from p2pep.settings.settlement import SettlementSettings

#: Each service's settings class, by the service's name (``python -m services.<name>``).
SERVICE_SETTINGS: dict[str, type[BaseServiceSettings]] = {
    "anchor": AnchorSettings,
    "console": ConsoleSettings,
    "matcher": MatcherSettings,
    "meter": MeterSettings,
    "portal": PortalSettings,
    "settlement": SettlementSettings,
}

__all__ = ["SERVICE_SETTINGS", "AnchorSettings", "ConsoleSettings", "MatcherSettings", "MeterSettings",
           "PortalSettings", "SettlementSettings"]
