"""Exceptions raised by the Seedream provider."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow_provider_seedream.results import GenerationResult

# Codes the service answers with HTTP 429 that waiting will not fix.
NON_RETRYABLE_429_CODES = frozenset({"QuotaExceeded", "SetLimitExceeded"})
# Answers that prove the service did not serve the request: sending it again cannot pay twice.
RETRYABLE_STATUSES = frozenset({429, 500, 503})
# Gateway answers: the service behind the gateway may have made (and billed) the images.
UNKNOWN_OUTCOME_STATUSES = frozenset({502, 504})


class SeedreamError(Exception):
    """Base class of every error raised by the provider."""


class SeedreamValidationError(SeedreamError, ValueError):
    """A request field is invalid; raised before anything is sent.

    :param field: the request field (or operator argument) at fault.
    :param message: what is wrong and what is allowed.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class SeedreamAPIError(SeedreamError):
    """The endpoint answered with an error.

    :param status: the HTTP status.
    :param code: the service's error code, such as ``InvalidParameter``.
    :param message: the service's message.
    :param request_id: the request id the service gave, if any.
    :param retry_after: seconds the service asked to wait (``Retry-After``), if any.
    """

    def __init__(
        self,
        status: int,
        code: str | None,
        message: str,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.retry_after = retry_after
        text = f"HTTP {status}"
        if code:
            text += f" {code}"
        text += f": {message}"
        if request_id and request_id not in message:
            text += f" (request id {request_id})"
        super().__init__(text)

    @property
    def retryable(self) -> bool:
        """Whether waiting and sending the same request again may succeed without paying twice."""
        if self.status == 429:
            return self.code not in NON_RETRYABLE_429_CODES
        return self.status in RETRYABLE_STATUSES


class SeedreamUnknownOutcomeError(SeedreamError):
    """A request was sent but its answer was lost: the images may have been made and billed.

    Raised for a read timeout, a connection dropped after the body was sent, a 502/504 from a
    gateway or an answer cut short. Such a request is never sent again unless
    ``retry_unknown_outcome`` is set.

    :param message: what happened (never the key or a signed URL).
    :param received: the images that did arrive before the answer broke off, if any.
    """

    def __init__(self, message: str, received: GenerationResult | None = None) -> None:
        self.received = received
        super().__init__(f"outcome unknown, the request may have been billed: {message}")


class SeedreamSendCancelled(SeedreamError):
    """A generation request was not sent: the caller cancelled it while it waited for its turn.

    Nothing was paid for it; it is never retried.
    """


class SeedreamDownloadError(SeedreamError):
    """An image that was generated could not be downloaded or decoded.

    :param message: what went wrong; never the signed URL itself.
    :param status: the HTTP status of the download, if one was received.
    :param retryable: whether downloading again may succeed.
    """

    def __init__(self, message: str, status: int | None = None, retryable: bool = True) -> None:
        self.status = status
        self.retryable = retryable
        super().__init__(message)


# S3 answers after which no other upload of the batch can succeed.
FATAL_STORAGE_CODES = frozenset(
    {"AccessDenied", "NoSuchBucket", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "403", "404"}
)


class StorageError(SeedreamError):
    """S3 refused an operation; the message says which bucket and key, never credentials.

    :param message: what failed.
    :param code: S3's error code, if it gave one.
    """

    def __init__(self, message: str, code: str | None = None) -> None:
        self.code = code
        super().__init__(message)

    @property
    def fatal(self) -> bool:
        """Whether every other upload to this bucket would fail the same way."""
        return self.code in FATAL_STORAGE_CODES
