"""All settings, from the environment, in one pydantic-settings class read lazily.

``get_settings()`` builds them on first use and keeps them for the process; nothing reads the
environment at import time. A missing or malformed value fails with a ``ConfigurationError``
naming the environment variable.
"""

from __future__ import annotations

from functools import cache
from typing import Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from wholeimage.errors import ConfigurationError

DEFAULT_STATE_URL = "sqlite:///wholeimage.db"


class Settings(BaseSettings):
    """wholeimage's settings; the README has the table of variables."""

    model_config = SettingsConfigDict(
        env_prefix="WHOLEIMAGE_", extra="ignore", populate_by_name=True
    )

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

    # State and callers.
    state_url: str = DEFAULT_STATE_URL
    api_token: SecretStr | None = None
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
        secrets += [self.iam_password, self.api_token]
        return [s.get_secret_value() for s in secrets if s is not None and s.get_secret_value()]


def _field_named(loc: str) -> str | None:
    """The field an error location stands for: pydantic reports an aliased field by its alias."""
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        aliases = [str(c) for c in alias.choices] if isinstance(alias, AliasChoices) else [alias]
        if loc == name or loc in aliases:
            return name
    return None


def _variable_name(field_name: str) -> str:
    field = Settings.model_fields[field_name]
    alias = field.validation_alias
    if isinstance(alias, str):
        return alias
    if isinstance(alias, AliasChoices):
        return " or ".join(str(choice) for choice in alias.choices)
    return "WHOLEIMAGE_" + field_name.upper()


def load_settings() -> Settings:
    """Read the settings from the environment now, translating errors to variable names."""
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = str(error["loc"][0]) if error["loc"] else ""
            field_name = _field_named(loc)
            name = _variable_name(field_name) if field_name else loc
            # error["msg"] never holds the offending value; "input" might, so it is left out.
            problems.append(f"{name}: {error['msg']}")
        raise ConfigurationError("invalid settings: " + "; ".join(problems)) from None
    return settings


@cache
def get_settings() -> Settings:
    """The process's settings, read on first use."""
    return load_settings()
