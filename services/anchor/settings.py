"""Re-exports :mod:`p2pep.settings.anchor`, where the settings class lives (the launcher
needs it too); kept so imports of ``services.anchor.settings`` keep working. New code
imports ``p2pep.settings.anchor``."""

from p2pep.settings.anchor import AnchorSettings

__all__ = ["AnchorSettings"]
