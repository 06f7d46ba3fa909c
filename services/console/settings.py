"""Re-exports :mod:`p2pep.settings.console`, where the settings class lives (the launcher
needs it too); kept so imports of ``services.console.settings`` keep working. New code
imports ``p2pep.settings.console``."""

from p2pep.settings.console import ConsoleSettings

__all__ = ["ConsoleSettings"]
