"""Settings from the environment, endpoint resolution, and which IMS client the settings build.

The environment is set with ``monkeypatch.setenv``; ``tests/conftest.py`` clears every
``WHOLEIMAGE_*`` and ``HUAWEICLOUD_SDK_*`` variable before each test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakes import build_ims_client, make_settings
from wholeimage.errors import ConfigurationError
from wholeimage.ims.auth import AkSkAuth, IamPasswordAuth, StaticTokenAuth
from wholeimage.ims.client import HttpImsClient, RetryPolicy
from wholeimage.ims.endpoints import Endpoints, resolve_endpoints
from wholeimage.settings import DEFAULT_STATE_URL, get_settings, load_settings

PROJECT_ID = "0123456789abcdef0123456789abcdef"
ACCESS_KEY = "AKEXAMPLE0000000000"
SECRET_KEY = "SKsecret-never-shown-0000000000000000000"
SECURITY_TOKEN = "STStoken-never-shown-000000000000"
AUTH_TOKEN = "MIIstatic-token-never-shown-0000"
PASSWORD = "hunter2-never-shown"
API_TOKEN = "caller-token-never-shown"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def fresh_settings_cache() -> Iterator[None]:
    """``get_settings`` caches per process: each test starts and ends with an empty cache."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def set_env(monkeypatch: pytest.MonkeyPatch, **variables: str) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


# ---------------------------------------------------------------------------------------------
# Reading the environment
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "attribute"),
    [
        ("WHOLEIMAGE_REGION", "eu-de", "region"),
        ("WHOLEIMAGE_CLOUD", "otc", "cloud"),
        ("WHOLEIMAGE_IMS_ENDPOINT", "https://ims.example.test", "ims_endpoint"),
        ("WHOLEIMAGE_IAM_ENDPOINT", "https://iam.example.test", "iam_endpoint"),
        ("WHOLEIMAGE_PROJECT_ID", PROJECT_ID, "project_id"),
        ("HUAWEICLOUD_SDK_PROJECT_ID", PROJECT_ID, "project_id"),
        ("WHOLEIMAGE_IAM_USER", "image-bot", "iam_user"),
        ("WHOLEIMAGE_IAM_DOMAIN", "acme-domain", "iam_domain"),
        ("WHOLEIMAGE_STATE_URL", "postgresql://db.internal/wholeimage", "state_url"),
        ("WHOLEIMAGE_LOG_LEVEL", "DEBUG", "log_level"),
    ],
)
def test_a_plain_setting_is_read_from_its_environment_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, attribute: str
) -> None:
    monkeypatch.setenv(variable, value)

    assert getattr(load_settings(), attribute) == value


@pytest.mark.parametrize(
    ("variable", "attribute"),
    [
        ("HUAWEICLOUD_SDK_AK", "access_key"),
        ("HUAWEICLOUD_SDK_SK", "secret_key"),
        ("HUAWEICLOUD_SDK_SECURITY_TOKEN", "security_token"),
        ("WHOLEIMAGE_AUTH_TOKEN", "auth_token"),
        ("WHOLEIMAGE_IAM_PASSWORD", "iam_password"),
        ("WHOLEIMAGE_API_TOKEN", "api_token"),
    ],
)
def test_a_secret_is_read_from_its_environment_variable_and_hidden_in_repr(
    monkeypatch: pytest.MonkeyPatch, variable: str, attribute: str
) -> None:
    monkeypatch.setenv(variable, "s3cret-value")

    settings = load_settings()

    assert getattr(settings, attribute).get_secret_value() == "s3cret-value"
    assert "s3cret-value" not in repr(settings)
    assert "s3cret-value" not in str(settings)


@pytest.mark.parametrize(
    ("variable", "value", "attribute", "expected"),
    [
        ("WHOLEIMAGE_IMS_TIMEOUT", "12.5", "ims_timeout", 12.5),
        ("WHOLEIMAGE_IMS_MAX_ATTEMPTS", "6", "ims_max_attempts", 6),
        ("WHOLEIMAGE_IMS_RETRY_BUDGET", "0", "ims_retry_budget", 0.0),
    ],
)
def test_numeric_settings_are_parsed(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, attribute: str, expected: float
) -> None:
    monkeypatch.setenv(variable, value)

    assert getattr(load_settings(), attribute) == expected


def test_nothing_configured_gives_the_documented_defaults() -> None:
    settings = load_settings()

    assert settings.cloud == "huaweicloud"
    assert settings.region is None
    assert settings.project_id is None
    assert settings.state_url == DEFAULT_STATE_URL
    assert settings.ims_timeout == 30.0
    assert settings.ims_max_attempts == 4
    assert settings.ims_retry_budget == 20.0
    assert settings.log_level == "INFO"
    assert settings.secret_values() == []


def test_the_wholeimage_project_id_wins_over_the_sdk_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(
        monkeypatch,
        WHOLEIMAGE_PROJECT_ID=PROJECT_ID,
        HUAWEICLOUD_SDK_PROJECT_ID="fedcba9876543210fedcba9876543210",
    )

    assert load_settings().project_id == PROJECT_ID


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("WHOLEIMAGE_STATE_URL", "mysql://admin:pw-in-url-0000@db.internal/wholeimage"),
        ("WHOLEIMAGE_STATE_URL", "postgresq://admin:pw-in-url-0000@db.internal/x"),
        ("WHOLEIMAGE_CLOUD", "aws-pw-in-url-0000"),
        ("WHOLEIMAGE_IMS_TIMEOUT", "-1"),
        ("WHOLEIMAGE_IMS_TIMEOUT", "pw-in-url-0000"),
        ("WHOLEIMAGE_IMS_MAX_ATTEMPTS", "0"),
        ("WHOLEIMAGE_IMS_MAX_ATTEMPTS", "11"),
        ("WHOLEIMAGE_IMS_RETRY_BUDGET", "-3"),
        ("WHOLEIMAGE_PROJECT_ID", "0123456789abcdef/../pw-in-url-0000"),
        ("HUAWEICLOUD_SDK_PROJECT_ID", "0123456789abcdef/pw-in-url-0000"),
        ("WHOLEIMAGE_PROJECT_ID", "x" * 65),
        ("WHOLEIMAGE_REGION", "eu-de/pw-in-url-0000"),
        ("WHOLEIMAGE_LOG_LEVEL", "LOUD"),
    ],
)
def test_a_malformed_value_is_a_configuration_error_naming_the_variable_but_not_the_value(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    # Given
    monkeypatch.setenv(variable, value)

    # When
    with pytest.raises(ConfigurationError) as raised:
        load_settings()

    # Then
    error = raised.value
    assert variable in error.message
    assert value not in error.message
    assert value not in str(error.body())
    # The pydantic error (whose "input" holds the value) is not chained for a traceback to show.
    assert error.__cause__ is None
    assert error.__suppress_context__ is True
    assert error.http_status == 500
    assert error.body()["error"]["code"] == "misconfigured"


def test_a_malformed_project_id_names_both_of_its_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HUAWEICLOUD_SDK_PROJECT_ID", "abc/def")

    with pytest.raises(ConfigurationError) as raised:
        load_settings()

    assert "WHOLEIMAGE_PROJECT_ID or HUAWEICLOUD_SDK_PROJECT_ID" in raised.value.message


def test_every_malformed_variable_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, WHOLEIMAGE_CLOUD="aws", WHOLEIMAGE_STATE_URL="mysql://x")

    with pytest.raises(ConfigurationError) as raised:
        load_settings()

    assert "WHOLEIMAGE_CLOUD" in raised.value.message
    assert "WHOLEIMAGE_STATE_URL" in raised.value.message


def test_get_settings_reads_the_environment_at_its_first_call_and_then_keeps_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the module has long been imported, the environment is set only now
    monkeypatch.setenv("WHOLEIMAGE_REGION", "eu-de")

    # When
    first = get_settings()
    monkeypatch.setenv("WHOLEIMAGE_REGION", "eu-nl")

    # Then
    assert first.region == "eu-de"
    assert get_settings() is first


def test_get_settings_raises_a_configuration_error_at_first_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WHOLEIMAGE_CLOUD", "aws")

    with pytest.raises(ConfigurationError, match="WHOLEIMAGE_CLOUD"):
        get_settings()


@pytest.mark.slow
def test_importing_the_modules_reads_no_settings() -> None:
    # Given a fresh interpreter whose environment is malformed at import time
    program = (
        "import os\n"
        "import wholeimage.bootstrap, wholeimage.settings, wholeimage.ims.client\n"
        "os.environ['WHOLEIMAGE_CLOUD'] = 'otc'\n"
        "print(wholeimage.settings.get_settings().cloud)\n"
    )
    env = {**os.environ, "WHOLEIMAGE_CLOUD": "aws", "PYTHONPATH": str(REPO / "functions")}

    # When
    finished = subprocess.run(
        [sys.executable, "-c", program],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )

    # Then importing did not fail, and the first call saw the environment as it was then
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == "otc"


def test_secret_values_lists_every_configured_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(
        monkeypatch,
        HUAWEICLOUD_SDK_AK=ACCESS_KEY,
        HUAWEICLOUD_SDK_SK=SECRET_KEY,
        HUAWEICLOUD_SDK_SECURITY_TOKEN=SECURITY_TOKEN,
        WHOLEIMAGE_AUTH_TOKEN=AUTH_TOKEN,
        WHOLEIMAGE_IAM_USER="image-bot",
        WHOLEIMAGE_IAM_PASSWORD=PASSWORD,
        WHOLEIMAGE_API_TOKEN=API_TOKEN,
        WHOLEIMAGE_PROJECT_ID=PROJECT_ID,
    )

    assert sorted(load_settings().secret_values()) == sorted(
        [ACCESS_KEY, SECRET_KEY, SECURITY_TOKEN, AUTH_TOKEN, PASSWORD, API_TOKEN]
    )


def test_secret_values_leaves_out_empty_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, WHOLEIMAGE_API_TOKEN="", WHOLEIMAGE_AUTH_TOKEN=AUTH_TOKEN)

    assert load_settings().secret_values() == [AUTH_TOKEN]


# ---------------------------------------------------------------------------------------------
# Endpoints
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("region", ["eu-west-101", "ap-southeast-1", "cn-north-4", "la-south-2"])
def test_a_huawei_cloud_region_gives_its_ims_and_iam_hosts(region: str) -> None:
    assert resolve_endpoints(cloud="huaweicloud", region=region) == Endpoints(
        ims=f"https://ims.{region}.myhuaweicloud.com",
        iam=f"https://iam.{region}.myhuaweicloud.com",
    )


@pytest.mark.parametrize(
    ("region", "ims", "iam"),
    [
        ("eu-de", "https://ims.eu-de.otc.t-systems.com", "https://iam.eu-de.otc.t-systems.com"),
        ("eu-nl", "https://ims.eu-nl.otc.t-systems.com", "https://iam.eu-nl.otc.t-systems.com"),
        (
            "eu-ch2",
            "https://ims.eu-ch2.sc.otc.t-systems.com",
            "https://iam-pub.eu-ch2.sc.otc.t-systems.com",
        ),
    ],
)
def test_an_open_telekom_cloud_region_gives_its_ims_and_iam_hosts(
    region: str, ims: str, iam: str
) -> None:
    assert resolve_endpoints(cloud="otc", region=region) == Endpoints(ims=ims, iam=iam)


def test_explicit_endpoints_win_over_the_region() -> None:
    endpoints = resolve_endpoints(
        cloud="otc",
        region="eu-de",
        ims_endpoint="https://ims.proxy.test",
        iam_endpoint="https://iam.proxy.test",
    )

    assert endpoints == Endpoints(ims="https://ims.proxy.test", iam="https://iam.proxy.test")


def test_an_explicit_ims_endpoint_keeps_the_iam_endpoint_derived_from_the_region() -> None:
    endpoints = resolve_endpoints(
        cloud="otc", region="eu-nl", ims_endpoint="https://ims.proxy.test"
    )

    assert endpoints == Endpoints(
        ims="https://ims.proxy.test", iam="https://iam.eu-nl.otc.t-systems.com"
    )


def test_an_explicit_ims_endpoint_alone_needs_no_region() -> None:
    assert resolve_endpoints(
        cloud="huaweicloud", region=None, ims_endpoint="http://localhost:8080"
    ) == Endpoints(ims="http://localhost:8080", iam=None)


def test_an_explicit_ims_endpoint_wins_even_for_an_otc_region_not_in_the_table() -> None:
    # Given the advice of the error below: an endpoint set for a region not (yet) known
    endpoints = resolve_endpoints(
        cloud="otc",
        region="eu-ch3",
        ims_endpoint="https://ims.eu-ch3.otc.test",
        iam_endpoint="https://iam.eu-ch3.otc.test",
    )

    assert endpoints == Endpoints(
        ims="https://ims.eu-ch3.otc.test", iam="https://iam.eu-ch3.otc.test"
    )


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://iam.eu-de.otc.t-systems.com/v3", "https://iam.eu-de.otc.t-systems.com"),
        ("https://iam.eu-de.otc.t-systems.com/v3/", "https://iam.eu-de.otc.t-systems.com"),
        ("https://iam.eu-de.otc.t-systems.com/", "https://iam.eu-de.otc.t-systems.com"),
        ("https://iam.eu-de.otc.t-systems.com", "https://iam.eu-de.otc.t-systems.com"),
    ],
)
def test_a_trailing_slash_and_v3_are_stripped_from_explicit_endpoints(
    given: str, expected: str
) -> None:
    endpoints = resolve_endpoints(
        cloud="otc", region=None, ims_endpoint=given.replace("iam.", "ims."), iam_endpoint=given
    )

    assert endpoints == Endpoints(ims=expected.replace("iam.", "ims."), iam=expected)


def test_an_unknown_otc_region_without_an_endpoint_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as raised:
        resolve_endpoints(cloud="otc", region="eu-fr")

    assert "WHOLEIMAGE_REGION" in raised.value.message
    assert "WHOLEIMAGE_IMS_ENDPOINT" in raised.value.message
    assert "eu-de" in raised.value.message


@pytest.mark.parametrize("cloud", ["huaweicloud", "otc"])
def test_neither_region_nor_endpoint_is_a_configuration_error_naming_both(cloud: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        resolve_endpoints(cloud=cloud, region=None)

    assert "WHOLEIMAGE_REGION" in raised.value.message
    assert "WHOLEIMAGE_IMS_ENDPOINT" in raised.value.message


def test_an_ims_endpoint_that_is_not_an_http_url_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="WHOLEIMAGE_IMS_ENDPOINT"):
        resolve_endpoints(cloud="otc", region=None, ims_endpoint="ims.eu-de.otc.t-systems.com")


def test_an_unknown_cloud_is_a_configuration_error_naming_wholeimage_cloud() -> None:
    with pytest.raises(ConfigurationError, match="WHOLEIMAGE_CLOUD"):
        resolve_endpoints(cloud="aws", region="eu-de")


# ---------------------------------------------------------------------------------------------
# build_ims_client: which credentials are used
# ---------------------------------------------------------------------------------------------


def built_client(monkeypatch: pytest.MonkeyPatch, **variables: str) -> HttpImsClient:
    """The client ``build_ims_client`` makes from these variables (plus region and project)."""
    defaults = {"WHOLEIMAGE_CLOUD": "otc", "WHOLEIMAGE_REGION": "eu-de"}
    defaults["WHOLEIMAGE_PROJECT_ID"] = PROJECT_ID
    set_env(monkeypatch, **{**defaults, **variables})
    client = build_ims_client(load_settings())
    assert isinstance(client, HttpImsClient)
    client._http.close()  # nothing is sent: the tests only look at how it is made
    return client


def first_request_of(auth: httpx.Auth) -> httpx.Request:
    """The request an auth flow sends first for a small POST (no network involved)."""
    request = httpx.Request("POST", "https://ims.eu-de.otc.t-systems.com/x", content=b"{}")
    return next(auth.sync_auth_flow(request))


def test_aksk_variables_build_an_aksk_signing_client(monkeypatch: pytest.MonkeyPatch) -> None:
    client = built_client(monkeypatch, HUAWEICLOUD_SDK_AK=ACCESS_KEY, HUAWEICLOUD_SDK_SK=SECRET_KEY)

    auth = client._http.auth
    assert isinstance(auth, AkSkAuth)
    assert str(client._http.base_url) == "https://ims.eu-de.otc.t-systems.com"
    signed = first_request_of(auth)
    assert f"Access={ACCESS_KEY}," in signed.headers["Authorization"]
    assert signed.headers["X-Project-Id"] == PROJECT_ID
    assert "X-Security-Token" not in signed.headers


def test_a_security_token_makes_the_aksk_client_send_it(monkeypatch: pytest.MonkeyPatch) -> None:
    client = built_client(
        monkeypatch,
        HUAWEICLOUD_SDK_AK=ACCESS_KEY,
        HUAWEICLOUD_SDK_SK=SECRET_KEY,
        HUAWEICLOUD_SDK_SECURITY_TOKEN=SECURITY_TOKEN,
    )

    auth = client._http.auth
    assert isinstance(auth, AkSkAuth)
    assert first_request_of(auth).headers["X-Security-Token"] == SECURITY_TOKEN


def test_aksk_wins_when_a_token_is_configured_too(monkeypatch: pytest.MonkeyPatch) -> None:
    client = built_client(
        monkeypatch,
        HUAWEICLOUD_SDK_AK=ACCESS_KEY,
        HUAWEICLOUD_SDK_SK=SECRET_KEY,
        WHOLEIMAGE_AUTH_TOKEN=AUTH_TOKEN,
    )

    assert isinstance(client._http.auth, AkSkAuth)


def test_an_auth_token_builds_a_static_token_client(monkeypatch: pytest.MonkeyPatch) -> None:
    client = built_client(monkeypatch, WHOLEIMAGE_AUTH_TOKEN=AUTH_TOKEN)

    auth = client._http.auth
    assert isinstance(auth, StaticTokenAuth)
    assert first_request_of(auth).headers["X-Auth-Token"] == AUTH_TOKEN


def test_iam_user_password_and_domain_build_an_iam_password_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = built_client(
        monkeypatch,
        WHOLEIMAGE_REGION="eu-ch2",
        WHOLEIMAGE_IAM_USER="image-bot",
        WHOLEIMAGE_IAM_PASSWORD=PASSWORD,
        WHOLEIMAGE_IAM_DOMAIN="acme-domain",
    )

    auth = client._http.auth
    assert isinstance(auth, IamPasswordAuth)
    assert auth.iam_endpoint == "https://iam-pub.eu-ch2.sc.otc.t-systems.com"
    assert (auth.user, auth.password, auth.domain) == ("image-bot", PASSWORD, "acme-domain")
    assert auth.project_id == PROJECT_ID
    assert str(client._http.base_url) == "https://ims.eu-ch2.sc.otc.t-systems.com"


def test_the_client_takes_its_timeout_and_retry_policy_from_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = built_client(
        monkeypatch,
        WHOLEIMAGE_AUTH_TOKEN=AUTH_TOKEN,
        WHOLEIMAGE_IMS_TIMEOUT="5",
        WHOLEIMAGE_IMS_MAX_ATTEMPTS="2",
        WHOLEIMAGE_IMS_RETRY_BUDGET="7",
    )

    assert client._http.timeout == httpx.Timeout(5.0, connect=5.0)
    assert client._retry == RetryPolicy(max_attempts=2, budget=7.0)


def test_no_credentials_is_a_configuration_error_naming_every_way_to_give_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_env(monkeypatch, WHOLEIMAGE_REGION="eu-de", WHOLEIMAGE_PROJECT_ID=PROJECT_ID)

    with pytest.raises(ConfigurationError) as raised:
        build_ims_client(load_settings())

    message = raised.value.message
    for variable in (
        "HUAWEICLOUD_SDK_AK",
        "HUAWEICLOUD_SDK_SK",
        "WHOLEIMAGE_AUTH_TOKEN",
        "WHOLEIMAGE_IAM_USER",
        "WHOLEIMAGE_IAM_PASSWORD",
        "WHOLEIMAGE_IAM_DOMAIN",
    ):
        assert variable in message


def test_an_incomplete_iam_login_counts_as_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(
        monkeypatch,
        WHOLEIMAGE_REGION="eu-de",
        WHOLEIMAGE_PROJECT_ID=PROJECT_ID,
        WHOLEIMAGE_IAM_USER="image-bot",
        WHOLEIMAGE_IAM_PASSWORD=PASSWORD,
    )

    with pytest.raises(ConfigurationError, match="WHOLEIMAGE_IAM_DOMAIN") as raised:
        build_ims_client(load_settings())

    assert PASSWORD not in str(raised.value)


@pytest.mark.parametrize(
    "half",
    [{"HUAWEICLOUD_SDK_AK": ACCESS_KEY}, {"HUAWEICLOUD_SDK_SK": SECRET_KEY}],
    ids=["only-ak", "only-sk"],
)
def test_half_an_aksk_pair_is_a_configuration_error_naming_both_variables(
    monkeypatch: pytest.MonkeyPatch, half: dict[str, str]
) -> None:
    set_env(monkeypatch, WHOLEIMAGE_REGION="eu-de", WHOLEIMAGE_PROJECT_ID=PROJECT_ID, **half)

    with pytest.raises(ConfigurationError) as raised:
        build_ims_client(load_settings())

    assert "HUAWEICLOUD_SDK_AK" in raised.value.message
    assert "HUAWEICLOUD_SDK_SK" in raised.value.message
    assert SECRET_KEY not in str(raised.value)
    assert ACCESS_KEY not in str(raised.value)


def test_empty_aksk_variables_count_as_not_set(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a deployment template that leaves the AK/SK variables empty and uses a token
    client = built_client(
        monkeypatch,
        HUAWEICLOUD_SDK_AK="",
        HUAWEICLOUD_SDK_SK="",
        WHOLEIMAGE_AUTH_TOKEN=AUTH_TOKEN,
    )

    assert isinstance(client._http.auth, StaticTokenAuth)


def test_empty_credential_variables_are_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(
        monkeypatch,
        WHOLEIMAGE_REGION="eu-de",
        WHOLEIMAGE_PROJECT_ID=PROJECT_ID,
        HUAWEICLOUD_SDK_AK="",
        HUAWEICLOUD_SDK_SK="",
        WHOLEIMAGE_AUTH_TOKEN="",
    )

    with pytest.raises(ConfigurationError, match="no IMS credentials"):
        build_ims_client(load_settings())


def test_a_missing_project_id_is_a_configuration_error_naming_both_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_env(
        monkeypatch,
        WHOLEIMAGE_REGION="eu-de",
        HUAWEICLOUD_SDK_AK=ACCESS_KEY,
        HUAWEICLOUD_SDK_SK=SECRET_KEY,
    )

    with pytest.raises(ConfigurationError) as raised:
        build_ims_client(load_settings())

    assert "WHOLEIMAGE_PROJECT_ID" in raised.value.message
    assert "HUAWEICLOUD_SDK_PROJECT_ID" in raised.value.message


def test_a_missing_endpoint_is_a_configuration_error_before_credentials_are_looked_at() -> None:
    with pytest.raises(ConfigurationError, match="WHOLEIMAGE_IMS_ENDPOINT"):
        build_ims_client(make_settings(auth_token=AUTH_TOKEN))


def test_an_iam_login_without_an_iam_endpoint_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_env(
        monkeypatch,
        WHOLEIMAGE_IMS_ENDPOINT="https://ims.proxy.test",
        WHOLEIMAGE_PROJECT_ID=PROJECT_ID,
        WHOLEIMAGE_IAM_USER="image-bot",
        WHOLEIMAGE_IAM_PASSWORD=PASSWORD,
        WHOLEIMAGE_IAM_DOMAIN="acme-domain",
    )

    with pytest.raises(ConfigurationError) as raised:
        build_ims_client(load_settings())

    assert "WHOLEIMAGE_IAM_ENDPOINT" in raised.value.message
    assert PASSWORD not in str(raised.value)


@pytest.mark.parametrize(
    ("window", "valid"),
    [("739", False), ("740", True)],  # 600 s after, 30 s x 4 attempts + 20 s of waits
)
def test_the_reconcile_window_must_outlast_the_wait_and_the_longest_create_call(
    monkeypatch: pytest.MonkeyPatch, window: str, valid: bool
) -> None:
    # Inside a shorter window a live create call could still reach IMS after "no image" had
    # ended its job UNCONFIRMED and freed its backup.
    set_env(monkeypatch, WHOLEIMAGE_RECONCILE_AFTER="600", WHOLEIMAGE_RECONCILE_WINDOW=window)

    if valid:
        assert load_settings().reconcile_window == float(window)
        return
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert "WHOLEIMAGE_RECONCILE_WINDOW" in raised.value.message
