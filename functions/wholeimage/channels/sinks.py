"""Local channels for development: ``console:`` prints each message, ``file:PATH`` appends it.

A local channel gets the message exactly as its service would (the format's payload), and
counts as delivered once written. Standard library only, so that settings can tell a local
channel from a webhook URL (``is_local_sink``) without loading the services.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wholeimage.results import Channel

if TYPE_CHECKING:
    # Only a type here: at run time base would bring httpx into settings' imports.
    from wholeimage.channels.base import OutgoingMessage

CONSOLE_SINK = "console:"
FILE_SINK = "file:"


def is_local_sink(url: str) -> bool:
    """``console:`` and ``file:`` channels are written locally, never sent."""
    return url.startswith((CONSOLE_SINK, FILE_SINK))


def write_to_sink(channel: Channel, message: OutgoingMessage) -> None:
    """Write ``message`` for a local channel: a JSON line to ``file:PATH``, or pretty to stdout."""
    url = channel.url.get_secret_value()
    try:
        body: Any = json.loads(message.body)
    except ValueError:
        body = message.body.decode("utf-8", errors="replace")
    entry = {"channel": channel.name, "format": channel.format, "message": body}
    if url.startswith(FILE_SINK):
        path = Path(url.removeprefix(FILE_SINK).removeprefix("//"))
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as sink:
            sink.write(json.dumps(entry, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(json.dumps(entry, ensure_ascii=False, indent=2) + "\n")
        sys.stdout.flush()
