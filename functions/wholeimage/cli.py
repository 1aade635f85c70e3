"""The operator command line: ``python -m wholeimage <command>`` (run from ``functions/``).

Commands so far: ``tick`` runs one ``check`` tick with the settings of the environment and
prints its summary as JSON (what a Kubernetes CronJob or a crontab line runs); ``emulator``
starts the local IMS emulator.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _tick(_: argparse.Namespace) -> int:
    from wholeimage.bootstrap import get_dependencies
    from wholeimage.check import check_config_from_settings, run_check_sync
    from wholeimage.errors import WholeImageError

    try:
        deps = get_dependencies()
        summary = run_check_sync(
            store=deps.store,
            poller=deps.job_poller(),
            config=check_config_from_settings(deps.settings),
        )
    except WholeImageError as error:
        print(json.dumps(error.body()), file=sys.stderr)
        return 2
    print(json.dumps(summary.as_json(), indent=2))
    return 1 if summary.aborted else 0


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
    commands.add_parser("emulator", help="start the local IMS emulator (see --help after it)")
    args = parser.parse_args(arguments)
    return {"tick": _tick}[args.command](args)
