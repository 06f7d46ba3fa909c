"""Re-exports :mod:`p2pep.settings.matcher`, where the settings class lives (the launcher
needs it too); kept so imports of ``services.matcher.settings`` keep working. New code
imports ``p2pep.settings.matcher``."""

from p2pep.settings.matcher import MatcherSettings

__all__ = ["MatcherSettings"]
