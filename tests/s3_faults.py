"""Faults injected into a real boto3 client of moto's S3 server, one operation at a time."""

from __future__ import annotations

from typing import Any


def refuse(client: Any, operation: str, code: str, *, status: int = 400, times: int | None = None) -> list[str]:
    """Make ``client``'s ``operation`` (``PutObject``, ``HeadBucket``, ...) fail with S3's ``code``.

    The call fails before it is sent, as S3 answering ``status`` with ``code`` would; with ``times``
    only that many calls fail. Returns the keys (or buckets) of the calls refused so far.
    """
    from botocore.exceptions import ClientError

    refused: list[str] = []

    def fail(params: dict[str, Any], **_: Any) -> None:
        if times is not None and len(refused) >= times:
            return
        refused.append(params.get("Key") or params.get("Bucket") or "")
        error = {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
        raise ClientError(error, operation)

    client.meta.events.register(f"before-call.s3.{operation}", fail)
    return refused
