"""What every command shares: its exit codes and where it writes (``Output``).

Apart from the parser and the commands, so both can import it without importing each other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TextIO

EXIT_OK = 0
EXIT_FAILED = 1  # the job failed, timed out or stayed unconfirmed (submit --wait, status), or the tick aborted
EXIT_USAGE = 2  # bad arguments, an invalid body, or a setting missing or malformed
EXIT_UNAVAILABLE = 3  # IMS or the state store is unavailable: retry later
EXIT_NOT_FOUND = 4  # no tracked job has this id, or no policy this name

# Where the project's dependencies are (scripts/setup-venv.sh makes .venv): what a command run
# by another Python than the venv's lacks.
VENV_NEXT_STEP = (
    "run it with the project's virtualenv: .venv/bin/python -m wholeimage ... "
    "(or '. .venv/bin/activate' first; scripts/setup-venv.sh makes .venv)"
)


def missing_package(name: str, python: str) -> dict[str, Any]:
    """The error body for a dependency this Python cannot import (a venv not activated)."""
    return {
        "error": {
            "code": "misconfigured",
            "message": f"the Python package {name!r} is not installed for {python}",
            "details": [],
        }
    }


EXIT_CODES_HELP = """\
exit codes:
  0  ok
  1  the job failed or timed out (submit --wait, status), the wait timed out, or the tick aborted
  2  usage or configuration error: bad arguments, an invalid body (every failing field is
     listed), a setting missing or malformed (the message names the variable), IMS refused the
     request or our credentials
  3  IMS or the state store is unavailable, or the outcome is uncertain: retry later
  4  not found: no tracked job has this id, or no policy this name

Every command takes --json: the answer as JSON on stdout (the same bodies as the HTTP
functions); errors as {"error": {...}} on stderr. Without it, tables for people. Progress and
log lines go to stderr; logs at WARNING and above unless WHOLEIMAGE_LOG_LEVEL is set.
"""


@dataclass
class Output:
    """Where a command writes: the answer to stdout, progress and errors to stderr."""

    json: bool
    out: TextIO
    err: TextIO

    def answer(self, data: Any, text: str) -> None:
        """The command's answer: ``data`` as JSON with ``--json``, else ``text``."""
        print(json.dumps(data, indent=2, ensure_ascii=False) if self.json else text, file=self.out)

    def progress(self, line: str) -> None:
        """A line for the person watching; stdout stays clean for ``--json``."""
        print(line, file=self.err, flush=True)
