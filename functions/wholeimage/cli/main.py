"""The operator command line: ``wholeimage <command>`` or ``python -m wholeimage <command>``.

``python -m wholeimage`` runs from ``functions/`` (or with ``PYTHONPATH=functions``); the
``wholeimage`` console script comes with ``pip install -e .``. Every command reads the same
settings as the functions (the environment) and calls the same use cases directly, no HTTP
in between: ``submit`` (create, and ``--wait`` drives check until the verdict), ``status``,
``list``, ``tick`` (one check tick: what a CronJob or a crontab line runs), ``notify``,
``serve`` (the three functions in one process) and ``policy`` (lifecycle policies). The local IMS emulator is a development
tool outside the package: ``python -m ims_emulator`` (``tools/ims_emulator/README.md``).

This module only parses: it imports nothing beyond the standard library, so ``--help`` and usage
errors are instant; the commands (``wholeimage.cli.commands``) load once the arguments parsed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeAlias

from wholeimage.cli.output import (
    EXIT_CODES_HELP,
    EXIT_USAGE,
    VENV_NEXT_STEP,
    missing_package,
)
from wholeimage.idempotency import IDEMPOTENCY_KEY_RULE, clean_idempotency_key
from wholeimage.statuses import ENDED, OUTSTANDING, UNRESOLVED, JobStatus

_DURATION_PART = re.compile(r"(\d+)([smhdw])")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
STATUS_NAMES = tuple(status.value for status in JobStatus)
# Groups an operator thinks in. "outstanding" is every job without a verdict yet: the ones
# check polls (statuses.OUTSTANDING) and the ones whose submission it still has to resolve,
# which an operator most needs to see.
STATUS_GROUPS = {
    "OUTSTANDING": tuple(
        status.value for status in JobStatus if status in OUTSTANDING | UNRESOLVED
    ),
    "UNRESOLVED": tuple(status.value for status in JobStatus if status in UNRESOLVED),
    "ENDED": tuple(status.value for status in JobStatus if status in ENDED),
}


def since_moment(text: str, *, now: datetime | None = None) -> datetime:
    """``2h``, ``1d``, ``1h30m`` (that long ago) or an ISO 8601 time (UTC when it has no offset).

    Raises:
        argparse.ArgumentTypeError: for anything else, saying what is accepted.
    """
    value = text.strip().lower()
    if value and _DURATION_PART.sub("", value) == "":
        seconds = sum(
            int(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(value)
        )
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (30m, 2h, 1d, 1h30m) nor an ISO 8601 time"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def status_names(text: str) -> list[str]:
    """One ``--status`` value: a status, a comma list of them, ``outstanding``, ``unresolved``
    or ``ended``.

    Raises:
        argparse.ArgumentTypeError: for an unknown name, listing the known ones.
    """
    names: list[str] = []
    for part in text.split(","):
        name = part.strip().upper().replace("-", "_")
        if name in STATUS_GROUPS:
            names.extend(STATUS_GROUPS[name])
        elif name in STATUS_NAMES:
            names.append(name)
        else:
            raise argparse.ArgumentTypeError(
                f"unknown status {part.strip()!r}; use {', '.join(STATUS_NAMES)}, "
                "outstanding, unresolved or ended"
            )
    return names


def tag(text: str) -> tuple[str, str]:
    """``--tag KEY=VALUE`` (the value may be empty).

    Raises:
        argparse.ArgumentTypeError: without ``=`` or with an empty key.
    """
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: a tag is KEY=VALUE, such as owner=ops")
    return key, value


def idempotency_key(text: str) -> str:
    """``--idempotency-key``: what the ``Idempotency-Key`` header of ``create`` accepts.

    Raises:
        argparse.ArgumentTypeError: empty, over 255 characters, or not printable.
    """
    key = clean_idempotency_key(text)
    if key is None:
        raise argparse.ArgumentTypeError(f"an idempotency key is {IDEMPOTENCY_KEY_RULE}")
    return key


def positive_int(text: str) -> int:
    """A whole number of at least 1.

    Raises:
        argparse.ArgumentTypeError: for anything else.
    """
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return number


def seconds(text: str) -> float:
    """A positive number of seconds (``--timeout``).

    Raises:
        argparse.ArgumentTypeError: for anything else.
    """
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


_Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command."""
    parser = argparse.ArgumentParser(
        prog="wholeimage",
        description="Operate wholeimage: submit full-ECS image requests, follow and list jobs, "
        "run check and notify, serve the functions.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_submit(commands)
    _add_status(commands)
    _add_list(commands)
    _add_tick(commands)
    _add_notify(commands)
    _add_serve(commands)
    _add_policy(commands)
    return parser


# Each command's parser, by name, for usage errors found after parsing (_contradictions).
_SUBCOMMANDS: dict[str, argparse.ArgumentParser] = {}
_COMMON = argparse.ArgumentParser(add_help=False)
_COMMON.add_argument(
    "--json", action="store_true", help="print JSON for scripts instead of a table"
)


def command(
    commands: _Commands,
    name: str,
    help_text: str,
    description: str,
    *,
    group: str | None = None,
) -> argparse.ArgumentParser:
    """One command's parser, with ``--json`` and the exit codes in its help; ``group`` names
    the command it belongs to (``policy``), if any."""
    parser = commands.add_parser(
        name,
        parents=[_COMMON],
        help=help_text,
        description=description,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _SUBCOMMANDS[f"{group} {name}" if group else name] = parser
    return parser


def _add_submit(commands: _Commands) -> None:
    """The ``submit`` command."""
    submit = command(
        commands,
        "submit",
        "submit a full-ECS image request (like POST to create)",
        "Validate the body against schemas/create-request.schema.json (every failing field is "
        "listed), submit it to IMS and record the job, as the create function does. The body "
        "comes from --file (a JSON file, or - for stdin), from the flags, or both: flags win.",
    )
    body = submit.add_argument_group("the body")
    body.add_argument("--file", "-f", metavar="PATH", help="a JSON body; - reads stdin")
    body.add_argument("--name", help="the image name")
    body.add_argument("--instance-id", metavar="ID", help="image this ECS")
    body.add_argument("--vault-id", metavar="ID", help="CBR vault the ECS is backed up into")
    body.add_argument("--backup-id", metavar="ID", help="image this CSBS or CBR backup")
    body.add_argument("--cbr", action="store_true", help="the backup is a CBR backup")
    body.add_argument("--description", help="free text about the image")
    body.add_argument(
        "--tag",
        type=tag,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an image tag (repeatable), sent as image_tags",
    )
    submit.add_argument(
        "--idempotency-key",
        type=idempotency_key,
        metavar="KEY",
        help="makes a retry safe: the same key and body replay the first job",
    )
    submit.add_argument(
        "--wait",
        action="store_true",
        help="then run check ticks here until the job's verdict, one progress line per change",
    )
    submit.add_argument(
        "--timeout",
        type=seconds,
        metavar="SECONDS",
        help="with --wait: stop waiting after this long (exit 1; the job goes on)",
    )


def _add_status(commands: _Commands) -> None:
    """The ``status`` command."""
    status = command(
        commands,
        "status",
        "show one tracked job (like GET create?job_id=)",
        "Show a tracked job by its IMS job id or by our request id. Exit 1 when it failed or "
        "timed out, 4 when no job has this id.",
    )
    status.add_argument("job", metavar="JOB_ID|REQUEST_ID")


def _add_list(commands: _Commands) -> None:
    """The ``list`` command."""
    listing = command(
        commands,
        "list",
        "list tracked jobs, newest first",
        "List tracked jobs, newest first (by when they were recorded).",
    )
    listing.add_argument(
        "--status",
        type=status_names,
        action="append",
        default=[],
        metavar="S",
        help="only these statuses (repeatable, or a comma list); outstanding: every job "
        "without a verdict yet, unresolved ones included; unresolved: SUBMITTING and "
        "SUBMIT_UNCERTAIN (IMS may or may not have them); ended: the verdicts",
    )
    listing.add_argument(
        "--since",
        type=since_moment,
        metavar="WHEN",
        help="only jobs recorded since: 30m, 2h, 1d, 1h30m ago, or an ISO 8601 time",
    )
    listing.add_argument(
        "--limit", type=positive_int, default=50, metavar="N", help="at most N (default 50)"
    )


def _add_tick(commands: _Commands) -> None:
    """The ``tick`` command."""
    command(
        commands,
        "tick",
        "run one check tick and print its summary",
        "Poll the due IMS jobs once, as the check function does (what a CronJob or a crontab "
        "line runs). Exit 1 when the tick aborted (IMS refused our credentials).",
    )


def _add_notify(commands: _Commands) -> None:
    """The ``notify`` command."""
    notify = command(
        commands,
        "notify",
        "deliver pending notifications and print a summary",
        "Deliver what the notification outbox holds, as the notify function does.",
    )
    notify.add_argument("--redrive", metavar="all|ID,ID", help="re-drive dead letters first")
    notify.add_argument("--dead-letters", action="store_true", help="only list the dead letters")


def _add_serve(commands: _Commands) -> None:
    """The ``serve`` command."""
    serve = command(
        commands,
        "serve",
        "serve the three functions in one process",
        "Serve create, check and notify at /create, /check and /notify of one HTTP server: each "
        "is the app functions-framework makes from functions/main.py, as deployed. For local "
        "use and small VMs; gunicorn when available, else werkzeug's server.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=positive_int, default=8080, help="port (default 8080)")
    # No defaults here (serve applies them): a flag given with --server werkzeug, which has
    # no workers to set, is refused rather than ignored.
    serve.add_argument("--workers", type=positive_int, help="gunicorn worker processes (default 1)")
    serve.add_argument(
        "--threads", type=positive_int, help="gunicorn threads per worker (default 8)"
    )
    serve.add_argument(
        "--server",
        choices=("auto", "gunicorn", "werkzeug"),
        default="auto",
        help="auto: gunicorn when it can be imported (not on Windows), else werkzeug",
    )
    serve.add_argument(
        "--source",
        metavar="PATH",
        help="functions/main.py to serve (default: the one beside the wholeimage package)",
    )


def _add_policy(commands: _Commands) -> None:
    """The ``policy`` commands."""
    policy = commands.add_parser(
        "policy",
        help="manage image lifecycle policies (like /policies of create)",
        description="Apply, list, show, pause, resume and delete image lifecycle policies "
        "(schemas/policy.schema.json, docs/policies.md), as PUT, GET, DELETE and POST "
        "/policies of the create function do. The check function runs their slots.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _SUBCOMMANDS["policy"] = policy
    actions = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    apply = command(
        actions,
        "apply",
        "validate and store a policy document (like PUT /policies/NAME)",
        "Validate the policy document in FILE against schemas/policy.schema.json (every "
        "failing field is listed, and each source's create request is checked under "
        "WHOLEIMAGE_CLOUD), then store it under its name, replacing a policy of that name. "
        "FILE is JSON only (- reads stdin): YAML would need a parser wholeimage does not "
        "install; convert it first, e.g. with yq -o json. A new policy's first slot is the "
        "first after now; a replaced one keeps its next slot unless its schedule changed or "
        "it goes from disabled to enabled. A pause stays.",
        group="policy",
    )
    apply.add_argument("file", metavar="FILE", help="the policy document, JSON; - reads stdin")
    command(
        actions,
        "list",
        "list every policy",
        "List every policy by name: enabled, paused, failures in a row, next and last slot.",
        group="policy",
    )
    for name, help_text, description in (
        (
            "show",
            "show one policy with its latest runs and deletions",
            "Show a policy: its document, its state, its latest runs and the images its "
            "retention rotated out. Exit 4 when there is no such policy.",
        ),
        (
            "pause",
            "pause a policy: none of its slots runs until it is resumed",
            "Pause the policy (reason: paused by an operator). Pausing a paused policy changes "
            "nothing. Exit 4 when there is no such policy.",
        ),
        (
            "resume",
            "resume a paused policy from its next slot",
            "Resume the policy, its failures counted from 0; its next slot is the first after "
            "now (slots missed while paused are not run). Exit 4 when there is no such policy.",
        ),
        (
            "delete",
            "delete a policy (its images stay)",
            "Forget the policy: no slot of it runs again. Its images are not deleted; its runs "
            "and pending deletions stay tracked. Exit 4 when there is no such policy.",
        ),
    ):
        action = command(actions, name, help_text, description, group="policy")
        action.add_argument("name", metavar="NAME", help="the policy's name")
    plan = command(
        actions,
        "plan",
        "show what the next slots would create and rotate out, without any IMS write",
        "For the policy NAME (every policy without it): the images each of the next --slots "
        "slots would create, and which of the policy's existing images (read from IMS's image "
        "list, the only IMS call) retention would then delete, and why each is kept or dropped "
        "(docs/policies.md §5). Exit 3 when IMS's list could not be read (the creates are "
        "still shown), 4 when there is no such policy.",
        group="policy",
    )
    plan.add_argument("name", metavar="NAME", nargs="?", help="the policy's name; all without it")
    plan.add_argument(
        "--slots",
        type=_plan_slots,
        default=3,
        metavar="N",
        help="how many slots ahead, 1 to 100 (default 3)",
    )


def _plan_slots(text: str) -> int:
    """``--slots``: 1 to 100."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError("must be 1 to 100")
    return value


# argparse cannot say "only with" or "not with": without this, a flag that means nothing
# beside another would be ignored in silence, which misleads whoever typed it.
def _contradictions(args: argparse.Namespace) -> str | None:
    """Why the flags given do not go together, or None."""
    if args.command == "submit" and args.timeout is not None and not args.wait:
        return "--timeout only applies with --wait (it bounds the wait for the verdict)"
    if args.command == "notify" and args.dead_letters and args.redrive is not None:
        return (
            "--dead-letters and --redrive do not go together: --dead-letters only lists; "
            "re-drive with --redrive alone"
        )
    if args.command == "serve" and args.server == "werkzeug":
        given = [flag for flag in ("workers", "threads") if getattr(args, flag) is not None]
        if given:
            flags = " and ".join(f"--{flag}" for flag in given)
            return f"{flags} only apply to gunicorn; --server werkzeug runs one threaded process"
    return None


def _missing_package(error: ModuleNotFoundError, *, as_json: bool) -> int:
    """Say that this Python lacks a dependency (no venv), in one line and a next step."""
    body = missing_package(str(error.name), sys.executable)
    if as_json:
        print(json.dumps(body), file=sys.stderr)
    else:
        print(
            f"error: {body['error']['message']}\nnext: {VENV_NEXT_STEP}  (exit {EXIT_USAGE})",
            file=sys.stderr,
        )
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run one command; returns the exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(arguments)
    contradiction = _contradictions(args)
    if contradiction is not None:
        _SUBCOMMANDS[args.command].error(contradiction)  # exits 2, as any usage error
    # Loaded after parsing, so --help and a usage error stay instant (the parser is standard
    # library only; the commands load the whole application).
    try:
        from wholeimage.cli.commands import run  # noqa: PLC0415
    except ModuleNotFoundError as error:
        if str(error.name).split(".")[0] == "wholeimage":
            raise  # our own module missing is a broken install: the traceback says which
        return _missing_package(error, as_json=bool(getattr(args, "json", False)))
    return run(args)
