"""The package is an Airflow provider: registered, its connection form declared, cheap to import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import airflow_provider_seedream
from tests.conftest import airflow_bin


def test_airflow_lists_the_provider():
    done = subprocess.run([airflow_bin(), "providers", "list", "-o", "json"], capture_output=True, text=True, check=True)
    listing = next(line for line in done.stdout.splitlines() if line.startswith("[{"))
    providers = {item["package_name"]: item for item in json.loads(listing)}
    assert providers["airflow-provider-seedream"]["version"] == airflow_provider_seedream.__version__


def test_connection_type_and_form_are_declared():
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    hook = manager.hooks["seedream"]
    assert hook.hook_class_name == "airflow_provider_seedream.hooks.seedream.SeedreamHook"
    assert hook.connection_id_attribute_name == "seedream_conn_id"
    # What the UI's connection form is given, asked in a fresh process as the api-server asks it
    # (on every core, with or without Flask AppBuilder installed).
    done = subprocess.run([sys.executable, "-c", _UI_FORM], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    form = json.loads(done.stdout.strip().splitlines()[-1])
    fields = form["standard_fields"]
    assert (fields["host"]["title"], fields["password"]["title"]) == ("Base URL", "API Key")
    assert not fields["host"]["hidden"] and not fields["password"]["hidden"]
    assert fields["port"]["hidden"] and fields["login"]["hidden"]
    # Airflow 3.2+ reads the provider's conn-fields, 3.1 the hook's form widgets: the same fields.
    from airflow_provider_seedream import CONNECTION_FIELDS

    extras = form["extra_fields"]
    assert {name: extra["schema"]["title"] for name, extra in extras.items()} == {
        name: field["label"] for name, field in CONNECTION_FIELDS.items()
    }
    assert extras["retry_unknown_outcome"]["value"] is False


_UI_FORM = """
from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService
[form] = [meta for meta in HookMetaService.hook_meta_data() if meta.connection_type == "seedream"]
print(form.model_dump_json())
"""


def test_the_hook_declares_the_same_form():
    from airflow_provider_seedream import CONNECTION_UI
    from airflow_provider_seedream.hooks.seedream import SeedreamHook

    behaviour = SeedreamHook.get_ui_field_behaviour()
    assert behaviour["relabeling"] == CONNECTION_UI["relabeling"]
    assert (SeedreamHook.conn_type, SeedreamHook.default_conn_name) == ("seedream", "seedream_default")


# Modules (and their submodules) a DAG file must not pay for when it imports the operator:
# they load inside execute. Airflow's own import of airflow.sdk may load some of them itself.
HEAVY_MODULES = (
    "boto3",
    "botocore",
    "airflow.providers.amazon",
    "PIL",
    "requests",
    "tenacity",
    "ijson",
    "fastapi",
)
# Run in a fresh interpreter with HEAVY_MODULES as arguments; prints which of them each import added.
_IMPORT_COST = """
import json, sys

heavy = sys.argv[1:]

def loaded():
    return {name for name in sys.modules if any(name == h or name.startswith(h + ".") for h in heavy)}

import airflow.sdk
baseline = loaded()
import airflow_provider_seedream
root = loaded() - baseline
import airflow_provider_seedream.operators.seedream
operator = loaded() - baseline
import requests  # proves the measurement sees a heavy module when one is imported
canary = loaded() - baseline
print(json.dumps({"baseline": sorted(baseline), "root": sorted(root), "operator": sorted(operator),
                  "canary": sorted(canary)}))
"""


def test_importing_the_operator_pulls_no_heavy_module():
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_COST, *HEAVY_MODULES], capture_output=True, text=True, check=True
    )
    cost = json.loads(done.stdout.strip().splitlines()[-1])
    assert cost["root"] == [], "importing the package root loads heavy modules"
    assert cost["operator"] == [], "importing the operator loads heavy modules beyond airflow.sdk's"
    assert "requests" in cost["canary"]
    # What airflow.sdk loads by itself (tenacity, the amazon provider's get_provider_info) is
    # not ours to avoid; it must stay clear of what the operator defers.
    assert not {"boto3", "botocore", "PIL", "requests", "ijson"} & {name.split(".")[0] for name in cost["baseline"]}


def test_package_ships_its_type_marker():
    import airflow_provider_seedream

    assert (Path(airflow_provider_seedream.__file__).parent / "py.typed").is_file()


def test_provider_info_is_valid_against_the_installed_core_s_schema():
    import importlib

    import jsonschema

    import airflow
    from airflow_provider_seedream import get_provider_info

    info = get_provider_info()
    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(info, schema)
    # Everything it names can be imported, as the providers manager imports it.
    for section in ("hooks", "operators"):
        for entry in info[section]:
            for module in entry["python-modules"]:
                importlib.import_module(module)
    for path in [*info["extra-links"], *(entry["hook-class-name"] for entry in info["connection-types"])]:
        module, _, name = path.rpartition(".")
        assert hasattr(importlib.import_module(module), name), path
    assert {entry["integration-name"] for entry in info["hooks"] + info["operators"]} <= {
        entry["integration-name"] for entry in info["integrations"]
    }


def test_the_supported_range_is_the_range_make_compat_proves():
    import configparser
    import re

    from packaging.requirements import Requirement
    from packaging.version import Version

    from airflow_provider_seedream.version_compat import AIRFLOW_VERSION, MINIMUM_AIRFLOW

    root = Path(__file__).resolve().parent.parent
    setup = configparser.ConfigParser()
    setup.read(root / "setup.cfg")
    [airflow] = [
        Requirement(line) for line in setup["options"]["install_requires"].split("\n")
        if line.strip().startswith("apache-airflow>")
    ]
    floor = min(Version(spec.version) for spec in airflow.specifier if spec.operator == ">=")
    assert floor == MINIMUM_AIRFLOW
    assert airflow.specifier.contains(str(AIRFLOW_VERSION))

    makefile = (root / "Makefile").read_text()
    minors = re.search(r"^COMPAT_MINORS \?= (.+)$", makefile, re.MULTILINE).group(1).split()
    assert minors[0] == f"{MINIMUM_AIRFLOW.major}.{MINIMUM_AIRFLOW.minor}"
    assert f"{AIRFLOW_VERSION.major}.{AIRFLOW_VERSION.minor}" in minors
    for minor in minors:
        pinned = re.search(rf"^apache-airflow==({re.escape(minor)}\.\d+)$",
                           (root / "constraints" / f"airflow-{minor}.txt").read_text(), re.MULTILINE)
        assert pinned, f"constraints/airflow-{minor}.txt pins no Airflow {minor}.x"
        assert re.search(rf"^COMPAT_AIRFLOW_{re.escape(minor)} := {re.escape(pinned.group(1))}$", makefile, re.MULTILINE)


def test_the_changelog_dates_the_version_being_built():
    import datetime
    import re

    changelog = (Path(__file__).resolve().parent.parent / "CHANGELOG.md").read_text()
    releases = re.findall(r"^## (\d+\.\d+\.\d+) \((\d{4}-\d{2}-\d{2})\)$", changelog, re.MULTILINE)
    assert releases and releases[0][0] == airflow_provider_seedream.__version__
    dates = [datetime.date.fromisoformat(date) for _, date in releases]
    assert dates == sorted(dates, reverse=True), "newest release first"
