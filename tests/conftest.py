"""Test set-up: an Airflow home of its own, a migrated database, moto's S3 server and the emulator.

Airflow reads its configuration at import, so the environment is set here, before any test
module imports it. Connections are environment variables pointing at the local servers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="seedream-airflow-home-"))

os.environ.update(
    {
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
        "AIRFLOW__CORE__DAGS_FOLDER": str(TESTS / "dags"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
)
os.environ.pop("AWS_PROFILE", None)
# Airflow's own commands put the DAGs folder on the path; in-process DAG parsing needs it too.
sys.path.insert(0, str(TESTS / "dags"))

API_KEY = "sk-test-0123456789abcdef-secret"


def airflow_bin() -> str:
    """The ``airflow`` command of the interpreter running the tests."""
    return str(Path(sys.executable).with_name("airflow"))


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata database under the session's Airflow home."""
    subprocess.run([airflow_bin(), "db", "migrate"], check=True, capture_output=True, env=os.environ.copy())
    return AIRFLOW_HOME


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Moto's S3 server on a free local port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def connections(s3_server: str, seedream_emulator_server) -> Iterator[dict[str, str]]:
    """Point ``seedream_default`` at the emulator and ``aws_default`` at moto, as environment variables."""
    values = {
        "AIRFLOW_CONN_SEEDREAM_DEFAULT": json.dumps(
            {"conn_type": "seedream", "host": seedream_emulator_server.url, "password": API_KEY}
        ),
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {"endpoint_url": s3_server, "region_name": "us-east-1"},
            }
        ),
    }
    os.environ.update(values)
    yield values


@pytest.fixture
def s3_client(s3_server: str):
    """A boto3 client of moto's S3 server."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=s3_server,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def bucket(s3_client, request) -> str:
    """A new, empty bucket for one test."""
    stem = "".join(ch if ch.isalnum() else "-" for ch in request.node.name.lower())[:40].strip("-")
    name = f"t-{stem}-{uuid.uuid4().hex[:8]}"
    s3_client.create_bucket(Bucket=name)
    return name


#: Lines the reliability tests report; printed at the end of the run.
FIGURES: list[str] = []


def pytest_terminal_summary(terminalreporter) -> None:
    """Print the figures the reliability tests measured."""
    if FIGURES:
        terminalreporter.section("reliability figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
