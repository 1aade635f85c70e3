"""The JSON Schemas of ``schemas/`` and the create-request validation built on them."""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from wholeimage.errors import ConfigurationError, RequestInvalidError
from wholeimage.settings import Settings
from wholeimage.validation import (
    CLOUD_KEYWORD,
    CLOUDS,
    CREATE_REQUEST_SCHEMA,
    DEFAULT_CLOUD,
    validate,
    validator_for,
)

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILES = sorted((ROOT / "schemas").glob("*.json"))
CREATE_DATA = Path(__file__).resolve().parents[1] / "data" / "create"
# valid/*.json is valid on every cloud, valid/<cloud>/*.json on that cloud only; an invalid
# case is refused on the clouds its "clouds" lists (all when it lists none).
VALID_BODIES = sorted((CREATE_DATA / "valid").glob("*.json"))
CLOUD_ONLY_BODIES = {
    cloud: sorted((CREATE_DATA / "valid" / cloud).glob("*.json")) for cloud in CLOUDS
}
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


def problems_of(body: Any, cloud: str = DEFAULT_CLOUD) -> list[dict[str, str]]:
    """The details validate() reports for ``body`` on ``cloud``; an empty list when it is valid."""
    try:
        validate(CREATE_REQUEST_SCHEMA, body, cloud=cloud)
    except RequestInvalidError as error:
        return error.details
    return []


def refusing_clouds(case: dict[str, Any]) -> list[str]:
    return list(case.get("clouds", CLOUDS))


def valid_cases() -> list[Any]:
    """(body file, cloud) for every cloud a valid body is valid on."""
    return [
        pytest.param(path, cloud, id=f"{cloud}:{path.name}")
        for cloud in CLOUDS
        for path in VALID_BODIES + CLOUD_ONLY_BODIES[cloud]
    ]


def invalid_cases() -> list[Any]:
    """(case file, cloud) for every cloud that refuses a case."""
    return [
        pytest.param(path, cloud, id=f"{cloud}:{path.name}")
        for path in INVALID_BODIES
        for cloud in refusing_clouds(load(path))
    ]


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


def test_the_validator_is_built_once_per_cloud_and_then_reused():
    validator_for.cache_clear()

    first = validator_for(CREATE_REQUEST_SCHEMA, "otc")
    second = validator_for(CREATE_REQUEST_SCHEMA, "otc")
    other = validator_for(CREATE_REQUEST_SCHEMA, "huaweicloud")

    assert first is second
    assert other is not first
    assert validator_for.cache_info().misses == 2


def test_the_clouds_are_those_of_the_cloud_setting_with_its_default():
    assert get_args(Settings.model_fields["cloud"].annotation) == CLOUDS
    assert Settings().cloud == DEFAULT_CLOUD


def test_an_unknown_cloud_is_a_configuration_error_not_a_silent_default():
    with pytest.raises(ConfigurationError, match="WHOLEIMAGE_CLOUD"):
        validate(CREATE_REQUEST_SCHEMA, {"name": "x", "instance_id": "i"}, cloud="aws")


# --- every rule says where it comes from -----------------------------------------------------

# Keywords that refuse something; "if" only asks (its branches refuse).
REFUSING = {
    "type", "enum", "const", "minLength", "maxLength", "pattern", "format", "minimum",
    "maximum", "minItems", "maxItems", "uniqueItems", "required", "additionalProperties",
    "not", "anyOf", "oneOf", "x-unique-keys",
}  # fmt: skip
SOURCE = re.compile(r"https://\S+|docs/[\w.-]+\.md §\d+")
SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
SUBSCHEMA_MAPS = ("properties", "dependentSchemas")
SUBSCHEMAS = ("items", "not", "then", "else")


def rules_and_their_descriptions(
    node: Any, where: str, description: str | None
) -> Iterator[tuple[str, str | None]]:
    """(where, the nearest description) of every schema in ``node`` that refuses something.

    A ``$defs`` entry is a schema of its own: it does not inherit the root's description.
    """
    if not isinstance(node, dict):
        return
    description = node.get("description", description)
    if REFUSING & set(node):
        yield where, description
    for keyword in SUBSCHEMA_LISTS:
        for index, child in enumerate(node.get(keyword, [])):
            yield from rules_and_their_descriptions(
                child, f"{where}/{keyword}/{index}", description
            )
    for keyword in SUBSCHEMA_MAPS:
        for name, child in node.get(keyword, {}).items():
            yield from rules_and_their_descriptions(child, f"{where}/{keyword}/{name}", description)
    for keyword in SUBSCHEMAS:
        yield from rules_and_their_descriptions(
            node.get(keyword), f"{where}/{keyword}", description
        )
    for name, child in node.get("$defs", {}).items():
        yield from rules_and_their_descriptions(child, f"{where}/$defs/{name}", None)


CREATE_SCHEMA: dict[str, Any] = json.loads((ROOT / "schemas" / CREATE_REQUEST_SCHEMA).read_text())


def test_every_rule_of_the_create_schema_cites_its_source_in_a_description():
    rules = list(rules_and_their_descriptions(CREATE_SCHEMA, "#", None))

    assert len(rules) > 30
    for where, description in rules:
        assert description is not None, where
        assert SOURCE.search(description), where


def descriptions_in(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("description"), str):
            yield node["description"]
        for child in node.values():
            yield from descriptions_in(child)
    elif isinstance(node, list):
        for child in node:
            yield from descriptions_in(child)


def test_every_source_the_create_schema_cites_is_listed_in_the_ims_notes():
    notes = (ROOT / "docs/ims-api.md").read_text("utf-8")
    cited = " ".join(descriptions_in(CREATE_SCHEMA))
    urls = {url.rstrip(".,;:") for url in re.findall(r"https://[^\s)',]+", cited)}

    assert len(urls) >= 8
    for url in sorted(urls):
        assert url in notes, url


def cloud_conditions(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        if CLOUD_KEYWORD in node:
            yield node[CLOUD_KEYWORD]
        for child in node.values():
            yield from cloud_conditions(child)
    elif isinstance(node, list):
        for child in node:
            yield from cloud_conditions(child)


def test_every_per_cloud_rule_names_a_known_cloud():
    conditions = list(cloud_conditions(CREATE_SCHEMA))

    assert conditions
    assert set(conditions) <= set(CLOUDS)


# --- example bodies ---------------------------------------------------------------------------


def test_there_are_valid_and_invalid_example_bodies_for_each_cloud():
    assert len([path for path in VALID_BODIES if path.name.startswith("seed-")]) == 4
    assert len(INVALID_BODIES) > 40
    for cloud in CLOUDS:
        assert CLOUD_ONLY_BODIES[cloud], cloud
        assert any(cloud in load(path).get("clouds", [cloud]) for path in INVALID_BODIES)


@pytest.mark.parametrize(("path", "cloud"), valid_cases())
def test_a_valid_body_passes_validation(path, cloud):
    validate(CREATE_REQUEST_SCHEMA, load(path), cloud=cloud)


@pytest.mark.parametrize(
    ("path", "cloud"),
    [
        pytest.param(path, other, id=f"{other}:{cloud}/{path.name}")
        for cloud, paths in CLOUD_ONLY_BODIES.items()
        for path in paths
        for other in CLOUDS
        if other != cloud
    ],
)
def test_a_body_valid_on_one_cloud_only_is_refused_on_the_other(path, cloud):
    assert problems_of(load(path), cloud)


@pytest.mark.parametrize(
    ("path", "cloud"),
    [
        pytest.param(path, cloud, id=f"{cloud}:{path.name}")
        for path in INVALID_BODIES
        for cloud in CLOUDS
        if cloud not in refusing_clouds(load(path))
    ],
)
def test_a_case_refused_on_one_cloud_only_is_valid_on_the_other(path, cloud):
    assert problems_of(load(path)["body"], cloud) == []


@pytest.mark.slow
@pytest.mark.parametrize(("path", "cloud"), invalid_cases())
def test_an_invalid_body_is_refused_naming_exactly_the_failing_fields(path, cloud):
    case = load(path)

    with pytest.raises(RequestInvalidError) as raised:
        validate(CREATE_REQUEST_SCHEMA, case["body"], cloud=cloud)

    assert {detail["path"] for detail in raised.value.details} == set(case["errors"])


@pytest.mark.slow
@pytest.mark.parametrize(("path", "cloud"), invalid_cases())
def test_every_detail_has_a_path_and_a_human_message(path, cloud):
    details = problems_of(load(path)["body"], cloud)

    assert details
    for detail in details:
        assert detail["path"].startswith("$")
        assert detail["message"]
        assert not any(text in detail["message"] for text in LIBRARY_TEXT)
        assert len(detail["message"]) < 200


@pytest.mark.slow
@pytest.mark.parametrize(("path", "cloud"), invalid_cases())
def test_the_error_message_counts_the_details(path, cloud):
    with pytest.raises(RequestInvalidError) as raised:
        validate(CREATE_REQUEST_SCHEMA, load(path)["body"], cloud=cloud)

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
        (
            "tags-duplicate-item.json",
            "$.tags[1]",
            "duplicate key 'env': the item at index 0 already uses it",
        ),
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
            "message": "duplicate key 'env': the item at index 0 already uses it",
        }
    ]


def test_a_repeated_tag_key_is_a_tag_updated_on_open_telekom_cloud():
    body = {
        "name": "x",
        "instance_id": "877a2cda-ba63-4e1e-b95f-e67e48b6129a",
        "image_tags": [{"key": "env", "value": "a"}, {"key": "env", "value": "b"}],
    }

    assert problems_of(body, "otc") == []


def test_a_key_check_skips_items_of_the_wrong_shape_which_the_type_rules_report():
    details = problems_of(
        {
            "name": "x",
            "instance_id": "877a2cda-ba63-4e1e-b95f-e67e48b6129a",
            "image_tags": [{"key": 5, "value": "a"}, "env", {"key": 5, "value": "b"}],
            "tags": [3, 3],
        }
    )

    assert "duplicate" not in json.dumps(details)


def test_details_are_sorted_by_path_and_never_repeated():
    details = load(CREATE_DATA / "invalid" / "several-errors-at-once.json")["body"]
    found = problems_of(details)

    keys = [(detail["path"], detail["message"]) for detail in found]
    assert keys == sorted(set(keys))


# --- generated bodies -------------------------------------------------------------------------

ids = st.one_of(
    st.uuids().map(str),
    # No format is documented for the ids (docs/ims-api.md §1.3): any text without a control
    # character, up to 255 characters.
    st.text(st.characters(codec="utf-8", exclude_categories=["Cc"]), min_size=1, max_size=255),
)
uuids = st.uuids().map(str)
CJK = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF)
ASCII_NAME = string.ascii_letters + string.digits + "-._"


def names(cloud: str) -> st.SearchStrategy[str]:
    edge = st.sampled_from(ASCII_NAME)
    if cloud == "huaweicloud":
        edge = st.one_of(edge, CJK)
    return st.one_of(
        edge,
        st.tuples(edge, st.text(st.one_of(edge, st.just(" ")), max_size=126), edge).map("".join),
    )


descriptions = st.text(st.characters(codec="utf-8", exclude_characters="\r<>"), max_size=1024)


def tag_characters(cloud: str) -> st.SearchStrategy[str]:
    plain = st.sampled_from(string.ascii_letters + string.digits + "_-")
    return st.one_of(plain, CJK) if cloud == "huaweicloud" else plain


def tag_lists(cloud: str) -> st.SearchStrategy[list[str]]:
    keys = st.text(tag_characters(cloud), min_size=1, max_size=36)
    value_characters = tag_characters(cloud)
    if cloud == "huaweicloud":
        value_characters = st.one_of(value_characters, st.just("."))
    values = st.text(value_characters, max_size=43)
    tags = st.one_of(keys, st.tuples(keys, values).map(lambda pair: f"{pair[0]}.{pair[1]}"))
    # Open Telekom Cloud takes a key given again as an update (docs/ims-api.md §1.3).
    unique = (lambda tag: tag.partition(".")[0]) if cloud == "huaweicloud" else None
    return st.lists(tags, max_size=9, unique_by=unique)


def spaced(text: str, spaces: tuple[int, int]) -> str:
    return " " * spaces[0] + text + " " * spaces[1]


def image_tag_lists(cloud: str) -> st.SearchStrategy[list[dict[str, str]]]:
    if cloud == "huaweicloud":
        keys = st.text(tag_characters(cloud), min_size=1, max_size=36)
        values = st.text(st.one_of(tag_characters(cloud), st.just(".")), max_size=43)
        tags = st.fixed_dictionaries({"key": keys, "value": values})
        return st.lists(tags, max_size=9, unique_by=lambda tag: tag["key"])
    # Open Telekom Cloud: any characters; IMS strips outer spaces, which are not counted.
    text = st.characters(codec="utf-8", exclude_categories=["Cs"])
    edges = st.tuples(st.integers(0, 3), st.integers(0, 3))
    keys = st.tuples(
        st.text(text, min_size=1, max_size=36).filter(lambda key: key.strip(" ") == key != ""),
        edges,
    ).map(lambda pair: spaced(*pair))
    keys = keys.filter(lambda key: key.strip(" ") != "wholeimage_request")
    values = st.tuples(
        st.text(text, max_size=43).filter(lambda value: value.strip(" ") == value), edges
    ).map(lambda pair: spaced(*pair))
    return st.lists(st.fixed_dictionaries({"key": keys, "value": values}), max_size=9)


sources = st.one_of(
    st.fixed_dictionaries({"instance_id": ids}, optional={"vault_id": ids}),
    st.fixed_dictionaries({"backup_id": ids}, optional={"whole_image_type": st.just("CSBS")}),
    st.fixed_dictionaries({"backup_id": ids, "whole_image_type": st.just("CBR")}),
)


@st.composite
def valid_bodies(draw: st.DrawFn, cloud: str) -> dict[str, Any]:
    body: dict[str, Any] = {"name": draw(names(cloud)), **draw(sources)}
    if draw(st.booleans()):
        body["description"] = draw(descriptions)
    tag_style = draw(st.sampled_from(["none", "tags", "image_tags"]))
    if tag_style == "tags":
        body["tags"] = draw(tag_lists(cloud))
    elif tag_style == "image_tags":
        body["image_tags"] = draw(image_tag_lists(cloud))
    # Any two sizes: that min_ram is not above max_ram is documented nowhere, IMS's to say.
    for field in ("min_ram", "max_ram"):
        if draw(st.booleans()):
            body[field] = draw(st.integers(0, 2**31 - 1))
    if draw(st.booleans()):
        body["enterprise_project_id"] = draw(st.one_of(st.just("0"), uuids))
    return body


clouds_and_bodies = st.sampled_from(CLOUDS).flatmap(
    lambda cloud: st.tuples(st.just(cloud), valid_bodies(cloud))
)


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
@given(clouds_and_bodies)
def test_any_body_that_honours_the_rules_of_its_cloud_is_valid(cloud_and_body):
    cloud, body = cloud_and_body

    assert problems_of(body, cloud) == []


@pytest.mark.slow
@given(clouds_and_bodies, st.data())
def test_a_field_of_the_wrong_type_is_refused_naming_that_field_only(cloud_and_body, data):
    cloud, body = cloud_and_body
    field = data.draw(st.sampled_from(sorted(body)), label="field")
    body[field] = data.draw(WRONG_TYPES[field], label="wrong value")

    assert {detail["path"] for detail in problems_of(body, cloud)} == {f"$.{field}"}
