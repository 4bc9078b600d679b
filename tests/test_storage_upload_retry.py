"""ImageStore.upload: an upload S3 refuses is tried again from the start of the same spooled file."""

from __future__ import annotations

import hashlib
import tempfile
from typing import Any

from botocore.exceptions import ClientError

from airflow_provider_seedream.storage import ImageStore, StoredObject


class RefusesFirstUpload:
    """An S3 client whose first upload is sent and then answered 503 SlowDown."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.uploads = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)
        if name not in ("put_object", "upload_fileobj"):
            return method

        def upload(*args: Any, **kwargs: Any) -> Any:
            self.uploads += 1
            answer = method(*args, **kwargs)
            if self.uploads == 1:
                error = {"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."}}
                raise ClientError({**error, "ResponseMetadata": {"HTTPStatusCode": 503}}, "PutObject")
            return answer

        return upload


def test_a_refused_upload_is_retried_from_the_start_of_the_file(s3_client, bucket):
    data = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 512
    client = RefusesFirstUpload(s3_client)
    store = ImageStore(client, bucket, "retry")
    stored = StoredObject(
        bucket=bucket, key=store.key_for(0, 0, "jpg"), prompt_index=0, image_index=0, model="m", size="1x1",
        content_type="image/jpeg", bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), fingerprint="f",
    )
    with tempfile.TemporaryFile() as spool:
        spool.write(data)
        store.upload(spool, stored, "request-1")
    assert client.uploads == 2
    assert s3_client.get_object(Bucket=bucket, Key=stored.key)["Body"].read() == data
