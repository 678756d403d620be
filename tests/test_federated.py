"""Federated jobs through the real hub: a SuperLink per job, SuperNodes on two local sites
and on a real Slurm cluster (a batch job), the bundled digits app submitted with `flwr run`,
per-round metrics in the hub's real MLflow (read back with the mlflow client and the
user's token), the `fedhub fl` CLI, dropout, a failing ServerApp, cancel, bad input and
isolation between users. Nothing is mocked."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest
import requests

from conftest import wait_for
from fedhub.hub.federation import example_app
from slurm_cluster import SlurmCluster

pytestmark = pytest.mark.hub

ROOT = Path(__file__).resolve().parents[1]


def catalogue(cluster: SlurmCluster) -> str:
    doc = {"sites": [
        {"name": "local-a", "kind": "local", "cpus": 8, "memory": "8G"},
        {"name": "local-b", "kind": "local", "cpus": 8, "memory": "8G"},
        {"name": "hpc", "kind": "slurm",
         "options": {"slurm_conf": str(cluster.conf), "partition": cluster.partition,
                     "hosts": {cluster.node: "127.0.0.1"}, "poll_interval": 1}},
        {"name": "closed", "kind": "local", "cpus": 4, "memory": "4G", "federated": False},
    ], "defaults": {"cpus": 0.5, "memory": "512M"}}
    return json.dumps(doc)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = SlurmCluster(tmp_path_factory.mktemp("slurm") / "fl", "fl-site", "flnode", "a100", 1,
                     cpus=4, memory_mb=4000).start()
    yield c
    c.stop()


def site_datasets(data_dir: Path) -> None:
    """A dataset held at both local sites (a different share of the digits at each, as .npz the
    app reads from node config data-path), in the dataset catalogue of policy.yaml."""
    import numpy as np
    import yaml
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    locations = []
    for i, site in enumerate(("local-a", "local-b")):
        path = data_dir / "site-data" / site / "digits.npz"
        path.parent.mkdir(parents=True)
        np.savez(path, x=x[i::2][:600], y=y[i::2][:600])
        locations.append({"site": site, "path": str(path)})
    (data_dir / "policy.yaml").write_text(yaml.safe_dump({
        "default": {"sites": "*", "gpu_types": "*"},
        "datasets": [{"name": "digits-npz", "locations": locations,
                      "policy": {"allowed_groups": ["*"], "purposes": ["federated-training"]}}]}))


@pytest.fixture(scope="module")
def hub(module_hub_factory, cluster):
    h = module_hub_factory(catalogue(cluster), args=["--no-inference"])
    site_datasets(h.data_dir)
    h.start(timeout=120)
    return h


def user_with_app(hub, name: str) -> str:
    """A user whose home holds the digits example app (as a session's workspace would)."""
    token = hub.create_user(name)
    home = hub.data_dir / "homes" / name
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "digits").exists():
        shutil.copytree(example_app("digits"), home / "digits")
    return token


def launch(hub, token, **body):
    return hub.fedhub_api("/jobs", token, method="POST", json=body)


def job(hub, token, job_id):
    r = hub.fedhub_api(f"/jobs/{job_id}", token)
    assert r.status_code == 200, r.text
    return r.json()


def wait_state(hub, token, job_id, states, timeout=240):
    def done():
        j = job(hub, token, job_id)
        return j if j["state"] in states else None
    try:
        return wait_for(done, timeout=timeout, interval=1, what=f"job {job_id} in {states}")
    except AssertionError:
        raise AssertionError(f"{job(hub, token, job_id)}\n{hub.log_tail()}")


def job_record(hub, job_id) -> dict:
    """The job as persisted (with the pids and Slurm job ids the API does not show): its row in
    the state database (SQLite in the state dir)."""
    import sqlite3
    db = hub.data_dir / "state" / "fedhub-state.sqlite"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        (doc,) = conn.execute("SELECT document FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return json.loads(doc)


def flower_processes_of(job_dir: Path) -> list[str]:
    """Live processes of a job: Flower's own (FLWR_HOME in the job's folder) and their children."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if p.environ().get("FLWR_HOME", "").startswith(str(job_dir)):
                found.append(f"{p.pid} {' '.join(p.info['cmdline'] or [])[:120]}")
        except (psutil.Error, OSError):
            continue
    return found


def sites_ready(hub, token):
    r = hub.fedhub_api("/federation/sites", token)
    assert r.status_code == 200, r.text
    sites = {s["name"]: s for s in r.json()["sites"]}
    return sites if sites["hpc"]["allowed"] else None


class Scenario:
    """Long-running jobs started together once the hub is up (they overlap in time: the whole
    module takes about as long as its longest job), each checked by its own test."""

    def __init__(self, hub):
        self.hub = hub
        self.threads: list[threading.Thread] = []
        self.errors: dict[str, BaseException] = {}
        self.results: dict = {}

    def background(self, name, fn):
        def run():
            try:
                self.results[name] = fn()
            except BaseException as e:  # reported by the test that needs it
                self.errors[name] = e
        t = threading.Thread(target=run, name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def result(self, name, timeout=400):
        t = next(t for t in self.threads if t.name == name)
        t.join(timeout)
        assert not t.is_alive(), f"{name} still running after {timeout}s"
        if name in self.errors:
            raise self.errors[name]
        return self.results[name]


def _cli_launch(hub):
    token = user_with_app(hub, "ann")
    env = {**os.environ, "FEDHUB_URL": hub.url, "FEDHUB_TOKEN": token,
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    app = hub.data_dir / "homes" / "ann" / "digits"
    out = subprocess.run(
        [sys.executable, "-m", "fedhub.server_ext.cli", "fl", "launch", str(app), "--sites", "local-a,local-b,hpc",
         "--rounds", "3", "--follow"], env=env, capture_output=True, text=True, timeout=400)
    return token, env, out


def _dropout(hub, user, on_dropout, rounds, kill_after_rounds, **body):
    token = user_with_app(hub, user)
    r = launch(hub, token, app="digits", sites=["local-a", "local-b"], rounds=rounds, on_dropout=on_dropout,
               run_config={"min-nodes": 1}, **body)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    wait_for(lambda: (lambda j: j["state"] == "running" and j["rounds_done"] >= kill_after_rounds)(
        job(hub, token, job_id)), timeout=300, interval=1, what=f"round {kill_after_rounds} of {job_id}")
    node_configs = supernode_configs(hub.data_dir / "state" / "jobs" / job_id)
    _kill_supernode(hub, job_id, "local-b")
    j = wait_state(hub, token, job_id, ("failed", "succeeded", "cancelled"), timeout=300)
    return (token, j, node_configs) if body else (token, j)


def supernode_configs(job_dir: Path) -> dict[str, str]:
    """site -> the --node-config of the job's running SuperNode there (from its command line)."""
    found = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = p.info["cmdline"] or []
            if any(c.endswith("flower-supernode") for c in cmd[:2]) and \
                    p.environ().get("FLWR_HOME", "").startswith(str(job_dir)):
                config = cmd[cmd.index("--node-config") + 1]
                found[config.split('fedhub-site="')[1].split('"')[0]] = config
        except (psutil.Error, OSError, ValueError, IndexError):
            continue
    return found


def _serverapp_exception(hub):
    token = user_with_app(hub, "fay")
    r = launch(hub, token, app="digits", sites=["local-a"], rounds=2,
               run_config={"min-nodes": 1, "hidden-units": -4})  # numpy refuses a negative dimension
    assert r.status_code == 201, r.text
    return wait_state(hub, token, r.json()["id"], ("failed", "succeeded"), timeout=300)


@pytest.fixture(scope="module")
def scenario(hub, cluster):
    wait_for(lambda: sites_ready(hub, hub.create_user("probe")), timeout=90, what="Slurm site up")
    s = Scenario(hub)
    s.background("cli", lambda: _cli_launch(hub))
    s.background("dropout-continue", lambda: _dropout(hub, "eli", "continue", rounds=3, kill_after_rounds=1,
                                                      datasets=["digits-npz"]))
    s.background("dropout-fail", lambda: _dropout(hub, "dan", "fail", rounds=20, kill_after_rounds=0))
    s.background("exception", lambda: _serverapp_exception(hub))
    s.background("cancel", lambda: _cancel_while_running(hub, cluster))
    return s


def test_sites_offered_for_federated_jobs_with_reasons(hub, scenario):
    token = hub.create_user("sue")
    sites = wait_for(lambda: sites_ready(hub, token), what="Slurm site up")
    assert sites["local-a"]["allowed"] and "process" in sites["local-a"]["reason"]
    assert sites["hpc"]["allowed"] and "Slurm batch job" in sites["hpc"]["reason"]
    assert sites["closed"] == {"name": "closed", "kind": "local", "allowed": False, "datasets": [], "data_path": "",
                               "reason": "the catalogue marks this site federated: false"}


def test_another_user_cannot_see_or_cancel_a_job(hub):
    owner = user_with_app(hub, "olga")
    r = launch(hub, owner, app="digits", sites=["local-a"], rounds=1, run_config={"min-nodes": 1})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    intruder = hub.create_user("ivan")
    for method, path in (("GET", f"/jobs/{job_id}"), ("GET", f"/jobs/{job_id}/events"),
                         ("DELETE", f"/jobs/{job_id}"), ("POST", f"/jobs/{job_id}/cancel")):
        r = hub.fedhub_api(path, intruder, method=method)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["message"] == f"no federated job {job_id!r}"
    assert hub.fedhub_api("/jobs", intruder).json()["jobs"] == []
    assert [j["id"] for j in hub.fedhub_api("/jobs", owner).json()["jobs"]] == [job_id]
    r = hub.fedhub_api(f"/jobs/{job_id}", owner, method="DELETE")  # the owner can
    assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text


def test_bad_input_is_refused_with_the_reason(hub):
    token = user_with_app(hub, "bob")
    home = hub.data_dir / "homes" / "bob"
    (home / "notflower").mkdir(exist_ok=True)
    (home / "notflower" / "pyproject.toml").write_text('[project]\nname = "x"\n')
    (hub.data_dir / "homes" / "carl").mkdir(parents=True, exist_ok=True)
    good = {"app": "digits", "sites": ["local-a", "local-b"], "rounds": 2}
    cases = [
        ({**good, "app": "missing"}, 400, "app: 'missing' does not exist in your home"),
        ({**good, "app": "../carl"}, 400, "is outside your home"),
        ({**good, "app": "/etc"}, 400, "is outside your home"),
        ({**good, "app": "notflower"}, 400, "is not a Flower app"),
        ({**good, "sites": ["local-a", "mars"]}, 400, "sites: unknown site 'mars'"),
        ({**good, "sites": []}, 400, "sites: expected a non-empty list"),
        ({**good, "sites": ["closed"]}, 403, "closed is not allowed for federated training"),
        ({**good, "rounds": 0}, 400, "rounds: expected an integer from 1 to 1000, got 0"),
        ({**good, "rounds": -3}, 400, "rounds: expected an integer"),
        ({**good, "rounds": "3"}, 400, "rounds: expected an integer"),
        ({**good, "compression": "gzip"}, 400, "compression: expected a codec among"),
        ({**good, "compression": "topk:7"}, 400, "compression: topk fraction must be in (0, 1]"),
        ({**good, "strategy": "fedsgd"}, 400, "strategy: expected one of"),
        ({**good, "on_dropout": "retry"}, 400, "on_dropout: expected one of"),
        ({**good, "run_config": {"no-such-key": 1}}, 400, "run_config.no-such-key: the app has no such key"),
        ({**good, "colour": "red"}, 400, "colour: unknown field"),
    ]
    for body, status, message in cases:
        r = launch(hub, token, **body)
        assert r.status_code == status, (body, r.text)
        assert message in r.json()["message"], (body, r.json())
    r = hub.fedhub_api("/jobs", token, method="POST", data="{not json")
    assert r.status_code == 400 and "JSON" in r.json()["message"]
    assert hub.fedhub_api("/jobs/nope", token).status_code == 404
    assert hub.fedhub_api("/jobs/nope/events?wait=500", token).status_code == 400
    # a token that may read jobs but not launch them
    r = hub.api("POST", "/users/bob/tokens", json={"scopes": ["custom:fedhub:jobs:read",
                                                            "access:services!service=fedhub"]})
    reader = r.json()["token"]
    assert hub.fedhub_api("/jobs", reader).status_code == 200
    r = launch(hub, reader, **good)
    assert r.status_code == 403 and "custom:fedhub:federate" in r.json()["message"]
    assert hub.fedhub_api("/jobs", token).json()["jobs"] == []  # nothing was created


def test_exception_in_the_serverapp_fails_the_job_with_its_log_tail(hub, scenario):
    j = scenario.result("exception")
    assert j["state"] == "failed", j
    assert j["error"].startswith("the ServerApp failed"), j["error"]
    assert "negative dimensions" in j["log_tail"], j["log_tail"]
    left = flower_processes_of(hub.data_dir / "state" / "jobs" / j["id"])
    assert not left, left


def _cancel_while_running(hub, cluster):
    """Launch on a local and the Slurm site, cancel once the run is going; what was left?"""
    token = user_with_app(hub, "cat")
    r = launch(hub, token, app="digits", sites=["local-a", "hpc"], rounds=50)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    wait_state(hub, token, job_id, ("running",), timeout=300)
    record = job_record(hub, job_id)
    pids = [record["superlink_pid"]] + [s["pid"] for s in record["supernodes"] if s["pid"]]
    slurm_job = [s["slurm_job_id"] for s in record["supernodes"] if s["kind"] == "slurm"][0]
    job_dir = hub.data_dir / "state" / "jobs" / job_id
    before = {"slurm": cluster.jobs(), "processes": flower_processes_of(job_dir)}
    r = hub.fedhub_api(f"/jobs/{job_id}/cancel", token, method="POST")
    after = {"slurm": cluster.jobs(), "processes": flower_processes_of(job_dir),
             "pids": [pid for pid in pids if psutil.pid_exists(pid)
                      and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]}
    again = hub.fedhub_api(f"/jobs/{job_id}/cancel", token, method="POST")
    return slurm_job, before, r, after, again


def test_cancel_stops_every_process_and_slurm_job(hub, scenario):
    slurm_job, before, r, after, again = scenario.result("cancel")
    assert any(line.startswith(f"{slurm_job} RUNNING") for line in before["slurm"]), before
    assert before["processes"]  # the job was really running...
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "cancelled" and r.json()["error"] == "cancelled by cat"
    assert after["pids"] == [] and after["processes"] == []  # ...and nothing of it is left
    assert not any(line.startswith(slurm_job) for line in after["slurm"]), after
    assert again.status_code == 409 and "already cancelled" in again.json()["message"]


def _kill_supernode(hub, job_id, site):
    record = job_record(hub, job_id)
    pid = [s["pid"] for s in record["supernodes"] if s["site"] == site][0]
    os.killpg(pid, signal.SIGKILL)


def test_dropout_with_on_dropout_fail_fails_the_job_and_says_which_site(hub, scenario):
    token, j = scenario.result("dropout-fail")
    assert j["state"] == "failed", j
    assert j["error"].startswith("the SuperNode of site local-b stopped during the run (process "), j["error"]
    assert "on_dropout is 'fail'" in j["error"]
    assert "SuperNode" in j["log_tail"]  # the dead SuperNode's own log
    assert j["site_status"]["local-b"]["state"] == "lost"
    events = hub.fedhub_api(f"/jobs/{j['id']}/events", token).json()["events"]
    assert any(e["type"] == "error" and e.get("site") == "local-b" for e in events)
    left = flower_processes_of(hub.data_dir / "state" / "jobs" / j["id"])
    assert not left, left


def test_dropout_with_on_dropout_continue_completes_with_the_remaining_site(hub, scenario):
    token, j, node_configs = scenario.result("dropout-continue")
    assert j["state"] == "succeeded", j
    # the job named a dataset: each SuperNode was told its own site's copy (the dataset catalogue)
    paths = {site: str(hub.data_dir / "site-data" / site / "digits.npz") for site in ("local-a", "local-b")}
    assert j["datasets"] == ["digits-npz"] and j["data_paths"] == {s: {"digits-npz": p} for s, p in paths.items()}
    for site, path in paths.items():
        assert f'data-path="{path}"' in node_configs[site] and 'dataset="digits-npz"' in node_configs[site]
    assert j["rounds_done"] == 3
    assert "local-b dropped out; continuing with local-a (on_dropout: continue)" in j["warnings"]
    assert j["site_status"]["local-b"]["state"] == "lost"
    assert set(j["round_metrics"][-1]["nodes"]) == {"local-a"}, j["round_metrics"][-1]


def test_cli_launch_follow_on_two_local_sites_and_slurm_three_rounds_into_mlflow(hub, cluster, scenario):
    token, env, out = scenario.result("cli")
    assert out.returncode == 0, out.stdout + out.stderr + hub.log_tail()
    text = out.stdout
    for rnd in (1, 2, 3):
        assert f"Round {rnd}/3:" in text, text
    assert "B this round" in text and "succeeded" in text
    job_id = text.split()[1].rstrip(":")

    j = job(hub, token, job_id)
    assert j["state"] == "succeeded" and j["rounds_done"] == 3, j
    assert [r["round"] for r in j["round_metrics"]] == [1, 2, 3]
    assert all(r["bytes_round"] > 0 for r in j["round_metrics"]), j["round_metrics"]
    assert j["bytes"]["total"] == j["round_metrics"][-1]["bytes_total"] or j["bytes"]["total"] >= \
        j["round_metrics"][-1]["bytes_total"]
    # every site trained: the round's per-node metrics name the three sites
    assert set(j["round_metrics"][0]["nodes"]) == {"local-a", "local-b", "hpc"}, j["round_metrics"][0]
    accuracy = [r["metrics"]["server_accuracy"] for r in j["round_metrics"]]
    assert accuracy[-1] > 0.5, accuracy
    # the Slurm SuperNode ran as a batch job of that cluster, and nothing is left running
    record = job_record(hub, job_id)
    slurm = [s for s in record["supernodes"] if s["site"] == "hpc"][0]
    assert slurm["kind"] == "slurm" and slurm["slurm_job_id"]
    assert "SuperNode of site hpc" in (hub.data_dir / "state" / "jobs" / job_id / "nodes" / "hpc" /
                                       "supernode.log").read_text()
    assert not cluster.jobs()
    assert not flower_processes_of(hub.data_dir / "state" / "jobs" / job_id)

    # events: each round with its bytes, in order, and the final state
    events = hub.fedhub_api(f"/jobs/{job_id}/events?after=0", token).json()["events"]
    rounds = [e for e in events if e["type"] == "round"]
    assert [e["round"] for e in rounds] == [1, 2, 3] and all(e["bytes_round"] > 0 for e in rounds)
    assert events[-1]["type"] == "state" and events[-1]["state"] == "succeeded"
    assert hub.fedhub_api(f"/jobs/{job_id}/events?after={events[-1]['seq']}", token).json()["events"] == []

    # one MLflow run, owned by ann, per-round metrics at step = round
    os.environ["MLFLOW_TRACKING_URI"] = f"{hub.url}/services/mlflow"
    os.environ["MLFLOW_TRACKING_TOKEN"] = token
    try:
        from mlflow.tracking import MlflowClient
        client = MlflowClient()
        run = client.get_run(j["mlflow_run_id"])
        assert run.info.status == "FINISHED"
        assert run.data.params["sites"] == "local-a,local-b,hpc" and run.data.params["rounds"] == "3"
        history = client.get_metric_history(run.info.run_id, "server_accuracy")
        assert sorted(m.step for m in history) == [1, 2, 3]
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(accuracy)
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "bytes_round")) == [1, 2, 3]
        assert client.get_experiment(run.info.experiment_id).name == "ann/federated"
    finally:
        del os.environ["MLFLOW_TRACKING_URI"], os.environ["MLFLOW_TRACKING_TOKEN"]
    # another user's token cannot read that run through MLflow's own permissions
    other = hub.create_user("eve")
    r = requests.get(f"{hub.url}/services/mlflow/api/2.0/mlflow/runs/get", params={"run_id": j["mlflow_run_id"]},
                     headers={"Authorization": f"Bearer {other}"}, timeout=30)
    assert r.status_code == 403, r.text

    # a signed provenance record of the job, visible to its owner only
    recs = hub.fedhub_api(f"/provenance?kind=job&subject={job_id}", token).json()["records"]
    assert len(recs) == 1 and recs[0]["who"] == "ann" and recs[0]["body"]["state"] == "succeeded"
    assert recs[0]["body"]["mlflow_run_id"] == j["mlflow_run_id"] and len(recs[0]["body"]["code_sha256"]) == 64
    assert hub.fedhub_api(f"/provenance?kind=job&subject={job_id}", other).json()["records"] == []
    assert hub.fedhub_api("/provenance/verify", token).json()["ok"]

    # the CLI lists it and shows its status
    ls = subprocess.run([sys.executable, "-m", "fedhub.server_ext.cli", "fl", "ls"], env=env,
                        capture_output=True, text=True, timeout=60)
    assert job_id in ls.stdout and "succeeded" in ls.stdout and "3/3" in ls.stdout
