"""JupyterHub's database, MLflow's backend store and fedhub's own state (federated jobs,
deployments, the provenance ledger) on a real PostgreSQL server (tests/pg_server.py:
Debian's postgresql, started for the test on a loopback port). The password reaches libpq
as $PGPASSWORD from the environment, never a file."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest
import requests

from conftest import fedhub_env
from fedhub.hub.federation import example_app
from inference_models import sklearn_digits_model

pytestmark = pytest.mark.hub

CATALOGUE = "sites:\n  - {name: here, kind: local, cpus: 4, memory: 8G}\n"


def mlflow_ready(url: str, token: str, timeout: float = 150) -> None:
    deadline, last = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        try:
            r = requests.get(f"{url}/api/2.0/mlflow/experiments/search?max_results=1",
                             headers={"Authorization": f"Bearer {token}"}, timeout=30)
        except requests.RequestException as e:  # a loaded machine: MLflow's workers still starting
            last = repr(e)
        else:
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:300]}"
        time.sleep(1)
    raise AssertionError(f"MLflow not up: {last}")


def wait_for(get, done, timeout: float = 120, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = get()
        if done(value):
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}: {value}")


def fedhub_state(hub, token: str, job_id: str, dep_id: str) -> dict:
    """The job, its events, the deployment and the caller's ledger records, through the API."""
    def get(path):
        r = hub.fedhub_api(path, token)
        assert r.status_code == 200, r.text
        return r.json()
    return {"job": get(f"/jobs/{job_id}"), "events": get(f"/jobs/{job_id}/events?after=0")["events"],
            "deployment": get(f"/deployments/{dep_id}"), "ledger": get("/provenance")["records"],
            "verify": get("/provenance/verify")}


def test_hub_and_mlflow_keep_users_sessions_and_runs_in_postgres_across_a_restart(pg, hub_factory, monkeypatch):
    hub_url, mlflow_url = pg.create_database("jupyterhub"), pg.create_database("mlflow")
    state_url = pg.create_database("fedhub")
    monkeypatch.setenv("PGPASSWORD", pg.password)
    hub = hub_factory(CATALOGUE, args=["--db-url", hub_url, "--mlflow-db-url", mlflow_url,
                                       "--state-db-url", state_url]).start()
    token = hub.create_user("pat")
    assert hub.spawn("pat").status_code in (201, 202)
    hub.wait_ready("pat")

    # fedhub's own state: a federated job (cancelled at once: its record and events are what
    # matter here), a deployment of a workspace ONNX model to the embedded server, ledger records
    home = hub.data_dir / "homes" / "pat"
    shutil.copytree(example_app("digits"), home / "digits")
    sklearn_digits_model(home / "work", "digits")
    r = hub.fedhub_api("/jobs", token, method="POST", json={"app": "digits", "sites": ["here"], "rounds": 1})
    assert r.status_code in (201, 202), r.text
    job_id = r.json()["id"]
    assert hub.fedhub_api(f"/jobs/{job_id}/cancel", token, method="POST").status_code in (200, 202)
    wait_for(lambda: hub.fedhub_api(f"/jobs/{job_id}", token).json(), lambda j: j["state"] == "cancelled",
             what="the job cancelled")
    r = hub.fedhub_api("/deployments", token, method="POST",
                       json={"model": str(home / "work" / "digits" / "1" / "model.onnx"), "name": "digits"})
    assert r.status_code in (201, 202), r.text
    dep_id = r.json()["id"]
    wait_for(lambda: hub.fedhub_api(f"/deployments/{dep_id}", token).json(),
             lambda d: d["status"] not in ("deploying",), timeout=180, what="the deployment")
    before = wait_for(lambda: fedhub_state(hub, token, job_id, dep_id),
                      lambda st: {"session", "job", "deployment"} <= {r["kind"] for r in st["ledger"]},
                      what="session, job and deployment ledger records")
    assert before["deployment"]["status"] == "ready", before["deployment"]
    assert before["verify"]["ok"] is True and before["events"][-1]["seq"] == len(before["events"]) > 1
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
    with pg.connect("fedhub") as conn, conn.cursor() as cur:
        cur.execute("SELECT id, owner, state FROM jobs")
        assert cur.fetchall() == [(job_id, "pat", "cancelled")]
        cur.execute("SELECT id, status FROM deployments")
        assert cur.fetchall() == [(dep_id, "ready")]
        cur.execute("SELECT count(*) FROM job_events WHERE job_id = %s", (job_id,))
        assert cur.fetchone()[0] == len(before["events"])
        cur.execute("SELECT kind FROM ledger_records ORDER BY position")
        assert {"session", "job", "deployment"} <= {k for (k,) in cur.fetchall()}
        cur.execute("SELECT version_num FROM alembic_version")
        assert cur.fetchone()[0] == "0002"
    assert not (hub.data_dir / "jupyterhub.sqlite").exists()
    assert not (hub.data_dir / "mlflow" / "mlflow.db").exists()
    assert not list(hub.data_dir.rglob("fedhub-state.sqlite")) and not list(hub.data_dir.rglob("job.json"))
    # the password is in no file fedhub wrote
    for path in hub.data_dir.rglob("*"):
        if path.is_file() and path.stat().st_size < 5_000_000 and "homes" not in path.parts:
            assert pg.password.encode() not in path.read_bytes(), path

    hub.stop()
    hub.start()
    assert hub.api("GET", "/users/pat").status_code == 200
    after = wait_for(lambda: hub.fedhub_api("/provenance/verify", token), lambda r: r.status_code == 200,
                     what="the fedhub API after the restart")
    after = fedhub_state(hub, token, job_id, dep_id)
    assert after["job"] == before["job"] and after["events"] == before["events"]
    assert after["deployment"]["versions"] == before["deployment"]["versions"]
    assert [r["hash"] for r in after["ledger"]][:len(before["ledger"])] == [r["hash"] for r in before["ledger"]]
    assert after["verify"]["ok"] is True
    mlflow_ready(url, token)
    r = requests.get(f"{url}/api/2.0/mlflow/runs/get?run_id={run_id}", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    assert r.json()["run"]["data"]["metrics"][0]["value"] == 0.87


def test_a_password_in_a_database_url_is_refused_naming_the_option(tmp_path):
    for option in ("--db-url", "--mlflow-db-url", "--state-db-url"):
        r = subprocess.run([sys.executable, "-m", "fedhub.server_ext.cli", "up", "--data-dir", str(tmp_path),
                            option, "postgresql://hub:hunter2@127.0.0.1:5432/hub"],
                           capture_output=True, text=True, env=fedhub_env(), timeout=60)
        assert r.returncode == 2
        assert f"{option}: the URL holds a password" in r.stderr and "PGPASSWORD" in r.stderr
        assert not (tmp_path / "fedhub-up.json").exists() or "hunter2" not in (tmp_path / "fedhub-up.json").read_text()
