"""``wholeimage.policies``: what ``policy_from_document`` refuses, at which JSON path, and what it
reads from an accepted document."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from wholeimage.errors import RequestInvalidError
from wholeimage.policies import policy_from_document

INSTANCE_ID = "877a2cda-ba63-4e1e-b95f-e67e48b6129a"
BASE: dict[str, Any] = {
    "name": "nightly-web",
    "schedule": {"cron": "0 2 * * *"},
    "sources": [{"instance_id": INSTANCE_ID}],
    "retention": {"keep_last": 3},
}


def refused(document: Any, *, cloud: str = "huaweicloud") -> list[dict[str, Any]]:
    """The details of ``document``'s refusal (the test fails when it is accepted)."""
    with pytest.raises(RequestInvalidError) as raised:
        policy_from_document(document, cloud=cloud)
    assert raised.value.details
    return raised.value.details


def paths(details: list[dict[str, Any]]) -> list[str]:
    return [str(detail["path"]) for detail in details]


def with_schedule(**schedule: str) -> dict[str, Any]:
    return {**BASE, "schedule": schedule}


def with_image(**image: Any) -> dict[str, Any]:
    return {**BASE, "image": image}


# --- the schedule --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cron",
    [
        "0 0 2 * * *",  # six fields: seconds first, as some crons read it
        "0 2 * * * 2027",  # six fields: a year last
        "30 12 1 *",  # four
        "a b c d e",
        "61 2 * * *",
        "@daily    ",  # croniter's nickname: not five fields
    ],
)
def test_a_cron_expression_that_is_not_five_readable_fields_is_refused(cron):
    details = refused(with_schedule(cron=cron))

    assert paths(details) == ["$.schedule.cron"]
    assert "five-field cron expression" in details[0]["message"]


@pytest.mark.parametrize("cron", ["0 0 30 2 *", "0 0 31 4 *", "0 0 31 2,4,6,9,11 *"])
def test_a_cron_expression_that_never_falls_on_a_date_is_refused(cron):
    details = refused(with_schedule(cron=cron))

    assert details == [{"path": "$.schedule.cron", "message": "never falls on a date"}]


def test_a_leap_day_schedule_is_accepted_as_it_falls_every_four_years():
    policy = policy_from_document(with_schedule(cron="0 0 29 2 *"), cloud="huaweicloud")

    assert policy.next_slot_after(datetime(2026, 3, 1, tzinfo=UTC)) == datetime(
        2028, 2, 29, tzinfo=UTC
    )


@pytest.mark.parametrize(
    "zone", ["Mars/Olympus", "europe/berlin", "CEST", "../../etc/passwd", "UTC+2"]
)
def test_a_time_zone_that_is_no_iana_name_is_refused(zone):
    details = refused(with_schedule(cron="0 2 * * *", timezone=zone))

    assert paths(details) == ["$.schedule.timezone"]
    assert "IANA time zone" in details[0]["message"]


def test_a_bad_cron_and_a_bad_time_zone_are_both_named():
    details = refused(with_schedule(cron="0 0 2 * * *", timezone="Mars/Olympus"))

    assert paths(details) == ["$.schedule.cron", "$.schedule.timezone"]


def test_slots_fall_in_the_schedules_time_zone_and_are_given_in_utc():
    policy = policy_from_document(
        with_schedule(cron="0 2 * * *", timezone="Asia/Shanghai"), cloud="huaweicloud"
    )

    # 02:00 in Shanghai (UTC+8) is 18:00 UTC the day before; strictly after the moment.
    assert policy.next_slot_after(datetime(2026, 6, 1, 17, 0, tzinfo=UTC)) == datetime(
        2026, 6, 1, 18, 0, tzinfo=UTC
    )
    assert policy.next_slot_after(datetime(2026, 6, 1, 18, 0, tzinfo=UTC)) == datetime(
        2026, 6, 2, 18, 0, tzinfo=UTC
    )


# --- the name template ---------------------------------------------------------------------------


def test_an_unknown_placeholder_is_refused_naming_it_and_the_known_ones():
    details = refused(with_image(name_template="{source}-{week}-{Slot}"))

    assert paths(details) == ["$.image.name_template"]
    message = details[0]["message"]
    assert "unknown placeholders {Slot}, {week}" in message
    assert "{policy}, {source}, {slot}, {date}, {time}" in message


def test_a_template_giving_a_name_valid_on_huawei_cloud_only_is_refused_on_otc():
    # Chinese characters are allowed in Huawei Cloud's image names, not in OTC's.
    document = with_image(name_template="{source}-\u6574\u673a-{slot}")

    on_otc = refused(document, cloud="otc")
    on_huawei = policy_from_document(document, cloud="huaweicloud")

    assert paths(on_otc) == ["$.image.name_template"]
    assert "gives source 0 the name" in on_otc[0]["message"]
    assert "Open Telekom Cloud" in on_otc[0]["message"]
    assert on_huawei.image_name(on_huawei.sources[0], datetime(2026, 6, 1, 2, tzinfo=UTC)) == (
        f"{INSTANCE_ID}-\u6574\u673a-20260601-0200"
    )


def test_a_template_whose_names_are_too_long_is_refused_at_the_template():
    details = refused(with_image(name_template="{source}-" + "x" * 100 + "-{slot}"))

    assert paths(details) == ["$.image.name_template"]
    assert "at most 128 characters" in details[0]["message"]


def test_a_label_stands_for_the_source_in_the_name():
    document = {**BASE, "sources": [{"instance_id": INSTANCE_ID, "label": "web01"}]}
    policy = policy_from_document(
        {**document, "image": {"name_template": "{policy}-{source}-{date}-{time}"}},
        cloud="otc",
    )

    assert policy.image_name(policy.sources[0], datetime(2026, 6, 1, 2, 5, tzinfo=UTC)) == (
        "nightly-web-web01-20260601-0205"
    )


# --- tags ----------------------------------------------------------------------------------------


def tags(count: int) -> list[dict[str, str]]:
    return [{"key": f"key{index}", "value": "v"} for index in range(count)]


def test_seven_tags_are_accepted_and_eight_refused():
    accepted = policy_from_document(with_image(tags=tags(7)), cloud="huaweicloud")
    details = refused(with_image(tags=tags(8)))

    assert len(accepted.image.tags) == 7
    assert paths(details) == ["$.image.tags"]


@pytest.mark.parametrize("key", ["wholeimage_policy", "wholeimage_source", "wholeimage_request"])
def test_wholeimages_own_tag_keys_are_refused(key):
    details = refused(
        with_image(tags=[{"key": "owner", "value": "ops"}, {"key": key, "value": "x"}])
    )

    assert paths(details) == ["$.image.tags[1].key"]
    assert "wholeimage's own markers" in details[0]["message"]


def test_the_policys_images_carry_its_two_tags_after_the_callers():
    policy = policy_from_document(
        with_image(tags=[{"key": "owner", "value": "ops"}]), cloud="huaweicloud"
    )

    request = policy.create_request(policy.sources[0], datetime(2026, 6, 1, 2, tzinfo=UTC))

    assert [(tag.key, tag.value) for tag in request.image_tags or []] == [
        ("owner", "ops"),
        ("wholeimage_policy", "nightly-web"),
        ("wholeimage_source", INSTANCE_ID),
    ]


# --- sources -------------------------------------------------------------------------------------


def test_one_instance_id_twice_in_different_case_is_refused_at_the_second():
    document = {
        **BASE,
        "sources": [{"instance_id": INSTANCE_ID}, {"instance_id": INSTANCE_ID.upper()}],
    }

    details = refused(document)

    assert details == [
        {
            "path": "$.sources[1].instance_id",
            "message": "is the ECS of source 0 again (ids are read regardless of case)",
        }
    ]


def test_one_instance_id_twice_in_the_same_case_is_refused_at_the_second():
    details = refused({**BASE, "sources": [{"instance_id": INSTANCE_ID}] * 2})

    assert paths(details) == ["$.sources[1].instance_id"]


def test_instance_ids_are_read_in_lower_case_so_the_idempotency_key_is_one():
    upper = policy_from_document(
        {**BASE, "sources": [{"instance_id": INSTANCE_ID.upper()}]}, cloud="huaweicloud"
    )
    slot = datetime(2026, 6, 1, 2, tzinfo=UTC)

    assert upper.sources[0].instance_id == INSTANCE_ID
    assert upper.idempotency_key(upper.sources[0], slot) == (
        f"policy:nightly-web:{INSTANCE_ID}:{int(slot.timestamp())}"
    )


def test_a_source_the_create_schema_refuses_is_named_at_its_index():
    sources = [{"instance_id": INSTANCE_ID}, {"instance_id": "web\n01"}]

    details = refused({**BASE, "sources": sources})

    assert paths(details) == ["$.sources[1].instance_id"]
    assert "control character" in details[0]["message"]


# --- the whole document --------------------------------------------------------------------------


def test_every_problem_of_a_document_is_named_in_one_answer_sorted_by_path():
    document = {
        "name": "Nightly",
        "schedule": {"cron": "0 0 30 2 *", "timezone": "Mars/Olympus"},
        "sources": [{"instance_id": INSTANCE_ID}],
        "retention": {},
        "image": {"name_template": "{week}", "tags": tags(8)},
        "colour": "blue",
    }

    details = refused(document)

    assert paths(details) == sorted(paths(details))
    assert set(paths(details)) == {
        "$.colour",
        "$.image.name_template",
        "$.image.tags",
        "$.name",
        "$.retention",
        "$.schedule.cron",
        "$.schedule.timezone",
    }


@pytest.mark.parametrize("document", [[], "policy", None, 3])
def test_a_document_that_is_no_object_is_refused_at_the_root(document):
    assert paths(refused(document)) == ["$"]


def test_the_document_written_back_has_its_defaults_and_reads_back_the_same():
    policy = policy_from_document(BASE, cloud="huaweicloud")

    document = policy.document()

    assert document["schedule"] == {"cron": "0 2 * * *", "timezone": "UTC"}
    assert (document["enabled"], document["delete_backup"], document["pause_after_failures"]) == (
        True,
        True,
        3,
    )
    assert document["image"]["name_template"] == "{source}-{slot}"
    assert policy_from_document(document, cloud="huaweicloud") == policy
