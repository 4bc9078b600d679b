"""SeedreamHook against the emulator over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from PIL import Image

from airflow_provider_seedream.exceptions import (
    SeedreamAPIError,
    SeedreamDownloadError,
    SeedreamUnknownOutcomeError,
    SeedreamValidationError,
)
from airflow_provider_seedream.hooks.seedream import SeedreamHook, endpoint_url
from airflow_provider_seedream.results import GeneratedImage
from tests.conftest import API_KEY

FAST = {"retry_min_wait": 0.01, "retry_max_wait": 0.05, "max_retries": 4}
PNG_1PX = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()


@pytest.fixture
def hook(seedream_emulator) -> SeedreamHook:
    return SeedreamHook(**FAST)


def served(emulator) -> dict[str, str]:
    return {image["id"]: image["sha256"] for image in emulator.images()}


def test_generates_and_downloads_an_image_by_url(hook, seedream_emulator):
    result = hook.generate_images("a red apple on a table", size="2K", watermark=False)

    assert result.model == "doubao-seedream-5-0-260128"
    assert result.usage["generated_images"] == 1
    [image] = result.images
    assert image.ok and image.url and image.size == "2048x2048"
    buffer = io.BytesIO()
    downloaded = hook.download_image(image, buffer)
    assert downloaded.sha256 == hashlib.sha256(buffer.getvalue()).hexdigest()
    assert downloaded.sha256 in served(seedream_emulator).values()
    assert downloaded.format == "jpeg" and downloaded.content_type == "image/jpeg"
    assert Image.open(io.BytesIO(buffer.getvalue())).size == (2048, 2048)


def test_b64_json_is_decoded(hook, seedream_emulator):
    result = hook.generate_images("a blue cube", size="2K", response_format="b64_json", output_format="png")

    [image] = result.images
    assert image.b64_json and image.url is None
    buffer = io.BytesIO()
    downloaded = hook.download_image(image, buffer)
    assert downloaded.format == "png"
    assert downloaded.sha256 in served(seedream_emulator).values()
    assert seedream_emulator.stats()["downloads"] == 0


def test_group_mode_returns_max_images(hook):
    result = hook.generate_images(
        "four seasons of one tree",
        size="2K",
        sequential_image_generation="auto",
        sequential_image_generation_options={"max_images": 4},
    )
    assert len(result.succeeded) == 4
    assert [image.index for image in result.images] == [0, 1, 2, 3]
    assert result.usage["generated_images"] == 4


def test_per_item_errors_keep_the_other_images(hook, seedream_emulator):
    result = hook.generate_images(
        "three views [item-error]",
        size="2K",
        sequential_image_generation="auto",
        sequential_image_generation_options={"max_images": 3},
    )
    assert len(result.succeeded) == 2
    [failed] = result.failed
    assert failed.index == 2 and failed.error_code == "OutputImageSensitiveContentDetected"
    with pytest.raises(SeedreamDownloadError, match="carries no image"):
        hook.download_image(failed, io.BytesIO())


def test_ark_path_is_served(seedream_emulator, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_SEEDREAM_ARK",
        json.dumps({"conn_type": "seedream", "host": f"{seedream_emulator.url}/api/v3", "password": API_KEY}),
    )
    hook = SeedreamHook("seedream_ark", **FAST)
    assert hook.settings["endpoint"] == f"{seedream_emulator.url}/api/v3/images/generations"
    assert hook.generate_images("a lighthouse", size="2K").succeeded


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (None, "https://api.cometapi.com/v1/images/generations"),
        ("https://api.cometapi.com", "https://api.cometapi.com/v1/images/generations"),
        ("https://ark.cn-beijing.volces.com", "https://ark.cn-beijing.volces.com/api/v3/images/generations"),
        ("https://ark.ap-southeast.bytepluses.com/", "https://ark.ap-southeast.bytepluses.com/api/v3/images/generations"),
        ("https://proxy.example/api/v3", "https://proxy.example/api/v3/images/generations"),
        ("api.cometapi.com", "https://api.cometapi.com/v1/images/generations"),
    ],
)
def test_endpoint_url_follows_the_host(host, expected):
    assert endpoint_url(host) == expected


def test_connection_defaults_from_extras(seedream_emulator, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_SEEDREAM_DEFAULTS",
        json.dumps(
            {
                "conn_type": "seedream",
                "host": seedream_emulator.url,
                "password": API_KEY,
                "extra": {"model": "doubao-seedream-4-0-250828", "parameters": {"size": "2K", "watermark": False}},
            }
        ),
    )
    hook = SeedreamHook("seedream_defaults", **FAST)
    body = hook.build_request("a fox", future_field={"x": 1})
    assert body == {
        "model": "doubao-seedream-4-0-250828",
        "size": "2K",
        "watermark": False,
        "future_field": {"x": 1},
        "prompt": "a fox",
    }
    result = hook.send_request(body)
    assert result.model == "doubao-seedream-4-0-250828"
    assert hook.build_request("a fox", size="2K", model="m-x")["size"] == "2K"


# -- validation: every rule fails before anything is sent --------------------------------------

INVALID = [
    ({"size": "5K"}, "size", "1K, 2K, 3K, 4K"),
    ({"size": "2048*2048"}, "size", "WxH"),
    ({"size": "2K 2048x2048"}, "size", "not both"),
    ({"size": "4096x200"}, "size", "aspect ratio"),
    ({"size": "1024x1024"}, "size", "3,686,400"),
    ({"size": "8192x8192"}, "size", "16,777,216"),
    ({"size": "adaptive"}, "size", "seededit"),
    ({"model": "doubao-seedream-4-0-250828", "size": "800x800"}, "size", "921,600"),
    ({"model": "doubao-seedream-3-0-t2i-250415", "size": "256x256"}, "size", "512 to 2048"),
    ({"response_format": "base64"}, "response_format", "url, b64_json"),
    ({"output_format": "gif"}, "output_format", "png, jpeg"),
    ({"sequential_image_generation": "on"}, "sequential_image_generation", "auto, disabled"),
    ({"sequential_image_generation": "auto", "sequential_image_generation_options": {"max_images": 0}},
     "sequential_image_generation_options.max_images", "1 to 15"),
    ({"sequential_image_generation": "auto", "sequential_image_generation_options": {"max_images": 16}},
     "sequential_image_generation_options.max_images", "1 to 15"),
    ({"sequential_image_generation_options": 4}, "sequential_image_generation_options", "max_images"),
    ({"guidance_scale": 0.5}, "guidance_scale", "1.0 to 10.0"),
    ({"guidance_scale": 11}, "guidance_scale", "1.0 to 10.0"),
    ({"guidance_scale": "high"}, "guidance_scale", "number"),
    ({"seed": -2}, "seed", "-1 to 2147483647"),
    ({"seed": 2**31}, "seed", "-1 to 2147483647"),
    ({"seed": 1.5}, "seed", "integer"),
    ({"watermark": "no"}, "watermark", "true or false"),
    ({"optimize_prompt_options": {"mode": "slow"}}, "optimize_prompt_options.mode", "standard, fast"),
    ({"tools": ["web_search"]}, "tools", "type"),
    ({"image": []}, "image", "non-empty"),
    ({"image": ["https://x.test/a.png"] * 15}, "image", "at most 14"),
    ({"image": "ftp://x.test/a.png"}, "image[0]", "http(s) URL"),
    ({"image": "data:image/PNG;base64,AAAA"}, "image[0]", "lowercase"),
    ({"image": "data:image/svg;base64,AAAA"}, "image[0]", "jpeg, jpg, png"),
    ({"image": "data:image/png;base64,@@@@"}, "image[0]", "base64"),
    ({"image": "data:image/png;base64,"}, "image[0]", "base64"),
    ({"image": ["https://x.test/a.png"] * 12, "sequential_image_generation": "auto",
      "sequential_image_generation_options": {"max_images": 4}}, "image", "at most 15"),
    ({"stream": "yes"}, "stream", "must be true or false"),
    ({"model": ""}, "model", "non-empty"),
]


@pytest.mark.parametrize(("fields", "field", "allowed"), INVALID, ids=[f"{i}-{case[1]}" for i, case in enumerate(INVALID)])
def test_invalid_fields_are_refused_before_sending(hook, seedream_emulator, fields, field, allowed):
    with pytest.raises(SeedreamValidationError) as raised:
        hook.generate_images("a cat", **fields)
    assert raised.value.field == field
    assert allowed in str(raised.value)
    assert seedream_emulator.stats()["generation_requests"] == 0


@pytest.mark.parametrize("prompt", ["", "   ", None, 42, ["a", "b"]])
def test_empty_or_non_string_prompt_is_refused(hook, seedream_emulator, prompt):
    with pytest.raises(SeedreamValidationError, match="prompt"):
        hook.generate_images(prompt)
    assert seedream_emulator.stats()["generation_requests"] == 0


def test_oversized_data_uri_is_refused(hook, seedream_emulator):
    payload = "A" * (41 * 1024 * 1024)
    with pytest.raises(SeedreamValidationError, match="30 MB"):
        hook.generate_images("a cat", image=f"data:image/png;base64,{payload}")
    assert seedream_emulator.stats()["generation_requests"] == 0


def test_long_prompt_is_a_warning_not_an_error(hook, capfd):
    result = hook.generate_images("a very detailed scene " * 60, size="2K")
    assert result.succeeded
    assert "recommends at most" in capfd.readouterr().out


def test_valid_reference_images_are_sent(hook, seedream_emulator):
    result = hook.generate_images("the same cat in winter", size="2K", image=[f"data:image/png;base64,{PNG_1PX}"])
    assert result.succeeded
    assert seedream_emulator.stats()["references"] == 1


# -- retries --------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["429", "500", "503"])
def test_faults_that_prove_nothing_was_made_are_retried(hook, seedream_emulator, fault):
    seedream_emulator.configure(script=[fault, fault], retry_after=0)
    result = hook.generate_images("a kite", size="2K")
    assert result.succeeded
    stats = seedream_emulator.stats()
    assert stats["generation_requests"] == 3
    assert stats["images_generated"] == 1


UNKNOWN_OUTCOMES = {
    "reset": "broke off",
    "502": "gateway answered HTTP 502",
    "504": "gateway answered HTTP 504",
    "slow": "read timeout of 0.5 s",
}


@pytest.mark.parametrize("fault", sorted(UNKNOWN_OUTCOMES))
def test_an_unknown_outcome_is_reported_and_never_sent_again(seedream_emulator, fault):
    hook = SeedreamHook(timeout=0.5, **FAST)
    seedream_emulator.configure(script=[fault], slow_seconds=3)
    with pytest.raises(SeedreamUnknownOutcomeError, match=UNKNOWN_OUTCOMES[fault]) as raised:
        hook.generate_images("a kite that may have been billed", size="2K")
    assert "may have been billed" in str(raised.value)
    assert seedream_emulator.stats()["generation_requests"] == 1


@pytest.mark.parametrize("where", ["argument", "connection"])
def test_retry_unknown_outcome_opts_back_in(seedream_emulator, monkeypatch, where):
    if where == "argument":
        hook = SeedreamHook(retry_unknown_outcome=True, **FAST)
    else:
        conn = {"conn_type": "seedream", "host": seedream_emulator.url, "password": API_KEY,
                "extra": {"retry_unknown_outcome": True}}
        monkeypatch.setenv("AIRFLOW_CONN_SEEDREAM_RETRYING", json.dumps(conn))
        hook = SeedreamHook("seedream_retrying", **FAST)
    seedream_emulator.configure(script=["reset"])
    assert hook.generate_images("a kite sent twice on purpose", size="2K").succeeded
    assert seedream_emulator.stats()["generation_requests"] == 2


def test_a_failure_to_connect_is_retried_as_nothing_was_sent():
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    hook = SeedreamHook(retry_min_wait=0.01, retry_max_wait=0.02, max_retries=2)
    hook._settings = {**_settings_for(f"http://127.0.0.1:{port}")}
    attempts = []
    hook.log.warning = lambda *args: attempts.append(args)  # type: ignore[method-assign]
    with pytest.raises(requests.ConnectionError):
        hook.generate_images("a kite with nowhere to go", size="2K")
    assert len(attempts) == 2, "a refused connection is tried max_retries more times"


def _settings_for(host: str) -> dict:
    return {
        "endpoint": endpoint_url(host), "api_key": API_KEY, "model": "doubao-seedream-5-0-260128",
        "parameters": {}, "timeout": 5.0, "max_retries": 2, "retry_unknown_outcome": False,
    }


def test_a_long_retry_after_is_capped(seedream_emulator, capfd):
    hook = SeedreamHook(retry_min_wait=0.01, retry_max_wait=0.3, max_retries=1)
    seedream_emulator.configure(script=["429"], retry_after=3600)
    assert hook.generate_images("an impatient kite", size="2K").succeeded
    output = capfd.readouterr()
    assert "retry 1 of 1 in 0.30 s" in output.out + output.err


@pytest.mark.parametrize("blank", [None, ""], ids=["null", "empty string"])
def test_blank_extras_from_the_connection_form_mean_the_defaults(seedream_emulator, monkeypatch, blank):
    # What Airflow's connection form saves for an extra field left empty (null), or cleared ("").
    extras = dict.fromkeys(("model", "endpoint_path", "timeout", "max_retries", "retry_unknown_outcome"), blank)
    conn = {"conn_type": "seedream", "host": seedream_emulator.url, "password": API_KEY, "extra": extras}
    monkeypatch.setenv("AIRFLOW_CONN_SEEDREAM_FORM", json.dumps(conn))
    hook = SeedreamHook("seedream_form")
    settings = hook.settings
    assert (settings["timeout"], settings["max_retries"], settings["retry_unknown_outcome"]) == (300.0, 6, False)
    assert settings["model"] == "doubao-seedream-5-0-260128"
    assert settings["endpoint"] == f"{seedream_emulator.url}/v1/images/generations"
    assert hook.generate_images("a kite from the form", size="2K").succeeded


def test_a_bad_extra_names_itself(seedream_emulator, monkeypatch):
    conn = {"conn_type": "seedream", "host": seedream_emulator.url, "password": API_KEY, "extra": {"max_retries": "many"}}
    monkeypatch.setenv("AIRFLOW_CONN_SEEDREAM_BAD", json.dumps(conn))
    with pytest.raises(SeedreamValidationError, match="extra 'max_retries': must be a whole number, got 'many'"):
        SeedreamHook("seedream_bad").settings


def test_the_read_timeout_grows_with_a_group(hook):
    single = hook.build_request("a kite", size="2K")
    group = hook.build_request(
        "a kite", size="2K", sequential_image_generation="auto", sequential_image_generation_options={"max_images": 15}
    )
    assert hook.read_timeout(single) == 300.0
    assert hook.read_timeout(group) == 300.0 + 14 * 60.0


def test_retry_after_is_honoured(seedream_emulator):
    hook = SeedreamHook(retry_min_wait=0.01, retry_max_wait=5.0, max_retries=1)
    seedream_emulator.configure(script=["429"], retry_after=1)
    started = time.monotonic()
    hook.generate_images("a patient kite", size="2K")
    assert time.monotonic() - started >= 1.0


def test_retries_give_up_with_the_last_error(seedream_emulator):
    hook = SeedreamHook(retry_min_wait=0.01, retry_max_wait=0.02, max_retries=2)
    seedream_emulator.configure(script=["500"] * 5)
    with pytest.raises(SeedreamAPIError) as raised:
        hook.generate_images("a doomed kite", size="2K")
    assert raised.value.status == 500 and raised.value.code == "InternalServiceError"
    assert seedream_emulator.stats()["generation_requests"] == 3


def test_quota_exceeded_is_not_retried(hook, seedream_emulator):
    seedream_emulator.configure(quota_exceeded=True)
    with pytest.raises(SeedreamAPIError) as raised:
        hook.generate_images("a kite", size="2K")
    assert raised.value.status == 429 and raised.value.code == "QuotaExceeded"
    assert not raised.value.retryable
    assert seedream_emulator.stats()["generation_requests"] == 1


def test_refused_prompt_is_not_retried(hook, seedream_emulator):
    with pytest.raises(SeedreamAPIError) as raised:
        hook.generate_images("something [refuse]", size="2K")
    error = raised.value
    assert error.status == 400 and error.code == "InputTextSensitiveContentDetected"
    assert error.request_id
    assert seedream_emulator.stats()["generation_requests"] == 1


def test_wrong_key_is_not_retried_and_never_shown(seedream_emulator):
    seedream_emulator.configure(api_key="the-right-key")
    hook = SeedreamHook(**FAST)
    with pytest.raises(SeedreamAPIError) as raised:
        hook.generate_images("a kite", size="2K")
    assert raised.value.status == 401
    assert API_KEY not in str(raised.value) and API_KEY not in repr(raised.value.__dict__)
    assert seedream_emulator.stats()["generation_requests"] == 1


# -- downloads ------------------------------------------------------------------------------


def test_signed_url_is_used_exactly_as_received(hook, seedream_emulator):
    [image] = hook.generate_images("a tulip", size="2K").images
    assert "&" in image.url and "%" in image.url
    hook.download_image(image, io.BytesIO())

    base, _, query = image.url.partition("?")
    mangled = base + "?" + requests.utils.unquote(query)
    with pytest.raises(SeedreamDownloadError) as raised:
        hook.download_image(GeneratedImage(index=0, url=mangled, size=image.size), io.BytesIO())
    assert raised.value.status == 403 and "AccessDenied" in str(raised.value)
    assert not raised.value.retryable
    assert "Signature" not in str(raised.value) and query not in str(raised.value)


@pytest.mark.parametrize("fault", ["truncate", "500"])
def test_broken_downloads_are_retried_as_downloads(hook, seedream_emulator, fault):
    [image] = hook.generate_images("a tulip", size="2K").images
    seedream_emulator.configure(download_script=[fault, fault])
    buffer = io.BytesIO()
    downloaded = hook.download_image(image, buffer)
    assert downloaded.sha256 in served(seedream_emulator).values()
    assert len(buffer.getvalue()) == downloaded.bytes
    stats = seedream_emulator.stats()
    assert stats["downloads"] == 3 and stats["generation_requests"] == 1


def test_download_limits(seedream_emulator):
    hook = SeedreamHook(max_download_bytes=1000, **FAST)
    [image] = hook.generate_images("a tulip", size="2K").images
    with pytest.raises(SeedreamDownloadError, match="over the limit"):
        hook.download_image(image, io.BytesIO())
    with pytest.raises(SeedreamDownloadError, match="only http"):
        hook.download_image(GeneratedImage(index=0, url="file:///etc/passwd"), io.BytesIO())
    with pytest.raises(SeedreamDownloadError, match="not a PNG"):
        hook.download_image(GeneratedImage(index=0, b64_json=base64.b64encode(b"<html>hi</html>").decode()), io.BytesIO())
    with pytest.raises(SeedreamDownloadError, match="not valid base64"):
        hook.download_image(GeneratedImage(index=0, b64_json="@@@@"), io.BytesIO())


def test_non_image_download_is_refused(hook, seedream_emulator):
    url = f"{seedream_emulator.url}/_emulator/health"
    with pytest.raises(SeedreamDownloadError, match="not a PNG"):
        hook.download_image(GeneratedImage(index=0, url=url), io.BytesIO())


# -- connection test and concurrency -----------------------------------------------------------


def test_connection_test_costs_nothing(hook, seedream_emulator):
    ok, message = hook.test_connection()
    assert ok, message
    assert "/v1/models, which lists the model 'doubao-seedream-5-0-260128'" in message
    stats = seedream_emulator.stats()
    assert stats["images_generated"] == stats["generation_requests"] == 0, "the free model list, no generation request"


def test_connection_test_names_a_model_the_key_may_not_use(seedream_emulator, monkeypatch):
    conn = {"conn_type": "seedream", "host": seedream_emulator.url, "password": API_KEY, "extra": {"model": "seedream-9-9"}}
    monkeypatch.setenv("AIRFLOW_CONN_SEEDREAM_UNLISTED", json.dumps(conn))
    ok, message = SeedreamHook("seedream_unlisted").test_connection()
    assert not ok and "the model 'seedream-9-9' is not among the" in message and "doubao-seedream-5-0-260128" in message
    assert seedream_emulator.stats()["generation_requests"] == 0


def test_connection_test_without_a_model_list_sends_a_request_no_model_can_fulfil(seedream_emulator, monkeypatch):
    # Ark's path (/api/v3) has no model list: the key is checked by a request the service refuses.
    conn = {"conn_type": "seedream", "host": f"{seedream_emulator.url}/api/v3", "password": API_KEY}
    monkeypatch.setenv("AIRFLOW_CONN_SEEDREAM_ARK", json.dumps(conn))
    ok, message = SeedreamHook("seedream_ark").test_connection()
    assert ok and "/api/v3/images/generations" in message, message
    stats = seedream_emulator.stats()
    assert stats["generation_requests"] == 1 and stats["images_generated"] == 0


def test_connection_test_reports_a_refused_key(seedream_emulator):
    seedream_emulator.configure(api_key="another-key")
    ok, message = SeedreamHook().test_connection()
    assert not ok and "401" in message and API_KEY not in message


def test_connection_test_refuses_an_endpoint_that_answers_200_to_anything(monkeypatch):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Agreeable(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the http.server hook's name
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"ok": true}')

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Agreeable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setenv("AIRFLOW_CONN_SEEDREAM_AGREEABLE", json.dumps({"conn_type": "seedream", "host": url, "password": "k"}))
        ok, message = SeedreamHook(seedream_conn_id="seedream_agreeable").test_connection()
    finally:
        server.shutdown()
    assert not ok
    assert "answered 200 to a request without a prompt" in message and "check the Base URL" in message


def test_one_hook_serves_many_threads(seedream_emulator):
    hook = SeedreamHook(pool_maxsize=8, **FAST)
    seedream_emulator.configure(latency=0.2)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda n: hook.generate_images(f"tile {n}", size="2K"), range(16)))
    assert all(result.succeeded for result in results)
    assert seedream_emulator.stats()["images_generated"] == 16
    assert hook.get_conn() is hook.get_conn()


def test_repr_hides_signatures_and_payloads(hook):
    [image] = hook.generate_images("a tulip", size="2K").images
    text = repr(image)
    assert "Signature" not in text and "?<signature redacted>" in text
    assert "b64_json<4 chars>" in repr(GeneratedImage(index=0, b64_json="AAAA"))


def test_unknown_connection_names_itself():
    from airflow_provider_seedream.version_compat import AirflowNotFoundException

    with pytest.raises(AirflowNotFoundException, match="no_such_conn"):
        SeedreamHook("no_such_conn").settings


def test_refused_reference_link_is_not_echoed(hook, seedream_emulator):
    link = f"{seedream_emulator.url}/missing.png?X-Amz-Signature=0123456789abcdef&X-Amz-Credential=me%2Fus"
    with pytest.raises(SeedreamAPIError) as raised:
        hook.generate_images("the same chair in autumn", size="2K", image=link)
    assert raised.value.status == 400 and raised.value.code.startswith("InvalidImageURL")
    assert "X-Amz-Signature" not in str(raised.value) and "0123456789abcdef" not in str(raised.value)


# -- answers parsed as they arrive, downloads through the environment's proxy ------------------


def test_b64_images_are_spooled_to_files_as_they_are_read(hook, seedream_emulator):
    body = hook.build_request(
        "a row of kites", size="2K", response_format="b64_json",
        sequential_image_generation="auto", sequential_image_generation_options={"max_images": 3},
    )
    result = hook.send_request(body, spool_images=True)
    assert [image.b64_json for image in result.images] == [None, None, None]
    served_digests = {image["sha256"] for image in seedream_emulator.images()}
    for image in result.images:
        spool, decoded = image.spool
        spool.seek(0)
        assert hashlib.sha256(spool.read()).hexdigest() == decoded.sha256
        assert decoded.sha256 in served_digests
        buffer = io.BytesIO()
        assert hook.download_image(image, buffer).sha256 == decoded.sha256
    assert result.usage["generated_images"] == 3


def test_downloads_go_through_the_environments_proxy(hook, seedream_emulator, monkeypatch):
    import http.server
    import threading
    import urllib.request

    relayed: list[str] = []

    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # a forward proxy gets the absolute URL in the request line
            relayed.append(self.path)
            direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with direct.open(self.path) as upstream:
                body = upstream.read()
                self.send_response(upstream.status)
                self.send_header("Content-Type", upstream.headers["Content-Type"])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    [image] = hook.generate_images("a kite behind a proxy", size="2K").images
    served_digests = {served["sha256"] for served in seedream_emulator.images()}
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")
        downloaded = hook.download_image(image, io.BytesIO())
    finally:
        proxy.shutdown()
    assert relayed == [image.url], "the signed link went through the proxy, exactly as received"
    assert downloaded.sha256 in served_digests


# -- streaming ---------------------------------------------------------------------------------


GROUP = {"sequential_image_generation": "auto", "sequential_image_generation_options": {"max_images": 3}}


def test_a_streamed_group_yields_each_image_then_the_usage(hook, seedream_emulator):
    events = list(hook.generate_images("a streamed comic strip", size="2K", stream=True, **GROUP))
    assert [event.type for event in events] == [
        "image_generation.partial_succeeded",
        "image_generation.partial_succeeded",
        "image_generation.partial_succeeded",
        "image_generation.completed",
    ]
    assert [event.image.index for event in events[:3]] == [0, 1, 2]
    assert events[-1].usage["generated_images"] == 3
    served = {image["sha256"] for image in seedream_emulator.images()}
    for event in events[:3]:
        assert hook.download_image(event.image, io.BytesIO()).sha256 in served


def test_a_streamed_per_item_failure_keeps_the_other_images(hook, seedream_emulator):
    events = list(hook.generate_images("a streamed strip [item-error]", size="2K", stream=True, **GROUP))
    failed = [event for event in events if event.type == "image_generation.partial_failed"]
    assert len(failed) == 1 and failed[0].image.error_code == "OutputImageSensitiveContentDetected"
    assert sum(event.type == "image_generation.partial_succeeded" for event in events) == 2


def test_a_streamed_request_is_checked_before_anything_is_sent(hook, seedream_emulator):
    with pytest.raises(SeedreamValidationError, match="size"):
        hook.generate_images("a strip", size="9x9000", stream=True, **GROUP)
    assert seedream_emulator.stats()["generation_requests"] == 0


def test_an_abandoned_stream_closes_its_connection(hook, seedream_emulator):
    seedream_emulator.configure(latency=0.2)
    events = hook.generate_images("a long strip", size="2K", stream=True, **{
        "sequential_image_generation": "auto", "sequential_image_generation_options": {"max_images": 10},
    })
    first = next(events)
    assert first.image.index == 0
    events.close()  # the caller stops reading
    deadline = time.monotonic() + 30
    while seedream_emulator.stats()["generation_in_flight"]:
        assert time.monotonic() < deadline, "the emulator never saw the client leave"
        time.sleep(0.05)
    stats = seedream_emulator.stats()
    assert stats["abandoned"] == 1, "the emulator saw the client leave mid-stream, not a stream read to its end"
    assert stats["generation_status"] == {}, "the stream never reached its completed event"


def test_a_stream_s_read_timeout_applies_between_images_not_to_the_whole_group(seedream_emulator):
    # 8 images, one every 0.5 s: 4 s in all, against a read timeout of 2.5 s.
    seedream_emulator.configure(latency=0.5)
    hook = SeedreamHook(**{**FAST, "timeout": 2.5})
    group = {"sequential_image_generation": "auto", "sequential_image_generation_options": {"max_images": 8}}
    events = list(hook.generate_images("a slow strip", size="2K", stream=True, **group))
    assert sum(1 for event in events if event.image is not None) == 8
    # An image later than the read timeout is an unknown outcome, not sent again.
    seedream_emulator.configure(latency=4.0)
    with pytest.raises(SeedreamUnknownOutcomeError, match="read timeout of 2.5 s"):
        list(hook.generate_images("a slower strip", size="2K", stream=True, **group))
    assert seedream_emulator.stats()["generation_requests"] == 2


def test_a_stream_that_breaks_off_is_an_unknown_outcome_after_its_images(hook, seedream_emulator):
    seedream_emulator.configure(script=["reset"], fault_seed=3)
    received = []
    with pytest.raises(SeedreamUnknownOutcomeError, match="stream broke off|stream ended"):
        for event in hook.generate_images("a strip cut short", size="2K", stream=True, **{
            "sequential_image_generation": "auto", "sequential_image_generation_options": {"max_images": 6},
        }):
            received.append(event)
    assert all(event.type == "image_generation.partial_succeeded" for event in received)
    assert seedream_emulator.stats()["generation_requests"] == 1, "a broken stream is not sent again"
