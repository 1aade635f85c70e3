"""``wholeimage.service.policies`` with the clock injected: which slot a policy gets when it is
applied, replaced and resumed, and which channels it may name (a real SQLite store)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from tests.fakes import make_dependencies, make_settings
from wholeimage.bootstrap import Dependencies
from wholeimage.errors import ConfigurationError, NotFoundError, RequestInvalidError
from wholeimage.service.policies import (
    apply_policy,
    delete_policy,
    pause_policy,
    policy_store,
    resume_policy,
    validate_policy,
)
from wholeimage.store.records import JobStore
from wholeimage.store.sqlite import SqliteJobStore

DOCUMENT: dict[str, Any] = {
    "name": "nightly-web",
    "schedule": {"cron": "0 2 * * *"},
    "sources": [{"instance_id": "877a2cda-ba63-4e1e-b95f-e67e48b6129a"}],
    "retention": {"keep_last": 3},
}
DAY = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture
def deps(tmp_path: Path) -> Iterator[Dependencies]:
    dependencies = make_dependencies(tmp_path)
    yield dependencies
    dependencies.store.close()


def test_a_new_policys_first_slot_is_the_first_after_it_was_applied(deps):
    before, created = apply_policy(deps, DOCUMENT, now=DAY.replace(hour=1, minute=59))
    on_the_slot, _ = apply_policy(deps, {**DOCUMENT, "name": "other"}, now=DAY.replace(hour=2))

    assert created
    assert before.next_slot_at == DAY.replace(hour=2)
    # Applied at a slot's very moment: that slot fell before the policy existed.
    assert on_the_slot.next_slot_at == DAY.replace(hour=2) + timedelta(days=1)


def test_replacing_a_policy_keeps_a_slot_that_is_due_unless_its_schedule_changed(deps):
    apply_policy(deps, DOCUMENT, now=DAY.replace(hour=1))
    later = DAY.replace(hour=3)

    kept, created = apply_policy(deps, {**DOCUMENT, "description": "web"}, now=later)
    moved, _ = apply_policy(deps, {**DOCUMENT, "schedule": {"cron": "0 4 * * *"}}, now=later)

    assert not created
    assert kept.next_slot_at == DAY.replace(hour=2)  # due: the engine runs it
    assert moved.next_slot_at == DAY.replace(hour=4)


def test_the_same_schedule_spelt_with_its_default_time_zone_is_no_change(deps):
    apply_policy(deps, DOCUMENT, now=DAY.replace(hour=1))

    spelt, _ = apply_policy(
        deps,
        {**DOCUMENT, "schedule": {"cron": "0 2 * * *", "timezone": "UTC"}},
        now=DAY.replace(hour=5),
    )

    assert spelt.next_slot_at == DAY.replace(hour=2)


def test_resume_moves_the_next_slot_past_those_missed_while_paused(deps):
    apply_policy(deps, DOCUMENT, now=DAY.replace(hour=1))
    pause_policy(deps, "nightly-web", now=DAY.replace(hour=1, minute=30))

    resumed = resume_policy(deps, "nightly-web", now=DAY + timedelta(days=3, hours=12))

    assert not resumed.paused
    assert resumed.next_slot_at == DAY + timedelta(days=4, hours=2)


def test_applying_a_paused_policy_leaves_it_paused(deps):
    apply_policy(deps, DOCUMENT, now=DAY)
    pause_policy(deps, "nightly-web", now=DAY)

    replaced, _ = apply_policy(deps, {**DOCUMENT, "description": "web"}, now=DAY)

    assert replaced.paused
    assert replaced.paused_reason == "paused by an operator"


@pytest.mark.parametrize("use_case", [pause_policy, resume_policy, delete_policy])
def test_a_policy_that_does_not_exist_is_not_found(deps, use_case):
    with pytest.raises(NotFoundError, match="there is no policy 'absent'"):
        use_case(deps, "absent")


def test_the_webhook_channel_is_configured_as_default():
    settings = make_settings(webhook_url="https://hooks.slack.com/services/T0/B0/x")

    accepted = validate_policy({**DOCUMENT, "channels": ["default"]}, settings)
    with pytest.raises(RequestInvalidError) as raised:
        validate_policy({**DOCUMENT, "channels": ["default", "ops", "pager"]}, settings)

    assert accepted.channels == ("default",)
    assert [d["path"] for d in raised.value.details] == ["$.channels[1]", "$.channels[2]"]
    assert raised.value.message == "the policy is invalid: 2 problems"


def test_a_store_that_keeps_no_policies_is_a_configuration_error():
    class JobsOnly:
        """A ``JobStore`` without the policy methods (a store written for jobs alone)."""

    jobs_only = Dependencies(settings=make_settings(), store=cast("JobStore", JobsOnly()))

    with pytest.raises(ConfigurationError, match="keeps no policies"):
        policy_store(jobs_only)


def test_the_sqlite_store_keeps_policies(deps):
    assert isinstance(deps.store, SqliteJobStore)
    assert policy_store(deps) is deps.store
