"""Ids that come from outside and enter paths, headers, URLs and the store (standard library only)."""

from __future__ import annotations

import re

# What an IMS job or image id may be before it enters a path, a header or the store: IMS's are
# 32 hex characters or UUIDs; anything with a space, a control or non-ASCII character, "/", "?",
# "%" or a leading dot could break the signature or name another path (docs/ims-api.md §1.5).
PLAIN_JOB_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")

__all__ = ["PLAIN_JOB_ID"]
