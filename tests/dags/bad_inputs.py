"""Invalid operator arguments and the error each must give before any request is sent.

Shared by the DAG that runs them (``bad_input_dag.py``) and the test that reads its log.
"""

from __future__ import annotations

BUCKET = "{{ params.bucket }}"
#: Retries every task is given; none may be used.
RETRIES = 2

# task_id -> (operator arguments beyond the defaults, text the task's error must hold)
BAD_INPUTS: dict[str, tuple[dict, str]] = {
    "empty_prompt": ({"prompt": ""}, "prompt[0]: must be a non-empty string"),
    "blank_prompt_in_list": ({"prompt": ["a cat", "   "]}, "prompt[1]: must be a non-empty string"),
    "empty_prompt_list": ({"prompt": []}, "prompt: must be a non-empty string or a non-empty list"),
    "prompt_not_a_string": ({"prompt": ["a cat", 7]}, "prompt[1]: must be a non-empty string, got int"),
    "unknown_prompt_key": ({"prompt": [{"prompt": "x", "colour": "red"}]}, "prompt[0]: unknown keys ['colour']"),
    "bad_size": ({"size": "9K"}, "size: must be a preset (1K, 2K, 3K, 4K) or 'WxH'"),
    "too_few_pixels": ({"size": "1000x1000"}, "size: 1000x1000 has 1,000,000 pixels; seedream-5.0 allows 3,686,400"),
    "bad_aspect": ({"size": "6000x300"}, "size: aspect ratio of 6000x300 must be between 1/16 and 16"),
    "bad_output_format": ({"output_format": "webp"}, "output_format: must be one of png, jpeg"),
    "bad_response_format": ({"response_format": "binary"}, "response_format: must be one of url, b64_json"),
    "bad_seed": ({"seed": -5}, "seed: must be from -1 to 2147483647"),
    "bad_guidance": ({"guidance_scale": 12.5}, "guidance_scale: must be from 1.0 to 10.0"),
    "bad_group_mode": ({"sequential_image_generation": "yes"}, "sequential_image_generation: must be one of auto, disabled"),
    "too_many_images": (
        {"sequential_image_generation": "auto", "sequential_image_generation_options": {"max_images": 20}},
        "sequential_image_generation_options.max_images: must be from 1 to 15",
    ),
    "references_plus_images": (
        {
            "image": ["https://example.com/a.png"] * 10,
            "sequential_image_generation": "auto",
            "sequential_image_generation_options": {"max_images": 6},
        },
        "image: reference images (10) plus images to generate (6) must be at most 15",
    ),
    "too_many_references": ({"image": ["https://example.com/a.png"] * 15}, "image: at most 14 reference images"),
    "pro_group": (
        {"model": "doubao-seedream-5-0-pro-260628", "sequential_image_generation": "auto",
         "sequential_image_generation_options": {"max_images": 3}},
        "sequential_image_generation: doubao-seedream-5-0-pro-260628 (seedream-5.0-pro) makes one image per request",
    ),
    "pro_4k": ({"model": "doubao-seedream-5-0-pro-260628", "size": "4K"}, "size: doubao-seedream-5-0-pro-260628 (seedream-5.0-pro) takes the presets 1K, 2K"),
    "pro_references": (
        {"model": "doubao-seedream-5-0-pro-260628", "image": ["https://example.com/a.png"] * 11},
        "image: doubao-seedream-5-0-pro-260628 (seedream-5.0-pro) takes at most 10 reference images, got 11",
    ),
    "malformed_data_uri": ({"image": "data:image/png;base64,@@notbase64@@"}, "image[0]: data URI payload is not valid base64"),
    "uppercase_data_uri": ({"image": "data:image/PNG;base64,AAAA"}, "image[0]: data URI must look like"),
    "missing_local_reference": ({"image": "/no/such/photo.png"}, "image[0]: local file '/no/such/photo.png' does not exist"),
    "missing_s3_reference": ({"image": "s3://" + "{{ params.bucket }}" + "/nothing.png"}, "/nothing.png cannot be read"),
    "bad_s3_reference": ({"image": "s3://only-a-bucket"}, "image[0]: 's3://only-a-bucket' must look like s3://bucket/key"),
    "oversized_reference": ({"image": "{{ params.big_file }}"}, "at most 31,457,280 bytes (30 MB) are allowed"),
    "not_an_image_reference": ({"image": "{{ params.text_file }}"}, "is not an image: jpeg, png, webp, bmp, tiff or gif"),
    "missing_bucket": ({"s3_bucket": ""}, "s3_bucket: must name a bucket"),
    "no_such_bucket": ({"s3_bucket": "no-such-bucket-anywhere"}, "s3_bucket: bucket 'no-such-bucket-anywhere' does not exist"),
    "unknown_seedream_connection": ({"seedream_conn_id": "no_such_seedream"}, "seedream_conn_id: connection 'no_such_seedream' is not defined"),
    "unknown_aws_connection": ({"aws_conn_id": "no_such_aws"}, "aws_conn_id: connection 'no_such_aws' is not defined"),
    "bad_concurrency": ({"max_concurrency": 0}, "max_concurrency: must be a whole number of at least 1"),
    "bad_transport": ({"reference_transport": "carrier_pigeon"}, "reference_transport: must be one of data_uri, presigned_url"),
    "bad_template": ({"prompt": "a {{ params.missing.attribute }} cat"}, "UndefinedError"),
    "missing_template_file": ({"prompt": "prompts/no_such_prompt.j2"}, "no_such_prompt.j2"),
}
