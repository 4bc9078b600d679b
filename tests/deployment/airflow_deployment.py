"""An Airflow deployment as users run it: api-server, scheduler, dag-processor and triggerer as processes.

:class:`AirflowDeployment` gives the components an Airflow home of their own (configuration
through ``AIRFLOW__*`` environment variables, a SQLite metadata database, a DAGs folder of
symbolic links to the DAG files under test), migrates the database, starts every component in
its own process group with its output in ``<home>/components/<name>.log``, and stops them.
:class:`RestClient` speaks to the public REST API (``/api/v2``) with a token from the simple
auth manager, as a user's script or the UI does. Nothing here reaches into Airflow's database:
every question about a run is asked through the REST API.

The tier's fixtures (``tests/deployment/conftest.py``) and ``make e2e`` (``tests/e2e``) share it.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[2]
FINISHED = frozenset({"success", "failed"})
TERMINAL_TI = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})
USERNAME = "admin"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.5, explain: Callable[[], str] | None = None
) -> Any:
    """Call ``condition`` until it returns something truthy, and return that; fail after ``timeout`` seconds.

    :param what: names what was awaited, for the error.
    :param explain: called on timeout for text that explains the state (logs, states).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = explain() if explain is not None else ""
            raise TimeoutError(f"{what}: not within {timeout:.0f} s\n{detail}")
        time.sleep(interval)


def airflow_bin() -> str:
    """The ``airflow`` command of the interpreter running the tests."""
    return str(Path(sys.executable).with_name("airflow"))


class Component:
    """One Airflow command running as a child process in its own process group, its output in a file."""

    def __init__(self, name: str, command: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.command = list(command)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            self.command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            cwd=ROOT,
            start_new_session=True,
        )

    def running(self) -> bool:
        return self.popen.poll() is None

    def tail(self, chars: int = 6000) -> str:
        """The last ``chars`` characters of the component's output."""
        try:
            text = self.log_path.read_bytes()[-chars:].decode(errors="replace")
        except OSError as error:
            return f"(no output: {error})"
        state = "running" if self.running() else f"exited with {self.popen.returncode}"
        return f"--- {self.name} ({state}), last {chars} characters of {self.log_path} ---\n{text}"

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the component's process group, SIGKILL to what is left after ``timeout`` seconds."""
        group = self.popen.pid
        if self.running():
            try:
                os.killpg(group, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # Children (task processes, uvicorn or celery workers) may outlive the group's leader.
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.popen.poll() is None:
            self.popen.wait(10)
        self._log.close()


class AirflowDeployment:
    """An Airflow deployment on this machine, every component a process.

    :param home: the Airflow home (created); holds ``airflow.db``, ``logs/``, ``dags/`` and ``components/``.
    :param dag_files: the DAG files to deploy; each is linked into ``<home>/dags``.
    :param executor: ``LocalExecutor`` or ``CeleryExecutor``.
    :param env: more environment variables for every component (settings, ``SEEDREAM_*``).
    :param components: the components besides the api-server, in start order.
    """

    def __init__(
        self,
        home: Path,
        dag_files: Iterable[Path],
        executor: str = "LocalExecutor",
        env: Mapping[str, str] | None = None,
        components: Sequence[str] = ("scheduler", "dag-processor", "triggerer"),
    ) -> None:
        from cryptography.fernet import Fernet

        self.home = Path(home)
        self.dags_folder = self.home / "dags"
        self.dags_folder.mkdir(parents=True, exist_ok=True)
        for path in dag_files:
            link = self.dags_folder / Path(path).name
            if not link.exists():
                link.symlink_to(Path(path).resolve())
        (self.home / "components").mkdir(exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.component_names = list(components)
        self.components: dict[str, Component] = {}
        # The environment of a user's deployment: nothing of the test process's own Airflow,
        # connections or AWS credentials leaks in; connections come from the metadata database.
        base = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "AWS_"))}
        base.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__EXECUTOR": executor,
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
                "AIRFLOW__CORE__PARALLELISM": "6",
                "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USERNAME}:admin",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
                "AIRFLOW__API__BASE_URL": self.url,
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                # Log servers of workers and triggerer: free ports, so deployments can run side by side.
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
                "PYTHONUNBUFFERED": "1",
                "NO_PROXY": "127.0.0.1,localhost",
            }
        )
        base.update(env or {})
        self.env = base
        self.rest = RestClient(self.url, self.admin_password)

    # -- life cycle ---------------------------------------------------------------------------

    def migrate(self) -> None:
        """Create the metadata database (``airflow db migrate``)."""
        done = subprocess.run(
            [airflow_bin(), "db", "migrate"], env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")

    def start_component(self, name: str, *arguments: str) -> Component:
        """Start ``airflow <name> <arguments>`` (a second one of a name gets a numbered log)."""
        label = name.replace(" ", "-")
        label = label if label not in self.components else f"{label}-{len(self.components)}"
        component = Component(
            label, [airflow_bin(), *name.split(), *arguments], self.env, self.home / "components" / f"{label}.log"
        )
        self.components[label] = component
        return component

    def start(self, timeout: float = 180.0) -> None:
        """Migrate, start the api-server, wait until it answers, then start the other components."""
        self.migrate()
        api = self.start_component("api-server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1")
        for name in self.component_names:
            self.start_component(name)

        def api_up() -> bool:
            self.check_alive()
            try:
                return requests.get(f"{self.url}/api/v2/monitor/health", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_for(api_up, timeout, "the api-server answers", explain=lambda: api.tail())

    def check_alive(self) -> None:
        """Fail, with its output, if a component has exited."""
        for component in self.components.values():
            if not component.running():
                raise RuntimeError(f"{component.name} exited\n{component.tail()}")

    def stop(self) -> None:
        """Stop every component, the api-server last."""
        for component in reversed(list(self.components.values())):
            component.stop()

    def admin_password(self) -> str:
        """The admin user's password, which the simple auth manager generates when the api-server starts."""
        path = self.home / "simple_auth_manager_passwords.json.generated"
        passwords = wait_for(
            lambda: path.exists() and json.loads(path.read_text() or "{}"), 60, f"{path.name} is written"
        )
        return str(passwords[USERNAME])

    # -- diagnostics --------------------------------------------------------------------------

    def component_logs(self, chars: int = 6000) -> str:
        """The tail of every component's output."""
        return "\n".join(component.tail(chars) for component in self.components.values())

    def explain_run(self, dag_id: str, run_id: str, chars: int = 6000) -> str:
        """The run's state, its task instances and the log of every try that ran, for a failure message."""
        lines = []
        try:
            run = self.rest.dag_run(dag_id, run_id)
            lines.append(f"run {dag_id}/{run_id}: {run.get('state')} (conf {json.dumps(run.get('conf'))})")
            for ti in self.rest.task_instances(dag_id, run_id):
                label = ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else "")
                lines.append(f"  {label}: {ti['state']} try {ti['try_number']}")
                for attempt in range(1, (ti["try_number"] or 0) + 1):
                    text = self.rest.task_log(dag_id, run_id, ti["task_id"], attempt, ti["map_index"])
                    lines.append(f"  --- log of {label} try {attempt} ---\n{text[-chars:]}")
        except Exception as error:  # the explanation must never hide the original failure
            lines.append(f"(could not read the run through the REST API: {error!r})")
        return "\n".join(lines)


class RestClient:
    """The public REST API of an api-server, authenticated with a token of the simple auth manager.

    :param url: the api-server's base URL.
    :param password: returns the admin user's password (read when the first token is needed).
    """

    def __init__(self, url: str, password: Callable[[], str]) -> None:
        self.url = url
        self._password = password
        self._session = requests.Session()
        self._token: str | None = None

    def token(self) -> str:
        """A JWT from ``POST /auth/token``."""
        if self._token is None:
            response = requests.post(
                f"{self.url}/auth/token", json={"username": USERNAME, "password": self._password()}, timeout=30
            )
            response.raise_for_status()
            self._token = response.json()["access_token"]
            self._session.headers["Authorization"] = f"Bearer {self._token}"
        return self._token

    def call(self, method: str, path: str, expect: Iterable[int] = (200,), **kwargs: Any) -> Any:
        """``method /api/v2<path>``; fail, with the answer's body, on any status not in ``expect``."""
        self.token()
        response = self._session.request(method, f"{self.url}/api/v2{path}", timeout=60, **kwargs)
        if response.status_code not in tuple(expect):
            raise AssertionError(f"{method} {path} answered {response.status_code}: {response.text[:2000]}")
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return response.text

    # -- set-up as a user does it -------------------------------------------------------------

    def create_connection(self, connection_id: str, conn_type: str, extra: Mapping[str, Any] | None = None, **fields: Any) -> Any:
        """``POST /connections``; ``extra`` is sent as the JSON text the UI form saves."""
        body = {"connection_id": connection_id, "conn_type": conn_type, **fields}
        if extra is not None:
            body["extra"] = json.dumps(dict(extra))
        return self.call("POST", "/connections", expect=(201,), json=body)

    def connection(self, connection_id: str) -> dict[str, Any]:
        return self.call("GET", f"/connections/{connection_id}")

    def create_pool(self, name: str, slots: int, description: str = "") -> Any:
        return self.call(
            "POST", "/pools", expect=(201,), json={"name": name, "slots": slots, "description": description}
        )

    def import_errors(self) -> list[dict[str, Any]]:
        return self.call("GET", "/importErrors")["import_errors"]

    def dag(self, dag_id: str) -> dict[str, Any] | None:
        """The DAG once the dag-processor has parsed it, else ``None``."""
        self.token()
        response = self._session.get(f"{self.url}/api/v2/dags/{dag_id}", timeout=60)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    def unpause(self, dag_id: str) -> Any:
        return self.call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Trigger a run with no logical date, as the UI's Trigger button and most scripts do."""
        return self.call(
            "POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": dict(conf or {})}
        )

    # -- reading runs -------------------------------------------------------------------------

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.call("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100, "order_by": "run_after"})["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        answer = self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})
        return sorted(answer["task_instances"], key=lambda ti: (ti["task_id"], ti["map_index"]))

    def task_instance(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any]:
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
        return self.call("GET", path if map_index < 0 else f"{path}/{map_index}")

    def set_task_state(self, dag_id: str, run_id: str, task_id: str, state: str) -> Any:
        """Mark a task instance ``state`` (what the UI's "Mark as failed" does)."""
        return self.call(
            "PATCH", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}", json={"new_state": state}
        )

    def clear_task(self, dag_id: str, run_id: str, task_ids: Sequence[str]) -> Any:
        """Clear task instances of a run so that the scheduler runs them again."""
        return self.call(
            "POST",
            f"/dags/{dag_id}/clearTaskInstances",
            json={"dry_run": False, "dag_run_id": run_id, "task_ids": list(task_ids), "only_failed": False},
        )

    def task_log_entries(
        self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1
    ) -> list[dict[str, Any]]:
        """The structured entries of one try's log (``event``, ``timestamp``, ``level``, ...)."""
        answer = self.call(
            "GET",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            expect=(200, 404),
            params={"full_content": "true", "map_index": map_index},
            headers={"Accept": "application/json"},
        )
        if not isinstance(answer, dict) or "content" not in answer:
            return []
        return [entry if isinstance(entry, dict) else {"event": str(entry)} for entry in answer["content"]]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1) -> str:
        """The text of one try's log, as the UI's log view shows it."""
        lines = []
        for entry in self.task_log_entries(dag_id, run_id, task_id, try_number, map_index):
            extra = {k: v for k, v in entry.items() if k not in ("event", "timestamp", "level", "logger", "chan")}
            line = f"{entry.get('timestamp', '')} {entry.get('level', '')} {entry.get('event', '')}"
            lines.append(line + (f" {extra}" if extra else ""))
        return "\n".join(lines)

    def wait_for_run(
        self,
        dag_id: str,
        run_id: str,
        timeout: float,
        explain: Callable[[], str] | None = None,
        fail_on_retry: bool = False,
    ) -> dict[str, Any]:
        """Poll until the run is finished (success or failed); return it.

        :param fail_on_retry: fail as soon as a task instance waits for a retry, rather than
            wait out its retry delay.
        """

        def finished() -> dict[str, Any] | None:
            run = self.dag_run(dag_id, run_id)
            if run["state"] in FINISHED:
                return run
            if fail_on_retry:
                retrying = [ti["task_id"] for ti in self.task_instances(dag_id, run_id) if ti["state"] == "up_for_retry"]
                if retrying:
                    detail = explain() if explain is not None else ""
                    raise AssertionError(f"run {dag_id}/{run_id}: {retrying} failed and wait for a retry\n{detail}")
            return None

        return wait_for(finished, timeout, f"run {dag_id}/{run_id} finishes", interval=1.0, explain=explain)
