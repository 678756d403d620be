"""Sharing experiments with hub groups, through the real hub, its real MLflow (basic-auth app
behind the hub gate) and the unmodified mlflow client. MLflow's own roles do the enforcing:
a hub group is mirrored as an MLflow role whose members follow the group."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import requests

from conftest import fedhub_env

pytestmark = pytest.mark.hub

READ_AS_CLIENT = """
import mlflow
exp = mlflow.get_experiment_by_name('alice-exp')
runs = mlflow.search_runs([exp.experiment_id], output_format='list')
print(exp.experiment_id, runs[0].data.metrics['acc'])
"""


@pytest.fixture(scope="module")
def hub(module_hub_factory):
    hub = module_hub_factory(None, args=["--no-inference"])  # default catalogue, MLflow on
    with open(hub.data_dir / "jupyterhub_config.py", "a") as f:  # the tests' token may not create groups
        f.write('\nc.JupyterHub.load_groups = {"lab": {"users": ["bob"]}, "other": {"users": []}}\n')
    hub.start()
    hub.tokens = {name: hub.create_user(name) for name in ("alice", "bob", "carol")}
    url = f"{hub.url}/services/mlflow"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # MLflow takes a few seconds to start
        r = requests.get(f"{url}/api/2.0/mlflow/experiments/search?max_results=1",
                         headers={"Authorization": f"token {hub.tokens['alice']}"})
        if r.status_code == 200:
            break
        time.sleep(1)
    assert r.status_code == 200, r.text
    return hub


def client_env(hub, user: str) -> dict:
    return {**fedhub_env(), "MLFLOW_TRACKING_URI": f"{hub.url}/services/mlflow",
            "MLFLOW_TRACKING_TOKEN": hub.tokens[user]}


def fedhub_cli(hub, user: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedhub.server_ext.cli", "--hub", hub.url,
                           "--token", hub.tokens[user], *args], env=fedhub_env(),
                          capture_output=True, text=True, timeout=120)


def mlflow_get(hub, user: str, path: str) -> requests.Response:
    return requests.get(f"{hub.url}/services/mlflow/api/2.0/mlflow/{path}",
                        headers={"Authorization": f"token {hub.tokens[user]}"}, timeout=30)


def shares_api(hub, user: str, exp_id: str, method: str = "GET", group: str = "", **kw) -> requests.Response:
    url = f"{hub.url}/services/mlflow/fedhub/api/experiments/{exp_id}/shares" + (f"/{group}" if group else "")
    return requests.request(method, url, headers={"Authorization": f"token {hub.tokens[user]}"}, timeout=30, **kw)


def wait_for_status(hub, user: str, path: str, status: int, timeout: float = 40) -> float:
    """Seconds until `user` gets `status` for `path` (group changes reach MLflow within the gate's token cache)."""
    t0 = time.monotonic()
    while True:
        r = mlflow_get(hub, user, path)
        if r.status_code == status:
            return time.monotonic() - t0
        assert time.monotonic() - t0 < timeout, f"{user}: {r.status_code} {r.text[:200]}, expected {status}"
        time.sleep(0.5)


def test_share_with_a_group_follows_membership_and_unshare_revokes(hub):
    script = ("import mlflow; mlflow.set_experiment('alice-exp')\n"
              "with mlflow.start_run() as run: mlflow.log_metric('acc', 0.875)\n"
              "print(run.info.run_id)")
    out = subprocess.run([sys.executable, "-c", script], env=client_env(hub, "alice"),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.split()[-1]
    exp_id = mlflow_get(hub, "alice", "experiments/get-by-name?experiment_name=alice-exp").json()["experiment"]["experiment_id"]
    assert mlflow_get(hub, "bob", f"runs/get?run_id={run_id}").status_code == 403  # private until shared

    # the owner shares it with `lab` through the CLI (experiment by name)
    out = fedhub_cli(hub, "alice", "share", "alice-exp", "--group", "lab")
    assert out.returncode == 0, out.stderr
    assert "shared with group 'lab' (READ)" in out.stdout
    # bob (in lab) reads it with the unmodified mlflow client; carol (not in lab) cannot
    read = subprocess.run([sys.executable, "-c", READ_AS_CLIENT], env=client_env(hub, "bob"),
                          capture_output=True, text=True, timeout=120)
    assert read.returncode == 0, read.stderr
    assert read.stdout.split() == [exp_id, "0.875"]
    assert mlflow_get(hub, "carol", f"runs/get?run_id={run_id}").status_code == 403
    assert mlflow_get(hub, "carol", f"experiments/get?experiment_id={exp_id}").status_code == 403
    # READ is read: bob cannot log into alice's experiment
    r = requests.post(f"{hub.url}/services/mlflow/api/2.0/mlflow/runs/create",
                      headers={"Authorization": f"token {hub.tokens['bob']}"}, json={"experiment_id": exp_id})
    assert r.status_code == 403
    listed = fedhub_cli(hub, "alice", "share", exp_id)
    assert listed.returncode == 0 and "lab (READ)" in listed.stdout, listed.stdout + listed.stderr

    # bob leaves the group: access goes; joins again: access comes back
    assert hub.api("DELETE", "/groups/lab/users", json={"users": ["bob"]}).status_code == 200
    wait_for_status(hub, "bob", f"runs/get?run_id={run_id}", 403)
    # carol joins: she gains access without anyone sharing again
    assert hub.api("POST", "/groups/lab/users", json={"users": ["carol", "bob"]}).status_code == 200
    wait_for_status(hub, "carol", f"runs/get?run_id={run_id}", 200)
    wait_for_status(hub, "bob", f"runs/get?run_id={run_id}", 200)

    # unshare revokes at once (the role's permission is gone; no cache in between)
    out = fedhub_cli(hub, "alice", "unshare", "alice-exp", "--group", "lab")
    assert out.returncode == 0, out.stderr
    assert mlflow_get(hub, "bob", f"runs/get?run_id={run_id}").status_code == 403
    assert shares_api(hub, "alice", exp_id).json()["shares"] == []


def test_only_the_owner_shares_and_bad_requests_are_clear_json(hub):
    script = "import mlflow; print(mlflow.create_experiment('alice-private'))"
    out = subprocess.run([sys.executable, "-c", script], env=client_env(hub, "alice"),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    exp_id = out.stdout.split()[-1]
    r = shares_api(hub, "alice", exp_id, "POST", json={"group": "lab", "permission": "EDIT"})
    assert r.status_code == 200 and r.json()["permission"] == "EDIT", r.text

    cases = [
        ("bob", exp_id, {"group": "other"}, 403, "Only the owner"),  # bob has EDIT, not MANAGE
        ("carol", exp_id, {"group": "other"}, 404, "No experiment"),  # carol cannot see it at all
        ("alice", exp_id, {"group": "no-such-group"}, 404, "No hub group 'no-such-group'"),
        ("alice", "987654", {"group": "lab"}, 404, "No experiment '987654'"),
        ("alice", exp_id, {"group": "lab", "permission": "OWN"}, 400, "permission: expected one of READ"),
        ("alice", exp_id, {}, 400, "group: expected"),
    ]
    hub.api("DELETE", "/groups/lab/users", json={"users": ["carol"]})
    for user, eid, body, status, message in cases:
        if user == "carol":
            wait_for_status(hub, "carol", f"experiments/get?experiment_id={exp_id}", 403)
        r = shares_api(hub, user, eid, "POST", json=body)
        assert r.status_code == status and message in r.json()["message"], (user, body, r.status_code, r.text)
    r = shares_api(hub, "alice", exp_id, "POST", data="not json")
    assert r.status_code == 400 and r.headers["Content-Type"].startswith("application/json")
    r = shares_api(hub, "bob", exp_id, "DELETE", group="lab")
    assert r.status_code == 403
    r = shares_api(hub, "alice", exp_id, "DELETE", group="other")
    assert r.status_code == 404 and "not shared with group 'other'" in r.json()["message"]
    out = fedhub_cli(hub, "bob", "share", exp_id, "--group", "other")
    assert out.returncode == 1 and "403: Only the owner" in out.stderr

