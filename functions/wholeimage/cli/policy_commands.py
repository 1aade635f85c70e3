"""The ``policy`` commands: lifecycle policies managed as ``/policies`` of ``create`` does
(docs/policies.md §2), printed as tables or (``--json``) the bodies it answers."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from wholeimage.cli import tables
from wholeimage.cli.inputs import dependencies, read_json
from wholeimage.cli.output import EXIT_OK, EXIT_UNAVAILABLE, Output
from wholeimage.service.policies import (
    PolicyDetails,
    delete_policy,
    deletion_view,
    details_view,
    list_policies,
    list_view,
    pause_policy,
    policy_view,
    resume_policy,
    run_view,
    show_policy,
    store_policy,
    validate_policy,
)
from wholeimage.settings import get_settings
from wholeimage.store.policy_records import PolicyRecord

if TYPE_CHECKING:
    import argparse


def policy_text(record: PolicyRecord, message: str | None = None) -> str:
    """One policy for people: what it does and the state kept beside it."""
    document = record.document
    schedule = document.get("schedule", {})
    retention = document.get("retention", {})
    kept = [f"{key}={value}" for key, value in retention.items()]
    rows: list[tuple[str, object]] = [
        ("name", record.name),
        ("description", document.get("description")),
        ("schedule", f"{schedule.get('cron')} ({schedule.get('timezone', 'UTC')})"),
        ("sources", ", ".join(s["instance_id"] for s in document.get("sources", []))),
        ("retention", " ".join(kept)),
        ("enabled", record.enabled),
        ("paused", record.paused_reason if record.paused else False),
        ("failures in a row", record.failures),
        ("next slot", record.next_slot_at if record.enabled and not record.paused else None),
        ("last slot", record.last_slot_at),
        ("created", record.created_at),
        ("updated", record.updated_at),
    ]
    text = tables.fields(rows)
    return f"{text}\n\n{message}" if message else text


def details_text(details: PolicyDetails) -> str:
    """``policy show``: the policy, then its latest runs and deletions."""
    runs = [run_view(run) for run in details.runs]
    deletions = [deletion_view(deletion) for deletion in details.deletions]
    run_rows = [
        (
            tables.moment(run["slot_at"]),
            run["run_id"],
            run["state"],
            run["skipped"],
            tables.moment(run["reported_at"]),
        )
        for run in runs
    ]
    deletion_rows = [
        (
            tables.moment(row["created_at"]),
            row["image_id"],
            row["image_name"],
            row["state"],
            row["attempts"],
            row["reason"],
        )
        for row in deletions
    ]
    run_table = (
        tables.table(("SLOT", "RUN ID", "STATE", "SKIPPED", "REPORTED"), run_rows)
        if runs
        else "(no run yet)"
    )
    deletion_table = (
        tables.table(
            ("DECIDED", "IMAGE ID", "IMAGE NAME", "STATE", "ATTEMPTS", "REASON"), deletion_rows
        )
        if deletions
        else "(none)"
    )
    return (
        f"{policy_text(details.record)}\n\nlatest runs\n{run_table}"
        f"\n\nimages rotated out, latest first\n{deletion_table}"
    )


def policy_apply_command(args: argparse.Namespace, output: Output) -> int:
    """``policy apply FILE``: validate, then store (new, or replacing one of that name)."""
    payload = read_json(args.file, argument="FILE", document="the policy")
    # Validated before the store is opened, as submit does: a bad document is refused even
    # where nothing else is configured.
    policy = validate_policy(payload, get_settings())
    record, created = store_policy(dependencies(), policy)
    if not record.enabled:
        message = f"Stored policy {record.name!r}, disabled: none of its slots runs."
    elif record.paused:
        message = f"Replaced policy {record.name!r}; it stays paused: wholeimage policy resume {record.name}"
    else:
        verb = "Created" if created else "Replaced"
        message = (
            f"{verb} policy {record.name!r}; its next slot: {tables.moment(record.next_slot_at)}."
        )
    output.answer(policy_view(record), policy_text(record, message))
    return EXIT_OK


def policy_list_command(args: argparse.Namespace, output: Output) -> int:
    """``policy list``: every policy, by name."""
    records = list_policies(dependencies())
    rows = [
        (
            record.name,
            record.document.get("schedule", {}).get("cron"),
            record.document.get("schedule", {}).get("timezone", "UTC"),
            len(record.document.get("sources", [])),
            record.enabled,
            record.paused,
            record.failures,
            record.next_slot_at if record.enabled and not record.paused else None,
            record.last_slot_at,
        )
        for record in records
    ]
    text = tables.table(
        (
            "NAME",
            "CRON",
            "TIME ZONE",
            "SOURCES",
            "ENABLED",
            "PAUSED",
            "FAILURES",
            "NEXT SLOT",
            "LAST SLOT",
        ),
        rows,
    )
    if not records:
        text += "\n(no policies; add one: wholeimage policy apply policy.json)"
    output.answer(list_view(records), text)
    return EXIT_OK


def policy_show_command(args: argparse.Namespace, output: Output) -> int:
    """``policy show NAME``: the policy, its latest runs and deletions; exit 4 when absent."""
    details = show_policy(dependencies(), args.name)
    output.answer(details_view(details), details_text(details))
    return EXIT_OK


def policy_pause_command(args: argparse.Namespace, output: Output) -> int:
    """``policy pause NAME``."""
    record = pause_policy(dependencies(), args.name)
    message = f"Paused: no slot runs until wholeimage policy resume {record.name}"
    output.answer(policy_view(record), policy_text(record, message))
    return EXIT_OK


def policy_resume_command(args: argparse.Namespace, output: Output) -> int:
    """``policy resume NAME``."""
    record = resume_policy(dependencies(), args.name)
    message = f"Running; its next slot: {tables.moment(record.next_slot_at)}."
    if not record.enabled:
        message = "Not paused, but disabled in its document: enable it and apply it again."
    output.answer(policy_view(record), policy_text(record, message))
    return EXIT_OK


def policy_delete_command(args: argparse.Namespace, output: Output) -> int:
    """``policy delete NAME``: forget it (its images stay)."""
    delete_policy(dependencies(), args.name)
    output.answer(
        {"name": args.name, "deleted": True},
        f"Deleted policy {args.name!r}; its images were not deleted.",
    )
    return EXIT_OK


def policy_plan_command(args: argparse.Namespace, output: Output) -> int:
    """``policy plan [NAME] [--slots N]``: exit 3 when IMS's image list could not be read."""
    from wholeimage.cli.plan import plan_text  # noqa: PLC0415 - croniter, IMS: only for plan
    from wholeimage.service.lifecycle import plan_policies  # noqa: PLC0415

    plans = plan_policies(dependencies(), name=args.name, slots=args.slots)
    output.answer({"plans": [plan.as_json() for plan in plans]}, plan_text(plans))
    return EXIT_UNAVAILABLE if any(plan.error for plan in plans) else EXIT_OK


POLICY_COMMANDS: dict[str, Callable[[argparse.Namespace, Output], int]] = {
    "apply": policy_apply_command,
    "list": policy_list_command,
    "show": policy_show_command,
    "pause": policy_pause_command,
    "resume": policy_resume_command,
    "delete": policy_delete_command,
    "plan": policy_plan_command,
}


def policy_command(args: argparse.Namespace, output: Output) -> int:
    """``policy ACTION``."""
    return POLICY_COMMANDS[args.policy_command](args, output)
