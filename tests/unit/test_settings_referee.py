"""``load_settings`` reads the environment exactly as pydantic-settings reads it.

wholeimage no longer depends on pydantic-settings at run time (its import cost 50-80 ms of every
cold start); the library is kept as the referee here. ``ReferenceSettings`` is our ``Settings``
class under pydantic-settings' own ``BaseSettings`` with the configuration we used to give it, and
generated environments (variables of every field, in any case, valid and invalid values, JSON
for the channels) must give equal settings, or be refused by both.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import AliasChoices, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from wholeimage.errors import ConfigurationError
from wholeimage.settings import ENV_PREFIX, Settings, load_settings


class ReferenceSettings(Settings, BaseSettings):
    """Our fields and validators, read from the environment by pydantic-settings."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", populate_by_name=True)


# Built apart from the loader under test: every field's prefixed name, and every alias it declares.
VARIABLES = sorted(
    {ENV_PREFIX + field.upper() for field in Settings.model_fields}
    | {
        str(choice)
        for info in Settings.model_fields.values()
        for choice in (
            info.validation_alias.choices
            if isinstance(info.validation_alias, AliasChoices)
            else [info.validation_alias]
            if info.validation_alias
            else []
        )
    }
)
SLACK = "https://hooks.slack.com/services/T0/B0/XXXX"
VALUES = [
    "",
    "x",
    "eu-de",
    "ap-southeast-3",
    "otc",
    "huaweicloud",
    "aws",
    "0",
    "1.5",
    "-3",
    "30",
    "600",
    "true",
    "false",
    "yes",
    "off",
    "INFO",
    "debug",
    "sqlite:///state.db",
    "postgresql://db/wholeimage",
    "0123456789abcdef0123456789abcdef",
    "https://ims.eu-de.otc.t-systems.com",
    SLACK,
    "slack",
    "teams",
    "all",
    "failures",
    "SUCCESS,FAIL",
    "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
    "[]",
    "{}",
    "not json",
    "null",
    f'[{{"name": "ops", "url": "{SLACK}"}}]',
    f'[{{"name": "ops", "url": "{SLACK}", "on": "failures"}}, {{"name": "Bad Name", "url": "x"}}]',
]
OURS = ("WHOLEIMAGE_", "HUAWEICLOUD_SDK_", "GOOGLE_CLOUD_PROJECT")


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` holding our variables from ``values`` only, for pydantic-settings to read."""
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.upper().startswith(OURS):
            del os.environ[name]
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def by_both(values: dict[str, str]) -> tuple[Settings | None, ReferenceSettings | None]:
    try:
        ours: Settings | None = load_settings(values)
    except ConfigurationError:
        ours = None
    with environment(values):
        try:
            theirs: ReferenceSettings | None = ReferenceSettings()
        except (ValidationError, SettingsError):
            theirs = None
    return ours, theirs


environments = st.dictionaries(
    st.sampled_from(VARIABLES).flatmap(lambda name: st.sampled_from([name, name.lower()])),
    st.sampled_from(VALUES),
    max_size=8,
)


@given(environments)
def test_any_environment_gives_the_settings_pydantic_settings_gives(values):
    ours, theirs = by_both(values)

    assert (ours is None) == (theirs is None), (values, ours, theirs)
    if ours is not None and theirs is not None:
        assert ours.model_dump() == theirs.model_dump()


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({}, id="nothing-set"),
        pytest.param({"WHOLEIMAGE_REGION": "eu-de", "WHOLEIMAGE_CLOUD": "otc"}, id="prefixed"),
        pytest.param({"HUAWEICLOUD_SDK_PROJECT_ID": "abc123"}, id="second-variable-of-a-field"),
        pytest.param(
            {"WHOLEIMAGE_PROJECT_ID": "first1", "HUAWEICLOUD_SDK_PROJECT_ID": "second2"},
            id="first-variable-wins",
        ),
        pytest.param({"wholeimage_check_concurrency": "4"}, id="lower-case-name"),
        pytest.param({"WHOLEIMAGE_CHANNELS": f'[{{"name": "ops", "url": "{SLACK}"}}]'}, id="json"),
        pytest.param({"WHOLEIMAGE_CHANNELS": "null"}, id="json-null"),
        pytest.param(
            {"WHOLEIMAGE_ACCESS_KEY": "AK", "WHOLEIMAGE_SECRET_KEY": "SK"}, id="field-name-fallback"
        ),
        pytest.param(
            {"HUAWEICLOUD_SDK_AK": "official", "WHOLEIMAGE_ACCESS_KEY": "fallback"},
            id="documented-name-before-fallback",
        ),
    ],
)
def test_the_documented_shapes_agree(values):
    ours, theirs = by_both(values)

    assert ours is not None
    assert theirs is not None
    assert ours.model_dump() == theirs.model_dump()


def test_the_referee_can_disagree_with_a_wrong_reading():
    # A reading that ignored the second variable of a field would be caught: the reference
    # finds the project id where a wrong loader would not.
    _, theirs = by_both({"HUAWEICLOUD_SDK_PROJECT_ID": "abc123"})
    assert theirs is not None
    assert theirs.project_id == "abc123"
    assert load_settings({"HUAWEICLOUD_SDK_PROJECT_ID": "abc123"}).project_id == "abc123"
    assert Settings().project_id is None
