"""The package is an Airflow provider: registered, its connection form declared, cheap to import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import airflow_bin


def test_airflow_lists_the_provider():
    done = subprocess.run([airflow_bin(), "providers", "list", "-o", "json"], capture_output=True, text=True, check=True)
    listing = next(line for line in done.stdout.splitlines() if line.startswith("[{"))
    providers = {item["package_name"]: item for item in json.loads(listing)}
    assert providers["airflow-provider-seedream"]["version"] == "0.1.0"


def test_connection_type_and_form_are_declared():
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    hook = manager.hooks["seedream"]
    assert hook.hook_class_name == "airflow_provider_seedream.hooks.seedream.SeedreamHook"
    assert hook.connection_id_attribute_name == "seedream_conn_id"
    behaviour = manager.field_behaviours["seedream"]
    assert behaviour["relabeling"] == {"host": "Base URL", "password": "API Key"}
    assert set(behaviour["hidden_fields"]) == {"schema", "port", "login"}
    assert "extra__seedream__model" in manager.connection_form_widgets


def test_the_hook_declares_the_same_form():
    from airflow_provider_seedream import CONNECTION_UI
    from airflow_provider_seedream.hooks.seedream import SeedreamHook

    behaviour = SeedreamHook.get_ui_field_behaviour()
    assert behaviour["relabeling"] == CONNECTION_UI["relabeling"]
    assert (SeedreamHook.conn_type, SeedreamHook.default_conn_name) == ("seedream", "seedream_default")


def test_importing_the_operator_pulls_no_heavy_module():
    code = (
        "import sys, airflow.sdk\n"
        "import airflow_provider_seedream.operators.seedream\n"
        "heavy = [m for m in ('boto3', 'botocore', 'PIL', 'airflow.providers.amazon.aws.hooks.s3', 'fastapi')"
        " if m in sys.modules]\n"
        "print(heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_package_ships_its_type_marker():
    import airflow_provider_seedream

    assert (Path(airflow_provider_seedream.__file__).parent / "py.typed").is_file()
