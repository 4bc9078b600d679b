#!/usr/bin/env python
"""
Run the catalog batch example DAG end to end and copy its review gallery to ``.demo/``: ``make demo``.

Offline (no ``COMETAPI_KEY``): starts the Seedream emulator and moto's S3 server on free local
ports, migrates an Airflow SQLite database under ``.airflow/``, uploads the sample catalog,
runs ``airflow dags test seedream_catalog_batch`` and copies the manifest and the HTML gallery
to ``.demo/``. The servers it started are stopped at the end, on error and on Ctrl-C.

With ``COMETAPI_KEY`` set (and ``SEEDREAM_BUCKET`` naming an existing bucket, and AWS
credentials the usual way): the same run against the real service and real S3.

Usage::

    python scripts/demo.py [--size 2K] [--products 12] [--chunk-size 4] [--verbose]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
AIRFLOW_HOME = ROOT / ".airflow"
DEMO_DIR = ROOT / ".demo"
DAGS_FOLDER = ROOT / "dags"
CATALOG = ROOT / "data" / "catalog_sample.jsonl"
DAG_ID = "seedream_catalog_batch"
POOL = os.environ.get("SEEDREAM_POOL", "seedream_api")
POOL_SLOTS = 4
COMETAPI_URL = "https://api.cometapi.com"
OFFLINE_BUCKET = "seedream-demo"
DUMMY_KEY = "sk-demo-offline-key"
DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "demo-key-id",
    "AWS_SECRET_ACCESS_KEY": "demo-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
STARTUP_SECONDS = 30.0


def say(message: str) -> None:
    """Print one line of progress."""
    print(f"[demo] {message}", flush=True)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """
    A local server in a process of its own, stopped by its PID.

    :param name: what to call it in messages.
    :param command: the command line.
    :param health_url: a URL that answers once the server is up.
    :param log_path: where its output goes.
    """

    def __init__(self, name: str, command: list[str], health_url: str, log_path: Path) -> None:
        self.name = name
        self.command = command
        self.health_url = health_url
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, env: dict[str, str]) -> None:
        """Start the process and wait until its health URL answers."""
        self._log = self.log_path.open("wb")
        # A session of its own: Ctrl-C reaches the demo, which then stops the server itself.
        self.process = subprocess.Popen(
            self.command, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
        )
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.process.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(self.health_url, timeout=1.0):
                    return
            except urllib.error.HTTPError:
                return  # it answered, even if not with 200
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer at {self.health_url} within {STARTUP_SECONDS:.0f} s")

    def stop(self) -> None:
        """Stop the process (terminate, then kill) and close its log."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None


@contextmanager
def running(server: Server, env: dict[str, str]) -> Iterator[Server]:
    """Start ``server`` and stop it when the block ends, however it ends."""
    try:
        server.start(env)
        say(f"{server.name} is up (pid {server.process.pid if server.process else '?'}; log {server.log_path})")
        yield server
    finally:
        server.stop()


def airflow(args: list[str], env: dict[str, str], log_path: Path | None = None, verbose: bool = False) -> int:
    """Run an ``airflow`` command; its output goes to ``log_path`` (and the console when verbose)."""
    command = [sys.executable, "-m", "airflow", *args]
    if verbose or log_path is None:
        return subprocess.run(command, env=env, cwd=ROOT, check=False).returncode
    with log_path.open("wb") as log:
        return subprocess.run(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False).returncode


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file."""
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def base_env() -> dict[str, str]:
    """The environment of every Airflow command of the demo."""
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(AIRFLOW_HOME),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    # A demo run fails fast instead of waiting for task retries; the hook still retries 429 and 5xx.
    env.setdefault("SEEDREAM_TASK_RETRIES", "0")
    return env


def s3_client(endpoint_url: str | None) -> Any:
    """A boto3 S3 client: of moto's server offline, of AWS otherwise."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url) if endpoint_url else boto3.client("s3")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line's options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[1], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--size",
        default="2K",
        help="image size: a preset the model takes (2K, 3K, 4K for 5.0 Lite) or WxH (default: %(default)s)",
    )
    parser.add_argument("--products", type=int, default=0, help="only the first N products (default: all 12)")
    parser.add_argument("--chunk-size", type=int, default=4, help="products per mapped task (default: %(default)s)")
    parser.add_argument("--prefix", default="demo", help="key prefix of everything written (default: %(default)s)")
    parser.add_argument("--verbose", action="store_true", help="show Airflow's output instead of logging it to .demo/")
    return parser.parse_args(argv)


def use_real_service(env: dict[str, str], api_key: str) -> str | None:
    """Point the connections at the real service and S3; return the bucket, or ``None`` when unset."""
    bucket = os.environ.get("SEEDREAM_BUCKET", "").strip()
    if not bucket:
        say("COMETAPI_KEY is set: set SEEDREAM_BUCKET to an existing bucket too (AWS credentials as usual).")
        return None
    say(f"Mode: REAL service ({COMETAPI_URL}) and real S3 bucket s3://{bucket} -- this is billed.")
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    env["AIRFLOW_CONN_SEEDREAM_DEFAULT"] = json.dumps(
        {"conn_type": "seedream", "host": COMETAPI_URL, "password": api_key}
    )
    extra = {"region_name": region} if region else {}
    env["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps({"conn_type": "aws", "extra": extra})
    return bucket


def use_local_servers(env: dict[str, str], stack: ExitStack) -> tuple[str, str]:
    """Start the emulator and moto, point the connections at them; return the bucket and S3 endpoint."""
    bucket = os.environ.get("SEEDREAM_BUCKET", "").strip() or OFFLINE_BUCKET
    emulator_url = f"http://127.0.0.1:{free_port()}"
    endpoint_url = f"http://127.0.0.1:{free_port()}"
    say(f"Mode: OFFLINE (Seedream emulator at {emulator_url}, moto S3 at {endpoint_url}); no key, nothing billed.")
    server_env = {key: value for key, value in env.items() if not key.startswith("AIRFLOW")}
    emulator = Server(
        "Seedream emulator",
        [
            sys.executable,
            "-m",
            "airflow_provider_seedream.emulator",
            "--port",
            emulator_url.rpartition(":")[2],
            "--log-level",
            "warning",
        ],
        f"{emulator_url}/_emulator/health",
        DEMO_DIR / "emulator.log",
    )
    moto = Server(
        "moto S3 server",
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", endpoint_url.rpartition(":")[2]],
        f"{endpoint_url}/moto-api/",
        DEMO_DIR / "moto.log",
    )
    stack.enter_context(running(emulator, server_env))
    stack.enter_context(running(moto, server_env))
    # Dummy credentials only, here and in Airflow: the user's own AWS settings never reach moto.
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        env.pop(name, None)
        os.environ.pop(name, None)
    env.update(DUMMY_AWS)
    os.environ.update(DUMMY_AWS)
    env["AIRFLOW_CONN_SEEDREAM_DEFAULT"] = json.dumps(
        {"conn_type": "seedream", "host": emulator_url, "password": DUMMY_KEY}
    )
    env["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps(
        {
            "conn_type": "aws",
            "login": DUMMY_AWS["AWS_ACCESS_KEY_ID"],
            "password": DUMMY_AWS["AWS_SECRET_ACCESS_KEY"],
            "extra": {"endpoint_url": endpoint_url, "region_name": DUMMY_AWS["AWS_DEFAULT_REGION"]},
        }
    )
    return bucket, endpoint_url


def report(client: Any, bucket: str, prefix: str) -> None:
    """Print the stored images' URIs and copy the manifest and the gallery to ``.demo/``."""
    listing = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/images/")
    images = [
        item["Key"] for page in listing for item in page.get("Contents", []) if item["Key"].endswith((".jpg", ".png"))
    ]
    say(f"{len(images)} image(s) stored:")
    for key in images:
        print(f"  s3://{bucket}/{key}")
    for name in ("manifest.jsonl", "gallery.html"):
        key = f"{prefix}/review/{name}"
        try:
            client.download_file(bucket, key, str(DEMO_DIR / name))
        except Exception as error:  # the run failed before writing its report
            say(f"No s3://{bucket}/{key}: {type(error).__name__}")
        else:
            say(f"s3://{bucket}/{key} -> {(DEMO_DIR / name).relative_to(ROOT)}")
    manifest = DEMO_DIR / "manifest.jsonl"
    if manifest.exists():
        statuses: dict[str, int] = {}
        for line in manifest.read_text().splitlines():
            status = json.loads(line)["status"]
            statuses[status] = statuses.get(status, 0) + 1
        say(f"Manifest: {', '.join(f'{count} {status}' for status, count in sorted(statuses.items()))}")
    gallery = DEMO_DIR / "gallery.html"
    if gallery.exists():
        say(f"Open the gallery: {gallery.as_uri()}")


def run_demo(args: argparse.Namespace, stack: ExitStack) -> int:
    """Set up, run the catalog batch DAG once and report; return the exit code."""
    DEMO_DIR.mkdir(exist_ok=True)
    AIRFLOW_HOME.mkdir(exist_ok=True)
    for name in ("manifest.jsonl", "gallery.html"):  # never show a previous run's report
        (DEMO_DIR / name).unlink(missing_ok=True)
    env = base_env()
    api_key = os.environ.get("COMETAPI_KEY", "").strip()
    endpoint_url: str | None = None
    if api_key:
        real_bucket = use_real_service(env, api_key)
        if real_bucket is None:
            return 2
        bucket = real_bucket
    else:
        bucket, endpoint_url = use_local_servers(env, stack)
    env["SEEDREAM_BUCKET"] = bucket

    client = s3_client(endpoint_url)
    prefix = args.prefix.strip("/")
    catalog_key = f"{prefix}/catalog_sample.jsonl"
    if endpoint_url:
        client.create_bucket(Bucket=bucket)
    else:
        try:
            client.head_bucket(Bucket=bucket)
        except Exception as error:
            say(f"Cannot use s3://{bucket} with these AWS credentials: {type(error).__name__}: {error}")
            return 2
    client.upload_file(str(CATALOG), bucket, catalog_key, ExtraArgs={"ContentType": "application/x-ndjson"})
    say(f"Uploaded the sample catalog to s3://{bucket}/{catalog_key}")

    say(f"Migrating the Airflow database in {AIRFLOW_HOME.relative_to(ROOT)}/ ...")
    log = DEMO_DIR / "airflow-db-migrate.log"
    if airflow(["db", "migrate"], env, log) != 0:
        say(f"airflow db migrate failed:\n{tail(log)}")
        return 1
    log = DEMO_DIR / "airflow-pools.log"
    if airflow(["pools", "set", POOL, str(POOL_SLOTS), "Concurrent Seedream generation tasks"], env, log) != 0:
        say(f"airflow pools set failed:\n{tail(log)}")
        return 1
    say(f"Pool {POOL!r} has {POOL_SLOTS} slots")

    conf = {
        "bucket": bucket,
        "catalog_key": catalog_key,
        "images_prefix": f"{prefix}/images",
        "report_prefix": f"{prefix}/review",
        "size": args.size,
        "chunk_size": args.chunk_size,
        "max_products": args.products,
    }
    log = DEMO_DIR / "airflow-dags-test.log"
    say(f"Running: airflow dags test {DAG_ID} -c '{json.dumps(conf)}'")
    say("(Airflow's output follows)" if args.verbose else f"(Airflow's output: {log.relative_to(ROOT)})")
    started = time.monotonic()
    code = airflow(["dags", "test", DAG_ID, "-c", json.dumps(conf)], env, log, verbose=args.verbose)
    say(f"The DAG run {'succeeded' if code == 0 else 'FAILED'} in {time.monotonic() - started:.1f} s")
    if code != 0 and not args.verbose:
        say(f"Last lines of the log:\n{tail(log, 60)}")
    report(client, bucket, prefix)
    return 0 if code == 0 else 1


def main(argv: list[str] | None = None) -> int:
    """Run the demo; stop what it started on any exit, Ctrl-C and SIGTERM included."""
    args = parse_args(argv)
    if shutil.which("airflow", path=str(Path(sys.executable).parent)) is None:
        say(f"warning: no 'airflow' next to {sys.executable}; run with the project's venv (.venv/bin/python)")

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    started = time.monotonic()
    try:
        with ExitStack() as stack:
            code = run_demo(args, stack)
    except KeyboardInterrupt:
        say("Interrupted; the servers started by the demo were stopped.")
        return 130
    say(f"Done in {time.monotonic() - started:.1f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
