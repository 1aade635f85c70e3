"""The one rule for idempotency keys, shared by the HTTP header and the CLI flag.

Kept in a module of its own, importing nothing, so the command line can check a flag without
loading the web stack.
"""

from __future__ import annotations

MAX_IDEMPOTENCY_KEY_LENGTH = 255
# Lifecycle policies key each (policy, source, slot) create so; a caller's key must never take
# a slot's place (docs/policies.md §4).
POLICY_KEY_PREFIX = "policy:"
IDEMPOTENCY_KEY_RULE = (
    f"1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable characters, not starting with "
    f"{POLICY_KEY_PREFIX!r} (lifecycle policies' own keys)"
)


def clean_idempotency_key(text: str) -> str | None:
    """The key without surrounding spaces, or None when it breaks the rule."""
    key = text.strip()
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH or not key.isprintable():
        return None
    if key.startswith(POLICY_KEY_PREFIX):
        return None
    return key
