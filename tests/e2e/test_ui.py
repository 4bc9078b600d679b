"""The UI in headless Chromium: the seedream connection form, a run with its connection, the task log page.

The tests run in order: the first saves the ``seedream_ui`` connection through the Add
Connection form, the second triggers ``seedream_ui_check`` (which uses it) with the UI's
Trigger button, the third reads that run's task log page. Screenshots of each page are kept.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote

from tests.deployment.airflow_deployment import wait_for
from tests.deployment.conftest import UI_FORM_EXTRAS, Tier
from tests.e2e.conftest import ARTIFACTS

DAG_ID = "seedream_ui_check"
PROMPTS = 6


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_add_connection_form_shows_the_seedream_fields(ui: Any, celery_tier: Tier):
    from playwright.sync_api import expect

    page = ui
    page.goto(f"{celery_tier.airflow.url}/connections")
    page.get_by_role("button", name="Add Connection").click()
    dialog = page.get_by_role("dialog")
    dialog.locator("input[name=connection_id]").fill("seedream_ui")
    kind = dialog.get_by_role("combobox")
    kind.click()
    kind.fill("Seedream")
    page.keyboard.press("Enter")
    expect(dialog.get_by_text("Base URL", exact=True)).to_be_visible()
    expect(dialog.get_by_text("API Key", exact=True)).to_be_visible()
    labels = [" ".join(text.replace("*", "").split()) for text in dialog.locator("label").all_inner_texts()]
    for hidden in ("Schema", "Port", "Login", "Host", "Password"):
        assert hidden not in labels, labels
    for name in ("schema", "port", "login"):
        expect(dialog.locator(f"input[name={name}]")).to_have_count(0)
    shot(page, "add-connection-seedream")

    dialog.locator("input[name=host]").fill(celery_tier.emulator_url)
    dialog.locator("input[name=password]").fill(celery_tier.api_key)
    dialog.get_by_role("button", name="Save").click()
    expect(page.get_by_role("dialog")).to_have_count(0)
    expect(page.get_by_text("seedream_ui", exact=True)).to_be_visible()
    shot(page, "connections-list")

    saved = celery_tier.rest.connection("seedream_ui")
    assert saved["conn_type"] == "seedream" and saved["host"] == celery_tier.emulator_url
    assert saved["login"] is None and saved["schema"] is None and saved["port"] is None
    # The deployment tier creates its connections with exactly these extras.
    assert json.loads(saved["extra"]) == UI_FORM_EXTRAS


def test_trigger_button_runs_a_dag_with_the_form_connection(ui: Any, celery_tier: Tier):
    from playwright.sync_api import expect

    rest = celery_tier.rest
    rest.unpause(DAG_ID)
    page = ui
    page.goto(f"{celery_tier.airflow.url}/dags/{DAG_ID}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    shot(page, "trigger-dialog")
    dialog.get_by_role("button", name="Trigger").last.click()

    run = wait_for(lambda: next(iter(rest.dag_runs(DAG_ID)), None), 60, f"the Trigger button starts a {DAG_ID} run")
    # Airflow 3.3.2's trigger form fills the logical date with the current time by default.
    assert run["run_type"] == "manual" and run["triggered_by"] == "ui"
    run = rest.wait_for_run(DAG_ID, run["dag_run_id"], 300, explain=lambda: celery_tier.explain(DAG_ID, run["dag_run_id"]))
    assert run["state"] == "success", celery_tier.explain(DAG_ID, run["dag_run_id"])
    prefix = "ui-check/" + re.sub(r"[:+]", "-", run["dag_run_id"])
    assert len(celery_tier.keys(prefix + "/")) == PROMPTS


def test_task_log_page_shows_the_progress_lines(ui: Any, celery_tier: Tier):
    from playwright.sync_api import expect

    [run] = celery_tier.rest.dag_runs(DAG_ID)
    page = ui
    page.goto(f"{celery_tier.airflow.url}/dags/{DAG_ID}/runs/{quote(run['dag_run_id'])}/tasks/generate")
    expect(page.get_by_text(re.compile(rf"Progress: {PROMPTS}/{PROMPTS} prompts done")).first).to_be_visible()
    expect(page.get_by_text(re.compile(r"Stored \d+ image\(s\)")).first).to_be_visible()
    assert celery_tier.api_key not in page.content()
    shot(page, "task-log-progress")
