"""JupyterHub's database and MLflow's backend store on a real PostgreSQL server
(tests/pg_server.py: Debian's postgresql, started for the test on a loopback port).
The password reaches libpq as $PGPASSWORD from the environment, never a file."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import requests

from conftest import fedhub_env
from pg_server import PostgresServer

pytestmark = pytest.mark.hub

CATALOGUE = "sites:\n  - {name: here, kind: local, cpus: 4, memory: 8G}\n"


@pytest.fixture(scope="module")
def pg():
    with PostgresServer() as server:
        yield server


def mlflow_ready(url: str, token: str, timeout: float = 150) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = requests.get(f"{url}/api/2.0/mlflow/experiments/search?max_results=1",
                         headers={"Authorization": f"Bearer {token}"}, timeout=30)
        if r.status_code == 200:
            return
        time.sleep(1)
    raise AssertionError(f"MLflow not up: {r.status_code} {r.text[:300]}")


def test_hub_and_mlflow_keep_users_sessions_and_runs_in_postgres_across_a_restart(pg, hub_factory, monkeypatch):
    hub_url, mlflow_url = pg.create_database("jupyterhub"), pg.create_database("mlflow")
    monkeypatch.setenv("PGPASSWORD", pg.password)
    hub = hub_factory(CATALOGUE, args=["--no-inference", "--db-url", hub_url, "--mlflow-db-url", mlflow_url]).start()
    token = hub.create_user("pat")
    assert hub.spawn("pat").status_code in (201, 202)
    hub.wait_ready("pat")
    url = f"{hub.url}/services/mlflow"
    mlflow_ready(url, token)
    script = ("import mlflow; mlflow.set_experiment('on-postgres')\n"
              "with mlflow.start_run() as run:\n    mlflow.log_metric('acc', 0.87)\nprint(run.info.run_id)")
    env = {**fedhub_env(), "MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_TOKEN": token}
    env.pop("PGPASSWORD")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.strip().splitlines()[-1]

    # the rows are in PostgreSQL, and no SQLite database was made for them
    with pg.connect("jupyterhub") as conn, conn.cursor() as cur:
        cur.execute("SELECT name FROM users")
        assert ("pat",) in cur.fetchall()
        cur.execute("SELECT count(*) FROM spawners WHERE server_id IS NOT NULL")
        assert cur.fetchone()[0] == 1
    with pg.connect("mlflow") as conn, conn.cursor() as cur:
        cur.execute("SELECT run_uuid FROM runs")
        assert (run_id,) in cur.fetchall()
    assert not (hub.data_dir / "jupyterhub.sqlite").exists()
    assert not (hub.data_dir / "mlflow" / "mlflow.db").exists()
    # the password is in no file fedhub wrote
    for path in hub.data_dir.rglob("*"):
        if path.is_file() and path.stat().st_size < 5_000_000 and "homes" not in path.parts:
            assert pg.password.encode() not in path.read_bytes(), path

    hub.stop()
    hub.start()
    assert hub.api("GET", "/users/pat").status_code == 200
    mlflow_ready(url, token)
    r = requests.get(f"{url}/api/2.0/mlflow/runs/get?run_id={run_id}", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    assert r.json()["run"]["data"]["metrics"][0]["value"] == 0.87


def test_a_password_in_a_database_url_is_refused_naming_the_option(tmp_path):
    for option in ("--db-url", "--mlflow-db-url"):
        r = subprocess.run([sys.executable, "-m", "fedhub.server_ext.cli", "up", "--data-dir", str(tmp_path),
                            option, "postgresql://hub:hunter2@127.0.0.1:5432/hub"],
                           capture_output=True, text=True, env=fedhub_env(), timeout=60)
        assert r.returncode == 2
        assert f"{option}: the URL holds a password" in r.stderr and "PGPASSWORD" in r.stderr
        assert not (tmp_path / "fedhub-up.json").exists() or "hunter2" not in (tmp_path / "fedhub-up.json").read_text()
