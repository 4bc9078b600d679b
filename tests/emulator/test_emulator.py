"""The emulator over real HTTP: an EmulatorServer in a thread, ``requests`` as the client."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from airflow_provider_seedream.emulator import EmulatorConfig, EmulatorServer
from airflow_provider_seedream.emulator.images import ImageCache
from airflow_provider_seedream.emulator.painting import PictureSpec, layout
from tests.emulator.support import (
    ACCESS_DENIED,
    AUTH,
    IMPATIENT,
    SEEDREAM_4,
    SEEDREAM_5,
    SMALL_MODEL,
    V1,
    V3,
    generate,
    settled_stats,
    sha256,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- auth and paths ----------------------------------------------------------------------


def test_missing_or_malformed_key_is_401(emulator: EmulatorServer) -> None:
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Basic abc"}):
        response = generate(emulator, headers=headers)
        assert response.status_code == 401
        error = response.json()["error"]
        assert error["code"] == "AuthenticationError"
        assert error["type"] == "Unauthorized"
        assert response.headers["x-request-id"] in error["message"]


def test_configured_api_key_is_the_only_one_accepted(emulator: EmulatorServer) -> None:
    emulator.configure(api_key="s3cret")
    assert generate(emulator).status_code == 401
    assert generate(emulator, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert emulator.stats()["generation_status"] == {"401": 1, "200": 1}


@pytest.mark.parametrize("path", [V1, V3])
def test_both_paths_generate(emulator: EmulatorServer, path: str) -> None:
    sent = int(time.time())
    response = generate(emulator, path=path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"]
    body = response.json()
    assert body["model"] == SMALL_MODEL
    assert sent <= body["created"] <= time.time()
    assert body["usage"] == {"generated_images": 1, "output_tokens": 64 * 48 // 256, "total_tokens": 64 * 48 // 256}
    assert body["data"][0]["size"] == "64x48"


# --- validation ---------------------------------------------------------------------------


def test_validation_error_has_the_service_shape(emulator: EmulatorServer) -> None:
    response = generate(emulator, model=SEEDREAM_5, size="100x100")
    assert response.status_code == 400
    request_id = response.headers["x-request-id"]
    error = response.json()["error"]
    assert error["code"] == "InvalidParameter"
    assert error["param"] == "size"
    assert error["type"] == "BadRequest"
    assert error["message"].startswith("size: ")
    assert error["message"].endswith(f"Request id: {request_id}")


def test_missing_fields_and_malformed_json(emulator: EmulatorServer) -> None:
    missing = requests.post(emulator.url + V1, json={"prompt": "x"}, headers=AUTH, timeout=10)
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "MissingParameter"
    assert missing.json()["error"]["param"] == "model"

    malformed = requests.post(emulator.url + V1, data=b"{not json", headers=AUTH, timeout=10)
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == "InvalidParameter"

    bad_format = generate(emulator, response_format="binary")
    assert bad_format.json()["error"]["param"] == "response_format"
    stats = emulator.stats()
    assert stats["generation_requests"] == 3
    assert stats["generation_status"] == {"400": 3}
    assert stats["images_generated"] == 0


# --- images -------------------------------------------------------------------------------


def test_url_download_matches_the_record(emulator: EmulatorServer) -> None:
    item = generate(emulator, output_format="png").json()["data"][0]
    download = requests.get(item["url"], timeout=10)
    assert download.status_code == 200
    assert download.headers["content-type"] == "image/png"
    assert int(download.headers["content-length"]) == len(download.content)
    [record] = emulator.images()
    assert record["sha256"] == sha256(download.content)
    assert record["bytes"] == len(download.content)
    assert (record["format"], record["size"]) == ("png", "64x48")
    assert record["prompt_sha256"] == sha256(b"a lighthouse at dawn")
    assert "prompt" not in record and "url" not in record
    stats = emulator.stats()
    assert (stats["downloads"], stats["downloads_ok"]) == (1, 1)


def test_b64_json_holds_the_image(emulator: EmulatorServer) -> None:
    body = generate(emulator, response_format="b64_json", size="96x64").json()
    item = body["data"][0]
    assert set(item) == {"b64_json", "size"}
    data = base64.b64decode(item["b64_json"])
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        assert image.size == (96, 64)
    assert emulator.images()[0]["sha256"] == sha256(data)


@pytest.mark.parametrize(
    ("model", "size", "output_format", "expected_size", "expected_format"),
    [
        (SEEDREAM_4, "1K", None, (1024, 1024), "JPEG"),
        (SEEDREAM_4, "1280x960", "png", (1280, 960), "JPEG"),
        (SEEDREAM_5, "2K", "png", (2048, 2048), "PNG"),
        (SMALL_MODEL, "320x200", "png", (320, 200), "PNG"),
        (SMALL_MODEL, "200x320", "jpeg", (200, 320), "JPEG"),
        ("doubao-seededit-3-0-i2i-250628", "adaptive", None, (1024, 1024), "JPEG"),
    ],
)
def test_sizes_and_formats(
    emulator: EmulatorServer,
    model: str,
    size: str,
    output_format: str | None,
    expected_size: tuple[int, int],
    expected_format: str,
) -> None:
    extra = {"output_format": output_format} if output_format else {}
    response = generate(emulator, model=model, size=size, **extra)
    assert response.status_code == 200, response.text
    item = response.json()["data"][0]
    assert item["size"] == "{}x{}".format(*expected_size)
    data = requests.get(item["url"], timeout=30).content
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == expected_size
        assert image.format == expected_format
        image.load()


def test_4k_jpeg_has_a_realistic_file_size(emulator: EmulatorServer) -> None:
    item = generate(emulator, model=SEEDREAM_5, size="4K").json()["data"][0]
    data = requests.get(item["url"], timeout=60).content
    assert len(data) > 3_000_000
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (4096, 4096)


@pytest.mark.parametrize("output_format", ["png", "jpeg"])
def test_tagged_images_are_valid_and_unique(emulator: EmulatorServer, output_format: str) -> None:
    body = generate(
        emulator,
        output_format=output_format,
        sequential_image_generation="auto",
        sequential_image_generation_options={"max_images": 3},
    ).json()
    blobs = [requests.get(item["url"], timeout=10).content for item in body["data"]]
    assert len({sha256(blob) for blob in blobs}) == 3
    records = {record["id"]: record for record in emulator.images()}
    for blob in blobs:
        with Image.open(io.BytesIO(blob)) as image:
            image.load()
            comment = image.info.get("Comment") if output_format == "png" else image.info.get("comment", b"").decode()
            image_id = comment.split("id=")[1].split()[0]
        with Image.open(io.BytesIO(blob)) as image:
            image.verify()
        assert records[image_id]["sha256"] == sha256(blob)


def test_group_mode_returns_max_images(emulator: EmulatorServer) -> None:
    body = generate(
        emulator, sequential_image_generation="auto", sequential_image_generation_options={"max_images": 4}
    ).json()
    assert len(body["data"]) == 4
    assert body["usage"]["generated_images"] == 4
    default = generate(emulator, sequential_image_generation="auto").json()
    assert len(default["data"]) == 15
    disabled = generate(
        emulator, sequential_image_generation="disabled", sequential_image_generation_options={"max_images": 4}
    ).json()
    assert len(disabled["data"]) == 1
    assert emulator.stats()["images_generated"] == 20
    assert len(emulator.images()) == 20


# --- signed links -------------------------------------------------------------------------


def test_signed_url_works_only_as_received(emulator: EmulatorServer) -> None:
    url = generate(emulator).json()["data"][0]["url"]
    base, _, query = url.partition("?")
    assert "&" in query and "%2F" in query and "X-Tos-Signature=" in query
    assert requests.get(url, timeout=10).status_code == 200
    mangled = [
        url.split("&")[0],  # cut at the first '&'
        url.replace("%2F", "/"),  # unescaped
        url.replace("%", "%25"),  # escaped again
        base,  # no query at all
        url + "&extra=1",
    ]
    for bad in mangled:
        response = requests.get(bad, timeout=10)
        assert response.status_code == 403
        assert response.content == ACCESS_DENIED
    assert requests.get(url, timeout=10).status_code == 200
    stats = emulator.stats()
    assert stats["faults"]["denied"] == len(mangled)
    assert (stats["downloads"], stats["downloads_ok"]) == (len(mangled) + 2, 2)


def test_expired_link_is_denied(emulator: EmulatorServer) -> None:
    emulator.configure(url_ttl=0)
    url = generate(emulator).json()["data"][0]["url"]
    response = requests.get(url, timeout=10)
    assert response.status_code == 403
    assert response.content == ACCESS_DENIED


def test_unknown_file_is_404(emulator: EmulatorServer) -> None:
    assert requests.get(emulator.url + "/_emulator/files/nope.png?a=b", timeout=10).status_code == 404


# --- faults -------------------------------------------------------------------------------


def test_generation_script_applies_in_order_and_bills_nothing_faulted(emulator: EmulatorServer) -> None:
    emulator.configure(script=["429", "500", "quota", "ok"], retry_after=0.25)
    burst, internal, quota, fine = (generate(emulator) for _ in range(4))
    assert burst.status_code == 429
    assert burst.json()["error"]["code"] == "RequestBurstTooFast"
    assert burst.headers["retry-after"] == "0.25"
    assert internal.status_code == 500
    assert internal.json()["error"]["code"] == "InternalServiceError"
    assert quota.status_code == 429
    assert quota.json()["error"]["code"] == "QuotaExceeded"
    assert "retry-after" not in quota.headers
    assert fine.status_code == 200
    stats = emulator.stats()
    assert stats["generation_status"] == {"429": 2, "500": 1, "200": 1}
    assert {key: stats["faults"][key] for key in ("429", "500", "quota")} == {"429": 1, "500": 1, "quota": 1}
    assert stats["images_generated"] == 1
    assert emulator.get_config()["script"] == []


def test_quota_exceeded_knob(emulator: EmulatorServer) -> None:
    emulator.configure(quota_exceeded=True)
    assert generate(emulator).json()["error"]["code"] == "QuotaExceeded"
    emulator.configure(quota_exceeded=False)
    assert generate(emulator).status_code == 200


@pytest.mark.parametrize("bill_abandoned", [True, False])
def test_reset_breaks_the_connection(emulator: EmulatorServer, bill_abandoned: bool) -> None:
    emulator.configure(script=["reset"], bill_abandoned=bill_abandoned)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        generate(emulator)
    assert generate(emulator).status_code == 200
    stats = emulator.stats()
    assert stats["faults"]["reset"] == 1
    assert stats["generation_requests"] == 2
    assert stats["generation_status"] == {"200": 1}
    # The model made the broken request's image before the connection broke, when billing it.
    assert stats["images_generated"] == (2 if bill_abandoned else 1)
    assert stats["billed_unanswered"] == (1 if bill_abandoned else 0)
    assert [image["answered"] for image in emulator.images()] == ([False, True] if bill_abandoned else [True])


def test_cut_after_lets_the_first_items_of_an_answer_arrive_whole(emulator: EmulatorServer) -> None:
    emulator.configure(script=["reset"], cut_after=2)
    body = {"sequential_image_generation": "auto", "sequential_image_generation_options": {"max_images": 4}}
    raw = requests.post(
        emulator.url + "/v1/images/generations", headers=AUTH, stream=True, timeout=30,
        json={"model": SMALL_MODEL, "prompt": "a set of four", "size": "64x48", **body},
    ).raw
    arrived = b""
    with pytest.raises(Exception, match="IncompleteRead"):
        while chunk := raw.read1(65536):
            arrived += chunk
    text = arrived.decode()
    assert text.startswith('{"created": ') and text.count('"url": ') == 2 and text.endswith("}, ")
    stats = settled_stats(emulator, requests_sent=1)
    assert stats["images_generated"] == 4 and stats["billed_unanswered"] == 2
    assert [image["answered"] for image in emulator.images()] == [True, True, False, False]


@pytest.mark.parametrize("bill_abandoned", [True, False])
def test_slow_request_abandoned_by_the_client(emulator: EmulatorServer, bill_abandoned: bool) -> None:
    # Far longer than the client waits: only the client's leaving ends this request.
    emulator.configure(script=["slow", "slow"], slow_seconds=600, bill_abandoned=bill_abandoned)
    with pytest.raises(requests.exceptions.ReadTimeout):
        generate(emulator, timeout=IMPATIENT)
    stats = settled_stats(emulator, requests_sent=1)
    assert stats["abandoned"] == 1
    assert stats["images_generated"] == stats["billed_unanswered"] == (1 if bill_abandoned else 0)
    assert stats["generation_status"] == {}

    emulator.configure(slow_seconds=0.3)
    started = time.monotonic()
    assert generate(emulator).status_code == 200
    assert time.monotonic() - started >= 0.3, "a slow answer waits slow_seconds"
    stats = emulator.stats()
    assert stats["faults"]["slow"] == 2
    assert stats["abandoned"] == 1
    assert stats["images_generated"] == (2 if bill_abandoned else 1)
    assert stats["billed_unanswered"] == (1 if bill_abandoned else 0)


def test_random_faults_follow_the_seed(emulator: EmulatorServer) -> None:
    def run() -> list[int]:
        emulator.reset()
        emulator.configure(fault_seed=42, rate_429=0.3, rate_500=0.2, retry_after=0)
        return [generate(emulator).status_code for _ in range(20)]

    first = run()
    assert first == run()
    assert {429, 500, 200} <= set(first)
    stats = emulator.stats()
    assert stats["faults"]["429"] == first.count(429)
    assert stats["faults"]["500"] == first.count(500)
    assert stats["images_generated"] == first.count(200)


def test_refuse_marker(emulator: EmulatorServer) -> None:
    response = generate(emulator, prompt="a [refuse] picture")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "InputTextSensitiveContentDetected"
    assert emulator.stats()["faults"]["refused"] == 1


def test_item_errors(emulator: EmulatorServer) -> None:
    body = generate(
        emulator,
        prompt="three views [item-error]",
        sequential_image_generation="auto",
        sequential_image_generation_options={"max_images": 3},
    ).json()
    assert [("url" in item, "error" in item) for item in body["data"]] == [(True, False), (True, False), (False, True)]
    assert body["data"][2]["error"]["code"] == "OutputImageSensitiveContentDetected"
    assert body["usage"]["generated_images"] == 2
    assert body["usage"]["output_tokens"] == 2 * 64 * 48 // 256
    emulator.configure(rate_item_error=1.0)
    single = generate(emulator).json()
    assert "error" in single["data"][0]
    assert single["usage"]["generated_images"] == 0
    stats = emulator.stats()
    assert (stats["images_generated"], stats["item_errors"]) == (2, 2)


def test_download_faults(emulator: EmulatorServer) -> None:
    url = generate(emulator, size="640x480").json()["data"][0]["url"]
    emulator.configure(download_script=["truncate", "500", "ok"])
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(url, timeout=10)
    failed = requests.get(url, timeout=10)
    assert failed.status_code == 500
    assert requests.get(url, timeout=10).status_code == 200
    emulator.configure(rate_truncate=1.0)
    with requests.get(url, timeout=10, stream=True) as response:
        declared = int(response.headers["content-length"])
        received = 0
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            for chunk in response.iter_content(4096):
                received += len(chunk)
        assert 0 < received < declared
    stats = emulator.stats()
    assert stats["faults"]["truncate"] == 2
    assert stats["faults"]["download_500"] == 1
    assert (stats["downloads"], stats["downloads_ok"]) == (4, 1)


def test_latency_overlaps_between_requests(emulator: EmulatorServer) -> None:
    emulator.configure(latency=3.0)
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda: statuses.append(generate(emulator).status_code)) for _ in range(6)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 6
    assert time.monotonic() - started >= 3.0, "each answer waits the latency"
    # Requests that waited their latency one after another would never be in flight together.
    assert emulator.stats()["generation_in_flight_peak"] == 6


# --- reference images ---------------------------------------------------------------------


def test_reference_images_are_fetched_and_checked(emulator: EmulatorServer) -> None:
    image_url = generate(emulator).json()["data"][0]["url"]
    assert generate(emulator, image=[image_url]).status_code == 200

    not_an_image = generate(emulator, image=emulator.url + "/_emulator/health")
    assert not_an_image.status_code == 400
    assert not_an_image.json()["error"]["code"] == "InvalidImageURL.ImageDownloadFailed"
    missing = generate(emulator, image=[image_url, emulator.url + "/_emulator/files/gone.png"])
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "image[1]"

    emulator.configure(fetch_references=False)
    assert generate(emulator, image=emulator.url + "/_emulator/health").status_code == 200
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 24).decode()
    assert generate(emulator, image=f"data:image/png;base64,{png}").status_code == 200
    stats = emulator.stats()
    assert stats["references"] == 6
    assert stats["reference_requests"] == 5


# --- control API --------------------------------------------------------------------------


def test_runtime_config_and_reset(emulator: EmulatorServer) -> None:
    config = emulator.get_config()
    assert config["fault_seed"] == 1
    assert config["rate_429"] == 0.0
    assert config["bill_abandoned"] is True
    changed = emulator.configure(rate_429=0.5, latency=0.01, script=["ok", "500"])
    assert (changed["rate_429"], changed["latency"], changed["script"]) == (0.5, 0.01, ["ok", "500"])
    with pytest.raises(ValueError, match="unknown knob"):
        emulator.configure(no_such_knob=1)
    with pytest.raises(ValueError, match="rate_500"):
        emulator.configure(rate_500=2)
    with pytest.raises(ValueError, match="script"):
        emulator.configure(script=["explode"])
    with pytest.raises(ValueError, match="bill_abandoned must be true or false"):
        emulator.configure(bill_abandoned="yes")
    assert emulator.configure(bill_abandoned=False)["bill_abandoned"] is False
    raw = requests.post(emulator.url + "/_emulator/config", data=b"[1]", timeout=10)
    assert raw.status_code == 400
    generate(emulator)
    emulator.reset()
    assert emulator.get_config() == config
    stats = emulator.stats()
    assert stats["generation_requests"] == 0
    assert stats["billed_unanswered"] == stats["abandoned"] == stats["generation_in_flight"] == 0
    assert set(stats["faults"]) == {
        "429",
        "500",
        "503",
        "502",
        "504",
        "reset",
        "stream_error",
        "slow",
        "truncate",
        "download_500",
        "denied",
        "quota",
        "spending_cap",
        "overdue",
        "refused",
        "rate_limited",
    }
    assert emulator.images() == []
    assert requests.get(emulator.url + "/_emulator/health", timeout=10).json()["status"] == "ok"


def test_concurrent_first_requests_render_once() -> None:
    cache = ImageCache()
    spec = PictureSpec(400, 300, "png", sha256(b"p"), 0, "p")
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.picture(spec))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    bands = layout(400, 300).bands
    assert cache.captions == 1
    assert 1 <= cache.renders <= bands - 1, "each background band is drawn once, whoever asks first"
    assert len({b"".join(picture.parts) for picture in results}) == 1


# --- command line and pytest plugin -------------------------------------------------------


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env


def test_cli_serves_until_interrupted() -> None:
    port = free_port()
    command = [
        sys.executable, "-m", "airflow_provider_seedream.emulator", "--port", str(port),
        "--rate-429", "1", "--retry-after", "3", "--rate-502", "0", "--no-bill-abandoned", "--log-level", "warning",
    ]  # fmt: skip
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_environment()
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line.strip() == f"Seedream emulator ready at http://127.0.0.1:{port}"
            url = f"http://127.0.0.1:{port}"
            assert requests.get(url + "/_emulator/health", timeout=10).json()["status"] == "ok"
            response = requests.post(url + V1, json={"model": SMALL_MODEL, "prompt": "x"}, headers=AUTH, timeout=10)
            assert (response.status_code, response.headers["retry-after"]) == (429, "3")
            config = requests.get(url + "/_emulator/config", timeout=10).json()
            assert (config["bill_abandoned"], config["rate_429"], config["rate_502"]) == (False, 1.0, 0.0)
        finally:
            process.send_signal(signal.SIGINT)
            try:
                _, errors = process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                _, errors = process.communicate()
    assert process.returncode == 0, errors


def test_pytest_plugin_fixtures(tmp_path: Path) -> None:
    (tmp_path / "test_inner.py").write_text(
        textwrap.dedent(
            """
            import requests

            def test_first(seedream_emulator):
                seedream_emulator.configure(rate_500=1.0)
                response = requests.post(
                    seedream_emulator.url + "/v1/images/generations",
                    json={"model": "m", "prompt": "p", "size": "32x32"},
                    headers={"Authorization": "Bearer k"},
                )
                assert response.status_code == 500

            def test_second_starts_clean(seedream_emulator, seedream_emulator_server):
                assert seedream_emulator is seedream_emulator_server
                assert seedream_emulator.get_config()["rate_500"] == 0.0
                assert seedream_emulator.stats()["generation_requests"] == 0
            """
        )
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:seedream_emulator",
            "-p",
            "airflow_provider_seedream.emulator.pytest_plugin",
            str(tmp_path / "test_inner.py"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_environment(),
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_config_rejects_bad_values_at_start() -> None:
    with pytest.raises(ValueError, match=r"rate_429 \+ rate_500 \+ .* must be at most 1"):
        EmulatorConfig(rate_429=0.7, rate_500=0.7)
    with pytest.raises(ValueError, match=r"rate_429 \+ rate_500 \+ .* must be at most 1"):
        EmulatorConfig(rate_503=0.4, rate_502=0.4, rate_504=0.4)
    with pytest.raises(ValueError, match="rate_504 must be from 0 to 1, got 1.5"):
        EmulatorConfig(rate_504=1.5)
    with pytest.raises(ValueError, match="latency must not be negative, got -1"):
        EmulatorConfig(latency=-1)
    with pytest.raises(ValueError, match="bill_abandoned must be true or false, got 1"):
        EmulatorConfig(bill_abandoned=1)  # type: ignore[arg-type]
    assert json.loads(json.dumps(EmulatorConfig().to_dict()))["url_ttl"] == 86400.0


def test_the_model_list_is_free_and_needs_the_key(emulator: EmulatorServer) -> None:
    from airflow_provider_seedream.validation import KNOWN_MODELS

    emulator.configure(api_key="the-key")
    listed = requests.get(emulator.url + "/v1/models", headers={"Authorization": "Bearer the-key"}, timeout=10)
    assert listed.status_code == 200 and listed.json()["object"] == "list"
    assert [model["id"] for model in listed.json()["data"]] == list(KNOWN_MODELS)
    refused = requests.get(emulator.url + "/v1/models", headers={"Authorization": "Bearer another"}, timeout=10)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "AuthenticationError"
    assert emulator.stats()["generation_requests"] == 0


def test_the_emulator_refuses_what_a_model_family_cannot_do(emulator: EmulatorServer) -> None:
    pro = "doubao-seedream-5-0-pro-260628"
    group = {"sequential_image_generation": "auto", "sequential_image_generation_options": {"max_images": 3}}
    refused = generate(emulator, model=pro, size="2K", **group)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "InvalidParameter" and error["param"] == "sequential_image_generation"
    assert generate(emulator, model=pro, size="4K").json()["error"]["param"] == "size"
    assert generate(emulator, model=pro, size="2K").status_code == 200
    assert emulator.stats()["images_generated"] == 1


@pytest.mark.parametrize(
    ("model", "taken", "refused"),
    [
        ("doubao-seedream-5-0-pro-260628", ["1K", "2K"], ["3K", "4K"]),
        ("doubao-seedream-5-0-260128", ["2K", "3K", "4K"], ["1K"]),
        ("seedream-5-0-260128", ["2K"], ["1K"]),
        ("doubao-seedream-4-5-251128", ["2K", "4K"], ["1K", "3K"]),
        ("doubao-seedream-4-0-250828", ["1K", "2K", "4K"], ["3K"]),
    ],
)
def test_each_family_takes_its_own_size_presets(emulator: EmulatorServer, model, taken, refused) -> None:
    from airflow_provider_seedream.exceptions import SeedreamValidationError
    from airflow_provider_seedream.validation import validate_request

    for size in refused:
        with pytest.raises(SeedreamValidationError, match=rf"^size: {model} \(.*\) takes the presets {', '.join(taken)}"):
            validate_request({"model": model, "prompt": "a kite", "size": size})
        answer = generate(emulator, model=model, size=size)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "size", (model, size)
    for size in taken:
        validate_request({"model": model, "prompt": "a kite", "size": size})
    assert emulator.stats()["images_generated"] == 0
