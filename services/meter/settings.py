"""Re-exports :mod:`p2pep.settings.meter`, where the settings class lives (the launcher
needs it too); kept so imports of ``services.meter.settings`` keep working. New code
imports ``p2pep.settings.meter``."""

from p2pep.settings.meter import MeterSettings, parse_node_address

__all__ = ["MeterSettings", "parse_node_address"]
