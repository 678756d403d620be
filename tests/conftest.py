"""Test harness: real hubs started with `fedhub up`, driven through their REST API.

`hub_factory` starts `fedhub up` (JupyterHub + configurable-http-proxy + the fedhub
API service, MLflow when asked) on free loopback ports with a fresh data dir, and an
extra jupyterhub_config.py that adds an admin service token for the tests. Nothing
in here is mocked: spawns start real single-user servers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
ADMIN_TOKEN = "fedhub-tests-admin-token-0123456789"
EXTRA_CONFIG = f"""
c.JupyterHub.services.append({{"name": "tests", "api_token": {ADMIN_TOKEN!r}}})
c.JupyterHub.load_roles.append({{"name": "tests", "services": ["tests"],
    "scopes": ["admin:users", "admin:servers", "admin:server_state", "tokens", "read:hub",
               "access:servers", "read:roles", "groups"]}})
"""


def wait_for(predicate, timeout=60, interval=0.5, what="condition"):
    """predicate()'s first true value, polled every `interval` s; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fedhub_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{ROOT / 'node_modules' / '.bin'}:{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


class Hub:
    """A running `fedhub up`, and helpers for its REST API."""

    def __init__(self, data_dir: Path, port: int, args: list[str], catalogue: str | None):
        self.data_dir, self.port, self.args = data_dir, port, args
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir / "hub.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        if catalogue is not None:
            (data_dir / "sites.yaml").write_text(catalogue)
        (data_dir / "jupyterhub_config.py").write_text(EXTRA_CONFIG)

    # -------------------------------------------------------------- process
    def start(self, timeout: float = 60) -> "Hub":
        log = open(self.log_path, "ab")
        log_start = log.tell()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fedhub.server_ext.cli", "up", "--port", str(self.port),
             "--data-dir", str(self.data_dir), *self.args],
            stdout=log, stderr=subprocess.STDOUT, env=fedhub_env(), start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fedhub up exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                # The hub answers its API before its services' proxy routes are
                # added; JupyterHub logs this line once they are.
                if (requests.get(f"{self.url}/hub/api/", timeout=2).status_code == 200
                        and self._log_since(log_start, "JupyterHub is now running")):
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"hub did not come up in {timeout}s:\n{self.log_tail()}")

    def stop(self, sig=signal.SIGINT, timeout: float = 60) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def _log_since(self, offset: int, text: str) -> bool:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return text.encode() in f.read()

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    @property
    def shared_password(self) -> str:
        return json.loads((self.data_dir / "secrets.json").read_text())["shared_password"]

    # -------------------------------------------------------------- REST API
    def api(self, method: str, path: str, token: str = ADMIN_TOKEN, **kw) -> requests.Response:
        kw.setdefault("timeout", 120)
        return requests.request(method, f"{self.url}/hub/api{path}",
                                headers={"Authorization": f"token {token}"}, **kw)

    def fedhub_api(self, path: str, token: str, method: str = "GET", **kw) -> requests.Response:
        headers = {"Authorization": f"token {token}"} if token else {}
        return requests.request(method, f"{self.url}/services/fedhub/api{path}",
                                headers=headers, timeout=30, **kw)

    def create_user(self, name: str) -> str:
        """Create a user and return an API token carrying that user's permissions."""
        r = self.api("POST", f"/users/{name}")
        assert r.status_code in (201, 409), r.text
        r = self.api("POST", f"/users/{name}/tokens", json={"note": "tests"})
        assert r.status_code == 201, r.text
        return r.json()["token"]

    def spawn(self, name: str, **options) -> requests.Response:
        return self.api("POST", f"/users/{name}/server", json=options)

    def wait_ready(self, name: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = self.api("GET", f"/users/{name}").json()["servers"].get("")
            if server and server["ready"]:
                return server
            if server is None or (not server["pending"] and not server["ready"]):
                raise AssertionError(f"{name}'s server is gone:\n{self.log_tail()}")
            time.sleep(0.3)
        raise AssertionError(f"{name}'s server not ready in {timeout}s:\n{self.log_tail()}")

    def server(self, name: str) -> dict | None:
        return self.api("GET", f"/users/{name}").json()["servers"].get("")

    def stop_server(self, name: str) -> None:
        r = self.api("DELETE", f"/users/{name}/server")
        assert r.status_code in (202, 204), r.text
        deadline = time.monotonic() + 60
        while self.server(name) is not None and time.monotonic() < deadline:
            time.sleep(0.3)
        assert self.server(name) is None

    def session_env(self, name: str) -> dict[str, str]:
        """The environment of the user's running single-user server process."""
        pid = self.server(name)["state"]["fedhub"]["child"]["pid"]
        return psutil.Process(pid).environ()


def _hub_maker(base: Path):
    hubs: list[Hub] = []

    def make(catalogue: str | None = None, args=("--no-mlflow", "--no-inference"), data_dir=None) -> Hub:
        hub = Hub(Path(data_dir or base / f"hub{len(hubs)}"), free_port(), list(args), catalogue)
        hubs.append(hub)
        return hub

    return make, hubs


@pytest.fixture
def hub_factory(tmp_path):
    make, hubs = _hub_maker(tmp_path)
    yield make
    for hub in hubs:
        hub.stop()
        kill_sessions_of(hub.data_dir)


@pytest.fixture(scope="module")
def module_hub_factory(tmp_path_factory):
    make, hubs = _hub_maker(tmp_path_factory.mktemp("hubs"))
    yield make
    for hub in hubs:
        hub.stop()
        kill_sessions_of(hub.data_dir)


@pytest.fixture(scope="module")
def pg():
    """A real PostgreSQL server (Debian's binaries) for the module's tests; removed after them."""
    from pg_server import PostgresServer
    with PostgresServer() as server:
        yield server


def kill_sessions_of(data_dir: Path) -> None:
    """Kill single-user servers left running (keep-servers hubs): their HOME is in data_dir."""
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("HOME", "").startswith(str(data_dir)):
                proc.kill()
        except (psutil.Error, OSError):
            pass


@pytest.fixture(scope="session")
def capture_project(tmp_path_factory):
    """A git project with notebooks and an MLflow store, shared by the capture and reproduce tests."""
    import capture_lab
    return capture_lab.make_lab(tmp_path_factory.mktemp("capture"))


@pytest.fixture
def capture_tracking(capture_project, monkeypatch):
    import mlflow
    monkeypatch.setenv("MLFLOW_TRACKING_URI", capture_project.tracking_uri)
    mlflow.set_tracking_uri(capture_project.tracking_uri)
    yield capture_project.tracking_uri
    mlflow.set_tracking_uri(None)


@pytest.fixture(autouse=True)
def _forget_mlflow_globals():
    """Tests share worker processes: a tracking URI or active experiment one test set through
    mlflow's globals must not leak into the next (which reads $MLFLOW_TRACKING_URI)."""
    yield
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:
        mlflow.set_tracking_uri(None)
        fluent = sys.modules.get("mlflow.tracking.fluent")
        if fluent is not None and hasattr(fluent, "_active_experiment_id"):
            fluent._active_experiment_id = None
