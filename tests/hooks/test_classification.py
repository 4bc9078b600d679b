"""How the hook classifies what happened: error answers, connection failures, and the wait before a retry.

Built from real ``requests`` and ``urllib3`` objects, no network: these are the rules that decide
whether a request may be sent again without paying twice (``tests/hooks/test_seedream_hook.py``
shows each against the emulator over HTTP).
"""

from __future__ import annotations

import json

import pytest
import requests
import tenacity
import urllib3

from airflow_provider_seedream.exceptions import (
    SeedreamAPIError,
    SeedreamDownloadError,
    SeedreamUnknownOutcomeError,
    SeedreamValidationError,
)
from airflow_provider_seedream.hooks.seedream import (
    _BackoffHonouringRetryAfter,
    _download_retryable,
    _never_sent,
    api_error,
)


def answer(status: int, body: bytes | str | dict | None = None, reason: str | None = None, **headers: str):
    response = requests.Response()
    response.status_code = status
    response.reason = reason
    response.headers.update({name.replace("_", "-"): value for name, value in headers.items()})
    response._content = json.dumps(body).encode() if isinstance(body, (dict, list)) else (body.encode() if isinstance(body, str) else body or b"")
    return response


def test_an_error_answer_of_the_service_names_its_code_message_and_request():
    error = api_error(answer(400, {"error": {"code": "InvalidParameter", "message": "size is bad"}}, "Bad Request",
                             x_request_id="req-1"))
    assert (error.status, error.code, error.message, error.request_id, error.retry_after) == (
        400, "InvalidParameter", "size is bad", "req-1", None
    )
    assert str(error) == "HTTP 400 InvalidParameter: size is bad (request id req-1)"


def test_an_error_answer_of_object_storage_names_its_code_and_request():
    error = api_error(answer(403, {"Code": "AccessDenied", "Message": "Request has expired"}, x_tos_request_id="tos-9"))
    assert (error.status, error.code, error.message, error.request_id) == (403, "AccessDenied", "Request has expired", "tos-9")


@pytest.mark.parametrize(
    ("body", "reason", "code", "message"),
    [
        (b"<html>bad gateway</html>", "Bad Gateway", None, "Bad Gateway"),
        (b"", None, None, "error"),
        ({"error": "a string, not an object", "code": "Flat", "message": "flat form"}, "X", "Flat", "flat form"),
        ({"error": {"code": "OnlyCode"}}, "Too Many Requests", "OnlyCode", "Too Many Requests"),
        ({"detail": "no code at all"}, "Nope", None, "Nope"),
        (["a", "list"], "Listed", None, "Listed"),
    ],
)
def test_an_error_answer_without_the_usual_body_still_says_what_it_can(body, reason, code, message):
    error = api_error(answer(500, body, reason))
    assert (error.code, error.message, error.request_id) == (code, message, None)


@pytest.mark.parametrize(("header", "seconds"), [("2.5", 2.5), ("0", 0.0), ("-3", 0.0), ("soon", None), ("", None)])
def test_retry_after_is_read_in_seconds(header, seconds):
    assert api_error(answer(429, {"error": {"code": "RateLimitExceeded", "message": "m"}}, Retry_After=header)).retry_after == seconds


def test_an_error_message_is_redacted_and_bounded():
    signed = "https://bucket.tos.example.com/a.jpg?X-Tos-Signature=secret123&X-Tos-Expires=60"
    error = api_error(answer(400, {"error": {"code": "C", "message": f"cannot read {signed} " + "x" * 900}}))
    assert "secret123" not in error.message and len(error.message) == 500


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (429, "RateLimitExceeded", True), (429, "ModelAccountIpmRateLimitExceeded", True), (429, None, True),
        (429, "QuotaExceeded", False), (429, "SetLimitExceeded", False),
        (500, "InternalServiceError", True), (503, "ServerOverloaded", True),
        (400, "InvalidParameter", False), (401, "AuthenticationError", False), (403, "AccessDenied", False),
        (404, "ModelNotOpen", False), (502, None, False), (504, None, False),
    ],
)
def test_which_refusals_may_be_sent_again(status, code, retryable):
    assert SeedreamAPIError(status, code, "m").retryable is retryable


def test_an_api_error_s_text_leaves_out_what_it_does_not_have():
    assert str(SeedreamAPIError(500, None, "boom")) == "HTTP 500: boom"
    assert str(SeedreamAPIError(500, "C", "boom (request id r-1)", "r-1")) == "HTTP 500 C: boom (request id r-1)"
    assert str(SeedreamUnknownOutcomeError("cut")) == "outcome unknown, the request may have been billed: cut"
    received = object()
    assert SeedreamUnknownOutcomeError("cut", received=received).received is received  # type: ignore[arg-type]
    invalid = SeedreamValidationError("size", "must be one of 2K, 3K, 4K")
    assert (invalid.field, invalid.message, str(invalid)) == ("size", "must be one of 2K, 3K, 4K", "size: must be one of 2K, 3K, 4K")


def connection_error(reason: BaseException | None, kind: type = requests.ConnectionError) -> requests.ConnectionError:
    if reason is None:
        return kind()
    return kind(urllib3.exceptions.MaxRetryError(None, "/v1/images/generations", reason))


@pytest.mark.parametrize(
    ("error", "never_sent"),
    [
        (connection_error(urllib3.exceptions.NewConnectionError(None, "refused")), True),
        (connection_error(urllib3.exceptions.ConnectTimeoutError(None, "slow")), True),
        (requests.ConnectionError(urllib3.exceptions.NewConnectionError(None, "refused")), True),
        (connection_error(None, requests.ConnectTimeout), True),
        (connection_error(urllib3.exceptions.ProtocolError("reset after the body was sent")), False),
        (connection_error(urllib3.exceptions.ReadTimeoutError(None, "/", "read")), False),
        (requests.ConnectionError("no reason given"), False),
        (requests.ConnectionError(), False),
    ],
)
def test_a_connection_error_is_never_sent_only_when_no_connection_was_made(error, never_sent):
    assert _never_sent(error) is never_sent


def test_only_a_download_error_that_says_so_is_retried():
    assert _download_retryable(SeedreamDownloadError("cut", status=500))
    assert not _download_retryable(SeedreamDownloadError("gone", status=404, retryable=False))
    assert not _download_retryable(ValueError("not a download"))


def state(error: BaseException | None, attempt: int = 1) -> tenacity.RetryCallState:
    retry_state = tenacity.RetryCallState(tenacity.Retrying(), fn=None, args=(), kwargs={})
    retry_state.attempt_number = attempt
    if error is not None:
        retry_state.set_exception((type(error), error, None))
    return retry_state


def test_the_wait_before_a_retry_honours_retry_after_within_the_maximum():
    wait = _BackoffHonouringRetryAfter(minimum=0.01, maximum=30.0)
    rate_limited = SeedreamAPIError(429, "RateLimitExceeded", "m", retry_after=12.0)
    assert all(12.0 <= wait(state(rate_limited)) <= 30.0 for _ in range(20)), "at least what the server asked"
    greedy = SeedreamAPIError(429, "RateLimitExceeded", "m", retry_after=3600.0)
    assert wait(state(greedy)) == 30.0, "never more than the maximum"
    plain = [wait(state(SeedreamAPIError(500, None, "m"), attempt=3)) for _ in range(50)]
    assert all(0.0 <= seconds <= 0.04 for seconds in plain) and max(plain) > 0, "jittered exponential backoff"
    assert 0.0 <= wait(state(None)) <= 0.01 * 2
    late = [wait(state(SeedreamAPIError(500, None, "m"), attempt=40)) for _ in range(50)]
    assert all(seconds <= 30.0 for seconds in late) and max(late) > 1.0, "the backoff grows up to the maximum"


# -- answers from a raw HTTP server: exactly the bytes a gateway or a cut connection sends -----------


class RawServer:
    """Answers each connection with ``answer`` (bytes, sent as they are), then closes it; ``None`` closes unanswered."""

    def __init__(self, answer: bytes | None) -> None:
        import socket
        import threading

        self.answer = answer
        self.requests = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                received = b""
                while b"\r\n\r\n" not in received:
                    received += connection.recv(65536)
                head, _, body = received.partition(b"\r\n\r\n")
                length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), b"0"))
                while len(body) < length:
                    body += connection.recv(65536)
                self.requests += 1
                if self.answer is not None:
                    connection.sendall(self.answer)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def raw_hook():
    from airflow_provider_seedream.hooks.seedream import SeedreamHook, endpoint_url
    from tests.conftest import API_KEY

    servers: list[RawServer] = []

    def make(answer: bytes | None):
        server = RawServer(answer)
        servers.append(server)
        hook = SeedreamHook(retry_min_wait=0.01, retry_max_wait=0.02, max_retries=2)
        hook._settings = {
            "endpoint": endpoint_url(server.url), "api_key": API_KEY, "model": "doubao-seedream-5-0-260128",
            "parameters": {}, "timeout": 5.0, "max_retries": 2, "retry_unknown_outcome": False,
        }
        return hook, server

    yield make
    for server in servers:
        server.close()


def http_answer(status: str, body: bytes = b"", declared: int | None = None, **headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body) if declared is None else declared}",
             "Content-Type: application/json", "Connection: close"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_a_connection_closed_after_the_request_is_an_unknown_outcome_sent_once(raw_hook):
    hook, server = raw_hook(None)
    with pytest.raises(SeedreamUnknownOutcomeError) as raised:
        hook.generate_images("a kite", size="2K")
    assert str(raised.value) == (
        "outcome unknown, the request may have been billed: the connection broke after the request was sent "
        "(ConnectionError)"
    )
    assert server.requests == 1


@pytest.mark.parametrize(("request_id", "said"), [("gw-1", " (request id gw-1)"), (None, "")])
def test_a_gateway_answer_is_an_unknown_outcome_naming_its_request(raw_hook, request_id, said):
    headers = {"x_request_id": request_id} if request_id else {}
    hook, server = raw_hook(http_answer("502 Bad Gateway", **headers))
    with pytest.raises(SeedreamUnknownOutcomeError) as raised:
        hook.generate_images("a kite", size="2K")
    assert str(raised.value) == f"outcome unknown, the request may have been billed: a gateway answered HTTP 502{said}"
    assert server.requests == 1


ITEM = {"url": "https://ark.example.com/a.jpeg?X-Tos-Expires=86400", "size": "2048x2048"}


def test_an_answer_is_read_whole_with_its_model_time_usage_and_request(raw_hook):
    body = json.dumps({"model": "doubao-seedream-5-0-260128", "created": 1796346000, "data": [ITEM, ITEM],
                       "usage": {"generated_images": 2, "output_tokens": 8192, "cost": 0.5}}).encode()
    import gzip

    hook, _ = raw_hook(http_answer("200 OK", gzip.compress(body), Content_Encoding="gzip", x_request_id="req-7"))
    result = hook.generate_images("a kite", size="2K")
    assert [image.url for image in result.images] == [ITEM["url"]] * 2 and [image.index for image in result.images] == [0, 1]
    assert (result.model, result.created, result.request_id) == ("doubao-seedream-5-0-260128", 1796346000, "req-7")
    assert result.usage == {"generated_images": 2, "output_tokens": 8192, "cost": 0.5}
    assert type(result.usage["cost"]) is float and type(result.created) is int


def test_an_answer_without_a_time_has_none(raw_hook):
    hook, _ = raw_hook(http_answer("200 OK", json.dumps({"model": "m", "data": [ITEM]}).encode()))
    result = hook.generate_images("a kite", size="2K")
    assert result.created is None and result.usage == {} and result.model == "m"


def test_a_cut_answer_keeps_the_images_that_arrived(raw_hook):
    body = json.dumps({"model": "doubao-seedream-5-0-260128", "created": 1, "data": [ITEM, ITEM, ITEM]}).encode()
    cut = body[: body.index(b"}", body.index(b"}") + 1) + 1]  # the first two items, then the connection closes
    hook, server = raw_hook(http_answer("200 OK", cut, declared=len(body), x_request_id="req-8"))
    with pytest.raises(SeedreamUnknownOutcomeError) as raised:
        hook.generate_images("a kite", size="2K")
    assert str(raised.value) == (
        "outcome unknown, the request may have been billed: the answer broke off after 2 image(s) (ProtocolError)"
    )
    received = raised.value.received
    assert [image.url for image in received.images] == [ITEM["url"]] * 2
    assert (received.model, received.request_id, received.usage) == ("doubao-seedream-5-0-260128", "req-8", {})
    assert server.requests == 1, "never sent again"


def test_every_rate_limit_is_reported_to_the_batch_and_every_attempt_asks_for_its_turn(raw_hook):
    hook, server = raw_hook(http_answer("429 Too Many Requests", b'{"error": {"code": "RateLimitExceeded", "message": "m"}}'))
    seen, said, turns = [], [], []
    hook.on_rate_limited = lambda error, body: seen.append((error.status, body["prompt"]))
    hook.before_send = lambda body: turns.append(body["prompt"]) or True
    hook.log.warning = lambda message, *args: said.append(message % args)  # type: ignore[method-assign]
    with pytest.raises(SeedreamAPIError):
        hook.generate_images("a kite", size="2K")
    assert server.requests == 3 and seen == [(429, "a kite")] * 3, "each 429, the last one too, once"
    assert turns == ["a kite"] * 3, "each attempt, retries included, waits for its turn"
    assert [line.split("; ")[0] for line in said] == ["Seedream generation failed (HTTP 429 RateLimitExceeded: m)"] * 2
    assert said[1].endswith("; retry 2 of 2 in " + said[1].rsplit(" in ", 1)[1]) and said[1].endswith(" s")
    other, _ = raw_hook(http_answer("500 Internal Server Error", b'{"error": {"code": "InternalServiceError", "message": "m"}}'))
    other.on_rate_limited = lambda error, body: seen.append((error.status, body["prompt"]))
    with pytest.raises(SeedreamAPIError):
        other.generate_images("a kite", size="2K")
    assert len(seen) == 3, "a 500 is no rate limit"


def test_a_request_cancelled_before_its_turn_is_never_sent(raw_hook):
    from airflow_provider_seedream.exceptions import SeedreamSendCancelled

    hook, server = raw_hook(http_answer("200 OK", b'{"data": []}'))
    hook.before_send = lambda body: False
    with pytest.raises(SeedreamSendCancelled):
        hook.generate_images("a kite", size="2K")
    assert server.requests == 0, "nothing reached the service, and it is not retried"
