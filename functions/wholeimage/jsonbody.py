"""Decoding a JSON document (a request body, a file) with a precise error, standard library only.

Apart from ``validation`` (jsonschema), so an edge that only reads a body (``check``) loads no
validator.
"""

from __future__ import annotations

import json
import re
from typing import Any

from wholeimage.errors import RequestInvalidError

# Deeper than any body of ours (the create body nests three levels): past this a document is
# refused before anything walks it further (json.loads itself gives up near 1,000 levels).
MAX_DEPTH = 32
# How many bad strings one answer lists: enough to fix them, bounded for a hostile body.
MAX_PROBLEMS = 20
_PLAIN_MEMBER = re.compile("^[a-zA-Z][a-zA-Z0-9_]*$")
_SURROGATE = re.compile("[\ud800-\udfff]")


def member_path(base: str, member: str | int) -> str:
    """``base`` extended by one member, spelt as jsonschema's ``ValidationError.json_path``.

    A lone surrogate in a member name is spelt as its escape (``$['\\ud800']``): the path goes
    into an answer, and a lone surrogate cannot be encoded to be sent.
    """
    if isinstance(member, int):
        return f"{base}[{member}]"
    if _PLAIN_MEMBER.match(member):
        return f"{base}.{member}"
    escaped = member.replace("\\", "\\\\").replace("'", "\\'")
    escaped = _SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", escaped)
    return f"{base}['{escaped}']"


def decode_json(data: bytes, *, where: str = "$", source: str = "the body") -> Any:
    """Decode one JSON document (a request body, a file), or say precisely why not.

    ``where`` is the JSON path the details name, ``source`` what the message calls the document.

    A document that parses is also refused when it nests deeper than ``MAX_DEPTH`` or holds a
    lone surrogate (``"\\ud800"``: JSON allows the escape, but such a string is no text and
    cannot be stored or sent on), each bad string named by its JSON path.

    Raises:
        RequestInvalidError: empty, not UTF-8, not JSON, too deep, an integer too long to read,
            or a string that is not text.
    """
    if not data.strip():
        raise RequestInvalidError(
            f"{source} is empty", details=[{"path": where, "message": "a JSON object is required"}]
        )
    try:
        document = json.loads(data)
    except RecursionError:
        raise _too_deep(source, where) from None
    except UnicodeDecodeError:
        raise RequestInvalidError(
            f"{source} is not UTF-8", details=[{"path": where, "message": "not valid UTF-8"}]
        ) from None
    except json.JSONDecodeError as exc:
        raise RequestInvalidError(
            f"{source} is not valid JSON",
            details=[
                {"path": where, "message": f"{exc.msg} at line {exc.lineno} column {exc.colno}"}
            ],
        ) from None
    except ValueError:  # an integer of more digits than Python converts (sys.int_info)
        raise RequestInvalidError(
            f"{source} holds a number too long to read",
            details=[{"path": where, "message": "an integer of at most 4300 digits"}],
        ) from None
    check_document(document, where=where, source=source)
    return document


def check_document(document: Any, *, where: str = "$", source: str = "the body") -> None:
    """Refuse a document parsed elsewhere (a CloudEvent's data) as ``decode_json`` would.

    Raises:
        RequestInvalidError: it nests deeper than ``MAX_DEPTH`` or holds a lone surrogate.
    """
    problems: list[dict[str, str]] = []
    if not _walk(document, where, 0, problems):
        raise _too_deep(source, where)
    if problems:
        raise RequestInvalidError(f"{source} holds a string that is not text", details=problems)


def _too_deep(source: str, where: str) -> RequestInvalidError:
    return RequestInvalidError(
        f"{source} nests too deeply",
        details=[{"path": where, "message": f"at most {MAX_DEPTH} levels of arrays and objects"}],
    )


def _walk(value: Any, path: str, depth: int, problems: list[dict[str, str]]) -> bool:
    """Note each lone surrogate (in a key or a string) by path; False when nested too deeply."""
    if isinstance(value, str):
        if _SURROGATE.search(value) and len(problems) < MAX_PROBLEMS:
            problems.append({"path": path, "message": "not valid Unicode text (a lone surrogate)"})
        return True
    if not isinstance(value, dict | list):
        return True
    if depth >= MAX_DEPTH:
        return False
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for member, item in items:
        inner = member_path(path, member)
        if isinstance(member, str) and _SURROGATE.search(member) and len(problems) < MAX_PROBLEMS:
            problems.append({"path": inner, "message": "the member name is not valid Unicode text"})
        if not _walk(item, inner, depth + 1, problems):
            return False
    return True
