"""Re-exports :mod:`p2pep.settings.settlement`, where the settings class lives (the launcher
needs it too); kept so imports of ``services.settlement.settings`` keep working. New code
imports ``p2pep.settings.settlement``."""

from p2pep.settings.settlement import SettlementSettings

__all__ = ["SettlementSettings"]
