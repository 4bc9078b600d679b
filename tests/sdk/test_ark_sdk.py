"""VolcEngine's Ark SDK (``volcenginesdkarkruntime``) against the emulator's ``/api/v3``.

The SDK sends every field its caller left unset as JSON ``null`` (the service reads that as
absent), wants Seedream's option objects as its own models, and reads a stream of server-sent
events into its own event types. At an event that carries an ``error`` (a ``partial_failed``
image) it raises :class:`~volcenginesdkarkruntime._exceptions.ArkAPIError`: the images
yielded before it are all a caller of this SDK gets.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from volcenginesdkarkruntime import Ark
from volcenginesdkarkruntime._exceptions import ArkAPIError, ArkBadRequestError
from volcenginesdkarkruntime.types.images import SequentialImageGenerationOptions

from airflow_provider_seedream.emulator import EmulatorServer
from tests.sdk.support import API_KEY, SEEDREAM_5, SMALL_MODEL, download, picture, sha256

SUCCEEDED = "image_generation.partial_succeeded"
COMPLETED = "image_generation.completed"


@pytest.fixture
def ark(seedream_emulator: EmulatorServer) -> Iterator[Ark]:
    client = Ark(base_url=seedream_emulator.url + "/api/v3", api_key=API_KEY, max_retries=0)
    try:
        yield client
    finally:
        client.close()


def group(max_images: int) -> dict[str, object]:
    return {
        "sequential_image_generation": "auto",
        "sequential_image_generation_options": SequentialImageGenerationOptions(max_images=max_images),
    }


def test_only_model_and_prompt_gets_the_defaults(ark: Ark) -> None:
    # Every other field goes out as null: once answered 400 "output_format ... got None".
    answer = ark.images.generate(model=SEEDREAM_5, prompt="a lighthouse at dawn")
    [image] = answer.data
    assert image.size == "2048x2048"
    assert picture(download(image.url)) == ("JPEG", (2048, 2048))
    assert answer.usage.generated_images == 1
    assert answer.model == SEEDREAM_5


def test_url(ark: Ark, seedream_emulator: EmulatorServer) -> None:
    answer = ark.images.generate(model=SMALL_MODEL, prompt="a red kite", size="96x64", watermark=False)
    [image] = answer.data
    data = download(image.url)
    assert picture(data) == ("JPEG", (96, 64))
    assert [record["sha256"] for record in seedream_emulator.images()] == [sha256(data)]
    assert answer.usage.output_tokens == 96 * 64 // 256


def test_b64_json_and_output_format(ark: Ark) -> None:
    answer = ark.images.generate(
        model=SMALL_MODEL, prompt="a red kite", size="96x64", response_format="b64_json", output_format="png"
    )
    assert picture(base64.b64decode(answer.data[0].b64_json)) == ("PNG", (96, 64))


def test_group_mode(ark: Ark) -> None:
    answer = ark.images.generate(model=SMALL_MODEL, prompt="four seasons of one tree", size="96x64", **group(4))
    assert len({sha256(download(image.url)) for image in answer.data}) == 4
    assert answer.usage.generated_images == 4


def test_refused_prompt_is_a_bad_request(ark: Ark) -> None:
    with pytest.raises(ArkBadRequestError) as raised:
        ark.images.generate(model=SMALL_MODEL, prompt="a [refuse] picture", size="96x64")
    assert raised.value.status_code == 400
    assert raised.value.code == "InputTextSensitiveContentDetected"


def test_bad_size_is_invalid_parameter(ark: Ark) -> None:
    with pytest.raises(ArkBadRequestError) as raised:
        ark.images.generate(model=SEEDREAM_5, prompt="a red kite", size="100x100")
    assert (raised.value.status_code, raised.value.code, raised.value.param) == (400, "InvalidParameter", "size")


@pytest.mark.parametrize("response_format", ["url", "b64_json"])
def test_stream(ark: Ark, seedream_emulator: EmulatorServer, response_format: str) -> None:
    seedream_emulator.configure(latency=0.05)
    with ark.images.generate(
        model=SMALL_MODEL, prompt="three views", size="96x64", response_format=response_format, stream=True, **group(3)
    ) as events:
        received = list(events)
    assert [event.type for event in received] == [SUCCEEDED] * 3 + [COMPLETED]
    images = received[:3]
    assert [event.image_index for event in images] == [0, 1, 2]
    assert all(event.size == "96x64" and event.model == SMALL_MODEL for event in images)
    if response_format == "url":
        blobs = [download(event.url) for event in images]
    else:
        blobs = [base64.b64decode(event.b64_json) for event in images]
    assert [sha256(blob) for blob in blobs] == [record["sha256"] for record in seedream_emulator.images()]
    # Both of the SDK's event models declare ``type: str``, so it reads `completed` into the first
    # one and leaves ``usage`` a plain dict.
    assert received[3].usage == {"generated_images": 3, "output_tokens": 72, "total_tokens": 72}
    stats = seedream_emulator.stats()
    assert (stats["generation_status"], stats["images_generated"], stats["billed_unanswered"]) == ({"200": 1}, 3, 0)


def test_stream_raises_at_a_failed_image(ark: Ark) -> None:
    received = []
    with pytest.raises(ArkAPIError, match="sensitive information"):
        with ark.images.generate(
            model=SMALL_MODEL, prompt="three views [item-error]", size="96x64", stream=True, **group(3)
        ) as events:
            for event in events:
                received.append(event)
    assert [event.image_index for event in received] == [0, 1]
