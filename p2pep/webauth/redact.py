"""What never reaches a page: payment preimages (proof of payment, and with settlement's
records the key to a contract's money trail). Pages' JSON passes through :func:`without_secrets`."""

from __future__ import annotations

from typing import Any

SECRET_KEYS = frozenset({"preimage", "payment_preimage", "r_preimage"})


def without_secrets(value: Any) -> Any:
    """``value`` (JSON-like) with every preimage key dropped, at any depth."""
    if isinstance(value, dict):
        return {k: without_secrets(v) for k, v in value.items() if k not in SECRET_KEYS}
    if isinstance(value, list):
        return [without_secrets(v) for v in value]
    return value
