"""``decode_json``: what parses as JSON but is no text, too deep or too long a number is a 400 with
the JSON path of each bad string, never a 500 later (part of issue 9, item 3)."""

from __future__ import annotations

import json

import pytest

from wholeimage.errors import RequestInvalidError
from wholeimage.jsonbody import MAX_DEPTH, decode_json


def refusal(data: bytes) -> RequestInvalidError:
    with pytest.raises(RequestInvalidError) as raised:
        decode_json(data)
    return raised.value


def test_a_lone_surrogate_is_refused_at_its_path_in_a_value_and_in_a_member_name():
    data = b'{"name": "ok", "description": "\\ud800", "image_tags": [{"key": "k", "value": "\\udfff"}], "\\ud83d": 1}'

    error = refusal(data)

    assert error.http_status == 400
    assert [detail["path"] for detail in error.details] == [
        "$.description",
        "$.image_tags[0].value",
        "$['\\ud83d']",  # spelt as its escape: the answer could not hold the surrogate itself
    ]


def test_a_surrogate_pair_is_text_and_passes():
    assert decode_json(b'{"name": "\\ud83d\\ude00"}') == {"name": "\U0001f600"}


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 990, 5000])
def test_nesting_past_the_limit_is_refused_however_deep(depth):
    error = refusal(b"[" * depth + b"]" * depth)

    assert error.message == "the body nests too deeply"


def test_nesting_up_to_the_limit_passes():
    document = decode_json(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)

    assert json.dumps(document).count("[") == MAX_DEPTH


def test_an_integer_too_long_to_read_is_refused():
    error = refusal(b'{"min_ram": ' + b"9" * 5000 + b"}")

    assert "too long" in error.message


def test_the_many_bad_strings_of_a_hostile_body_are_listed_boundedly():
    data = json.dumps({f"k{i}": "\ud800" for i in range(500)}, ensure_ascii=True).encode()

    error = refusal(data)

    assert 1 <= len(error.details) <= 20
