"""The request checks on their own: each refusal names its field and says what is allowed."""

from __future__ import annotations

import base64

import pytest

from airflow_provider_seedream.exceptions import SeedreamValidationError
from airflow_provider_seedream.validation import MAX_REFERENCE_BYTES, REFERENCE_FORMATS, check_reference

PNG_PAYLOAD = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 24).decode("ascii")


@pytest.mark.parametrize(
    "reference",
    [
        "https://example.com/a.png",
        "http://example.com/a.png",
        f"data:image/png;base64,{PNG_PAYLOAD}",
        *(f"data:image/{fmt};base64,{PNG_PAYLOAD}" for fmt in REFERENCE_FORMATS),
    ],
)
def test_a_url_or_a_data_uri_of_a_known_format_is_taken(reference):
    check_reference(reference)


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        (None, "image: must be an http(s) URL or a data URI 'data:image/<fmt>;base64,...'"),
        ("", "image: must be an http(s) URL or a data URI 'data:image/<fmt>;base64,...'"),
        (42, "image: must be an http(s) URL or a data URI 'data:image/<fmt>;base64,...'"),
        ("ftp://example.com/a.png", "image: must be an http(s) URL or a data URI 'data:image/<fmt>;base64,...', "
         "got 'ftp://example.com/a.png'..."),
        ("s3://bucket/a-very-long-key-name/of/an/image.png",
         "image: must be an http(s) URL or a data URI 'data:image/<fmt>;base64,...', got 's3://bucket/a-very-long-key-na'..."),
        ("data:text/plain;base64,AAAA", "image: data URI must look like 'data:image/<fmt>;base64,<data>' with a lowercase format"),
        ("data:image/PNG;base64,AAAA", "image: data URI must look like 'data:image/<fmt>;base64,<data>' with a lowercase format"),
        ("data:image/png,AAAA", "image: data URI must look like 'data:image/<fmt>;base64,<data>' with a lowercase format"),
        ("data:image/svg;base64,AAAA", "image: data URI format 'svg' is not one of jpeg, jpg, png, webp, bmp, tiff, gif, heic, heif"),
        ("data:image/png;base64,", "image: data URI payload is not valid base64"),
        ("data:image/png;base64,AAA", "image: data URI payload is not valid base64"),
        ("data:image/png;base64,AA@A", "image: data URI payload is not valid base64"),
        ("data:image/png;base64,AA==AA==", "image: data URI payload is not valid base64"),
        ("data:image/png;base64,====", "image: data URI payload is not valid base64"),
        ("data:image/png;base64,AAAA\n", "image: data URI payload is not valid base64"),
        ("data:image/png;base64,AAA\n", "image: data URI payload is not valid base64"),
        ("data:image/png;base64,AAAé", "image: data URI payload is not valid base64"),
    ],
)
def test_a_bad_reference_is_refused_naming_the_field(reference, message):
    with pytest.raises(SeedreamValidationError) as refused:
        check_reference(reference)
    assert str(refused.value) == message


def test_the_field_named_is_the_one_given():
    with pytest.raises(SeedreamValidationError, match=r"^image\[3\]: data URI payload is not valid base64$"):
        check_reference("data:image/png;base64,AAA", "image[3]")


def test_a_reference_over_30_mb_is_refused_and_one_at_the_limit_is_taken():
    at_limit = "A" * (MAX_REFERENCE_BYTES * 4 // 3)
    check_reference(f"data:image/png;base64,{at_limit}")
    over = at_limit + "AAAA"
    with pytest.raises(SeedreamValidationError) as refused:
        check_reference(f"data:image/png;base64,{over}")
    assert str(refused.value) == (
        f"image: reference image is {MAX_REFERENCE_BYTES + 3:,} bytes; at most {MAX_REFERENCE_BYTES:,} bytes (30 MB) "
        "are allowed"
    )


LITE = "doubao-seedream-5-0-260128"
SEEDREAM_3 = "doubao-seedream-3-0-t2i-250415"


def refusal(**fields) -> str:
    """The message ``validate_request`` refuses a body of ``fields`` (over a valid one) with."""
    from airflow_provider_seedream.validation import validate_request

    with pytest.raises(SeedreamValidationError) as refused:
        validate_request({"model": LITE, "prompt": "a kite", **fields})
    return str(refused.value)


def warnings_of(**fields) -> list[str]:
    from airflow_provider_seedream.validation import validate_request

    return validate_request({"model": LITE, "prompt": "a kite", **fields})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prompt": 42}, "prompt: must be a string, got int"),
        ({"size": 2048}, "size: must be a preset (1K, 2K, 3K, 4K) or 'WxH' such as '2048x2048'"),
        ({"size": "8193x512"}, "size: aspect ratio of 8193x512 must be between 1/16 and 16"),
        ({"model": SEEDREAM_3, "size": "2049x2048"}, "size: 2049x2048: seedream-3.0 allows each side from 512 to 2048"),
        ({"model": SEEDREAM_3, "size": "2048x2049"}, "size: 2048x2049: seedream-3.0 allows each side from 512 to 2048"),
        ({"model": SEEDREAM_3, "size": "511x512"}, "size: 511x512: seedream-3.0 allows each side from 512 to 2048"),
        ({"guidance_scale": float("nan")}, "guidance_scale: must be a number from 1.0 to 10.0, got nan"),
        ({"guidance_scale": float("inf")}, "guidance_scale: must be a number from 1.0 to 10.0, got inf"),
        ({"guidance_scale": 0.99}, "guidance_scale: must be from 1.0 to 10.0, got 0.99"),
        ({"guidance_scale": 10.01}, "guidance_scale: must be from 1.0 to 10.0, got 10.01"),
        ({"seed": -2}, "seed: must be from -1 to 2147483647, got -2"),
        ({"seed": 2_147_483_648}, "seed: must be from -1 to 2147483647, got 2147483648"),
        ({"seed": "7"}, "seed: must be an integer from -1 to 2147483647, got '7'"),
        ({"sequential_image_generation_options": [4]},
         "sequential_image_generation_options: must be an object such as {'max_images': 4}"),
        ({"sequential_image_generation_options": {"max_images": 0}},
         "sequential_image_generation_options.max_images: must be from 1 to 15, got 0"),
        ({"optimize_prompt_options": "fast"}, "optimize_prompt_options: must be an object such as {'mode': 'standard'}"),
        ({"image": ["https://example.com/a.png"] * 11, "model": "doubao-seedream-4-0-250828"},
         "image: doubao-seedream-4-0-250828 (seedream-4.0) takes at most 10 reference images, got 11"),
        ({"prompt": ""}, "prompt: must not be empty"),
        ({"image": []}, "image: must be a URL or data URI, or a non-empty list of them"),
        ({"image": ["https://example.com/a.png"] * 15}, "image: at most 14 reference images are allowed, got 15"),
        ({"size": "1919x1920"}, "size: 1919x1920 has 3,684,480 pixels; seedream-5.0 allows 3,686,400 to 16,777,216 pixels "
         "in total (e.g. 2048x2048)"),
        ({"size": "4097x4096"}, "size: 4097x4096 has 16,781,312 pixels; seedream-5.0 allows 3,686,400 to 16,777,216 pixels "
         "in total (e.g. 2048x2048)"),
        ({"tools": "web_search"}, "tools: must be a list of objects with a 'type', such as [{'type': 'web_search'}]"),
        ({"image": "data:image/png;base64,AAAA,AAAA"}, "image[0]: data URI payload is not valid base64"),
        ({"model": "doubao-seedream-5-0-pro-260628", "stream": True},
         "stream: doubao-seedream-5-0-pro-260628 (seedream-5.0-pro) makes one image per request and does not stream; "
         "remove stream or use a model that makes groups, such as 'doubao-seedream-5-0-260128'"),
    ],
)
def test_a_bad_field_is_refused_with_its_name_and_what_is_allowed(fields, message):
    assert refusal(**fields) == message


@pytest.mark.parametrize(
    "fields",
    [
        {"guidance_scale": 1.0},
        {"guidance_scale": 10.0},
        {"seed": -1},
        {"seed": 2_147_483_647},
        {"size": "8192x512"},
        {"size": "512x8192"},
        {"model": SEEDREAM_3, "size": "2048x2048"},
        {"model": SEEDREAM_3, "size": "512x512"},
        {"sequential_image_generation_options": {"max_images": 1}},
        {"sequential_image_generation_options": {"max_images": 15}},
        {"image": ["https://example.com/a.png"] * 10, "model": "doubao-seedream-4-0-250828"},
        {"image": ["https://example.com/a.png"] * 14},
        {"size": "1920x1920"},
        {"size": "4096x4096"},
        {"tools": [{"type": "web_search"}]},
        {"model": "doubao-seedream-5-0-pro-260628", "stream": False},
    ],
)
def test_a_value_at_the_edge_of_its_range_is_taken(fields):
    assert warnings_of(**fields) == []


def test_a_single_reference_counts_as_one_against_a_model_s_limit():
    from airflow_provider_seedream.validation import ModelLimits, _check_capabilities

    one_reference = ModelLimits("test", max_references=0)
    with pytest.raises(SeedreamValidationError, match=r"^image: m \(test\) takes at most 0 reference images, got 1$"):
        _check_capabilities({"image": "https://example.com/a.png"}, "m", one_reference)


def test_what_does_not_stop_a_request_is_said_as_a_warning():
    assert warnings_of(prompt="a" * 1000) == warnings_of(prompt="猫" * 300) == []
    assert len(warnings_of(prompt="猫" * 301)) == 1
    [long] = warnings_of(prompt="a" * 1001)
    assert "1001" in long or "1,001" in long
    [unknown] = warnings_of(model="my-own-model")
    assert unknown == "model 'my-own-model' is not one this package knows: only the checks every model shares apply"
    [group] = warnings_of(sequential_image_generation="auto")
    assert group == (
        "sequential_image_generation is 'auto' without sequential_image_generation_options.max_images: "
        "the service may return up to 15 images"
    )
    assert warnings_of(sequential_image_generation="auto", sequential_image_generation_options={"max_images": 3}) == []
