"""S3 refusing the task: clear errors, nothing generated that cannot be stored, nothing lost silently.

A moto S3 server of its own runs here with IAM authorisation enforced, so that wrong
credentials and a policy that forbids uploads are refused as AWS refuses them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import boto3
import pytest
import requests

from tests.dag_runs import airflow_dags_test
from tests.emulator.support import quiet_stats

pytestmark = pytest.mark.usefixtures("airflow_db")

BUCKET = "guarded-assets"
READ_ONLY_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": ["s3:*"], "Resource": "*"},
        {"Effect": "Deny", "Action": ["s3:PutObject"], "Resource": "*"},
    ],
}

READ_WRITE_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:*"], "Resource": "*"}]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def guarded_s3() -> Iterator[dict[str, str]]:
    """A moto server that enforces IAM, with a bucket and a user allowed to read but not to write."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                requests.get(f"{url}/moto-api/", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        admin = {"endpoint_url": url, "region_name": "us-east-1", "aws_access_key_id": "a", "aws_secret_access_key": "a"}
        boto3.client("s3", **admin).create_bucket(Bucket=BUCKET)
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="reader")
        iam.put_user_policy(UserName="reader", PolicyName="read-only", PolicyDocument=json.dumps(READ_ONLY_POLICY))
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        iam.create_user(UserName="writer")
        iam.put_user_policy(UserName="writer", PolicyName="all", PolicyDocument=json.dumps(READ_WRITE_POLICY))
        writer = iam.create_access_key(UserName="writer")["AccessKey"]
        requests.post(f"{url}/moto-api/reset-auth", data=b"0", timeout=5).raise_for_status()
        yield {
            "url": url,
            "key_id": key["AccessKeyId"],
            "secret": key["SecretAccessKey"],
            "writer_key_id": writer["AccessKeyId"],
            "writer_secret": writer["SecretAccessKey"],
        }
    finally:
        server.terminate()
        server.wait(timeout=10)


def aws_connection(url: str, key_id: str, secret: str) -> str:
    return json.dumps(
        {"conn_type": "aws", "login": key_id, "password": secret, "extra": {"endpoint_url": url, "region_name": "us-east-1"}}
    )


def run_with_aws(connection: str, prompts: list[str]) -> subprocess.CompletedProcess[str]:
    """Run the batch DAG in a task process of its own with ``connection`` as ``aws_default``."""
    previous = os.environ["AIRFLOW_CONN_AWS_DEFAULT"]
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = connection
    try:
        return airflow_dags_test("seedream_test_batch", prompts=prompts, bucket=BUCKET, prefix="guarded")
    finally:
        os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = previous


def test_wrong_credentials_fail_before_spending(guarded_s3, seedream_emulator):
    done = run_with_aws(aws_connection(guarded_s3["url"], "AKIANOTAREALKEY00000", "wrong-secret"), ["a cat"])
    log = done.stdout + done.stderr
    assert done.returncode != 0
    assert f"s3_bucket: access to bucket '{BUCKET}' is denied for these credentials" in log
    assert seedream_emulator.stats()["generation_requests"] == 0
    assert "wrong-secret" not in log


def test_refused_writes_stop_the_task_before_anything_is_paid(guarded_s3, seedream_emulator):
    prompts = [f"a guarded painting {n}" for n in range(12)]
    reader = aws_connection(guarded_s3["url"], guarded_s3["key_id"], guarded_s3["secret"])
    done = run_with_aws(reader, prompts)
    log = done.stdout + done.stderr
    assert done.returncode != 0
    first = quiet_stats(seedream_emulator)
    paid = first["images_generated"]
    # Every request is claimed in the spend ledger before it is sent: S3 refusing writes means
    # nothing is claimed, so nothing is sent and nothing is paid.
    assert paid == 0 and first["generation_requests"] == 0
    assert "the spend ledger under s3://" in log and "could not be written" in log and "nothing was sent" in log
    assert guarded_s3["secret"] not in log

    # Once S3 takes writes again, the next try pays for every prompt, once.
    writer = aws_connection(guarded_s3["url"], guarded_s3["writer_key_id"], guarded_s3["writer_secret"])
    again = run_with_aws(writer, prompts)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    sent = quiet_stats(seedream_emulator)["generation_requests"] - first["generation_requests"]
    assert sent == len(prompts) - paid
    admin = boto3.client(
        "s3",
        endpoint_url=guarded_s3["url"],
        region_name="us-east-1",
        aws_access_key_id=guarded_s3["writer_key_id"],
        aws_secret_access_key=guarded_s3["writer_secret"],
    )
    listing = admin.list_objects_v2(Bucket=BUCKET, Prefix="guarded/").get("Contents", [])
    keys = [item["Key"] for item in listing if "/_ledger/" not in item["Key"]]
    assert sorted(keys) == [f"guarded/{index:05d}-00.jpg" for index in range(len(prompts))]
