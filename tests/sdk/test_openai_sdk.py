"""The openai SDK against the emulator's ``/v1``: as CometAPI's users call the service.

Seedream's own fields go through ``extra_body``; the SDK parses the answers into its own types
and maps error answers to its own exceptions.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import openai
import pytest

from airflow_provider_seedream.emulator import EmulatorServer
from tests.sdk.support import API_KEY, SEEDREAM_5, SMALL_MODEL, download, picture, sha256


@pytest.fixture
def client(seedream_emulator: EmulatorServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=seedream_emulator.url + "/v1", api_key=API_KEY, max_retries=0) as sdk:
        yield sdk


def test_url(client: openai.OpenAI, seedream_emulator: EmulatorServer) -> None:
    answer = client.images.generate(model=SMALL_MODEL, prompt="a red kite", size="96x64")
    [image] = answer.data
    assert image.size == "96x64"
    data = download(image.url)
    assert picture(data) == ("JPEG", (96, 64))
    assert [record["sha256"] for record in seedream_emulator.images()] == [sha256(data)]
    assert answer.usage.generated_images == 1
    assert answer.usage.output_tokens == answer.usage.total_tokens == 96 * 64 // 256
    assert answer.created > 0


def test_b64_json_and_output_format(client: openai.OpenAI) -> None:
    answer = client.images.generate(
        model=SMALL_MODEL,
        prompt="a red kite",
        size="96x64",
        response_format="b64_json",
        extra_body={"output_format": "png"},
    )
    [image] = answer.data
    assert image.url is None
    assert picture(base64.b64decode(image.b64_json)) == ("PNG", (96, 64))


def test_group_mode(client: openai.OpenAI, seedream_emulator: EmulatorServer) -> None:
    answer = client.images.generate(
        model=SMALL_MODEL,
        prompt="four seasons of one tree",
        size="96x64",
        extra_body={"sequential_image_generation": "auto", "sequential_image_generation_options": {"max_images": 4}},
    )
    blobs = [download(image.url) for image in answer.data]
    assert len({sha256(blob) for blob in blobs}) == 4
    assert answer.usage.generated_images == 4
    assert all(record["answered"] for record in seedream_emulator.images())


def test_refused_prompt_is_a_bad_request(client: openai.OpenAI, seedream_emulator: EmulatorServer) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.generate(model=SMALL_MODEL, prompt="a [refuse] picture", size="96x64")
    assert raised.value.status_code == 400
    assert raised.value.code == "InputTextSensitiveContentDetected"
    assert raised.value.param == "prompt"
    assert seedream_emulator.stats()["images_generated"] == 0


def test_bad_size_is_invalid_parameter(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.generate(model=SEEDREAM_5, prompt="a red kite", size="100x100")
    assert (raised.value.code, raised.value.param, raised.value.type) == ("InvalidParameter", "size", "BadRequest")
    assert "3,686,400" in raised.value.message
    assert raised.value.request_id or raised.value.response.headers["x-request-id"]
