"""Parse cost: what the provider adds to a DAG file's parse time.

Two measurements, each in fresh interpreters, repeated, median taken:

* ``import_extra_ms``: the time of ``import airflow_provider_seedream.operators.seedream`` in a
  process that has just done ``import airflow.sdk`` (what a DAG file pays beyond Airflow's own
  import), and the heavy modules that import pulls in (it should pull in none of boto3,
  botocore, the amazon provider, requests, tenacity or Pillow).
* ``dags``: the parse time of each DAG file in ``dags/`` by Airflow's ``DagBag`` (the DAG
  processor's own loader), against a baseline DAG file with one ``@task`` and no provider.

Bytecode is cached (under a private ``PYTHONPYCACHEPREFIX``) and one warm-up run precedes the
timed ones, as on a DAG processor that has parsed the files before.

Usage: ``python benchmarks/parse_cost.py [--repeat 7] [--dags-folder dags]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, machine, median, run_script, table, verdict  # noqa: E402
from servers import benchmark_environment  # noqa: E402

TARGET_MS = 50.0
OPERATOR_MODULE = "airflow_provider_seedream.operators.seedream"
HEAVY_MODULES = (
    "boto3",
    "botocore",
    "s3transfer",
    "airflow.providers.amazon",
    "requests",
    "tenacity",
    "PIL",
    "fastapi",
    "uvicorn",
)

IMPORT_PROBE = """
import json, sys, time
heavy = {heavy!r}
t0 = time.perf_counter()
import airflow.sdk
t1 = time.perf_counter()
before = {{name for name in heavy if name in sys.modules}}
import {module}
t2 = time.perf_counter()
print(json.dumps({{
    "sdk_ms": 1000 * (t1 - t0),
    "extra_ms": 1000 * (t2 - t1),
    "heavy_before": sorted(before),
    "heavy_added": sorted(name for name in heavy if name in sys.modules and name not in before),
}}))
"""

PARSE_PROBE = """
import json, sys, time
t0 = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
t1 = time.perf_counter()
bag = DagBag(dag_folder={path!r}, safe_mode=False)
t2 = time.perf_counter()
print(json.dumps({{
    "dagbag_import_ms": 1000 * (t1 - t0),
    "parse_ms": 1000 * (t2 - t1),
    "dag_ids": sorted(bag.dag_ids),
    "errors": {{str(k): str(v)[-400:] for k, v in bag.import_errors.items()}},
}}))
"""

BASELINE_DAG = '''"""A DAG with one task and no provider: the parse-time baseline."""
from __future__ import annotations

from airflow.sdk import DAG, task

with DAG("parse_cost_baseline", schedule=None):

    @task
    def noop() -> None:
        """Do nothing."""

    noop()
'''


BASELINE_S3_ASSET_DAG = '''"""The baseline DAG with an s3:// asset as outlet: Airflow then loads the amazon provider's URI handler."""
from __future__ import annotations

from airflow.sdk import DAG, Asset, task

with DAG("parse_cost_baseline_s3_asset", schedule=None):

    @task(outlets=[Asset("s3://bucket/prefix")])
    def noop() -> None:
        """Do nothing."""

    noop()
'''


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="fresh processes per measurement (default: %(default)s)")
    parser.add_argument("--dags-folder", type=Path, default=ROOT / "dags", help="DAG files to parse (default: dags/)")
    return parser


def run_probe(code: str, env: dict[str, str]) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter and return the JSON it prints last."""
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"probe exited with {completed.returncode}:\n{completed.stderr[-3000:]}")
    return dict(json.loads(lines[-1]))


def import_breakdown(env: dict[str, str], limit: int = 8) -> list[tuple[str, float]]:
    """The modules first imported by the operator's module after ``airflow.sdk``, by cumulative ms (``-X importtime``)."""
    code = f"import airflow.sdk\nimport {OPERATOR_MODULE}\n"
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    rows: list[tuple[int, str, float]] = []
    for line in completed.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        parts = line[len("import time:") :].split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2].rstrip()
        rows.append((len(name) - len(name.lstrip()), name.strip(), int(parts[1]) / 1000))
    # Lines come in completion order: what follows the top-level airflow.sdk line came from the operator's import.
    last_sdk = max((i for i, (depth, name, _) in enumerate(rows) if name == "airflow.sdk" and depth <= 1), default=-1)
    after = rows[last_sdk + 1 :]
    if not after:
        return []
    top = min(depth for depth, _, _ in after)
    shallow = [(name, ms) for depth, name, ms in after if depth <= top + 2]
    return sorted(shallow, key=lambda item: -item[1])[:limit]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run the probes and return the figures."""
    home = Path(tempfile.mkdtemp(prefix="seedream-bench-parse-"))
    env = benchmark_environment(home)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(home / "pycache")
    dags_folder = args.dags_folder.resolve()
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(dags_folder)
    env["PYTHONPATH"] = f"{env['PYTHONPATH']}:{dags_folder}"
    repeat = max(1, args.repeat)

    probe = IMPORT_PROBE.format(heavy=HEAVY_MODULES, module=OPERATOR_MODULE)
    run_probe(probe, env)  # warm-up: compiles and caches bytecode
    imports = [run_probe(probe, env) for _ in range(repeat)]

    baseline_dir = home / "baseline"
    baseline_dir.mkdir()
    (baseline_dir / "parse_cost_baseline.py").write_text(BASELINE_DAG)
    (baseline_dir / "parse_cost_baseline_s3_asset.py").write_text(BASELINE_S3_ASSET_DAG)
    files = [baseline_dir / "parse_cost_baseline.py", baseline_dir / "parse_cost_baseline_s3_asset.py"]
    if dags_folder.is_dir():
        files += sorted(path for path in dags_folder.glob("*.py") if not path.name.startswith("_"))
    dags: dict[str, dict[str, Any]] = {}
    for path in files:
        code = PARSE_PROBE.format(path=str(path))
        first = run_probe(code, env)  # warm-up
        runs = [run_probe(code, env) for _ in range(repeat)]
        dags[path.name] = {
            "parse_ms": median([run["parse_ms"] for run in runs]),
            "dag_ids": first["dag_ids"],
            "errors": first["errors"],
        }
    baseline_ms = dags["parse_cost_baseline.py"]["parse_ms"]
    for entry in dags.values():
        entry["beyond_baseline_ms"] = entry["parse_ms"] - baseline_ms

    dag_files = {name: entry for name, entry in dags.items() if not name.startswith("parse_cost_baseline")}
    heavy_added = sorted({name for run in imports for name in run["heavy_added"]})
    return {
        "benchmark": "parse_cost",
        "repeat": repeat,
        "sdk_import_ms": median([run["sdk_ms"] for run in imports]),
        "import_extra_ms": median([run["extra_ms"] for run in imports]),
        "import_extra_ms_all": [round(run["extra_ms"], 2) for run in imports],
        "heavy_modules_added": heavy_added,
        "import_breakdown_ms": import_breakdown(env),
        "baseline_parse_ms": baseline_ms,
        "dags": dags,
        "max_dag_parse_ms": max((entry["parse_ms"] for entry in dag_files.values()), default=None),
        "cpu_count": machine()["cpu_count"],
    }


def report(figures: dict[str, Any]) -> str:
    """The readable tables."""
    rows = [
        [
            name,
            entry["parse_ms"],
            entry["beyond_baseline_ms"] if name != "parse_cost_baseline.py" else None,
            ", ".join(entry["dag_ids"]) or "-",
            "; ".join(entry["errors"].values())[:60] or "-",
        ]
        for name, entry in figures["dags"].items()
    ]
    heavy = ", ".join(figures["heavy_modules_added"]) or "none"
    out = [
        f"Parse cost: medians of {figures['repeat']} fresh processes each, bytecode cached; "
        f"{figures['cpu_count']} CPU cores",
        "",
        table(
            ["measurement", "ms"],
            [
                ["import airflow.sdk", figures["sdk_import_ms"]],
                [f"+ import {OPERATOR_MODULE}", figures["import_extra_ms"]],
            ],
        ),
        f"Heavy modules the operator's import pulls in: {heavy}",
    ]
    if figures["import_breakdown_ms"]:
        out += ["", table(["first imported by the operator's module", "cumulative ms"], figures["import_breakdown_ms"])]
    out += [
        "",
        table(["DAG file (DagBag parse)", "parse ms", "beyond baseline ms", "DAGs", "import errors"], rows),
        "baseline: one @task, no provider; baseline_s3_asset: the same with an s3:// Asset outlet, for which "
        "Airflow loads the amazon provider's URI handler (and with it boto3).",
        "",
        table(
            ["target", "value", "goal", "verdict"],
            [
                [
                    "operator import beyond airflow.sdk (ms)",
                    figures["import_extra_ms"],
                    f"<= {TARGET_MS:g}",
                    verdict(figures["import_extra_ms"], TARGET_MS, False),
                ]
            ],
        ),
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run, print the tables, end with the JSON line."""
    return run_script(build_parser(), measure, report, argv)


if __name__ == "__main__":
    main()
