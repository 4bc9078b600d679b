"""ImageStore and the key rules against moto's S3 server: keys, metadata, refusals and retries."""

from __future__ import annotations

import hashlib
import io

import pytest
import tenacity
from botocore.exceptions import ClientError, HTTPClientError

import airflow_provider_seedream.storage as storage
from airflow_provider_seedream.exceptions import StorageError
from airflow_provider_seedream.storage import ImageStore, StoredObject, check_stem, client_error_code, image_extension
from tests.s3_faults import refuse

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4


def stored_object(store: ImageStore, stem: str = "sku", **fields) -> StoredObject:
    return StoredObject(
        **{
            "bucket": store.bucket, "key": store.key_for(stem, 0, "jpg"), "prompt_index": 3, "image_index": 1,
            "model": "doubao-seedream-5-0-260128", "size": "2048x2048", "content_type": "image/jpeg",
            "bytes": len(JPEG), "sha256": hashlib.sha256(JPEG).hexdigest(), "fingerprint": "f" * 64, **fields,
        }
    )


@pytest.mark.parametrize(
    ("stem", "problem"),
    [
        ("sku-1", None),
        ("a/b/c", None),
        ("A!_.*'()=+,@-z", None),
        ("x" * 512, None),
        ("", "must be 1 to 512 characters"),
        ("x" * 513, "must be 1 to 512 characters"),
        ("/abs", "must be relative to s3_prefix: no leading '/', no '..' and no empty folder"),
        ("a/../b", "must be relative to s3_prefix: no leading '/', no '..' and no empty folder"),
        ("a//b", "must be relative to s3_prefix: no leading '/', no '..' and no empty folder"),
        ("_ledger/x", "must not start with _ledger/, where the spend ledger is kept"),
        ("_ledger", "must not start with _ledger/, where the spend ledger is kept"),
        ("_ledger/a/b", "must not start with _ledger/, where the spend ledger is kept"),
        ("_ledgers/x", "may hold only letters, digits, '/' between folders and !_.*'()=+,@- (starting with a letter or digit)"),
        ("a b", "may hold only letters, digits, '/' between folders and !_.*'()=+,@- (starting with a letter or digit)"),
        ("-a", "may hold only letters, digits, '/' between folders and !_.*'()=+,@- (starting with a letter or digit)"),
        ("a/", "may hold only letters, digits, '/' between folders and !_.*'()=+,@- (starting with a letter or digit)"),
    ],
)
def test_a_key_stem_is_checked(stem, problem):
    assert check_stem(stem) == problem


@pytest.mark.parametrize(
    ("output_format", "model", "extension"),
    [
        ("png", "doubao-seedream-5-0-260128", "png"),
        ("png", "doubao-seedream-4-5-251128", "jpg"),  # the 4.x models always answer JPEG
        ("jpeg", "doubao-seedream-5-0-260128", "jpg"),
        (None, "doubao-seedream-5-0-260128", "jpg"),
    ],
)
def test_the_extension_follows_what_the_model_answers(output_format, model, extension):
    assert image_extension(output_format, model) == extension


def test_keys_under_a_prefix_and_under_none(s3_client, bucket):
    assert ImageStore(s3_client, bucket, "/a/b/").key_for("sku", 3, "png") == "a/b/sku-03.png"
    assert ImageStore(s3_client, bucket, "").key_for("sku", 12, "jpg") == "sku-12.jpg"
    assert ImageStore(s3_client, bucket, "/Xp/").key_for("sku", 0, "jpg") == "Xp/sku-00.jpg", "only slashes are stripped"
    assert ImageStore(s3_client, bucket, "p", run_id="run-1").run_id == "run-1"


def test_an_error_s_code_is_s3_s_code_else_its_http_status():
    coded = ClientError({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "PutObject")
    assert client_error_code(coded) == "SlowDown"
    assert client_error_code(ClientError({"ResponseMetadata": {"HTTPStatusCode": 404}}, "HeadObject")) == "404"
    assert client_error_code(ValueError("x")) is None
    assert client_error_code(ClientError({}, "HeadObject")) is None, "an answer with neither says nothing"


def test_an_image_is_uploaded_with_what_its_metadata_says(s3_client, bucket):
    store = ImageStore(s3_client, bucket, "p")
    stored = stored_object(store, run_id="manual__2026-12-07T10:00:00+00:00 café")
    store.upload(io.BytesIO(JPEG), stored, "req-1")
    head = s3_client.head_object(Bucket=bucket, Key="p/sku-00.jpg")
    assert head["ContentType"] == "image/jpeg" and head["ContentLength"] == len(JPEG)
    assert head["Metadata"] == {
        "seedream-fingerprint": "f" * 64,
        "seedream-sha256": hashlib.sha256(JPEG).hexdigest(),
        "seedream-model": "doubao-seedream-5-0-260128",
        "seedream-size": "2048x2048",
        "seedream-prompt-index": "3",
        "seedream-image-index": "1",
        "seedream-request-id": "req-1",
        "seedream-run-id": "manual__2026-12-07T10:00:00+00:00 caf\\xe9",  # S3 metadata is ASCII
    }
    other = stored_object(store, stem="other")
    store.upload(io.BytesIO(JPEG), other, None)
    assert set(s3_client.head_object(Bucket=bucket, Key=other.key)["Metadata"]) == {
        "seedream-fingerprint", "seedream-sha256", "seedream-model", "seedream-size", "seedream-prompt-index",
        "seedream-image-index",
    }, "no request id or run id: none written"


@pytest.mark.parametrize("code", ["500", "502", "503", "504", "InternalError", "SlowDown", "ServiceUnavailable", "RequestTimeout"])
def test_an_upload_s3_fails_for_a_while_is_retried_from_the_start(s3_client, bucket, code):
    store = ImageStore(s3_client, bucket, "p")
    store.upload_wait = tenacity.wait_none()
    refused = refuse(s3_client, "PutObject", code, status=503, times=storage.UPLOAD_ATTEMPTS - 1)
    spool = io.BytesIO(JPEG)
    spool.seek(100)
    store.upload(spool, stored_object(store), None)
    assert len(refused) == 3
    assert s3_client.get_object(Bucket=bucket, Key="p/sku-00.jpg")["Body"].read() == JPEG


def test_an_upload_s3_keeps_failing_is_given_up_after_four_attempts(s3_client, bucket):
    store = ImageStore(s3_client, bucket, "p")
    store.upload_wait = tenacity.wait_none()
    refused = refuse(s3_client, "PutObject", "SlowDown", status=503)
    with pytest.raises(StorageError) as raised:
        store.upload(io.BytesIO(JPEG), stored_object(store), None)
    assert len(refused) == 4
    assert str(raised.value) == f"upload to s3://{bucket}/p/sku-00.jpg failed: ClientError (SlowDown)"
    assert raised.value.code == "SlowDown"


@pytest.mark.parametrize(
    "error",
    [
        ClientError({"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "PutObject"),
        HTTPClientError(error="the connection broke"),  # botocore already retried it
        StorageError("no"),
        ValueError("no"),
        TypeError("no"),
    ],
)
def test_an_upload_refused_for_good_is_not_tried_again(s3_client, bucket, error):
    store = ImageStore(s3_client, bucket, "p")
    attempts = []

    def fail(**_):
        attempts.append(1)
        raise error

    s3_client.meta.events.register("before-call.s3.PutObject", fail)
    with pytest.raises(StorageError) as raised:
        store.upload(io.BytesIO(JPEG), stored_object(store), None)
    assert attempts == [1]
    code = client_error_code(error)
    assert str(raised.value) == f"upload to s3://{bucket}/p/sku-00.jpg failed: {type(error).__name__}" + (
        f" ({code})" if code else ""
    )


def test_an_upload_that_breaks_without_a_code_is_retried(s3_client, bucket):
    store = ImageStore(s3_client, bucket, "p")
    store.upload_wait = tenacity.wait_none()
    attempts = []

    def fail(**_):
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionResetError("reset by peer")

    s3_client.meta.events.register("before-call.s3.PutObject", fail)
    store.upload(io.BytesIO(JPEG), stored_object(store), None)
    assert len(attempts) == 2


def test_a_bucket_that_cannot_be_written_is_named_with_why(s3_client, bucket):
    ImageStore(s3_client, bucket, "p").check_bucket()
    with pytest.raises(StorageError) as missing:
        ImageStore(s3_client, "no-such-bucket-here", "p").check_bucket()
    assert str(missing.value) == "s3_bucket: bucket 'no-such-bucket-here' does not exist" and missing.value.code == "NoSuchBucket"
    refuse(s3_client, "HeadBucket", "403", status=403)
    with pytest.raises(StorageError) as denied:
        ImageStore(s3_client, bucket, "p").check_bucket()
    assert str(denied.value) == f"s3_bucket: access to bucket {bucket!r} is denied for these credentials"
    assert denied.value.code == "AccessDenied"


@pytest.mark.parametrize(("code", "named"), [("NoSuchBucket", "NoSuchBucket"), ("AccessDenied", "AccessDenied")])
def test_a_bucket_refused_by_s3_s_own_code_is_named_alike(s3_client, bucket, code, named):
    refuse(s3_client, "HeadBucket", code, status=404 if code == "NoSuchBucket" else 403)
    with pytest.raises(StorageError) as raised:
        ImageStore(s3_client, bucket, "p").check_bucket()
    assert raised.value.code == named and str(raised.value).startswith(f"s3_bucket: ")
    assert ("does not exist" if code == "NoSuchBucket" else "is denied") in str(raised.value)


def test_a_bucket_s3_cannot_answer_for_says_what_happened(s3_client, bucket):
    refuse(s3_client, "HeadBucket", "500", status=500)
    with pytest.raises(StorageError) as raised:
        ImageStore(s3_client, bucket, "p").check_bucket()
    assert str(raised.value) == f"s3_bucket: cannot reach bucket {bucket!r}: ClientError: 500" and raised.value.code == "500"
