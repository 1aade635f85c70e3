"""The JSON Schemas of ``schemas/`` and the create-request validation built on them."""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from wholeimage.errors import RequestInvalidError
from wholeimage.validation import CREATE_REQUEST_SCHEMA, validate, validator_for

SCHEMA_FILES = sorted((Path(__file__).resolve().parents[2] / "schemas").glob("*.json"))
CREATE_DATA = Path(__file__).resolve().parents[1] / "data" / "create"
VALID_BODIES = sorted((CREATE_DATA / "valid").glob("*.json"))
INVALID_BODIES = sorted((CREATE_DATA / "invalid").glob("*.json"))

# The messages the schema gives, through x-error-message, to the rules that span fields.
NOT_BOTH_TAG_STYLES = "give tags or image_tags, not both"
NO_SOURCE = "give instance_id (to image an ECS) or backup_id (to image a CSBS or CBR backup)"
TWO_SOURCES = "give instance_id or backup_id, not both: an image has one source"
TYPE_WITHOUT_BACKUP = (
    "whole_image_type is only allowed together with backup_id (it tells a CBR from a CSBS backup)"
)
VAULT_WITHOUT_ECS = (
    "vault_id is only allowed together with instance_id (the vault the ECS is backed up into)"
)

# Library phrasings, cryptic or repeating the offending value: validate() says the rule instead.
LIBRARY_TEXT = (
    "should not be valid under",
    "does not match",
    "is not valid under any of the given schemas",
    "Additional properties are not allowed",
    "is a dependency of",
    "is a required property",
    "is not of type",
    "is too long",
    "is too short",
    "should be non-empty",
    "is not one of",
    "has non-unique elements",
    "is less than the minimum",
)


def by_name(paths: list[Path]) -> list[Any]:
    return [pytest.param(path, id=path.name) for path in paths]


def load(path: Path) -> Any:
    return json.loads(path.read_text("utf-8"))


def problems_of(body: Any) -> list[dict[str, str]]:
    """The details validate() reports for ``body``; an empty list when it is valid."""
    try:
        validate(CREATE_REQUEST_SCHEMA, body)
    except RequestInvalidError as error:
        return error.details
    return []


# --- the schema files -------------------------------------------------------------------------


def test_the_schema_folder_holds_the_create_request_schema():
    assert CREATE_REQUEST_SCHEMA in [path.name for path in SCHEMA_FILES]


@pytest.mark.slow
@pytest.mark.parametrize("path", by_name(SCHEMA_FILES))
def test_every_schema_file_is_a_valid_2020_12_schema(path):
    Draft202012Validator.check_schema(load(path))


@pytest.mark.parametrize("path", by_name(SCHEMA_FILES))
def test_every_schema_file_declares_its_dialect_and_id(path):
    schema = load(path)

    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].startswith("https://wholeimage.example/schemas/")


def test_the_create_request_schema_is_identified_by_its_file_name():
    schema = load(next(path for path in SCHEMA_FILES if path.name == CREATE_REQUEST_SCHEMA))

    assert schema["$id"] == "https://wholeimage.example/schemas/create-request.schema.json"
    assert schema["title"]
    assert schema["description"]


def test_the_validator_is_built_once_and_then_reused():
    validator_for.cache_clear()

    first = validator_for(CREATE_REQUEST_SCHEMA)
    second = validator_for(CREATE_REQUEST_SCHEMA)

    assert first is second
    assert validator_for.cache_info().misses == 1


# --- example bodies ---------------------------------------------------------------------------


def test_there_are_valid_and_invalid_example_bodies():
    assert len([path for path in VALID_BODIES if path.name.startswith("seed-")]) == 4
    assert len(INVALID_BODIES) > 40


@pytest.mark.parametrize("path", by_name(VALID_BODIES))
def test_a_valid_body_passes_validation(path):
    validate(CREATE_REQUEST_SCHEMA, load(path))


@pytest.mark.slow
@pytest.mark.parametrize("path", by_name(INVALID_BODIES))
def test_an_invalid_body_is_refused_naming_exactly_the_failing_fields(path):
    case = load(path)

    with pytest.raises(RequestInvalidError) as raised:
        validate(CREATE_REQUEST_SCHEMA, case["body"])

    assert {detail["path"] for detail in raised.value.details} == set(case["errors"])


@pytest.mark.slow
@pytest.mark.parametrize("path", by_name(INVALID_BODIES))
def test_every_detail_has_a_path_and_a_human_message(path):
    details = problems_of(load(path)["body"])

    assert details
    for detail in details:
        assert detail["path"].startswith("$")
        assert detail["message"]
        assert not any(text in detail["message"] for text in LIBRARY_TEXT)
        assert len(detail["message"]) < 200


@pytest.mark.slow
@pytest.mark.parametrize("path", by_name(INVALID_BODIES))
def test_the_error_message_counts_the_details(path):
    with pytest.raises(RequestInvalidError) as raised:
        validate(CREATE_REQUEST_SCHEMA, load(path)["body"])

    count = len(raised.value.details)
    assert raised.value.message.startswith(f"the request body is invalid: {count} problem")


@pytest.mark.parametrize(
    ("file_name", "expected"),
    [
        (
            "tags-and-image-tags.json",
            {"$.tags": NOT_BOTH_TAG_STYLES, "$.image_tags": NOT_BOTH_TAG_STYLES},
        ),
        ("neither-instance-id-nor-backup-id.json", {"$": NO_SOURCE}),
        (
            "both-instance-id-and-backup-id.json",
            {"$.instance_id": TWO_SOURCES, "$.backup_id": TWO_SOURCES},
        ),
        ("whole-image-type-with-instance-id.json", {"$.whole_image_type": TYPE_WITHOUT_BACKUP}),
        ("vault-id-with-backup-id.json", {"$.vault_id": VAULT_WITHOUT_ECS}),
    ],
)
def test_rules_spanning_fields_speak_in_their_own_words(file_name, expected):
    details = problems_of(load(CREATE_DATA / "invalid" / file_name)["body"])

    assert {detail["path"]: detail["message"] for detail in details} == expected


def test_a_missing_field_is_reported_at_its_own_path():
    details = problems_of({"instance_id": "877a2cda-ba63-4e1e-b95f-e67e48b6129a"})

    assert details == [{"path": "$.name", "message": "is required"}]


def test_an_unknown_field_is_reported_at_its_own_path_with_the_known_fields():
    details = problems_of(
        {"name": "x", "backup_id": "9b27efab-4a17-4c06-bfa2-3e0cf021d3c3", "os": 1}
    )

    assert [detail["path"] for detail in details] == ["$.os"]
    assert "instance_id" in details[0]["message"]


@pytest.mark.parametrize(
    ("file_name", "path", "message"),
    [
        ("description-too-long.json", "$.description", "must be at most 1024 characters"),
        ("name-empty.json", "$.name", "must not be empty"),
        ("tags-ten.json", "$.tags", "must be at most 9 items"),
        ("tags-duplicate-item.json", "$.tags", "must not hold the same item twice"),
        ("max-ram-as-a-string.json", "$.max_ram", "must be an integer"),
        ("min-ram-negative.json", "$.min_ram", "must be at least 0"),
        ("whole-image-type-unknown.json", "$.whole_image_type", 'must be one of "CBR", "CSBS"'),
        ("body-an-array.json", "$", "must be an object"),
    ],
)
def test_a_message_states_the_rule_without_repeating_the_value(file_name, path, message):
    details = problems_of(load(CREATE_DATA / "invalid" / file_name)["body"])

    assert {"path": path, "message": message} in details


def test_a_duplicate_tag_key_points_at_the_first_use():
    details = problems_of(
        {
            "name": "x",
            "instance_id": "877a2cda-ba63-4e1e-b95f-e67e48b6129a",
            "image_tags": [{"key": "env", "value": "a"}, {"key": "env", "value": "b"}],
        }
    )

    assert details == [
        {
            "path": "$.image_tags[1].key",
            "message": "duplicate image_tags key 'env'; $.image_tags[0].key already uses it",
        }
    ]


def test_min_ram_above_max_ram_is_not_checked_when_either_has_the_wrong_type():
    details = problems_of(
        {
            "name": "x",
            "instance_id": "877a2cda-ba63-4e1e-b95f-e67e48b6129a",
            "min_ram": 4096,
            "max_ram": "1024",
        }
    )

    assert [detail["path"] for detail in details] == ["$.max_ram"]


def test_details_are_sorted_by_path_and_never_repeated():
    details = load(CREATE_DATA / "invalid" / "several-errors-at-once.json")["body"]
    found = problems_of(details)

    keys = [(detail["path"], detail["message"]) for detail in found]
    assert keys == sorted(set(keys))


# --- generated bodies -------------------------------------------------------------------------

uuids = st.uuids().map(str)
cjk_names = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FA5)
cjk_tags = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF)

name_edge_characters = st.one_of(
    st.sampled_from(string.ascii_letters + string.digits + "-._"), cjk_names
)
names = st.one_of(
    name_edge_characters,
    st.tuples(
        name_edge_characters,
        st.text(st.one_of(name_edge_characters, st.just(" ")), max_size=126),
        name_edge_characters,
    ).map("".join),
)
descriptions = st.text(st.characters(codec="utf-8", exclude_characters="\r\n<>"), max_size=1024)

tag_key_characters = st.one_of(
    st.sampled_from(string.ascii_letters + string.digits + "_-"), cjk_tags
)
tag_keys = st.text(tag_key_characters, min_size=1, max_size=36)
tag_values = st.text(st.one_of(tag_key_characters, st.just(".")), max_size=43)
tag_strings = st.one_of(
    tag_keys, st.tuples(tag_keys, tag_values).map(lambda pair: f"{pair[0]}.{pair[1]}")
)
tag_lists = st.lists(tag_strings, max_size=9, unique_by=lambda tag: tag.partition(".")[0])


def tag_texts(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    return st.text(
        st.characters(codec="utf-8", exclude_characters="=*<>\\,|/"),
        min_size=min_size,
        max_size=max_size,
    ).filter(lambda text: not text.startswith(" ") and not text.endswith(" "))


image_tag_lists = st.lists(
    st.fixed_dictionaries({"key": tag_texts(1, 36), "value": tag_texts(0, 43)}),
    max_size=9,
    unique_by=lambda tag: tag["key"],
)

sources = st.one_of(
    st.fixed_dictionaries({"instance_id": uuids}, optional={"vault_id": uuids}),
    st.fixed_dictionaries({"backup_id": uuids}, optional={"whole_image_type": st.just("CSBS")}),
    st.fixed_dictionaries({"backup_id": uuids, "whole_image_type": st.just("CBR")}),
)


@st.composite
def valid_bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"name": draw(names), **draw(sources)}
    if draw(st.booleans()):
        body["description"] = draw(descriptions)
    tag_style = draw(st.sampled_from(["none", "tags", "image_tags"]))
    if tag_style == "tags":
        body["tags"] = draw(tag_lists)
    elif tag_style == "image_tags":
        body["image_tags"] = draw(image_tag_lists)
    low, high = sorted(draw(st.lists(st.integers(0, 2**31 - 1), min_size=2, max_size=2)))
    if draw(st.booleans()):
        body["min_ram"] = low
    if draw(st.booleans()):
        body["max_ram"] = high
    if draw(st.booleans()):
        body["enterprise_project_id"] = draw(st.one_of(st.just("0"), uuids))
    return body


not_strings: st.SearchStrategy[Any] = st.one_of(
    st.integers(), st.booleans(), st.none(), st.lists(st.integers(), max_size=2), st.just({})
)
not_integers: st.SearchStrategy[Any] = st.one_of(
    st.text(max_size=5),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda number: not number.is_integer()),
    st.just([]),
)
not_arrays: st.SearchStrategy[Any] = st.one_of(
    st.text(max_size=5), st.integers(), st.booleans(), st.none(), st.just({})
)
WRONG_TYPES = {
    "name": not_strings,
    "description": not_strings,
    "instance_id": not_strings,
    "vault_id": not_strings,
    "backup_id": not_strings,
    "whole_image_type": not_strings,
    "enterprise_project_id": not_strings,
    "tags": not_arrays,
    "image_tags": not_arrays,
    "min_ram": not_integers,
    "max_ram": not_integers,
}


@pytest.mark.slow
@given(valid_bodies())
def test_any_body_that_honours_the_rules_is_valid(body):
    assert problems_of(body) == []


@pytest.mark.slow
@given(valid_bodies(), st.data())
def test_a_field_of_the_wrong_type_is_refused_naming_that_field_only(body, data):
    field = data.draw(st.sampled_from(sorted(body)), label="field")
    body[field] = data.draw(WRONG_TYPES[field], label="wrong value")

    assert {detail["path"] for detail in problems_of(body)} == {f"$.{field}"}
