"""All settings, from the environment, in one pydantic class read lazily.

``get_settings()`` builds them on first use and keeps them for the process; nothing reads the
environment at import time. A missing or malformed value fails with a ``ConfigurationError``
naming the environment variable.

The environment is read as pydantic-settings would read it (``WHOLEIMAGE_`` + the field name, or
the field's own variable names in order, case-insensitively; JSON for ``WHOLEIMAGE_CHANNELS``),
by ``environment_values``: pydantic-settings itself cost 50-80 ms of every cold start
(docs/performance.md §2.1), and it stays the referee in tests/unit/test_settings_referee.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from functools import cache
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

# Only channel modules without third-party imports: the create function loads settings, and
# must not load a chat service, httpx or the registry.
from wholeimage.channels.formats import WHSEC_PREFIX, ChannelFormat
from wholeimage.channels.sinks import is_local_sink
from wholeimage.channels.urls import OFFICE_CONNECTOR_RETIRED, guess_format, is_office_connector
from wholeimage.errors import ConfigurationError
from wholeimage.results import VERDICTS, Channel, Verdict

DEFAULT_STATE_URL = "sqlite:///wholeimage.db"

_CHANNEL_NAME = r"^[a-z0-9][a-z0-9_-]{0,39}$"
# The named filters of a channel's "on"; otherwise it lists verdicts.
_NAMED_FILTERS: dict[str, frozenset[str]] = {
    "all": frozenset(VERDICTS),
    "failures": frozenset({"FAIL", "TIMED_OUT", "UNCONFIRMED"}),
}


def _check_channel_url(name: str, url: str, variable: str) -> None:
    # Local sinks for development; otherwise HTTPS, with plain HTTP only to this machine.
    if is_local_sink(url):
        return
    parts = urlsplit(url)
    local = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and local):
        raise ConfigurationError(
            f"{variable}: channel {name!r} needs an https:// URL (or console:, file:PATH)"
        )
    if is_office_connector(url):
        raise ConfigurationError(f"{variable}: channel {name!r} is {OFFICE_CONNECTOR_RETIRED}")


class ChannelSetting(BaseModel):
    """One named channel of ``WHOLEIMAGE_CHANNELS`` (a JSON list of these)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_CHANNEL_NAME)
    url: SecretStr
    format: ChannelFormat | None = None
    secret: SecretStr | None = None
    on: list[Verdict] | Literal["all", "failures"] = "all"
    keyword: str | None = Field(default=None, max_length=64)

    def to_channel(self) -> Channel:
        """The channel this entry configures.

        Raises:
            ConfigurationError: its URL is not acceptable.
        """
        url = self.url.get_secret_value()
        _check_channel_url(self.name, url, "WHOLEIMAGE_CHANNELS")
        return Channel(
            name=self.name,
            format=self.format or guess_format(url),
            url=self.url,
            secret=self.secret,
            on=_NAMED_FILTERS[self.on] if isinstance(self.on, str) else frozenset(self.on),
            keyword=self.keyword,
        )


def _webhook_filter(value: str) -> frozenset[str]:
    """``WHOLEIMAGE_WEBHOOK_ON``: ``all``, ``failures`` or a comma list of verdicts."""
    value = value.strip()
    if value in _NAMED_FILTERS:
        return _NAMED_FILTERS[value]
    verdicts = frozenset(part.strip() for part in value.split(","))
    if not verdicts <= _NAMED_FILTERS["all"]:
        raise ConfigurationError(
            "WHOLEIMAGE_WEBHOOK_ON must be all, failures, or a comma list of SUCCESS, FAIL, "
            "TIMED_OUT, UNCONFIRMED"
        )
    return verdicts


ENV_PREFIX = "WHOLEIMAGE_"


def _comma_set(value: str | None) -> frozenset[str]:
    """The non-empty items of a comma list, stripped."""
    return frozenset(part.strip() for part in (value or "").split(",") if part.strip())


class Settings(BaseModel):
    """wholeimage's settings; the README has the table of variables.

    ``Settings(field=value, ...)`` builds them from arguments alone (tests); ``load_settings``
    from the environment.
    """

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    # Where IMS is.
    ims_endpoint: str | None = None
    region: str | None = None
    cloud: Literal["huaweicloud", "otc"] = "huaweicloud"
    iam_endpoint: str | None = None
    project_id: str | None = Field(
        default=None,
        validation_alias=AliasChoices("WHOLEIMAGE_PROJECT_ID", "HUAWEICLOUD_SDK_PROJECT_ID"),
    )

    # How we authenticate to IMS: AK/SK (the official SDK's variable names), a token, or IAM.
    access_key: SecretStr | None = Field(default=None, validation_alias="HUAWEICLOUD_SDK_AK")
    secret_key: SecretStr | None = Field(default=None, validation_alias="HUAWEICLOUD_SDK_SK")
    security_token: SecretStr | None = Field(
        default=None, validation_alias="HUAWEICLOUD_SDK_SECURITY_TOKEN"
    )
    auth_token: SecretStr | None = None
    iam_user: str | None = None
    iam_password: SecretStr | None = None
    iam_domain: str | None = None
    # FunctionGraph's temporary credentials in request headers (docs/platform-credentials.md):
    # "auto" signs a request's IMS calls with them when none of the above is set; "off" ignores
    # the headers, for a deployment whose callers could set them.
    platform_credentials: Literal["auto", "off"] = "auto"

    # IMS call behaviour.
    ims_timeout: float = Field(default=30.0, gt=0)
    ims_max_attempts: int = Field(default=4, ge=1, le=10)
    ims_retry_budget: float = Field(default=20.0, ge=0)

    # check: the adaptive poll schedule, deadline, and the size and length of one tick.
    poll_min_interval: float = Field(default=15.0, ge=0)
    poll_max_interval: float = Field(default=300.0, ge=0)
    job_deadline: float = Field(default=3 * 3600.0, gt=0)
    check_time_budget: float = Field(default=120.0, gt=0)
    check_concurrency: int = Field(default=16, ge=1, le=512)
    ims_rate_limit: float = Field(default=20.0, ge=0)  # IMS queries per second; 0 = unlimited
    # check: when an unknown submission outcome is first asked about, and how long IMS may
    # take to list its image before it ends UNCONFIRMED (docs/reconcile.md).
    reconcile_after: float = Field(default=600.0, ge=0)
    reconcile_window: float = Field(default=3 * 3600.0, gt=0)

    # notify: one channel, and/or several named ones (JSON), and how delivery behaves.
    webhook_url: SecretStr | None = None
    webhook_format: ChannelFormat | None = None
    webhook_secret: SecretStr | None = None
    webhook_on: str = "all"
    webhook_keyword: str | None = None
    channels: list[ChannelSetting] = Field(default_factory=list)
    notify_max_age: float = Field(default=6 * 3600.0, gt=0)
    notify_time_budget: float = Field(default=60.0, gt=0)
    notify_inline: bool = True

    # State and callers.
    state_url: str = DEFAULT_STATE_URL
    api_token: SecretStr | None = None
    # Callers that cannot send the API token (Cloud Scheduler's and Pub/Sub push's OIDC token):
    # a Google-signed ID token for one of these audiences, from one of these service accounts,
    # both comma lists, both needed (docs/platforms.md §2).
    oidc_audience: str | None = None
    oidc_service_accounts: str | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Set by Google Cloud runtimes; makes log lines' trace ids clickable in Cloud Logging.
    google_cloud_project: str | None = Field(default=None, validation_alias="GOOGLE_CLOUD_PROJECT")

    @field_validator("state_url")
    @classmethod
    def _known_state_scheme(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return value

    @field_validator("project_id")
    @classmethod
    def _project_id_shape(cls, value: str | None) -> str | None:
        if value is not None and not (value.isalnum() and 1 <= len(value) <= 64):
            raise ValueError("must be the IAM project id (letters and digits)")
        return value

    @field_validator("region")
    @classmethod
    def _region_shape(cls, value: str | None) -> str | None:
        if value is not None and not all(part.isalnum() for part in value.split("-")):
            raise ValueError("must look like eu-de or ap-southeast-1")
        return value

    @model_validator(mode="after")
    def _poll_interval_order(self) -> Settings:
        if self.poll_min_interval > self.poll_max_interval:
            raise ValueError(
                "WHOLEIMAGE_POLL_MIN_INTERVAL must not exceed WHOLEIMAGE_POLL_MAX_INTERVAL"
            )
        return self

    @model_validator(mode="after")
    def _reconcile_window_outlasts_a_create_call(self) -> Settings:
        # "No image" may only end a job once no create call that is still running could yet
        # reach IMS: the window covers the wait before the first lookup plus the longest call
        # (every attempt timing out, plus the retry waits; docs/reconcile.md §4).
        longest_call = self.ims_timeout * self.ims_max_attempts + self.ims_retry_budget
        if self.reconcile_window < self.reconcile_after + longest_call:
            raise ValueError(
                "WHOLEIMAGE_RECONCILE_WINDOW must be at least WHOLEIMAGE_RECONCILE_AFTER plus "
                f"the longest IMS call ({longest_call:g} s: WHOLEIMAGE_IMS_TIMEOUT x "
                "WHOLEIMAGE_IMS_MAX_ATTEMPTS + WHOLEIMAGE_IMS_RETRY_BUDGET)"
            )
        return self

    @model_validator(mode="after")
    def _oidc_pair(self) -> Settings:
        # An audience alone would admit any Google account that asks Google for a token with it;
        # service accounts alone, a token of theirs minted for another service.
        if bool(self.oidc_audiences()) != bool(self.oidc_allowed_accounts()):
            raise ValueError(
                "WHOLEIMAGE_OIDC_AUDIENCE and WHOLEIMAGE_OIDC_SERVICE_ACCOUNTS go together: set both "
                "(the audience the tokens are made for, and the service accounts allowed to call)"
            )
        for account in self.oidc_allowed_accounts():
            name, at, domain = account.partition("@")
            if not (name and at and domain) or not account.isprintable() or " " in account:
                raise ValueError(
                    "WHOLEIMAGE_OIDC_SERVICE_ACCOUNTS must be a comma list of service account "
                    "e-mail addresses"
                )
        return self

    def oidc_audiences(self) -> frozenset[str]:
        """The audiences an OIDC ID token may be made for (``WHOLEIMAGE_OIDC_AUDIENCE``)."""
        return _comma_set(self.oidc_audience)

    def oidc_allowed_accounts(self) -> frozenset[str]:
        """The service accounts (lower case) whose OIDC ID tokens are accepted."""
        return frozenset(account.lower() for account in _comma_set(self.oidc_service_accounts))

    @property
    def oidc_configured(self) -> bool:
        """Whether callers may authenticate with a Google-signed OIDC ID token."""
        return bool(self.oidc_audiences())

    def has_static_credentials(self) -> bool:
        """Whether any IMS credential is configured here (then no request's headers are used)."""
        return any(
            (
                self.access_key,
                self.secret_key,
                self.security_token,
                self.auth_token,
                self.iam_user,
                self.iam_password,
                self.iam_domain,
            )
        )

    def require_project_id(self) -> str:
        """The project id, or a ``ConfigurationError`` naming both variables."""
        if not self.project_id:
            raise ConfigurationError(
                "WHOLEIMAGE_PROJECT_ID (or HUAWEICLOUD_SDK_PROJECT_ID) is not set: it is the IAM "
                "project of the region the images are made in"
            )
        return self.project_id

    def secret_values(self) -> list[str]:
        """Every configured secret, so the log filter can redact them wherever they appear."""
        secrets = [self.access_key, self.secret_key, self.security_token, self.auth_token]
        secrets += [self.iam_password, self.api_token, self.webhook_url, self.webhook_secret]
        for channel in self.channels:
            secrets += [channel.url, channel.secret]
        return [s.get_secret_value() for s in secrets if s is not None and s.get_secret_value()]

    def notification_channels(self) -> list[Channel]:
        """The configured channels: ``default`` from ``WHOLEIMAGE_WEBHOOK_*``, then the named ones.

        Raises:
            ConfigurationError: a URL, a filter or a name is not acceptable.
        """
        default = self._default_channel()
        channels = [default] if default is not None else []
        channels += [setting.to_channel() for setting in self.channels]
        names = [channel.name for channel in channels]
        if len(set(names)) != len(names):
            raise ConfigurationError(
                "WHOLEIMAGE_CHANNELS: channel names must be unique (and not 'default' when WHOLEIMAGE_WEBHOOK_URL is set)"
            )
        for channel in channels:
            if channel.format == "standard" and not (
                channel.secret and channel.secret.get_secret_value().startswith(WHSEC_PREFIX)
            ):
                raise ConfigurationError(
                    f"channel {channel.name!r} (standard): set its secret (WHOLEIMAGE_WEBHOOK_SECRET or "
                    '"secret" in WHOLEIMAGE_CHANNELS) to a whsec_... key'
                )
        return channels

    def _default_channel(self) -> Channel | None:
        """The ``default`` channel of ``WHOLEIMAGE_WEBHOOK_*``; None without a webhook URL."""
        if self.webhook_url is None or not self.webhook_url.get_secret_value():
            return None
        url = self.webhook_url.get_secret_value()
        _check_channel_url("default", url, "WHOLEIMAGE_WEBHOOK_URL")
        return Channel(
            name="default",
            format=self.webhook_format or guess_format(url),
            url=self.webhook_url,
            secret=self.webhook_secret,
            on=_webhook_filter(self.webhook_on),
            keyword=self.webhook_keyword,
        )


# Fields whose variable holds JSON, as pydantic-settings decodes "complex" fields.
_JSON_FIELDS = frozenset({"channels"})


def variable_names(field_name: str) -> tuple[str, ...]:
    """The documented environment variables of a field, in the order they are looked up."""
    alias = Settings.model_fields[field_name].validation_alias
    if isinstance(alias, str):
        return (alias,)
    if isinstance(alias, AliasChoices):
        return tuple(str(choice) for choice in alias.choices)
    return (ENV_PREFIX + field_name.upper(),)


def _lookup_names(field_name: str) -> tuple[str, ...]:
    """What is looked up: the documented names, then (as pydantic-settings did with
    ``populate_by_name``) ``WHOLEIMAGE_`` + the field name for a field with names of its own."""
    documented = variable_names(field_name)
    prefixed = ENV_PREFIX + field_name.upper()
    return documented if prefixed in documented else (*documented, prefixed)


def _field_named(loc: str) -> str | None:
    """The field an error location stands for (by name, or by one of its variable names)."""
    for name in Settings.model_fields:
        if loc == name or loc in _lookup_names(name):
            return name
    return None


def _variable_name(field_name: str) -> str:
    return " or ".join(variable_names(field_name))


def environment_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """Each field's value as the environment gives it: the first of its variables that is set,
    matched without regard to case, JSON-decoded for the JSON fields.

    Raises:
        ConfigurationError: a JSON variable does not parse (its text, which may hold webhook
            URLs and secrets, is not quoted).
    """
    by_lower_name = {name.lower(): value for name, value in environ.items()}
    values: dict[str, Any] = {}
    for field_name in Settings.model_fields:
        for variable in _lookup_names(field_name):
            if variable.lower() not in by_lower_name:
                continue
            value: Any = by_lower_name[variable.lower()]
            if field_name in _JSON_FIELDS:
                try:
                    value = json.loads(value)
                except ValueError:
                    raise ConfigurationError(
                        f"invalid settings: {_variable_name(field_name)}: not valid JSON"
                    ) from None
                if value is None:
                    break  # JSON null: not set, the default stands (as pydantic-settings read it)
            values[field_name] = value
            break
    return values


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from the environment (``os.environ`` unless given) now, translating
    errors to variable names."""
    values = environment_values(os.environ if environ is None else environ)
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = str(error["loc"][0]) if error["loc"] else ""
            field_name = _field_named(loc)
            name = _variable_name(field_name) if field_name else loc
            # error["msg"] never holds the offending value; "input" might, so it is left out.
            problems.append(f"{name}: {error['msg']}")
        raise ConfigurationError("invalid settings: " + "; ".join(problems)) from None


@cache
def get_settings() -> Settings:
    """The process's settings, read on first use."""
    return load_settings()
