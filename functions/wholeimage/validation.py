"""Validate request bodies against the JSON Schemas in ``schemas/`` (2020-12, formats asserted).

Every file of the schema folder goes into one ``referencing.Registry`` so cross-file ``$ref``
works; one compiled validator per schema and cloud is built on first use and kept for the
process. Errors are reported all at once, sorted by JSON path, never as library text alone: a
subschema's ``x-error-message`` annotation replaces the library's message, other keywords are
restated as their rule, and a missing or unknown member is reported at its own path.

Two keywords of our own carry what the clouds' documents say and plain JSON Schema cannot:
``x-cloud`` holds when the validator's cloud is its value, so ``if``/``then``/``else`` states
a rule per cloud (``WHOLEIMAGE_CLOUD``; the caller passes it in), and ``x-unique-keys`` refuses
tags that repeat a key, at the repeating item's path. A tool that knows neither reads the
schema as Huawei Cloud's rules without the key check (the schema's ``$comment``).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC
from functools import cache
from pathlib import Path
from typing import Any, cast

from jsonschema import Draft202012Validator, FormatChecker, ValidationError, validators
from referencing import Registry, Resource

from wholeimage.errors import ConfigurationError, RequestInvalidError
from wholeimage.jsonbody import member_path
from wholeimage.results import read_date_time

SCHEMA_DIR_VARIABLE = "WHOLEIMAGE_SCHEMA_DIR"
CREATE_REQUEST_SCHEMA = "create-request.schema.json"
JOB_RESULT_SCHEMA = "job-result.schema.json"
# Annotation keyword of our schemas: a human message replacing the library's for that subschema.
ERROR_MESSAGE_KEYWORD = "x-error-message"
# Assertion keywords of our schemas (the module docstring).
CLOUD_KEYWORD = "x-cloud"
UNIQUE_KEYS_KEYWORD = "x-unique-keys"
# The values of WHOLEIMAGE_CLOUD (settings.Settings.cloud, which lives a layer above) and its
# default; tests/unit/test_schemas.py checks that they agree.
CLOUDS = ("huaweicloud", "otc")
DEFAULT_CLOUD = "huaweicloud"

# Members that ValidationError.json_path writes as ".name" rather than "['name']".
_lock = threading.Lock()


def schema_dir() -> Path:
    """Where the schemas are: ``$WHOLEIMAGE_SCHEMA_DIR``, the package's own ``schemas/``, the
    repo's ``schemas/``, or ``functions/schemas``.

    The second is an installed wheel, which carries them (checked first, so that a ``schemas``
    folder some other distribution put in site-packages is never taken); the third is the
    checkout layout; the last is a deployment that ships the ``functions/`` folder with the
    schemas copied in.
    """
    # Read here rather than in Settings: the schema folder is a packaging fact, needed before
    # any cloud setting is, and validation must work with no cloud configured at all.
    explicit = os.environ.get(SCHEMA_DIR_VARIABLE)
    if explicit:
        return Path(explicit)
    package_dir = Path(__file__).resolve().parent
    for candidate in (
        package_dir / "schemas",
        package_dir.parent.parent / "schemas",
        package_dir.parent / "schemas",
    ):
        if candidate.is_dir():
            return candidate
    raise ConfigurationError(
        f"no schema folder found; set {SCHEMA_DIR_VARIABLE} to the folder holding {CREATE_REQUEST_SCHEMA}"
    )


def load_schemas(directory: Path) -> dict[str, dict[str, Any]]:
    """Every ``*.json`` schema of ``directory`` by file name."""
    return {
        path.name: json.loads(path.read_text("utf-8")) for path in sorted(directory.glob("*.json"))
    }


def readable_date_time(value: object) -> bool:
    """A ``date-time`` string is one the code reads (``results.read_date_time``), in UTC too.

    Raises:
        ValueError: it names a moment that does not exist (30 February, second 60, year 0), one
            that is no date in UTC (9999-12-31T23:59:59-23:59 is in the year 10000), or is spelt
            in a way the code cannot read.
    """
    if isinstance(value, str):
        moment = read_date_time(value)
        try:
            moment.astimezone(UTC)  # messages and stores write times in UTC
        except OverflowError:
            raise ValueError(f"{value} is no date in UTC") from None
    return True


def format_checker() -> FormatChecker:
    """2020-12's format checker, asserting ``date-time`` whatever is installed.

    jsonschema asserts ``date-time`` only when the optional rfc3339-validator is importable:
    a deployment does not install it, the test tools bring it (openapi-spec-validator). Both
    must refuse the same bodies, and a time the schema's pattern lets through but the code
    cannot read must be a 400 here, not a 500 later.
    """
    checker = FormatChecker(formats=())
    checker.checkers = dict(Draft202012Validator.FORMAT_CHECKER.checkers)
    checker.checks("date-time", raises=ValueError)(readable_date_time)
    return checker


def _unique_keys(validator: Any, how: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    """``x-unique-keys``: an error at each item whose key an earlier item already used.

    ``{"member": "key"}`` reads the key from that member of object items, ``{"separator": "."}``
    as the text of string items before the first separator (all of it without one). Items of
    another shape are the type rules' to report.
    """
    if not isinstance(instance, list) or not isinstance(how, Mapping):
        return
    member, separator = how.get("member"), how.get("separator")
    first_use: dict[str, int] = {}
    for index, item in enumerate(instance):
        path: list[str | int]
        if isinstance(member, str) and isinstance(item, Mapping):
            key, path = item.get(member), [index, member]
        elif isinstance(separator, str) and isinstance(item, str):
            key, path = item.partition(separator)[0], [index]
        else:
            continue
        if not isinstance(key, str):
            continue
        if key in first_use:
            yield ValidationError(
                f"duplicate key {key!r}: the item at index {first_use[key]} already uses it",
                path=path,
            )
        else:
            first_use[key] = index


def _validator_class(cloud: str) -> type[Draft202012Validator]:
    """Draft 2020-12 with our two assertion keywords, ``x-cloud`` answering for ``cloud``."""

    def on_cloud(
        validator: Any, value: Any, instance: Any, schema: Any
    ) -> Iterator[ValidationError]:
        if value != cloud:
            yield ValidationError(f"the rule is {value}'s, and the cloud is {cloud}")

    extended = validators.extend(  # type: ignore[no-untyped-call]  # untyped in the stubs
        Draft202012Validator, {CLOUD_KEYWORD: on_cloud, UNIQUE_KEYS_KEYWORD: _unique_keys}
    )
    return cast("type[Draft202012Validator]", extended)


@cache
def validator_for(schema_name: str, cloud: str = DEFAULT_CLOUD) -> Draft202012Validator:
    """The compiled validator for one schema file and cloud, built once per process.

    Raises:
        ConfigurationError: the schema file is missing, or ``cloud`` is not one we know.
    """
    if cloud not in CLOUDS:
        raise ConfigurationError(f"WHOLEIMAGE_CLOUD must be one of {', '.join(CLOUDS)}")
    with _lock:
        schemas = load_schemas(schema_dir())
        if schema_name not in schemas:
            raise ConfigurationError(f"schema {schema_name} is missing from {SCHEMA_DIR_VARIABLE}")
        registry: Registry[Any] = Registry().with_resources(
            (document.get("$id", name), Resource.from_contents(document))
            for name, document in schemas.items()
        )
        return _validator_class(cloud)(
            schemas[schema_name],
            registry=registry,
            format_checker=format_checker(),
        )


def _custom_message(error: ValidationError) -> str | None:
    """The schema's own ``x-error-message`` for ``error``, if the failing subschema has one.

    ``error.schema`` is the subschema holding the keyword that failed: the object around a
    ``not``, ``anyOf``, ``oneOf`` or ``required``, the target of a ``$ref``. A ``false`` schema
    has no room for a message, so the schemas spell forbidden members as ``{"not": {}}``.
    """
    schema = error.schema
    if isinstance(schema, Mapping):
        message = schema.get(ERROR_MESSAGE_KEYWORD)
        if isinstance(message, str):
            return message
    return None


_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "object": "an object",
    "array": "an array",
    "null": "null",
}


def _type_rule(expected: Any) -> str:
    names = [expected] if isinstance(expected, str) else list(expected)
    return "must be " + " or ".join(_TYPE_NAMES.get(name, name) for name in names)


def _length_rule(bound: str, unit: str) -> Callable[[Any], str]:
    return lambda limit: f"must be {bound} {limit} {unit}{'' if limit == 1 else 's'}"


# The library's messages start by repeating the offending value (a whole body, for a body of
# the wrong type); these say the rule instead, and the detail's path says where.
_RULES: dict[str, Callable[[Any], str]] = {
    "type": _type_rule,
    "minLength": lambda limit: (
        "must not be empty" if limit == 1 else f"must be at least {limit} characters"
    ),
    "maxLength": _length_rule("at most", "character"),
    "minItems": _length_rule("at least", "item"),
    "maxItems": _length_rule("at most", "item"),
    "uniqueItems": lambda _: "must not hold the same item twice",
    "minimum": lambda limit: f"must be at least {limit}",
    "maximum": lambda limit: f"must be at most {limit}",
    "enum": lambda choices: "must be one of " + ", ".join(json.dumps(each) for each in choices),
    "const": lambda value: f"must be {json.dumps(value)}",
    "format": lambda name: f"must be a valid {name}",
}


def _message(error: ValidationError) -> str:
    """The schema's own message, else the rule the keyword states, else the library's."""
    custom = _custom_message(error)
    if custom is not None:
        return custom
    rule = _RULES.get(str(error.validator))
    if rule is not None:
        return rule(error.validator_value)
    if error.validator in ("oneOf", "anyOf") and len(error.message) >= 300:
        return "no alternative matches"
    return error.message


def _describe(error: ValidationError) -> list[dict[str, str]]:
    """One detail per failing field: members that are missing or unknown get their own path."""
    custom = _custom_message(error)
    instance = error.instance
    if (
        error.validator == "required"
        and isinstance(error.validator_value, list)
        and isinstance(instance, Mapping)
    ):
        # The library reports a missing member at its parent ("$"); naming the member itself
        # tells the caller which field to add. One error per missing member, hence the dedupe.
        return [
            {"path": member_path(error.json_path, name), "message": custom or "is required"}
            for name in error.validator_value
            if name not in instance
        ]
    if (
        error.validator == "additionalProperties"
        and error.validator_value is False
        and isinstance(instance, Mapping)
        and isinstance(error.schema, Mapping)
    ):
        known = error.schema.get("properties", {})
        patterns = error.schema.get("patternProperties", {})
        expected = ", ".join(sorted(known))
        return [
            {
                "path": member_path(error.json_path, name),
                "message": custom or f"is not a known field; the fields are {expected}",
            }
            for name in instance
            if name not in known and not any(re.search(pattern, name) for pattern in patterns)
        ]
    return [{"path": error.json_path, "message": _message(error)}]


def validate(schema_name: str, instance: Any, *, cloud: str = DEFAULT_CLOUD) -> None:
    """Raise ``RequestInvalidError`` naming every failing field of ``instance``.

    ``cloud`` (``WHOLEIMAGE_CLOUD``) picks the rules that differ between the clouds; only the
    create body has such rules. One detail (``path`` as a JSON path, ``message``) per problem,
    sorted by path.
    """
    validator = validator_for(schema_name, cloud)
    found: list[dict[str, str]] = []
    for error in validator.iter_errors(instance):
        found.extend(_describe(error))
    if not found:
        return
    details: list[dict[str, str]] = []
    for detail in sorted(found, key=lambda each: (each["path"], each["message"])):
        if detail not in details:
            details.append(detail)
    count = len(details)
    raise RequestInvalidError(
        f"the request body is invalid: {count} problem{'s' if count != 1 else ''}",
        details=details,
    )
