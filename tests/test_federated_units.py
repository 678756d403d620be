"""Federated jobs without a hub: the pure builders (Slurm batch script, SuperNode pod manifest
validated against the Kubernetes 1.37 schemas, node/run config strings), request validation,
the job store, the shim's round events turned into rounds, and restart recovery stopping a
real SuperLink left behind by a previous service process."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest

from fedhub.hub.federation import example_app, supernodes
from fedhub.hub.federation.flower import app_config_keys, cli_config_toml, run_config_arg
from fedhub.hub.federation.jobs import Job, JobError, SiteOffer, validate_request
from fedhub.hub.federation.manager import FederatedJobs
from fedhub.hub.federation.runner import JobRunner, round_metrics
from fedhub.hub.federation.store import JobStore

K8S = "1.37.0"
OFFERS = {
    "local-a": SiteOffer("local-a", "local", True, "process"),
    "hpc": SiteOffer("hpc", "slurm", True, "Slurm batch job"),
    "closed": SiteOffer("closed", "local", False, "the catalogue marks this site federated: false"),
}


# ---------------------------------------------------------------- builders

def test_node_config_is_flower_node_config_syntax():
    config = supernodes.node_config(1, 3, "hpc-a", data_path="/data/my set.npz")
    assert config == {"partition-id": 1, "num-partitions": 3, "fedhub-site": "hpc-a", "data-path": "/data/my set.npz"}
    text = supernodes.node_config_arg(config)
    assert text == 'partition-id=1 num-partitions=3 fedhub-site="hpc-a" data-path="/data/my set.npz"'
    # Flower parses it back to the same values
    from flwr.common.config import parse_config_args
    assert parse_config_args([text]) == config


def test_slurm_batch_script_runs_one_supernode_connecting_back_without_the_services_environment(tmp_path):
    script = supernodes.slurm_batch_script(
        job_id="j1", site="hpc", superlink="10.0.0.5:9092", config=supernodes.node_config(2, 3, "hpc"),
        node_dir="/state/jobs/j1/nodes/hpc", bin_dir="/venv/bin", python="/venv/bin/python",
        partition="gpu", account="proj", qos="low", runtime="1:00:00", memory="2G")
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    for directive in ("--job-name=fedhub-fl-j1-hpc", "--output=/state/jobs/j1/nodes/hpc/supernode.log",
                      "--export=NONE", "--partition=gpu", "--account=proj", "--qos=low", "--time=1:00:00",
                      "--mem=2G", "--cpus-per-task=1"):
        assert f"#SBATCH {directive}" in lines, directive
    assert "export FLWR_HOME=/state/jobs/j1/nodes/hpc/flwr" in lines
    exec_line = lines[-1]
    assert exec_line.startswith("exec /venv/bin/flower-supernode --insecure --superlink 10.0.0.5:9092 ")
    assert "--port \"$port\"" in exec_line and "'partition-id=2 num-partitions=3 fedhub-site=\"hpc\"'" in exec_line
    # bash accepts it
    path = tmp_path / "s.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    no_optional = supernodes.slurm_batch_script(
        job_id="j1", site="hpc", superlink="h:1", config={}, node_dir="/d", bin_dir="/b", python="/p", runtime="")
    assert "--partition" not in no_optional and "--account" not in no_optional and "--time" not in no_optional
    with pytest.raises(ValueError, match="runtime: expected a Slurm time"):
        supernodes.slurm_batch_script(job_id="j", site="s", superlink="h:1", config={}, node_dir="/d",
                                      bin_dir="/b", python="/p", runtime="soon")


def test_supernode_pod_manifest_is_a_valid_pod_for_kubernetes_1_37():
    pod = supernodes.supernode_pod_manifest(
        job_id="20261130-170000-abc123", site="cloud-eu", superlink="fedhub.example.org:9092",
        config=supernodes.node_config(0, 2, "cloud-eu", "/data/eu"), owner="ann", namespace="fl",
        cpus=2, memory="4Gi", node_selector={"pool": "cpu"}, service_account="supernode")
    assert kubernetes_validate.validate(pod, K8S, strict=True) == "1.37"
    spec, container = pod["spec"], pod["spec"]["containers"][0]
    assert spec["restartPolicy"] == "Never"  # a dead SuperNode is a dropout, not a restart
    assert spec["automountServiceAccountToken"] is False
    assert container["command"][:4] == ["flower-supernode", "--insecure", "--superlink", "fedhub.example.org:9092"]
    assert container["command"][-1] == 'partition-id=0 num-partitions=2 fedhub-site="cloud-eu" data-path="/data/eu"'
    assert container["resources"]["limits"] == {"cpu": 2, "memory": "4Gi"}
    assert pod["metadata"]["labels"][supernodes.JOB_LABEL] == "20261130-170000-abc123"
    assert pod["metadata"]["namespace"] == "fl" and spec["nodeSelector"] == {"pool": "cpu"}
    # a name that is no DNS label still makes a valid pod
    odd = supernodes.supernode_pod_manifest(job_id="J_1", site="Site.X", superlink="h:1", config={}, owner="o")
    assert kubernetes_validate.validate(odd, K8S, strict=True) == "1.37"
    broken = json.loads(json.dumps(odd))
    broken["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S, strict=True)


def test_flower_cli_config_and_run_config_strings():
    doc = tomllib.loads(cli_config_toml("127.0.0.1:9093"))
    assert doc["superlink"] == {"default": "fedhub", "fedhub": {"address": "127.0.0.1:9093", "insecure": True}}
    assert run_config_arg({"num-server-rounds": 3, "lr": 0.1, "name": "a b", "on": True}) == \
        'num-server-rounds=3 lr=0.1 name="a b" on=true'
    assert app_config_keys(example_app("digits"))["num-server-rounds"] == 3


# ---------------------------------------------------------------- request validation

@pytest.fixture
def home(tmp_path):
    home = tmp_path / "homes" / "ann"
    shutil.copytree(example_app("digits"), home / "digits")
    (home / "plain").mkdir()
    (home / "plain" / "pyproject.toml").write_text('[project]\nname = "plain"\n')
    (tmp_path / "homes" / "bob" / "app").mkdir(parents=True)
    (home / "escape").symlink_to(tmp_path / "homes" / "bob" / "app")
    return home


def refused(body, home, status=400) -> str:
    with pytest.raises(JobError) as e:
        validate_request(body, home, OFFERS)
    assert e.value.status == status, e.value.message
    return e.value.message


def test_a_good_request_becomes_a_spec(home):
    spec = validate_request({"app": "digits", "sites": "local-a,hpc", "rounds": 3, "compression": "topk:0.05",
                             "run_config": {"local-epochs": 1}}, home, OFFERS)
    assert spec.app == str((home / "digits").resolve()) and spec.sites == ("local-a", "hpc")
    assert spec.compression == {"codec": "topk", "fraction": 0.05, "value_bits": 8}
    assert spec.on_dropout == "continue" and spec.strategy == "fedavg"
    same = validate_request({"app": str(home / "digits"), "sites": ["hpc"], "rounds": 1}, home, OFFERS)
    assert same.app == spec.app and same.compression is None


def test_bad_requests_name_the_field_and_what_was_expected(home):
    good = {"app": "digits", "sites": ["local-a"], "rounds": 2}
    assert "outside your home" in refused({**good, "app": "../bob/app"}, home)
    assert "outside your home" in refused({**good, "app": "escape"}, home)  # a symlink out
    assert "does not exist" in refused({**good, "app": "nope"}, home)
    assert "is not a Flower app" in refused({**good, "app": "plain"}, home)
    assert "app: expected the path" in refused({**good, "app": ""}, home)
    assert refused({**good, "sites": ["mars"]}, home).startswith("sites: unknown site 'mars'")
    assert "federated: false" in refused({**good, "sites": ["closed"]}, home, status=403)
    assert "each site once" in refused({**good, "sites": ["hpc", "hpc"]}, home)
    for rounds in (0, -1, 1001, 2.5, True, "3", None):
        assert refused({**good, "rounds": rounds}, home).startswith("rounds: expected an integer from 1 to 1000")
    assert "codec among" in refused({**good, "compression": "zip"}, home)
    assert "value_bits must be 8 or 32" in refused({**good, "compression": {"codec": "topk", "value_bits": 16}}, home)
    assert "picks its own strategy" in refused({**good, "strategy": "fedprox"}, home)
    assert "strategy: expected one of" in refused({**good, "strategy": "best"}, home)
    assert "on_dropout: expected one of" in refused({**good, "on_dropout": "ignore"}, home)
    assert "run_config.epochs: the app has no such key" in refused({**good, "run_config": {"epochs": 1}}, home)
    assert "run_config.seed: expected a number" in refused({**good, "run_config": {"seed": [1]}}, home)
    assert "extra: unknown field" in refused({**good, "extra": 1}, home)
    assert "expected a JSON object" in refused([good], home)


def test_supernodes_are_told_the_named_datasets_path_at_their_site(home, tmp_path):
    """Each site's SuperNode gets the path of the job's dataset at that site, from the dataset
    catalogue (policy.yaml), else the site's own federated.data_path."""
    import yaml
    (tmp_path / "sites.yaml").write_text(yaml.safe_dump({"sites": [
        {"name": "site-a", "kind": "local", "cpus": 2, "memory": "2G", "federated": {"data_path": "/a/default.npz"}},
        {"name": "site-b", "kind": "local", "cpus": 2, "memory": "2G"},
        {"name": "site-c", "kind": "local", "cpus": 2, "memory": "2G"}]}))
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump({"datasets": [
        {"name": "digits", "locations": [{"site": "site-a", "path": "/a/digits"}, {"site": "site-b", "path": "/b/dig"}],
         "policy": {"allowed_groups": ["*"], "purposes": ["federated-training"]}},
        {"name": "scans", "locations": [{"site": "site-a", "path": "/a/scans"}],
         "policy": {"allowed_groups": ["*"], "purposes": ["federated-training"]}}]}))
    jobs = FederatedJobs(tmp_path / "state", catalogue_file=str(tmp_path / "sites.yaml"),
                         policy_file=str(tmp_path / "policy.yaml"))
    offers = jobs.offers()
    assert offers["site-a"].dataset_paths == {"digits": "/a/digits", "scans": "/a/scans"}
    assert offers["site-c"].public()["datasets"] == []  # the catalogue lists none: the policy's (none there)
    assert offers["site-b"].public()["datasets"] == ["digits"]

    spec = validate_request({"app": "digits", "sites": ["site-a", "site-b"], "rounds": 1, "datasets": ["digits"]},
                            home, offers)
    job = Job.from_spec(spec, "ann")
    assert job.data_paths == {"site-a": {"digits": "/a/digits"}, "site-b": {"digits": "/b/dig"}}
    assert Job.from_dict(json.loads(json.dumps(job.to_dict()))).data_paths == job.data_paths  # kept in the store
    configs = [supernodes.node_config(i, 2, s, offers[s].data_path, job.data_paths.get(s))
               for i, s in enumerate(job.sites)]
    assert configs[0] == {"partition-id": 0, "num-partitions": 2, "fedhub-site": "site-a",
                          "data-path": "/a/digits", "dataset": "digits", "data-path-digits": "/a/digits"}
    assert configs[1]["data-path"] == "/b/dig"
    from flwr.common.config import parse_config_args
    assert parse_config_args([supernodes.node_config_arg(configs[1])]) == configs[1]
    # two datasets: data-path is the first named, each has its own key
    two = validate_request({"app": "digits", "sites": ["site-a"], "rounds": 1, "datasets": ["scans", "digits"]},
                           home, offers)
    c = supernodes.node_config(0, 1, "site-a", "/a/default.npz", two.data_paths["site-a"])
    assert c["data-path"] == "/a/scans" and c["data-path-digits"] == "/a/digits" and c["dataset"] == "scans"
    # no dataset named: the site's own data_path, as before
    plain = Job.from_spec(validate_request({"app": "digits", "sites": ["site-a"], "rounds": 1}, home, offers), "ann")
    assert supernodes.node_config(0, 1, "site-a", offers["site-a"].data_path, plain.data_paths.get("site-a"))[
        "data-path"] == "/a/default.npz"
    # a dataset not held at a chosen site, or a bad list: refused naming the field
    for body, message in (
            ({"datasets": ["scans"], "sites": ["site-a", "site-b"]},
             "datasets: scans is not held at site site-b (the dataset catalogue has ['digits'] there)"),
            ({"datasets": "digits"}, "datasets: expected a non-empty list of dataset names, got 'digits'"),
            ({"datasets": ["digits", "digits"]}, "datasets: each dataset once")):
        with pytest.raises(JobError) as e:
            validate_request({"app": "digits", "sites": ["site-a"], "rounds": 1, **body}, home, offers)
        assert e.value.status == 400 and e.value.message.startswith(message), e.value.message


# ---------------------------------------------------------------- store and rounds

def test_store_keeps_jobs_and_events_across_instances(tmp_path):
    store = JobStore(tmp_path / "jobs")  # rows in <tmp_path>/fedhub-state.sqlite, work files in jobs/
    spec = validate_request({"app": str(example_app("digits")), "sites": ["local-a"], "rounds": 2},
                            example_app("digits").parent, OFFERS)
    job = Job.from_spec(spec, "ann")
    job.state, job.round_metrics = "succeeded", [{"round": 1, "metrics": {"server_accuracy": 0.9}}]
    store.save(job)
    store.append_event(job.id, {"type": "state", "message": "a"})
    store.append_event(job.id, {"type": "round", "message": "b"})
    store.write_secret(job.id, "tok")
    assert oct(os.stat(store.secret_path(job.id)).st_mode & 0o777) == "0o600"
    again = JobStore(tmp_path / "jobs")
    [loaded] = again.load_all()
    assert loaded == job and loaded.public()["rounds_done"] == 1 and "supernodes" not in loaded.public()
    assert [e["seq"] for e in again.events(job.id)] == [1, 2]
    assert again.events_after(job.id, 1) == [{"seq": 2, "type": "round", "message": "b"}]
    assert again.read_secret(job.id) == "tok"
    assert (tmp_path / "fedhub-state.sqlite").exists() and not (store.job_dir(job.id) / "job.json").exists()
    assert again.unfinished_ids() == []


class _Manager:
    """The few manager methods a runner calls, recording events (no hub, no processes)."""

    def __init__(self, root):
        self.store = JobStore(root / "jobs")
        self.events: list[dict] = []
        self.mlflow_url = ""

    def emit(self, job, event):
        self.events.append(event)

    def save(self, job):
        pass


def test_shim_events_become_rounds_with_site_names(tmp_path):
    spec = validate_request({"app": "digits", "sites": ["local-a", "hpc"], "rounds": 2},
                            example_app("digits").parent, OFFERS)
    job = Job.from_spec(spec, "ann")
    runner = JobRunner(_Manager(tmp_path), job, "")
    runner.node_sites = {"11": "local-a", "22": "hpc"}

    def node(node_id, **metrics):
        return {"node_id": node_id, "metrics": {**metrics, "num-examples": 100}, "bytes_received": 10,
                "bytes_sent": 20}

    lines = [
        {"event": "start", "run_id": 1},
        {"event": "round", "round": 0, "phase": "server-evaluate", "aggregate": {"accuracy": 0.1}},
        {"event": "round", "round": 1, "phase": "train", "nodes": [node(11, loss=1.0), node(22, loss=2.0)],
         "aggregate": {"loss": 1.5, "num-examples": 200}, "bytes_sent": 100, "bytes_received": 80},
        {"event": "round", "round": 1, "phase": "evaluate", "nodes": [node(11, accuracy=0.8),
                                                                        {"node_id": 22, "error": "gone"}],
         "aggregate": {"accuracy": 0.8}, "bytes_sent": 100, "bytes_received": 5, "failures": 1},
        {"event": "round", "round": 1, "phase": "server-evaluate", "aggregate": {"accuracy": 0.85, "loss": 0.5}},
        {"event": "round", "round": 2, "phase": "train", "nodes": [node(11, loss=0.5)], "aggregate": {"loss": 0.5}},
        {"event": "end", "ok": True},
    ]
    runner.events_file.parent.mkdir(parents=True, exist_ok=True)
    runner.events_file.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"event": "rou')

    async def read():
        runner._status = _no_status
        await runner._read_round_events(run_id=1)

    asyncio.run(read())
    first, second = job.round_metrics
    assert first["round"] == 1 and first["metrics"] == {
        "train_loss": 1.5, "evaluate_accuracy": 0.8, "server_accuracy": 0.85, "server_loss": 0.5}
    assert first["nodes"] == {"local-a": {"train_loss": 1.0, "evaluate_accuracy": 0.8},
                              "hpc": {"train_loss": 2.0, "evaluate_error": "gone"}}
    assert first["payload_bytes"] == 285 and first["failures"] == 1
    assert second["round"] == 2 and second["nodes"] == {"local-a": {"train_loss": 0.5}}  # closed by "end"
    rounds = [e for e in runner.m.events if e["type"] == "round"]
    assert [e["round"] for e in rounds] == [1, 2]
    assert rounds[0]["message"].startswith("Round 1/2: evaluate_accuracy=0.8, server_accuracy=0.85")
    assert round_metrics({"phase": "unknown", "aggregate": {"x": 1}}) == {}


async def _no_status(run_id):
    return None


# ---------------------------------------------------------------- restart recovery

def test_restart_stops_a_left_over_superlink_and_marks_the_job_failed(tmp_path):
    state = tmp_path / "state"
    first = FederatedJobs(state, homes_dir=str(tmp_path / "homes"))
    spec = validate_request({"app": str(example_app("digits")), "sites": ["local-a"], "rounds": 3},
                            example_app("digits").parent, OFFERS)
    running = Job.from_spec(spec, "ann")
    done = Job.from_spec(spec, "ann")
    done.id += "-done"
    done.state, done.round_metrics = "succeeded", [{"round": r, "metrics": {}} for r in (1, 2, 3)]
    job_dir = first.store.job_dir(running.id)
    home = job_dir / "superlink" / "flwr"
    home.mkdir(parents=True)
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    superlink = subprocess.Popen(
        [str(Path(sys.executable).with_name("flower-superlink")), "--insecure", "--host", "127.0.0.1",
         "--port", str(supernodes._free_port()), "--disable-runtime-dependency-installation"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        running.state, running.superlink_pid = "running", superlink.pid
        first.store.save(running)
        first.store.save(done)
        # a new service process reads the jobs back and settles the unfinished one
        second = FederatedJobs(state, homes_dir=str(tmp_path / "homes"))
        asyncio.run(second.recover())
        superlink.wait(timeout=60)  # SIGKILLed; a process busy in disk I/O on a loaded machine dies late
        assert not supernodes.processes_under(job_dir)
        jobs = {j.id: j for j in JobStore(state / "jobs").load_all()}
        assert jobs[running.id].state == "failed"
        assert "stopped while this job was running" in jobs[running.id].error
        assert jobs[done.id].state == "succeeded" and len(jobs[done.id].round_metrics) == 3
        assert second.store.events(running.id)[-1]["state"] == "failed"
    finally:
        if superlink.poll() is None:
            os.killpg(superlink.pid, 9)
            superlink.wait()


def test_sites_offered_follow_the_catalogue_and_the_live_inventory(tmp_path):
    (tmp_path / "slurm.conf").write_text("")
    catalogue = {"sites": [
        {"name": "here", "kind": "local", "cpus": 2, "memory": "2G", "federated": {"data_path": "/data/here.npz"}},
        {"name": "off", "kind": "local", "cpus": 2, "memory": "2G", "federated": False},
        {"name": "hpc", "kind": "slurm", "options": {"slurm_conf": str(tmp_path / "slurm.conf"), "partition": "gpu"}},
        {"name": "cloud", "kind": "kubernetes"},
    ]}
    path = tmp_path / "sites.yaml"
    path.write_text(json.dumps(catalogue))

    class Inventory:
        def sites(self):
            return [{"name": "hpc", "up": False, "down_reason": "controller not answering"}]

    jobs = FederatedJobs(tmp_path / "state", inventory=Inventory(), catalogue_file=str(path))
    offers = {name: o.public() for name, o in jobs.offers().items()}
    assert offers["here"] == {"name": "here", "kind": "local", "allowed": True, "datasets": [],
                              "data_path": "/data/here.npz", "reason": "SuperNode as a process on the hub's machine"}
    assert offers["off"]["allowed"] is False and "federated: false" in offers["off"]["reason"]
    assert offers["hpc"]["allowed"] is False and offers["hpc"]["reason"] == "site is down: controller not answering"
    assert offers["cloud"]["allowed"] is False and "pod manifests" in offers["cloud"]["reason"]
    # a broken catalogue: no site is offered, and the reason says why
    path.write_text("sites: [{name: x, kind: local, cpus: 1, memory: 1G, federated: maybe}]")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert jobs.offers() == {}
    assert "sites[0].federated: expected true, false or a mapping {data_path}" in jobs.catalogue_error
    with pytest.raises(JobError) as e:
        asyncio.run(jobs.create("ann", "", {"app": "x", "sites": ["x"], "rounds": 1}))
    assert e.value.status == 503 and "federated jobs are unavailable" in e.value.message


def test_federated_jobs_settings_from_jupyterhub_config_reach_the_service(tmp_path):
    """c.FederatedJobs.<name> set in a jupyterhub_config.py ends up in the API service's
    settings, and the job manager built from them takes it."""
    import json as _json

    from traitlets.config import Config

    from fedhub.hub.federation.manager import FederatedJobs
    from fedhub.hub.hubconfig import configure, pass_federated_jobs_config

    c = Config()
    configure(c, {"data_dir": str(tmp_path), "ip": "127.0.0.1", "port": 8000, "catalogue_file": "sites.yaml",
                  "proxy_command": "chp", "shared_password": "x",
                  "ports": {n: 1 for n in ("hub", "proxy_api", "fedhub_api", "mlflow", "mlflow_internal",
                                           "inference", "inference_http", "inference_grpc")}})
    c.FederatedJobs.max_active_jobs_per_user = 7
    pass_federated_jobs_config(c)
    fedhub = next(s for s in c.JupyterHub.services if s["name"] == "fedhub")
    settings = _json.loads(fedhub["environment"]["FEDHUB_FEDERATION_SETTINGS"])
    assert settings["max_active_jobs_per_user"] == 7 and settings["catalogue_file"] == "sites.yaml"
    assert FederatedJobs(str(tmp_path / "state"), **settings).max_active_jobs_per_user == 7
    c.FederatedJobs.max_jobs = 1  # a typo is named, with what exists
    with pytest.raises(ValueError, match=r"c.FederatedJobs.max_jobs: no such setting; expected one of .*max_active_jobs_per_user"):
        pass_federated_jobs_config(c)
