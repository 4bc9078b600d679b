"""JSON ``null`` means absent, for every optional field: in the shared validation and in the emulator.

VolcEngine's Ark SDK sends every field the caller left unset as ``null``.
"""

from __future__ import annotations

import io

import pytest
import requests
from PIL import Image

from airflow_provider_seedream.emulator import EmulatorServer
from airflow_provider_seedream.emulator.generation import image_count, resolve_format, resolve_size
from airflow_provider_seedream.exceptions import SeedreamValidationError
from airflow_provider_seedream.validation import requested_image_count, validate_request, without_nulls
from tests.emulator.support import AUTH, SEEDREAM_5, SMALL_MODEL, V3, generate

# What the Ark SDK's images.generate sends for a call naming only the model and prompt.
ARK_UNSET = {
    "image": None,
    "response_format": None,
    "size": None,
    "seed": None,
    "guidance_scale": None,
    "watermark": None,
    "optimize_prompt": None,
    "optimize_prompt_options": None,
    "sequential_image_generation": None,
    "sequential_image_generation_options": None,
    "tools": None,
    "output_format": None,
    "layer_decomposition": None,
    "stream": None,
}


def test_without_nulls_drops_null_fields_in_nested_objects_too() -> None:
    body = {"a": None, "b": 1, "options": {"max_images": None, "x": 2}, "list": [None]}
    assert without_nulls(body) == {"b": 1, "options": {"x": 2}, "list": [None]}


def test_validation_treats_null_as_absent() -> None:
    assert validate_request({"model": SEEDREAM_5, "prompt": "p", **ARK_UNSET}) == []
    group = {"model": SEEDREAM_5, "prompt": "p", "sequential_image_generation": "auto"}
    nulls = {**group, "sequential_image_generation_options": {"max_images": None}}
    assert validate_request(nulls) == validate_request(group), "the same warning as a missing max_images"
    assert requested_image_count(nulls) == requested_image_count(group) == 1
    assert requested_image_count({**group, "sequential_image_generation_options": {"max_images": 4}}) == 4
    validate_request({**group, "optimize_prompt_options": {"mode": None}, "image": None})


@pytest.mark.parametrize("field", ["model", "prompt"])
def test_a_required_field_set_to_null_is_missing(field: str) -> None:
    with pytest.raises(SeedreamValidationError) as raised:
        validate_request({"model": SEEDREAM_5, "prompt": "p", field: None})
    assert raised.value.field == field


def test_a_null_inside_a_list_is_still_invalid() -> None:
    with pytest.raises(SeedreamValidationError, match=r"image\[0\]"):
        validate_request({"model": SEEDREAM_5, "prompt": "p", "image": [None]})


def test_emulator_resolution_treats_null_as_absent() -> None:
    body = {"model": SEEDREAM_5, "prompt": "p", **ARK_UNSET}
    assert resolve_size(body) == (2048, 2048)
    assert resolve_format(body) == "jpeg"
    assert image_count(body) == 1
    group = {**body, "sequential_image_generation": "auto", "sequential_image_generation_options": {"max_images": None}}
    assert image_count(group) == 15


def test_ark_style_request_generates_the_defaults(emulator: EmulatorServer) -> None:
    body = {**ARK_UNSET, "model": SMALL_MODEL, "prompt": "every field null"}
    response = requests.post(emulator.url + V3, json=body, headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    item = response.json()["data"][0]
    assert item["size"] == "2048x2048" and "url" in item
    with Image.open(io.BytesIO(requests.get(item["url"], timeout=60).content)) as image:
        assert (image.format, image.size) == ("JPEG", (2048, 2048))


def test_null_options_in_group_mode(emulator: EmulatorServer) -> None:
    body = generate(
        emulator, sequential_image_generation="auto", sequential_image_generation_options={"max_images": None}
    ).json()
    assert len(body["data"]) == 15
    response = generate(emulator, model=None)
    assert response.status_code == 400
    assert (response.json()["error"]["code"], response.json()["error"]["param"]) == ("MissingParameter", "model")
