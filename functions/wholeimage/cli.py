"""The operator command line: ``python -m wholeimage <command>`` (run from ``functions/``).

Commands so far: ``tick`` runs one ``check`` tick with the settings of the environment and
prints its summary as JSON (what a Kubernetes CronJob or a crontab line runs); ``notify``
delivers pending notifications (``--redrive``, ``--dead-letters``); ``emulator`` starts the
local IMS emulator.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence


def _tick(_: argparse.Namespace) -> int:
    from wholeimage.bootstrap import get_dependencies
    from wholeimage.errors import WholeImageError
    from wholeimage.service import check_tick

    try:
        answer = check_tick(get_dependencies())
    except WholeImageError as error:
        print(json.dumps(error.body()), file=sys.stderr)
        return 2
    print(json.dumps(answer, indent=2))
    return 1 if answer.get("aborted") else 0


def _notify(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from wholeimage.bootstrap import get_dependencies
    from wholeimage.errors import WholeImageError
    from wholeimage.service import notify_now
    from wholeimage.web import dead_letter_view

    try:
        deps = get_dependencies()
        if args.dead_letters:
            print(
                json.dumps([dead_letter_view(row) for row in deps.store.dead_letters()], indent=2)
            )
            return 0
        answer: dict[str, object] = {}
        if args.redrive is not None:
            ids = None if args.redrive == "all" else args.redrive.split(",")
            answer["redriven"] = deps.store.redrive(ids, now=datetime.now(UTC))
        answer.update(notify_now(deps).as_json())
    except WholeImageError as error:
        print(json.dumps(error.body()), file=sys.stderr)
        return 2
    print(json.dumps(answer, indent=2))
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"tick": _tick, "notify": _notify}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run one command; returns the exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["emulator"]:
        from wholeimage.emulator import main as emulator_main

        return emulator_main(arguments[1:])
    parser = argparse.ArgumentParser(prog="python -m wholeimage", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "tick", help="run one check tick and print its summary (exit 1 if it aborted)"
    )
    notify = commands.add_parser("notify", help="deliver pending notifications and print a summary")
    notify.add_argument("--redrive", metavar="all|ID,ID", help="re-drive dead letters first")
    notify.add_argument("--dead-letters", action="store_true", help="only list the dead letters")
    commands.add_parser("emulator", help="start the local IMS emulator (see --help after it)")
    args = parser.parse_args(arguments)
    return _COMMANDS[args.command](args)
