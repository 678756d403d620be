"""`fedhub up` as a user runs it: start-up validation, Ctrl-C, restart with running
sessions, a data dir that survives, MLflow behind the hub's login."""

import subprocess
import sys
import time

import psutil
import pytest
import requests

from conftest import fedhub_env

pytestmark = pytest.mark.hub

CATALOGUE = """
sites:
  - {name: one, kind: local, cpus: 4, memory: 8G, gpus: [{type: a100, count: 2}]}
  - {name: two, kind: local, cpus: 4, memory: 8G, gpus: [{type: a100, count: 2}]}
"""


def test_broken_catalogue_stops_fedhub_up_with_a_clear_error(tmp_path):
    (tmp_path / "sites.yaml").write_text(
        "sites:\n  - {name: a, kind: local, cpus: 1, memory: 1G}\n"
        "  - {name: b, kind: local, cpus: 1, memory: 1G, gpus: [{type: t4, count: -2}]}\n")
    r = subprocess.run([sys.executable, "-m", "fedhub.server_ext.cli", "up", "--data-dir", str(tmp_path),
                        "--port", "1"], capture_output=True, text=True, env=fedhub_env(), timeout=60)
    assert r.returncode == 2
    assert "sites.yaml: sites[1].gpus[0].count: expected a positive integer, got -2" in r.stderr
    assert not (tmp_path / "jupyterhub.sqlite").exists()  # nothing started


@pytest.mark.parametrize("extra, message", [
    ("sites:\n  - {name: hpc, kind: slurm, options: {slurm_conf: /nonexistent/slurm.conf}}\n",
     "sites.yaml: sites[0].options.slurm_conf: expected an existing slurm.conf, got '/nonexistent/slurm.conf'"),
    ("sites:\n  - {name: a, kind: local, cpus: 1, memory: 1G}\n",
     "sites.yaml + FederatedSpawner.catalogue: sites[0].cpus: expected a positive number, got -1"),
])
def test_hub_refuses_to_start_on_a_catalogue_it_cannot_serve(hub_factory, extra, message):
    hub = hub_factory(extra)
    with open(hub.data_dir / "jupyterhub_config.py", "a") as f:
        if "slurm" not in extra:
            f.write("\nc.FederatedSpawner.catalogue = {'sites': [{'name': 'a', 'cpus': -1}]}\n")
    with pytest.raises(RuntimeError, match="exited"):
        hub.start(timeout=60)
    assert message in hub.log_tail()


def test_ctrl_c_stops_everything_it_started(hub_factory):
    hub = hub_factory(CATALOGUE).start()
    hub.create_user("ann")
    assert hub.spawn("ann", gpus=1).status_code in (201, 202)
    hub.wait_ready("ann")
    server_pid = hub.server("ann")["state"]["fedhub"]["child"]["pid"]
    started, names = [], ""
    for p in psutil.Process(hub.proc.pid).children(recursive=True):
        try:  # short-lived helpers may already be gone (or zombies) by the time we look
            names += " " + " ".join(p.cmdline())
            started.append(p)
        except psutil.Error:
            pass
    assert "configurable-http-proxy" in names and "fedhub.hub.service.app" in names
    hub.stop()  # SIGINT, as Ctrl-C sends
    assert hub.proc.returncode == 0
    time.sleep(1)
    alive = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], [p.cmdline() for p in alive]
    assert not psutil.pid_exists(server_pid) or psutil.Process(server_pid).status() == psutil.STATUS_ZOMBIE


def test_hub_restart_reconnects_running_sessions_then_stop_frees_them(hub_factory):
    hub = hub_factory(CATALOGUE, args=["--no-mlflow", "--no-inference", "--keep-servers"]).start()
    tokens = {name: hub.create_user(name) for name in ("kim", "lee")}
    assert hub.spawn("kim", gpus=2, site="one").status_code in (201, 202)
    assert hub.spawn("lee", gpus=1, site="two").status_code in (201, 202)
    pids = {n: hub.wait_ready(n)["state"]["fedhub"]["child"]["pid"] for n in tokens}
    since = hub.fedhub_api("/sessions", tokens["lee"]).json()["sessions"][0]["since"]
    hub.stop()
    assert all(psutil.pid_exists(p) for p in pids.values())  # sessions outlive the hub

    hub.start()
    for name, token in tokens.items():
        server = hub.wait_ready(name, timeout=30)
        assert server["state"]["fedhub"]["child"]["pid"] == pids[name]
        r = requests.get(f"{hub.url}/user/{name}/api/status", headers={"Authorization": f"token {token}"})
        assert r.status_code == 200, r.text
    # capacity is re-accounted: site one's two GPUs are still held by kim
    sites = {s["name"]: s for s in hub.fedhub_api("/sites", tokens["kim"]).json()["sites"]}
    assert sites["one"]["gpus"][0]["free"] == 0 and sites["two"]["gpus"][0]["free"] == 1
    lee = hub.fedhub_api("/sessions", tokens["lee"]).json()["sessions"][0]
    assert lee["site"] == "two"
    assert lee["since"] == since  # the time limit counts from the first start, not from the restart
    assert lee["site_max_hours"] is None  # a local site ends no session by itself
    hub.create_user("mia")
    assert hub.spawn("mia", gpus=2, site="one").status_code == 409

    for name in tokens:
        hub.stop_server(name)
    time.sleep(0.5)
    for pid in pids.values():
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    sites = {s["name"]: s for s in hub.fedhub_api("/sites", tokens["kim"]).json()["sites"]}
    assert sites["one"]["gpus"][0]["free"] == 2 and sites["two"]["gpus"][0]["free"] == 2


def test_mlflow_only_with_hub_login_and_runs_survive_a_restart(hub_factory):
    hub = hub_factory(CATALOGUE, args=[]).start()
    token = hub.create_user("rui")
    url = f"{hub.url}/services/mlflow"
    assert requests.get(f"{url}/api/2.0/mlflow/experiments/search?max_results=1").status_code == 401
    assert requests.get(f"{url}/api/2.0/mlflow/experiments/search?max_results=1",
                        headers={"Authorization": "token forged"}).status_code in (401, 403)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # mlflow takes a few seconds to start
        r = requests.get(f"{url}/api/2.0/mlflow/experiments/search?max_results=1",
                         headers={"Authorization": f"Bearer {token}"})
        if r.status_code == 200:
            break
        assert r.status_code == 503, r.text
        time.sleep(1)
    assert r.status_code == 200
    # the unmodified mlflow client, authenticated by the hub token alone
    script = ("import mlflow; mlflow.set_experiment('e2e');\n"
              "with mlflow.start_run() as run:\n"
              "    mlflow.log_param('lr', 0.1); mlflow.log_metric('acc', 0.93)\n"
              "print(run.info.run_id)")
    env = {**fedhub_env(), "MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_TOKEN": token}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.strip().splitlines()[-1]
    env.pop("MLFLOW_TRACKING_TOKEN")
    denied = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert denied.returncode != 0
    assert "UNAUTHENTICATED: Authentication required: send your hub token" in denied.stderr

    # isolation: MLflow's own permissions keep another hub user out of rui's experiment
    other = hub.create_user("eve")
    search = "/api/2.0/mlflow/experiments/search?max_results=100"
    r = requests.get(f"{url}/api/2.0/mlflow/runs/get?run_id={run_id}", headers={"Authorization": f"token {other}"})
    assert r.status_code == 403 and "Permission denied" in r.text
    names = {e["name"] for e in requests.get(url + search, headers={"Authorization": f"token {other}"}).json().get("experiments", [])}
    assert "e2e" not in names
    # a client cannot pose as another user through the gate's headers
    r = requests.get(f"{url}/api/2.0/mlflow/runs/get?run_id={run_id}",
                     headers={"Authorization": f"token {other}", "X-Fedhub-User": "rui", "X-Fedhub-Gate": "guess"})
    assert r.status_code == 403
    # eve's own work is hers, through the unmodified client
    env["MLFLOW_TRACKING_TOKEN"] = other
    out = subprocess.run([sys.executable, "-c", script.replace("'e2e'", "'eve-exp'")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    names = {e["name"] for e in requests.get(url + search, headers={"Authorization": f"token {other}"}).json()["experiments"]}
    assert "eve-exp" in names and "e2e" not in names
    names = {e["name"] for e in requests.get(url + search, headers={"Authorization": f"token {token}"}).json()["experiments"]}
    assert "e2e" in names and "eve-exp" not in names

    hub.stop()
    hub.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        r = requests.get(f"{url}/api/2.0/mlflow/runs/get?run_id={run_id}",
                         headers={"Authorization": f"token {token}"})
        if r.status_code != 503:
            break
        time.sleep(1)
    assert r.status_code == 200, r.text
    assert r.json()["run"]["data"]["metrics"][0]["value"] == 0.93
