"""The e2e tier (``make e2e``): CeleryExecutor with a Redis broker, and the UI in headless Chromium.

It needs Debian's ``redis-server`` and ``chromium`` and the package's ``celery`` and ``e2e``
extras, which ``make e2e`` installs; ``make e2e`` sets ``SEEDREAM_E2E=1``. Without it the
tier's test files are not collected, so ``make test`` never counts them, passed or skipped.

One deployment serves the whole tier: the api-server, scheduler (CeleryExecutor),
dag-processor, triggerer and an ``airflow celery worker`` with two worker processes, with a
``redis-server`` of its own on a free port as the broker and a SQLite file as Celery's result
backend. Screenshots go to ``tests/e2e/artifacts/`` (ignored by git); the path is printed at
the end of the run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIGURES
from tests.deployment.airflow_deployment import Component, free_port, wait_for
from tests.deployment.conftest import EXAMPLE_DAG_FILES, EXAMPLE_DAGS, Tier, running_tier

if os.environ.get("SEEDREAM_E2E") != "1":
    collect_ignore_glob = ["test_*.py"]

HERE = Path(__file__).resolve().parent
ARTIFACTS = HERE / "artifacts"
E2E_DAG_FILES = sorted((HERE / "dags").glob("*.py"))
WORKER_CONCURRENCY = 2
CHROMIUM = os.environ.get("SEEDREAM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ``redis-server`` on a free local port, persisting nothing; yields its URL."""
    import redis

    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed: run `make e2e` (as root it installs it with apt)"
    folder = tmp_path_factory.mktemp("redis")
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)]
    server = Component("redis-server", command, dict(os.environ), folder / "redis.log")
    try:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)

        def answers() -> bool:
            assert server.running(), server.tail()
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_for(answers, 30, "redis-server answers PING", interval=0.2, explain=server.tail)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def celery_tier(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Tier]:
    """The deployment on CeleryExecutor, with one worker of two processes."""
    home = tmp_path_factory.mktemp("e2e-home")
    env = {
        "AIRFLOW__CELERY__BROKER_URL": redis_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+sqlite:///{home / 'celery-results.db'}",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(WORKER_CONCURRENCY),
        "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
    }
    with running_tier(
        home,
        "e2e tier (CeleryExecutor)",
        [*EXAMPLE_DAG_FILES, *E2E_DAG_FILES],
        (*EXAMPLE_DAGS, "seedream_ui_check"),
        executor="CeleryExecutor",
        env=env,
        components=("scheduler", "dag-processor", "triggerer", "celery worker"),
        seedream_connections=("seedream_default",),
    ) as tier:
        yield tier


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Chromium (the system's ``chromium``) driven by Playwright."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run `make e2e` (as root it installs chromium with apt)"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()
    FIGURES.append(f"e2e tier: screenshots in {ARTIFACTS}")


@pytest.fixture
def ui(browser: Any, celery_tier: Tier, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A browser page signed in to the deployment's UI as the admin user, as a person signs in."""
    import re

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        page.goto(f"{celery_tier.airflow.url}/auth/login")
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", celery_tier.airflow.admin_password())
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(re.compile(r"^(?!.*/auth/login).*$"))
        yield page
    finally:
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-failure.png"), full_page=True)
        context.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    """Keep each phase's report on the item (for the failure screenshot); add the components' output on failure."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
    tier = getattr(item, "funcargs", {}).get("celery_tier")
    if report.failed and isinstance(tier, Tier):
        report.sections.append(("Airflow components", tier.airflow.component_logs()))
