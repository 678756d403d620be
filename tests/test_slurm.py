"""Slurm sites through the real hub: two real Slurm clusters (slurmctld + slurmd each, fake
GPUs through GRES), sessions as real batch jobs running jupyterhub-singleuser."""

import json
import threading

import psutil
import pytest
import requests

from conftest import wait_for
from slurm_cluster import SlurmCluster

pytestmark = pytest.mark.hub


def catalogue(a: SlurmCluster, b: SlurmCluster) -> str:
    def site(name, cluster, gpu):
        return {"name": name, "kind": "slurm", "gpus": [{"type": gpu, "count": cluster.gpus}],
                "options": {"slurm_conf": str(cluster.conf), "partition": cluster.partition,
                            "hosts": {cluster.node: "127.0.0.1"}, "poll_interval": 1, "start_timeout": 90}}
    doc = {"sites": [site("hpc-a", a, "a100"), site("hpc-b", b, "h100")],
           "defaults": {"cpus": 1, "memory": "512M"}}
    return json.dumps(doc)  # JSON is YAML


@pytest.fixture(scope="module")
def clusters(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm")
    a = SlurmCluster(root / "a", "site-a", "nodea", "a100", 2, cpus=8, memory_mb=8000).start()
    b = SlurmCluster(root / "b", "site-b", "nodeb", "h100", 1, cpus=4, memory_mb=4000, partition="batch").start()
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture(scope="module")
def hub(module_hub_factory, clusters):
    h = module_hub_factory(catalogue(*clusters), args=["--no-mlflow", "--no-inference", "--keep-servers"])
    with open(h.data_dir / "jupyterhub_config.py", "a") as f:
        f.write("\nc.Spawner.poll_interval = 2\n")  # notice jobs cancelled outside the hub quickly
    # a dataset held at hpc-a, open to everyone: sessions there find it linked in their home
    (h.data_dir / "scratch" / "digits").mkdir(parents=True)
    (h.data_dir / "scratch" / "digits" / "README").write_text("digits at hpc-a\n")
    (h.data_dir / "policy.yaml").write_text(json.dumps({
        "default": {"sites": "*", "gpu_types": "*"},
        "datasets": [{"name": "digits", "locations": [{"site": "hpc-a", "path": str(h.data_dir / "scratch" / "digits")}],
                      "policy": {"allowed_groups": ["*"], "purposes": ["interactive"]}}]}))
    return h.start()


def sites(hub, token):
    return {s["name"]: s for s in hub.fedhub_api("/sites", token).json()["sites"]}


def job_env(job_id: str, cluster: str) -> dict:
    """Environment of the jupyterhub-singleuser process running inside Slurm job job_id of
    that cluster (job ids repeat across clusters, and other tests may run theirs)."""
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            env = proc.environ()
        except (psutil.Error, OSError):
            continue
        if ("jupyterhub-singleuser" in cmd and env.get("SLURM_JOB_ID") == job_id
                and env.get("SLURM_CLUSTER_NAME") == cluster):
            return env
    raise AssertionError(f"no jupyterhub-singleuser process for job {job_id}")


def test_live_inventory_from_both_clusters(hub, clusters):
    token = hub.create_user("inv")
    s = wait_for(lambda: (lambda d: d if all(x["up"] for x in d.values()) else None)(sites(hub, token)),
                 what="both Slurm sites up")
    assert s["hpc-a"]["gpus"] == [{"type": "a100", "capacity": 2, "used": 0, "free": 2, "max_free_on_a_node": 2}]
    assert s["hpc-b"]["cpus"]["capacity"] == 4 and s["hpc-b"]["nodes"] == 1
    # a job started outside fedhub shows up in the inventory at the next poll
    a, _ = clusters
    job = a.run("sbatch", "--parsable", "--gres=gpu:a100:1", "--mem=100M", "--output=/dev/null", "--wrap", "sleep 300").stdout.strip()
    try:
        wait_for(lambda: sites(hub, token)["hpc-a"]["gpus"][0]["free"] == 1, what="external job counted")
    finally:
        a.run("scancel", job)
    wait_for(lambda: sites(hub, token)["hpc-a"]["gpus"][0]["free"] == 2, what="external job gone")


def test_session_runs_as_a_slurm_job_with_its_gpu_and_answers_through_the_proxy(hub, clusters):
    a, _ = clusters
    token = hub.create_user("sara")
    r = hub.spawn("sara", gpus=1, gpu_type="a100")
    assert r.status_code in (201, 202), r.text
    server = hub.wait_ready("sara", timeout=120)
    state = server["state"]["fedhub"]
    assert state["allocation"]["site"] == "hpc-a"
    job_id = state["child"]["job_id"]
    assert any(line.startswith(f"{job_id} RUNNING") for line in a.jobs())
    env = job_env(job_id, a.name)
    assert env["CUDA_VISIBLE_DEVICES"] == "0"  # set by Slurm from GRES, not by fedhub
    assert env["FEDHUB_SITE"] == "hpc-a"
    # the batch job linked the site's dataset into the home, on the node, before the server started
    assert (hub.data_dir / "homes" / "sara" / "datasets" / "digits" / "README").read_text() == "digits at hpc-a\n"
    assert json.loads(env["FEDHUB_DATASETS"]) == {"digits": str(hub.data_dir / "scratch" / "digits")}
    r = requests.get(f"{hub.url}/user/sara/api/status", headers={"Authorization": f"token {token}"})
    assert r.status_code == 200
    hub.stop_server("sara")
    wait_for(lambda: not a.jobs(), what="job gone after stop")


def test_busy_gpus_send_auto_elsewhere_and_a_named_site_is_refused_with_the_reason(hub, clusters):
    _, b = clusters
    hub.create_user("quinn")
    hub.create_user("pat")
    token = hub.create_user("obs")
    blocker = b.run("sbatch", "--parsable", "--gres=gpu:h100:1", "--mem=100M", "--output=/dev/null", "--wrap", "sleep 600").stdout.strip()
    try:
        wait_for(lambda: sites(hub, token)["hpc-b"]["gpus"][0]["free"] == 0, what="blocker counted")
        # auto placement with any GPU: hpc-b's only GPU is busy, so hpc-a
        assert hub.spawn("quinn", gpus=1).status_code in (201, 202)
        assert hub.wait_ready("quinn", timeout=120)["state"]["fedhub"]["allocation"]["site"] == "hpc-a"
        r = hub.spawn("pat", site="hpc-b", gpus=1, gpu_type="h100")
        assert r.status_code == 409
        assert "hpc-b: 1 h100 GPUs requested, at most 0 free on one node" in r.json()["message"]
    finally:
        b.run("scancel", blocker)
        hub.stop_server("quinn")


def test_a_job_slurm_holds_back_pends_with_slurms_reason_in_progress(hub, clusters):
    _, b = clusters
    hub.create_user("pia")
    b.run("scontrol", "update", "PartitionName=batch", "State=DOWN")  # fedhub does not model this
    try:
        poster = threading.Thread(target=hub.spawn, args=("pia",),
                                  kwargs={"site": "hpc-b", "gpus": 1, "gpu_type": "h100"})
        poster.start()
        wait_for(lambda: (hub.server("pia") or {}).get("pending") == "spawn", what="spawn pending")
        messages = []
        r = hub.api("GET", "/users/pia/server/progress", stream=True, timeout=180)
        for line in r.iter_lines():
            if not line.startswith(b"data:"):
                continue
            event = json.loads(line[5:])
            messages.append(event.get("message", ""))
            if "pending in hpc-b's queue (reason: PartitionDown, position 1 in the queue)" in event.get("message", ""):
                b.run("scontrol", "update", "PartitionName=batch", "State=UP")
            if event.get("ready") or event.get("failed"):
                break
        poster.join()
        text = "\n".join(messages)
        assert "Placed on hpc-b" in text
        assert "pending in hpc-b's queue (reason: PartitionDown, position 1 in the queue)" in text, text
        assert hub.wait_ready("pia", timeout=120)["state"]["fedhub"]["allocation"]["site"] == "hpc-b"
    finally:
        b.run("scontrol", "update", "PartitionName=batch", "State=UP")
        if hub.server("pia"):
            hub.stop_server("pia")


def test_controller_killed_mid_spawn_lands_on_the_other_site_and_leaves_no_orphan(hub, clusters):
    a, _ = clusters
    token = hub.create_user("kai")
    wait_for(lambda: sites(hub, token)["hpc-a"]["up"], what="hpc-a up")
    # the job will pend on hpc-a (partition down), then hpc-a's controller dies
    a.run("scontrol", "update", "PartitionName=debug", "State=DOWN")
    poster = threading.Thread(target=hub.spawn, args=("kai",), kwargs={"gpus": 1})  # any GPU: hpc-a ranks first
    poster.start()
    try:
        wait_for(lambda: any("PENDING" in j for j in a.jobs()), what="job pending on hpc-a")
        a.kill_controller()
        poster.join()
        server = hub.wait_ready("kai", timeout=120)
        assert server["state"]["fedhub"]["allocation"]["site"] == "hpc-b"
        down = sites(hub, token)["hpc-a"]
        assert down["up"] is False and "controller not answering" in down["down_reason"]
    finally:
        a.start_controller()
        a.run("scontrol", "update", "PartitionName=debug", "State=UP", check=False)
    # the site comes back by itself and the job left there is cancelled
    wait_for(lambda: sites(hub, token)["hpc-a"]["up"], timeout=60, what="hpc-a back up")
    wait_for(lambda: not a.jobs(), timeout=60, what="orphan job cancelled")
    wait_for(lambda: sites(hub, token)["hpc-a"]["nodes"] == 1, timeout=60, what="hpc-a's node usable again")
    hub.stop_server("kai")


def test_scancel_outside_the_hub_is_seen_as_stopped(hub, clusters):
    a, _ = clusters
    hub.create_user("ola")
    assert hub.spawn("ola", site="hpc-a").status_code in (201, 202)
    job_id = hub.wait_ready("ola", timeout=120)["state"]["fedhub"]["child"]["job_id"]
    a.run("scancel", job_id)
    wait_for(lambda: hub.server("ola") is None, timeout=60, what="hub notices the cancelled job")


def test_hub_restart_reconnects_sessions_on_both_clusters_and_stop_leaves_no_jobs(hub, clusters):
    a, b = clusters
    tokens = {name: hub.create_user(name) for name in ("rae", "sol")}
    assert hub.spawn("rae", site="hpc-a", gpus=1).status_code in (201, 202)
    assert hub.spawn("sol", site="hpc-b", gpus=1).status_code in (201, 202)
    jobs = {n: hub.wait_ready(n, timeout=120)["state"]["fedhub"]["child"]["job_id"] for n in tokens}
    before = {n: hub.fedhub_api("/sessions", t).json()["sessions"][0] for n, t in tokens.items()}
    # the sites' Slurm --time (the default 8:00:00) caps the session's time limit
    assert all(s["site_max_hours"] == 8 for s in before.values()), before
    hub.stop()
    hub.start()
    for name, token in tokens.items():
        server = hub.wait_ready(name, timeout=60)
        assert server["state"]["fedhub"]["child"]["job_id"] == jobs[name]
        # the time limit still counts from the first start
        assert hub.fedhub_api("/sessions", token).json()["sessions"][0]["since"] == before[name]["since"]
        r = requests.get(f"{hub.url}/user/{name}/api/status", headers={"Authorization": f"token {token}"})
        assert r.status_code == 200, r.text
    for name in tokens:
        hub.stop_server(name)
    wait_for(lambda: not a.jobs() and not b.jobs(), timeout=60, what="no jobs left on either cluster")
