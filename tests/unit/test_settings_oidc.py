"""The OIDC settings of callers: ``WHOLEIMAGE_OIDC_AUDIENCE`` and
``WHOLEIMAGE_OIDC_SERVICE_ACCOUNTS``, comma lists that go together (docs/platforms.md §2)."""

from __future__ import annotations

import pytest

from wholeimage.errors import ConfigurationError
from wholeimage.settings import load_settings

AUDIENCE = "https://wholeimage-check-abc123-ew.a.run.app"
SCHEDULER = "wholeimage-scheduler@my-project.iam.gserviceaccount.com"
PUSHER = "wholeimage-push@my-project.iam.gserviceaccount.com"


def test_without_them_no_id_token_is_accepted():
    settings = load_settings({})

    assert not settings.oidc_configured
    assert settings.oidc_audiences() == frozenset()
    assert settings.oidc_allowed_accounts() == frozenset()


def test_both_are_read_as_comma_lists_the_accounts_in_lower_case():
    settings = load_settings(
        {
            "WHOLEIMAGE_OIDC_AUDIENCE": f" {AUDIENCE} , https://check.example.com,",
            "WHOLEIMAGE_OIDC_SERVICE_ACCOUNTS": f"{SCHEDULER.upper()}, {PUSHER}",
        }
    )

    assert settings.oidc_configured
    assert settings.oidc_audiences() == {AUDIENCE, "https://check.example.com"}
    assert settings.oidc_allowed_accounts() == {SCHEDULER, PUSHER}


@pytest.mark.parametrize(
    "environ",
    [
        {"WHOLEIMAGE_OIDC_AUDIENCE": AUDIENCE},
        {"WHOLEIMAGE_OIDC_SERVICE_ACCOUNTS": SCHEDULER},
        {"WHOLEIMAGE_OIDC_AUDIENCE": AUDIENCE, "WHOLEIMAGE_OIDC_SERVICE_ACCOUNTS": " , "},
    ],
    ids=["audience-alone", "accounts-alone", "accounts-empty"],
)
def test_one_without_the_other_is_a_configuration_error_naming_both(environ):
    with pytest.raises(ConfigurationError) as caught:
        load_settings(environ)

    assert "WHOLEIMAGE_OIDC_AUDIENCE" in caught.value.message
    assert "WHOLEIMAGE_OIDC_SERVICE_ACCOUNTS" in caught.value.message


@pytest.mark.parametrize("accounts", ["scheduler", "a@", "@b", "a b@c", "a@b\x00"])
def test_an_account_that_is_no_e_mail_address_is_a_configuration_error(accounts):
    with pytest.raises(ConfigurationError, match="WHOLEIMAGE_OIDC_SERVICE_ACCOUNTS"):
        load_settings(
            {"WHOLEIMAGE_OIDC_AUDIENCE": AUDIENCE, "WHOLEIMAGE_OIDC_SERVICE_ACCOUNTS": accounts}
        )


def test_empty_variables_count_as_not_set():
    settings = load_settings(
        {"WHOLEIMAGE_OIDC_AUDIENCE": "", "WHOLEIMAGE_OIDC_SERVICE_ACCOUNTS": ""}
    )

    assert not settings.oidc_configured
