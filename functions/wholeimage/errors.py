"""The one error hierarchy of wholeimage; ``web.error_response`` maps it to HTTP in one place.

::

    WholeImageError                    500 internal
    ├── ConfigurationError             500 misconfigured          (names the variable)
    ├── RequestInvalidError            400 invalid_request        (details: path + message each)
    │   └── UnsupportedMediaTypeError  400 unsupported_media_type
    ├── PayloadTooLargeError           413 payload_too_large
    ├── RequestTimeoutError            408 request_timeout        (the body came too slowly)
    ├── UnauthorizedError              401 unauthorized
    ├── NotFoundError                  404 not_found
    ├── MethodNotAllowedError          405 method_not_allowed
    ├── ConflictError                  409 conflict
    │   ├── IdempotencyKeyReusedError  409 idempotency_key_reused
    │   ├── SubmissionInProgressError  409 submission_in_progress
    │   └── BackupInUseError           409 backup_in_use
    ├── ImsRejectedError               4xx ims_rejected           (IMS's own IMG.xxxx code)
    │   └── ImageNotFoundError         4xx image_not_found        (a delete's image is gone already)
    └── UpstreamError                  502 upstream_error
        ├── UpstreamAuthError          502 upstream_auth_failed   (our credentials, not the caller's)
        ├── UpstreamUnavailableError   503 upstream_unavailable   (Retry-After)
        └── SubmissionUncertainError   504 submission_uncertain   (IMS may have taken the write)
            └── UpstreamTimeoutError   504 upstream_timeout

Messages are public: they never carry a secret, a stack trace or library text.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from wholeimage.logs import redact


class WholeImageError(Exception):
    """Base of every error wholeimage raises on purpose."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR
    code = "internal"

    def __init__(
        self,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        upstream: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []
        self.upstream = upstream

    @property
    def http_status(self) -> int:
        """The HTTP status this error answers with."""
        return int(self.status)

    def headers(self) -> dict[str, str]:
        """Extra response headers (``Retry-After`` for instance)."""
        return {}

    def body(self) -> dict[str, Any]:
        """The JSON error body ``{"error": {"code", "message", "details", ...}}``.

        Every text in it goes through the log redaction first: an upstream service (IMS, its
        gateway, IAM) may quote our request back, credentials included. A lone surrogate in a
        text (a library quoting what a caller sent) is spelt as its escape, so the body can
        always be encoded to be sent.
        """
        error: dict[str, Any] = {
            "code": self.code,
            "message": _public(self.message),
            "details": [_redacted(detail) for detail in self.details],
        }
        if self.upstream is not None:
            error["upstream"] = _redacted(self.upstream)
        return {"error": error}


def _public(text: str) -> str:
    return redact(text).encode("utf-8", "backslashreplace").decode("utf-8")


def _redacted(values: dict[str, Any]) -> dict[str, Any]:
    return {
        key: _public(value) if isinstance(value, str) else value for key, value in values.items()
    }


class ConfigurationError(WholeImageError):
    """A setting is missing or malformed; the message names the environment variable."""

    code = "misconfigured"


class RequestInvalidError(WholeImageError):
    """The request body or its envelope is not acceptable."""

    status = HTTPStatus.BAD_REQUEST
    code = "invalid_request"


class UnsupportedMediaTypeError(RequestInvalidError):
    """The request is not JSON (nor a CloudEvent)."""

    code = "unsupported_media_type"


class PayloadTooLargeError(WholeImageError):
    """The body is over the size limit."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    code = "payload_too_large"


class RequestTimeoutError(WholeImageError):
    """The body did not arrive within its time (``web.limits.BODY_SECONDS``)."""

    status = HTTPStatus.REQUEST_TIMEOUT
    code = "request_timeout"


class UnauthorizedError(WholeImageError):
    """The caller did not present the configured bearer token."""

    status = HTTPStatus.UNAUTHORIZED
    code = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="wholeimage"'}


class NotFoundError(WholeImageError):
    """No such job."""

    status = HTTPStatus.NOT_FOUND
    code = "not_found"


class MethodNotAllowedError(WholeImageError):
    """The function does not answer this HTTP method."""

    status = HTTPStatus.METHOD_NOT_ALLOWED
    code = "method_not_allowed"

    def __init__(self, method: str, allowed: tuple[str, ...]) -> None:
        super().__init__(f"{method} is not allowed here; use {' or '.join(allowed)}")
        self.allowed = allowed

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed)}


class ConflictError(WholeImageError):
    """The request conflicts with what is already recorded."""

    status = HTTPStatus.CONFLICT
    code = "conflict"


class IdempotencyKeyReusedError(ConflictError):
    """The idempotency key was first used with a different body."""

    code = "idempotency_key_reused"


class SubmissionInProgressError(ConflictError):
    """A request with this idempotency key is being submitted right now."""

    code = "submission_in_progress"


class BackupInUseError(ConflictError):
    """The backup already has an outstanding or successful image job (one backup, one image)."""

    code = "backup_in_use"


class ImsRejectedError(WholeImageError):
    """IMS refused the request with its own ``IMG.xxxx`` code; the caller can fix it."""

    code = "ims_rejected"

    def __init__(self, message: str, *, http_status: int, upstream: dict[str, Any]) -> None:
        super().__init__(message, upstream=upstream)
        self._http_status = http_status

    @property
    def http_status(self) -> int:
        return self._http_status


class ImageNotFoundError(ImsRejectedError):
    """IMS does not know the image a delete named: it is gone already (docs/ims-api.md §2.6).

    The status stays IMS's own (404, or 400 with IMG.0027); a caller rotating images out
    counts the image as deleted.
    """

    code = "image_not_found"


class UpstreamError(WholeImageError):
    """IMS (or IAM) failed in a way that is not the caller's fault."""

    status = HTTPStatus.BAD_GATEWAY
    code = "upstream_error"


class UpstreamAuthError(UpstreamError):
    """IMS or IAM refused our credentials (401/403): an operator must fix the configuration."""

    code = "upstream_auth_failed"


class UpstreamUnavailableError(UpstreamError):
    """IMS stayed throttled or unavailable after the retries; try again after ``retry_after``."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "upstream_unavailable"

    def __init__(
        self, message: str, *, retry_after: int, upstream: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message, upstream=upstream)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class SubmissionUncertainError(UpstreamError):
    """A write reached IMS and its answer was lost or unreadable: IMS may have accepted it.

    Never a reason to send the write again; ``create`` records the job as ``SUBMIT_UNCERTAIN``
    and ``check`` finds out from IMS (docs/reconcile.md).
    """

    status = HTTPStatus.GATEWAY_TIMEOUT
    code = "submission_uncertain"


class UpstreamTimeoutError(SubmissionUncertainError):
    """IMS did not answer in time after the request was sent."""

    status = HTTPStatus.GATEWAY_TIMEOUT
    code = "upstream_timeout"

    def __init__(self, message: str, *, request_sent: bool) -> None:
        super().__init__(message)
        # A POST that went out and timed out may have been accepted: it must not be resubmitted.
        self.request_sent = request_sent
