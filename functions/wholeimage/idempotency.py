"""The one rule for idempotency keys, shared by the HTTP header and the CLI flag.

Kept in a module of its own, importing nothing, so the command line can check a flag without
loading the web stack.
"""

from __future__ import annotations

MAX_IDEMPOTENCY_KEY_LENGTH = 255
IDEMPOTENCY_KEY_RULE = f"1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable characters"


def clean_idempotency_key(text: str) -> str | None:
    """The key without surrounding spaces, or None when it breaks the rule."""
    key = text.strip()
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH or not key.isprintable():
        return None
    return key
