"""The real-deployment tier: one Airflow deployment per session, its services beside it.

The session's :class:`Tier` starts, each as a process: two emulators (one for the example
DAGs, one of its own for the interruption tests, so that their counters do not mix), moto's
S3 server, and Airflow's api-server, scheduler (LocalExecutor), dag-processor and triggerer
with a SQLite database in an Airflow home of their own. Connections and the pool are then
created through the REST API, as a user does in the UI: the ``seedream`` connections carry
exactly the extras the UI's connection form saves: every declared field, empty ones as
``null``.

When a test of this tier fails, the report ends with the tail of every component's output.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_seedream.ledger import record_stem
from tests.conftest import FIGURES, ROOT
from tests.deployment.airflow_deployment import AirflowDeployment, wait_for

HERE = Path(__file__).resolve().parent
BUCKET = "seedream-deploy"
REGION = "us-east-1"
EXAMPLE_DAG_FILES = sorted((ROOT / "dags").glob("*.py"))
TEST_DAG_FILES = sorted((HERE / "dags").glob("*.py"))
EXAMPLE_DAGS = ("seedream_daily_banner", "seedream_publish_banners", "seedream_catalog_batch", "seedream_image_variants")
INTERRUPTION_DAGS = ("seedream_interrupt_timeout", "seedream_interrupt_mark_failed")


def ui_form_extras() -> dict[str, Any]:
    """What the UI's Add Connection form saves for a ``seedream`` connection whose extra fields are
    left as they are: every declared field, with its schema's default or ``null``
    (``make e2e`` checks this against the form itself)."""
    from airflow_provider_seedream import CONNECTION_FIELDS

    return {name: field["schema"].get("default") for name, field in CONNECTION_FIELDS.items()}


UI_FORM_EXTRAS = ui_form_extras()


@dataclass
class Tier:
    """The running deployment and the services it talks to."""

    airflow: AirflowDeployment
    emulator: Any  # EmulatorClient of the example DAGs' emulator
    interrupt_emulator: Any  # EmulatorClient of the interruption tests' emulator
    s3_url: str
    bucket: str
    servers: list[Any] = field(default_factory=list)
    emulator_url: str = ""
    api_key: str = ""
    started_in: float = 0.0

    @property
    def rest(self):
        return self.airflow.rest

    def s3(self) -> Any:
        """A boto3 client of moto's S3 server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.s3_url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def keys(self, prefix: str) -> list[str]:
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        # The spend ledger's records are not images.
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []) if "/_ledger/" not in item["Key"])

    def ledger(self, prefix: str) -> list[dict]:
        """The spend ledger's records of prompts under ``prefix``."""
        folder = f"{prefix.rstrip('/')}/_ledger/"
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder)
        keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
        return [json.loads(self.read(key)) for key in keys if record_stem(key[len(folder):]) is not None]

    def read(self, key: str) -> bytes:
        return self.s3().get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def explain(self, dag_id: str, run_id: str) -> str:
        """A failed run's task states and logs, and the components' output."""
        return self.airflow.explain_run(dag_id, run_id) + "\n" + self.airflow.component_logs(3000)


def _start_services(tier_servers: list[Any]) -> tuple[Any, Any, Any]:
    from benchmarks.servers import start_emulator, start_moto

    emulator = start_emulator(0.0)
    tier_servers.append(emulator)
    interrupt_emulator = start_emulator(0.0)
    tier_servers.append(interrupt_emulator)
    moto = start_moto()
    tier_servers.append(moto)
    return emulator, interrupt_emulator, moto


@contextlib.contextmanager
def running_tier(
    home: Path,
    label: str,
    dag_files: Sequence[Path],
    dag_ids: Sequence[str],
    executor: str = "LocalExecutor",
    env: dict[str, str] | None = None,
    components: Sequence[str] = ("scheduler", "dag-processor", "triggerer"),
    seedream_connections: Sequence[str] = ("seedream_default", "seedream_interrupt"),
) -> Iterator[Tier]:
    """Start the services and a deployment, create connections and the pool through the REST API.

    :param dag_ids: the DAGs that must be parsed, without import errors, before the tier is used.
    :param seedream_connections: the ``seedream`` connections to create, as the UI form saves
        them: the first points at the emulator, the others at the interruption emulator.
    """
    from airflow_provider_seedream.emulator.client import EmulatorClient
    from benchmarks.servers import API_KEY

    started = time.monotonic()
    servers: list[Any] = []
    airflow: AirflowDeployment | None = None
    try:
        emulator, interrupt_emulator, moto = _start_services(servers)
        airflow = AirflowDeployment(
            home, dag_files, executor=executor, env={"SEEDREAM_BUCKET": BUCKET, **(env or {})}, components=components
        )
        tier = Tier(
            airflow=airflow,
            emulator=EmulatorClient(emulator.url),
            interrupt_emulator=EmulatorClient(interrupt_emulator.url),
            s3_url=moto.url,
            bucket=BUCKET,
            servers=servers,
            emulator_url=emulator.url,
            api_key=API_KEY,
        )
        tier.s3().create_bucket(Bucket=BUCKET)
        airflow.start()
        rest = airflow.rest
        wait_for(
            lambda: rest.import_errors() or all(rest.dag(dag_id) for dag_id in dag_ids),
            180,
            "the dag-processor parses every DAG",
            explain=airflow.component_logs,
        )
        errors = rest.import_errors()
        assert not errors, json.dumps(errors, indent=2)

        for position, conn_id in enumerate(seedream_connections):
            url = emulator.url if position == 0 else interrupt_emulator.url
            rest.create_connection(conn_id, "seedream", UI_FORM_EXTRAS, host=url, password=API_KEY)
        rest.create_connection(
            "aws_default",
            "aws",
            {"endpoint_url": moto.url, "region_name": REGION},
            login="testing",
            password="testing",
        )
        rest.create_pool("seedream_api", 4, "Seedream generation")
        tier.started_in = time.monotonic() - started
        FIGURES.append(f"{label}: services and Airflow components started in {tier.started_in:.1f} s")
    except BaseException:
        if airflow is not None:
            print(airflow.component_logs())
            airflow.stop()
        for server in servers:
            print(f"--- {server.name} ---\n{server.output()}")
            server.stop()
        raise
    try:
        yield tier
    finally:
        airflow.stop()
        for server in servers:
            server.stop()
        FIGURES.append(f"{label}: {time.monotonic() - started:.0f} s from start-up to shut-down")


@pytest.fixture(scope="session")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tier]:
    """The deployment, started once per session; connections and pool made through the REST API."""
    with running_tier(
        tmp_path_factory.mktemp("deployment-home"),
        "deployment tier",
        [*EXAMPLE_DAG_FILES, *TEST_DAG_FILES],
        (*EXAMPLE_DAGS, *INTERRUPTION_DAGS),
    ) as tier:
        yield tier


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    """Append the components' output to the report of a failed test of this tier."""
    outcome = yield
    report = outcome.get_result()
    tier = getattr(item, "funcargs", {}).get("deployment")
    if report.failed and isinstance(tier, Tier):
        report.sections.append(("Airflow components", tier.airflow.component_logs()))
        for server in tier.servers:
            report.sections.append((server.name, server.output()))
