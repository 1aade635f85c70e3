"""What the operator commands do (parsed by ``wholeimage.cli.main``).

Each command calls the use cases directly with the environment's dependencies, prints a table
or (``--json``) the same JSON body the HTTP function answers, and returns its exit code.
Expected failures are raised and turned into a message, a next step and an exit code in one
place, ``report``, as ``web.error_response`` turns them into HTTP answers. The ``policy``
commands live in ``policy_commands``; what every command reads, in ``inputs``.
"""

from __future__ import annotations

import getpass
import json
import re
import socket
import sqlite3
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wholeimage.bootstrap import Dependencies
from wholeimage.cli import tables
from wholeimage.cli.inputs import dependencies, read_json
from wholeimage.cli.output import (
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    VENV_NEXT_STEP,
    Output,
    missing_package,
)
from wholeimage.cli.policy_commands import policy_command
from wholeimage.cli.serve import serve as serve_forever
from wholeimage.errors import (
    ConfigurationError,
    ConflictError,
    IdempotencyKeyReusedError,
    ImsRejectedError,
    NotFoundError,
    PayloadTooLargeError,
    RequestInvalidError,
    SubmissionInProgressError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamUnavailableError,
    WholeImageError,
)
from wholeimage.logs import redact
from wholeimage.models import ENDED, OUTSTANDING, Job, JobStatus
from wholeimage.service.delivery import Redrive, dead_letters, deliver
from wholeimage.service.jobs import create_request, find_by_any_id, list_jobs, submit
from wholeimage.service.tick import TickReport, tick
from wholeimage.settings import get_settings

if TYPE_CHECKING:
    import argparse

# --wait: the least time between two ticks it runs (so a job due at every tick is not polled
# in a tight loop), and how often it re-reads the job while waiting for its next poll (another
# checker, the deployed check function, may move it along meanwhile).
MIN_PAUSE = 1.0
REFRESH = 5.0
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")


def run(args: argparse.Namespace) -> int:
    """Run the parsed command; expected failures become a message and an exit code."""
    output = Output(json=bool(getattr(args, "json", False)), out=sys.stdout, err=sys.stderr)
    command = COMMANDS[args.command]
    try:
        return command(args, output)
    except Exception as error:
        known = classify(error)
        if known is None:
            raise  # not an expected failure: the traceback is what helps
        code, next_step = known
        if isinstance(error, NotFoundError):
            next_step = _NOT_FOUND_NEXT_STEPS.get(args.command, next_step)
        report(error, output, next_step=f"{next_step}  (exit {code})")
        return code


# Each expected failure: its exit code and what the operator can do next. The first match wins,
# so a subclass comes before its base.
_FAILURES: tuple[tuple[type[WholeImageError], int, str], ...] = (
    (NotFoundError, EXIT_NOT_FOUND, "check the id; wholeimage list shows the recent jobs"),
    (ConfigurationError, EXIT_USAGE, "set the variable named above (README, Settings), run again"),
    (RequestInvalidError, EXIT_USAGE, "fix what is listed above and run again; nothing was sent"),
    (PayloadTooLargeError, EXIT_USAGE, "send a smaller body"),
    (IdempotencyKeyReusedError, EXIT_USAGE, "a different body needs a new --idempotency-key"),
    (
        SubmissionInProgressError,
        EXIT_UNAVAILABLE,
        "retry in a few seconds with the same --idempotency-key",
    ),
    (ConflictError, EXIT_USAGE, "see the job named above: wholeimage status REQUEST_ID"),
    (ImsRejectedError, EXIT_USAGE, "fix what IMS refused and run again; nothing was recorded"),
    (
        # IMS refused *our* credentials: configuration to fix, not an outage to wait out.
        UpstreamAuthError,
        EXIT_USAGE,
        "check the IMS credentials: HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK, "
        "WHOLEIMAGE_AUTH_TOKEN, or WHOLEIMAGE_IAM_USER, _PASSWORD and _DOMAIN",
    ),
    (UpstreamUnavailableError, EXIT_UNAVAILABLE, "retry in {retry_after} s or later"),
    (UpstreamError, EXIT_UNAVAILABLE, "retry later"),
    (WholeImageError, EXIT_FAILED, "see the message above"),
)
# Where to look when a command's name or id names nothing (the jobs' hint otherwise).
_NOT_FOUND_NEXT_STEPS = {"policy": "check the name; wholeimage policy list shows the policies"}
_STORE_NEXT_STEP = "check that the database of WHOLEIMAGE_STATE_URL is reachable, then retry"


def classify(error: BaseException) -> tuple[int, str] | None:
    """The exit code of an expected failure and the next step; None for anything else."""
    for kind, code, next_step in _FAILURES:
        if isinstance(error, kind):
            return code, next_step.format(retry_after=getattr(error, "retry_after", "a few"))
    if _store_unavailable(error):
        return EXIT_UNAVAILABLE, _STORE_NEXT_STEP
    if _missing_dependency(error):
        return EXIT_USAGE, VENV_NEXT_STEP
    return None


def _missing_dependency(error: BaseException) -> bool:
    """A third-party package this Python lacks (psycopg, once PostgreSQL is configured, say)."""
    return isinstance(error, ModuleNotFoundError) and str(error.name).split(".")[0] not in (
        "wholeimage",
        "None",
    )


def _store_unavailable(error: BaseException) -> bool:
    """The database is unreachable or busy: SQLite locked or unopenable, PostgreSQL down."""
    if isinstance(error, sqlite3.OperationalError):
        return True
    # Only when the PostgreSQL store was used, so this never imports psycopg itself.
    psycopg = sys.modules.get("psycopg")
    pool = sys.modules.get("psycopg_pool")
    return bool(
        (psycopg is not None and isinstance(error, psycopg.OperationalError))
        or (pool is not None and isinstance(error, pool.PoolTimeout))
    )


def report(error: BaseException, output: Output, *, next_step: str) -> None:
    """Print ``error`` to stderr: its JSON error body with ``--json``, else words and a next step."""
    if isinstance(error, WholeImageError):
        body = error.body()
    elif isinstance(error, ModuleNotFoundError):
        body = missing_package(str(error.name), sys.executable)
    else:
        # The driver's own words, first line only and redacted: they may quote the connection
        # URL, whose password is not among the registered secrets.
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        first_line = redact(_URL_PASSWORD.sub(r"\1[REDACTED]@", first_line))[:300]
        body = {
            "error": {
                "code": "upstream_unavailable",
                "message": f"the state store (WHOLEIMAGE_STATE_URL) failed: {first_line}",
                "details": [],
            }
        }
    if output.json:
        print(json.dumps(body, ensure_ascii=False), file=output.err)
        return
    problem = body["error"]
    lines = [f"error: {problem['message']}"]
    lines += [f"  {detail['path']}: {detail['message']}" for detail in problem["details"]]
    upstream = problem.get("upstream")
    if upstream:
        said = " ".join(
            str(upstream[k]) for k in ("status", "code", "message", "error") if upstream.get(k)
        )
        lines.append(f"  upstream said: {said}")
    lines.append(f"next: {next_step}")
    print("\n".join(lines), file=output.err)


# --- submit ------------------------------------------------------------------------------------


def body_from(args: argparse.Namespace) -> Any:
    """The create body: ``--file`` first, then each flag given sets its field.

    Raises:
        RequestInvalidError: no body at all, or the file cannot be read as JSON.
    """
    flags: dict[str, Any] = {
        "name": args.name,
        "description": args.description,
        "instance_id": args.instance_id,
        "vault_id": args.vault_id,
        "backup_id": args.backup_id,
        "whole_image_type": "CBR" if args.cbr else None,
    }
    given = {field: value for field, value in flags.items() if value is not None}
    if args.file is None and not given and not args.tag:
        raise RequestInvalidError(
            "no body: give --file body.json (or --file - for stdin), or --name with "
            "--instance-id or --backup-id",
            details=[{"path": "$", "message": "a JSON object is required"}],
        )
    body = read_json(args.file) if args.file is not None else {}
    if not isinstance(body, dict):
        return body  # validation says what is wrong with it; flags cannot fix a non-object
    body.update(given)
    if args.tag:
        existing = body.get("image_tags")
        tags = list(existing) if isinstance(existing, list) else []
        tags += [{"key": key, "value": value} for key, value in args.tag]
        body["image_tags"] = tags
    return body


def requested_by() -> str:
    """Who asked, for the job record and the chat message: ``cli:<user>@<host>``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container without a passwd entry or USER
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"[:256]


def submit_command(args: argparse.Namespace, output: Output) -> int:
    """``submit``: validate, submit to IMS, record; with ``--wait``, follow it to its verdict."""
    # Validation needs only WHOLEIMAGE_CLOUD (its default when unset): a bad body is refused
    # even where nothing is configured, before the store is opened.
    request = create_request(body_from(args), cloud=get_settings().cloud)
    deps = dependencies()
    submission = submit(
        deps, request, idempotency_key=args.idempotency_key, requested_by=requested_by()
    )
    job, message = submission.job, submission.message
    if job.status is JobStatus.SUBMIT_UNCERTAIN:
        output.answer({**job.public_view(None), "message": message}, job_text(job, message))
        return EXIT_UNAVAILABLE
    if not args.wait:
        follow = f"follow it: wholeimage status {job.ims_job_id or job.request_id}"
        output.answer(
            {**job.public_view(None), "message": message}, job_text(job, f"{message}\n{follow}")
        )
        return EXIT_OK
    output.progress(f"{message} Waiting for its verdict (Ctrl-C stops waiting, not the job).")
    try:
        job, unfinished = wait_for_verdict(deps, job, timeout=args.timeout, output=output)
    except KeyboardInterrupt:
        output.progress(
            f"stopped waiting; the job goes on: wholeimage status {job.ims_job_id or job.request_id}"
        )
        return 130  # the shell's code for "interrupted"
    return verdict(job, unfinished, output)


def verdict(job: Job, unfinished: str | None, output: Output) -> int:
    """Print where the job ended up; exit 0 for SUCCESS, 1 for anything else.

    Args:
        job: The job as the wait last read it.
        unfinished: Why the wait stopped without a verdict, or None when there is one.
        output: Where to print.
    """
    if unfinished is not None:
        message = (
            f"{unfinished}; the job is still tracked: wholeimage status "
            f"{job.ims_job_id or job.request_id}"
        )
    else:
        message = f"The job ended: {job.status.value}."
    output.answer({**job.public_view(None), "message": message}, job_text(job, message))
    if unfinished is None and job.status is JobStatus.SUCCESS:
        return EXIT_OK
    return EXIT_FAILED


def wait_for_verdict(
    deps: Dependencies,
    job: Job,
    *,
    timeout: float | None,
    output: Output,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[Job, str | None]:
    """Run check ticks here until ``job`` has a verdict, printing each change of progress.

    A tick runs only when the job is due (its next poll time, which the adaptive schedule
    sets), never twice within ``MIN_PAUSE``; meanwhile the job is re-read every ``REFRESH``
    seconds, so progress made by another checker shows too.

    Returns:
        The job as last read, and None when it has a verdict, else why the wait stopped.
    """
    started = clock()
    last_tick: float | None = None
    shown = _progress_of(job)
    output.progress(progress_line(job))
    while job.status in OUTSTANDING:
        elapsed = clock() - started
        if timeout is not None and elapsed >= timeout:
            return job, f"still {job.status.value} after {timeout:g} s"
        due_in = (
            (job.next_poll_at - datetime.now(UTC)).total_seconds()
            if job.next_poll_at is not None
            else 0.0
        )
        since_tick = clock() - last_tick if last_tick is not None else MIN_PAUSE
        if due_in <= 0 and since_tick >= MIN_PAUSE:
            aborted = tick(deps).check.aborted
            last_tick = clock()
            if aborted:
                return job, f"the check tick aborted ({aborted})"
        else:
            pause = min(max(due_in, MIN_PAUSE - since_tick), REFRESH)
            if timeout is not None:
                pause = min(pause, timeout - elapsed)
            sleep(max(pause, 0.0))
        job = deps.store.get(job.request_id) or job
        if _progress_of(job) != shown:
            shown = _progress_of(job)
            output.progress(progress_line(job))
    return job, None


def _progress_of(job: Job) -> tuple[str, str]:
    return job.status.value, tables.percent(job.process_percent)


def progress_line(job: Job) -> str:
    """``2026-11-27 10:58:08Z  RUNNING  42%``: one line per change while waiting."""
    return f"{tables.moment(datetime.now(UTC))}  {job.status.value:<9}  {tables.percent(job.process_percent)}"


def job_text(job: Job, message: str | None = None) -> str:
    """One job for people: its fields, aligned, then what it means."""
    error = ": ".join(part for part in (job.error_code, job.fail_reason) if part)
    rows: list[tuple[str, object]] = [
        ("request id", job.request_id),
        ("IMS job id", job.ims_job_id),
        ("status", job.status.value),
        ("progress", tables.percent(job.process_percent)),
        ("image name", job.request.name),
        ("image id", job.image_id),
        ("source", f"{job.source_kind} {job.source_id}"),
        ("error", error or None),
        ("requested by", job.requested_by),
        ("idempotency key", job.idempotency_key),
        ("recorded", job.created_at),
        ("submitted", job.submitted_at),
        ("ended", job.ended_at),
    ]
    text = tables.fields(rows)
    return f"{text}\n\n{message}" if message else text


# --- status and list ---------------------------------------------------------------------------


def status_command(args: argparse.Namespace, output: Output) -> int:
    """``status``: one job by IMS job id or request id; exit 1 when it failed or timed out."""
    job = find_by_any_id(dependencies(), args.job)
    output.answer(job.public_view(None), job_text(job))
    return EXIT_FAILED if job.status in ENDED - {JobStatus.SUCCESS} else EXIT_OK


def list_command(args: argparse.Namespace, output: Output) -> int:
    """``list``: tracked jobs, newest first."""
    statuses = {JobStatus(name) for names in args.status for name in names}
    jobs = list_jobs(dependencies(), statuses=statuses, since=args.since, limit=args.limit)
    rows = [
        (
            job.created_at,
            job.request_id,
            job.ims_job_id,
            job.status.value,
            tables.percent(job.process_percent),
            job.request.name,
            f"{job.source_kind} {job.source_id}",
        )
        for job in jobs
    ]
    text = tables.table(
        ("RECORDED", "REQUEST ID", "IMS JOB ID", "STATUS", "PROGRESS", "IMAGE NAME", "SOURCE"),
        rows,
    )
    if not jobs:
        text += "\n(no jobs match)"
    output.answer({"jobs": [job.public_view(None) for job in jobs]}, text)
    return EXIT_OK


# --- tick and notify ---------------------------------------------------------------------------


def tick_text(report: TickReport) -> str:
    """A tick's summary for people."""
    summary = report.check
    rows: list[tuple[str, object]] = [
        ("polled", summary.polled),
        ("ended", tables.counts(summary.ended)),
        ("errors", tables.counts(summary.errors)),
        ("still outstanding", summary.still_outstanding),
        ("next due", tables.moment(summary.next_due_at)),
        ("budget exhausted", summary.budget_exhausted),
        ("aborted", summary.aborted),
        ("lost leases", summary.lost_leases),
        ("duration", f"{summary.duration_s:.3f} s"),
    ]
    if report.policies is not None:
        part = report.policies
        rows.append(("policy slots run", f"{part.policies_run} ({part.slots_skipped} skipped)"))
        rows.append(("policy creates", tables.counts(part.creates)))
        rows.append(("policy deletions", tables.counts(part.deletions)))
        rows.append(("policy runs reported", part.runs_reported))
        if part.paused:
            rows.append(("policies paused", ", ".join(part.paused)))
        if part.errors:
            rows.append(("policy errors", tables.counts(part.errors)))
    if report.notify is not None:
        delivered = report.notify
        counts = {
            "delivered": delivered.delivered,
            "retried": delivered.retried,
            "dead": delivered.dead,
            "digests": delivered.digests,
        }
        rows.append(("notified", tables.counts(counts)))
    return tables.fields(rows)


def tick_command(args: argparse.Namespace, output: Output) -> int:
    """``tick``: one check tick; exit 1 when it aborted."""
    report = tick(dependencies())
    output.answer(report.as_json(), tick_text(report))
    if report.check.aborted:
        output.progress(
            f"the tick aborted: {report.check.aborted}\nnext: check the IMS credentials "
            "(HUAWEICLOUD_SDK_AK/SK, WHOLEIMAGE_AUTH_TOKEN or WHOLEIMAGE_IAM_*); no job was failed"
        )
        return EXIT_FAILED
    return EXIT_OK


def notify_command(args: argparse.Namespace, output: Output) -> int:
    """``notify``: deliver the outbox (re-driving dead letters first), or list dead letters."""
    deps = dependencies()
    if args.dead_letters:
        dead = dead_letters(deps)
        text = tables.table(
            ("ID", "CHANNEL", "ATTEMPTS", "DEAD SINCE", "LAST ERROR"),
            [
                (row.id, row.channel, row.attempts, tables.moment(row.dead_at), row.last_error)
                for row in dead
            ],
        )
        if dead:
            text += "\n\nre-drive them: wholeimage notify --redrive all (or --redrive ID,ID)"
        # The body GET ?dead_letters=1 answers (schemas/notify-dead-letters.schema.json).
        output.answer({"dead_letters": [row.as_json() for row in dead]}, text)
        return EXIT_OK
    redrive = Redrive.parse(args.redrive)
    if args.redrive is not None and redrive is None:
        redrive = Redrive(ids=())  # --redrive "": re-drive nothing, and say so (0)
    report = deliver(deps, redrive=redrive)
    summary = report.summary
    rows: list[tuple[str, object]] = [
        ("redriven", report.redriven),
        ("claimed", summary.claimed),
        ("messages", tables.counts(summary.messages)),
        ("delivered", summary.delivered),
        ("retried", summary.retried),
        ("dead", summary.dead),
        ("digests", summary.digests),
        ("errors", tables.counts(summary.errors)),
        ("budget exhausted", summary.budget_exhausted),
    ]
    output.answer(report.as_json(), tables.fields(rows))
    return EXIT_OK


def serve_command(args: argparse.Namespace, output: Output) -> int:
    """``serve``: the three functions in one process (``wholeimage.cli.serve``)."""
    return serve_forever(
        host=args.host,
        port=args.port,
        workers=args.workers,
        threads=args.threads,
        server=args.server,
        source=Path(args.source) if args.source else None,
        output=output,
    )


COMMANDS: dict[str, Callable[[argparse.Namespace, Output], int]] = {
    "submit": submit_command,
    "status": status_command,
    "list": list_command,
    "tick": tick_command,
    "notify": notify_command,
    "serve": serve_command,
    "policy": policy_command,
}
