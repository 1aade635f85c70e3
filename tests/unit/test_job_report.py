"""Reading IMS's job query answer (docs/ims-api.md §2.1): both time formats, every status, odd values.

IMS sends every field as a possibly-null string; an unknown or missing status is never an end.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from ims_emulator import EmulatedJob, format_time
from wholeimage.ims.job_report import MAX_FAIL_REASON, parse_ims_time, parse_job_report
from wholeimage.logs import REDACTED
from wholeimage.models import JobStatus

SUCCESS_ANSWER: dict[str, Any] = {
    "job_id": "9a175ac7c5a74c0a8e9e8aa2dd5a29c6",
    "job_type": "imsCreateWholeImageByInstanceJob",
    "begin_time": "2024-11-06T06:28:14.425Z",
    "end_time": "2024-11-06T06:37:03.742Z",
    "status": "SUCCESS",
    "error_code": None,
    "fail_reason": None,
    "entities": {"image_name": "test", "image_id": "17b7bdeb-28c9-4e4b-9b62-ef6b4a3b8a1d"},
}


def answer(**changes: Any) -> dict[str, Any]:
    return {**SUCCESS_ANSWER, **changes}


# --- times -------------------------------------------------------------------------------------


def test_the_current_iso_format_with_milliseconds_and_z_is_read_as_utc():
    assert parse_ims_time("2024-11-06T06:28:14.425Z") == datetime(
        2024, 11, 6, 6, 28, 14, 425000, tzinfo=UTC
    )


def test_the_old_format_with_a_month_name_and_colon_milliseconds_is_read_as_utc():
    assert parse_ims_time("04-Jun-2015 18:11:06:586") == datetime(
        2015, 6, 4, 18, 11, 6, 586000, tzinfo=UTC
    )


def test_the_old_format_is_read_whatever_the_case_of_the_month_and_without_milliseconds():
    assert parse_ims_time("04-JUN-2015 18:11:06") == datetime(2015, 6, 4, 18, 11, 6, tzinfo=UTC)
    assert parse_ims_time("31-dec-1999 23:59:59:1") == datetime(
        1999, 12, 31, 23, 59, 59, 100000, tzinfo=UTC
    )


def test_an_iso_time_with_an_offset_is_converted_to_utc_and_a_naive_one_taken_as_utc():
    assert parse_ims_time("2024-11-06T07:28:14.425+01:00") == datetime(
        2024, 11, 6, 6, 28, 14, 425000, tzinfo=UTC
    )
    assert parse_ims_time("2024-11-06T06:28:14") == datetime(2024, 11, 6, 6, 28, 14, tzinfo=UTC)


def test_surrounding_whitespace_is_ignored():
    assert parse_ims_time("  2024-11-06T06:28:14.425Z\n") == datetime(
        2024, 11, 6, 6, 28, 14, 425000, tzinfo=UTC
    )


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "null",
        "yesterday",
        "04-Foo-2015 18:11:06:586",
        "31-Feb-2015 18:11:06:586",
        "04-Jun-2015 25:11:06:586",
        "2024-13-06T06:28:14.425Z",
        "04-Jun-2015",
        12345,
        1.5,
        ["2024-11-06T06:28:14.425Z"],
        {"time": "2024-11-06T06:28:14.425Z"},
    ],
)
def test_an_empty_null_or_unreadable_time_is_none(value: Any):
    assert parse_ims_time(value) is None


@pytest.mark.parametrize("old", [False, True], ids=["iso", "old"])
def test_the_emulators_times_in_either_format_read_back_to_the_millisecond(old: bool):
    moment = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC).timestamp()
    assert parse_ims_time(format_time(moment, old=old)) == datetime.fromtimestamp(moment, UTC)


def test_a_running_jobs_empty_end_time_means_not_finished():
    report = parse_job_report(answer(status="RUNNING", end_time=""))
    assert report.status is JobStatus.RUNNING
    assert report.ended is False


@pytest.mark.parametrize("end_time", [None, "", "   ", "garbage", 0])
def test_a_null_or_garbage_end_time_changes_nothing(end_time: Any):
    report = parse_job_report(answer(end_time=end_time))
    assert report.status is JobStatus.SUCCESS


def test_a_job_answer_in_the_old_time_format_is_read():
    report = parse_job_report(
        answer(begin_time="04-Jun-2015 18:11:06:586", end_time="04-Jun-2015 18:31:00:002")
    )
    assert report.status is JobStatus.SUCCESS
    assert report.image_id == SUCCESS_ANSWER["entities"]["image_id"]


# --- statuses ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status", "ended"),
    [
        ("INIT", JobStatus.INIT, False),
        ("RUNNING", JobStatus.RUNNING, False),
        ("SUCCESS", JobStatus.SUCCESS, True),
        ("FAIL", JobStatus.FAIL, True),
        ("init", JobStatus.INIT, False),
        ("Running", JobStatus.RUNNING, False),
        ("success", JobStatus.SUCCESS, True),
        ("fail", JobStatus.FAIL, True),
        (" SUCCESS ", JobStatus.SUCCESS, True),
    ],
)
def test_the_four_ims_statuses_are_read_whatever_their_case(
    raw: str, status: JobStatus, ended: bool
):
    report = parse_job_report(answer(status=raw))
    assert report.status is status
    assert report.ended is ended
    assert report.raw_status == raw.strip()


@pytest.mark.parametrize(
    "raw", ["DONE", "SUCCEEDED", "FAILED", "ERROR", "TIMED_OUT", "SUBMITTED", "1", "success!"]
)
def test_an_unknown_status_is_none_and_never_an_end(raw: str):
    report = parse_job_report(answer(status=raw))
    assert report.status is None
    assert report.raw_status == raw
    assert report.ended is False


@pytest.mark.parametrize("raw", [None, "", "   "])
def test_a_null_or_empty_status_is_none_and_never_an_end(raw: Any):
    report = parse_job_report(answer(status=raw))
    assert report.status is None
    assert report.raw_status is None
    assert report.ended is False


def test_a_missing_status_is_none_and_never_an_end_even_with_an_image_id():
    body = answer()
    del body["status"]
    report = parse_job_report(body)
    assert report.status is None
    assert report.ended is False
    assert report.image_id == SUCCESS_ANSWER["entities"]["image_id"]


def test_a_number_as_status_is_unknown_not_a_crash():
    report = parse_job_report(answer(status=3))
    assert report.status is None
    assert report.raw_status == "3"


def test_an_empty_answer_is_a_report_of_nothing():
    report = parse_job_report({})
    assert report.status is None
    assert report.ended is False
    assert report.image_id is None
    assert report.process_percent is None
    assert report.error_code is None
    assert report.fail_reason is None


# --- fields ------------------------------------------------------------------------------------


def test_a_successful_answer_gives_the_image_id_and_no_error():
    report = parse_job_report(SUCCESS_ANSWER)
    assert report.image_id == "17b7bdeb-28c9-4e4b-9b62-ef6b4a3b8a1d"
    assert report.error_code is None
    assert report.fail_reason is None


def test_a_failed_answer_gives_the_error_code_and_fail_reason():
    report = parse_job_report(
        answer(status="FAIL", error_code="IMG.0014", fail_reason="task failed", entities={})
    )
    assert report.status is JobStatus.FAIL
    assert report.error_code == "IMG.0014"
    assert report.fail_reason == "task failed"
    assert report.image_id is None


def test_empty_strings_are_read_as_absent():
    report = parse_job_report(
        answer(error_code="", fail_reason="  ", entities={"image_id": "", "process_percent": ""})
    )
    assert report.error_code is None
    assert report.fail_reason is None
    assert report.image_id is None
    assert report.process_percent is None


@pytest.mark.parametrize("entities", ["missing", None, [], "text", 42])
def test_missing_or_malformed_entities_give_no_image_id_and_no_progress(entities: Any):
    body = answer(status="RUNNING")
    if entities == "missing":
        del body["entities"]
    else:
        body["entities"] = entities
    report = parse_job_report(body)
    assert report.image_id is None
    assert report.process_percent is None
    assert report.status is JobStatus.RUNNING


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.24, 0.24),
        ("0.24", 0.24),
        (" 0.5 ", 0.5),
        (0, 0.0),
        (1, 1.0),
        ("1.0", 1.0),
        (1.7, 1.0),
        (55, 1.0),
        (-0.2, 0.0),
        ("-3", 0.0),
        ("inf", 1.0),
        ("-inf", 0.0),
        (None, None),
        ("", None),
        ("abc", None),
        ("NaN", None),
        (math.nan, None),
        ([0.5], None),
        ({"value": 0.5}, None),
    ],
)
def test_process_percent_is_a_fraction_clamped_to_zero_to_one_or_none(
    value: Any, expected: float | None
):
    report = parse_job_report(answer(status="RUNNING", entities={"process_percent": value}))
    assert report.process_percent == expected


def test_the_emulators_answers_read_as_the_states_it_went_through():
    job = EmulatedJob(
        job_id="a" * 32,
        job_type="imsCreateWholeImageByInstanceJob",
        image_name="web01-full",
        source_id="877a2cda-ba63-4e1e-b95f-e67e48b6129a",
        created_at=1_700_000_000.0,
        duration=100.0,
        outcome="SUCCESS",
        image_id="17b7bdeb-28c9-4e4b-9b62-ef6b4a3b8a1d",
        error_code="IMG.0014",
        fail_reason="never reported",
    )
    seen = []
    for elapsed in (0, 5, 50, 99, 100, 500):
        for old in (False, True):
            report = parse_job_report(job.view(job.created_at + elapsed, old_time_format=old))
            seen.append((elapsed, report.status, report.ended))
    assert sorted(set(seen), key=lambda item: item[0]) == [
        (0, JobStatus.INIT, False),
        (5, JobStatus.INIT, False),
        (50, JobStatus.RUNNING, False),
        (99, JobStatus.RUNNING, False),
        (100, JobStatus.SUCCESS, True),
        (500, JobStatus.SUCCESS, True),
    ]
    done = parse_job_report(job.view(job.created_at + 500, old_time_format=True))
    assert done.image_id == job.image_id
    assert done.process_percent == 1.0


def test_an_end_time_in_another_timezone_is_the_same_instant():
    other = datetime(2024, 11, 6, 14, 28, 14, 425000, tzinfo=timezone(timedelta(hours=8)))
    assert parse_ims_time(other.isoformat()) == other.astimezone(UTC)


@pytest.mark.parametrize(
    "image_id", ["a/../b", "img 1", "img\u0000", "ímg", "", 12345, None, "x" * 200]
)
def test_an_image_id_that_is_not_a_plain_token_is_never_taken(image_id: object) -> None:
    report = parse_job_report({"status": "SUCCESS", "entities": {"image_id": image_id}})

    assert report.status is JobStatus.SUCCESS
    assert report.image_id is None


def test_what_ims_reports_is_made_storable_no_nul_no_lone_surrogate_no_control() -> None:
    # PostgreSQL refuses NUL in text and UTF-8 has no lone surrogates: one such report must not
    # make the tick's whole batch of updates fail to record.
    report = parse_job_report(
        {
            "status": "FAIL\u0000" + "X" * 500,
            "error_code": "IMG.\ud8000061",
            "fail_reason": "disk\u0000full\u001b[31m\nsecond line",
        }
    )

    for text in (report.raw_status, report.error_code, report.fail_reason):
        assert text is not None
        text.encode("utf-8")  # raises for a lone surrogate
        assert "\u0000" not in text
        assert "\u001b" not in text
    assert report.raw_status is not None
    assert len(report.raw_status) <= 64
    assert report.error_code == "IMG.\ufffd0061"
    assert report.fail_reason == "disk full [31m\nsecond line"


# --- where a failed job's reason is (docs/ims-api.md §2.1) ---------------------------------------


def failed(**changes: Any) -> dict[str, Any]:
    """A FAIL answer with no error at the top level, as the job model allows."""
    return answer(
        **{"status": "FAIL", "error_code": None, "fail_reason": None, "entities": {}, **changes}
    )


@pytest.mark.parametrize(
    ("body", "code", "reason"),
    [
        (failed(error_code="IMG.0014", fail_reason="task failed"), "IMG.0014", "task failed"),
        (
            failed(entities={"error_code": "IMG.0126", "error": "the ECS is not stopped"}),
            "IMG.0126",
            "the ECS is not stopped",
        ),
        (
            failed(
                entities={"addition_error_code": "CBR.0001", "addition_error_msg": "vault full"}
            ),
            "CBR.0001",
            "vault full",
        ),
        (
            failed(
                entities={
                    "sub_jobs_result": [
                        {"status": "SUCCESS", "job_id": "sub1", "fail_reason": None},
                        {
                            "status": "FAIL",
                            "job_id": "sub2",
                            "error_code": "IMG.0110",
                            "fail_reason": "system disk unavailable",
                        },
                    ]
                }
            ),
            "IMG.0110",
            "sub-job sub2: system disk unavailable",
        ),
    ],
    ids=["top-level", "entities.error", "entities.addition_error_msg", "sub_jobs_result"],
)
def test_a_failed_jobs_code_and_reason_are_read_wherever_the_job_model_puts_them(
    body: dict[str, Any], code: str, reason: str
):
    report = parse_job_report(body)

    assert report.status is JobStatus.FAIL
    assert (report.error_code, report.fail_reason) == (code, reason)


def test_reasons_found_in_several_places_are_all_kept_in_order_once_each_and_the_first_code_wins():
    report = parse_job_report(
        failed(
            error_code="IMG.0014",
            fail_reason="task failed",
            entities={
                "error_code": "IMG.0126",
                "error": "the ECS is not stopped",
                "addition_error_msg": "task failed",
                "sub_jobs_result": [{"job_id": "s-1", "fail_reason": "disk busy"}],
            },
        )
    )

    assert report.error_code == "IMG.0014"
    assert report.fail_reason == "task failed | the ECS is not stopped | sub-job s-1: disk busy"


@pytest.mark.parametrize(
    "entities",
    [
        {"error": None, "addition_error_msg": "", "sub_jobs_result": None},
        {"error": "  ", "sub_jobs_result": "broken"},
        {"sub_jobs_result": [None, 3, "x", {"fail_reason": ""}, {"job_id": "a/b"}]},
        {"error": 42},
    ],
)
def test_empty_or_malformed_error_places_are_no_reason_and_never_a_crash(entities: Any):
    report = parse_job_report(failed(entities=entities))

    assert report.error_code is None
    assert report.fail_reason == ("42" if entities.get("error") == 42 else None)


def test_a_sub_job_id_that_is_not_plain_is_left_out_of_the_reason():
    report = parse_job_report(
        failed(entities={"sub_jobs_result": [{"job_id": "a\nb c", "fail_reason": "boom"}]})
    )

    assert report.fail_reason == "sub-job: boom"


def test_a_reason_from_any_place_is_made_storable_redacted_and_clipped_as_a_whole():
    # IMS quoting our signed request back: a credential shape the log filter knows.
    report = parse_job_report(
        failed(
            entities={
                "error": "bad\u0000request Signature=0123456789abcdef \ud800",
                "sub_jobs_result": [{"job_id": "s", "fail_reason": "x" * 5000}],
            }
        )
    )

    assert report.fail_reason is not None
    report.fail_reason.encode("utf-8")  # no lone surrogate
    assert "\u0000" not in report.fail_reason
    assert "0123456789abcdef" not in report.fail_reason
    assert f"Signature={REDACTED}" in report.fail_reason
    assert len(report.fail_reason) == MAX_FAIL_REASON
