"""Slurm sites reached through slurmrestd with a JWT: a real cluster (slurmctld + slurmd, fake
GPUs through GRES) running a real slurmrestd (JWT auth, as an unprivileged user), a real hub
whose catalogue names only the REST URL, the user and a token file (no slurm.conf, no
SLURM_CONF in the hub's environment). Unit tests read JSON recorded from that slurmrestd
(tests/data/slurmrestd/, Slurm 22.05.8, OpenAPI v0.0.38)."""

import json
import os
import threading
import time
from pathlib import Path

import jinja2
import pytest
import requests

from fedhub.hub.catalogue import CatalogueError, catalogue_from_dict
from fedhub.spawner.backends.slurm import BATCH_SCRIPT, pending_reason
from fedhub.spawner.backends.slurm_rest import (
    SlurmRestAuthError, SlurmRestClient, SlurmRestError, SlurmRestUnavailable, job_status_line, job_submit_body, memory_mb,
    parse_rest_nodes, queue_position, rest_error_message, token_claims)
from fedhub.spawner.federation import Federation
from fedhub.spawner.inventory import Allocation
from fedhub.spawner.placement import SessionRequest
from slurm_cluster import SlurmCluster
from conftest import wait_for
from test_slurm import job_env, sites

RECORDED = Path(__file__).parent / "data" / "slurmrestd"


def recorded(name: str) -> tuple[int, dict]:
    doc = json.loads((RECORDED / name).read_text())
    return doc["status"], doc["body"]


# ---------------------------------------------------------------- pure functions, recorded JSON


def test_nodes_from_slurmrestd_count_gpus_like_sinfo():
    _, doc = recorded("nodes_two_gpus_used.json")
    [node] = parse_rest_nodes(doc)
    assert (node.name, node.cpus, node.cpus_alloc) == ("noder", 8, 2)
    assert (node.memory, node.memory_alloc) == (8000 * 2**20, 200 * 2**20)
    assert node.gpus == {"a100": 2} and node.gpus_used == {"a100": {0, 1}}
    assert node.state == "mixed" and node.usable
    assert parse_rest_nodes(doc, partition="debug") and not parse_rest_nodes(doc, partition="gpu")
    drained = {"nodes": [{**doc["nodes"][0], "state": "idle", "state_flags": ["DRAIN"]}]}
    assert not parse_rest_nodes(drained)[0].usable


def test_job_state_reads_like_the_squeue_line_of_sbatch_mode():
    _, running = recorded("job_running.json")
    _, pending = recorded("job_pending.json")
    assert job_status_line(running["jobs"][0]) == "RUNNING None noder"
    line = job_status_line(pending["jobs"][0])
    assert line == "PENDING Resources n/a" and pending_reason(line) == "Resources"


def test_queue_position_orders_pending_jobs_by_priority():
    _, doc = recorded("jobs.json")
    pending = [j for j in doc["jobs"] if j["job_state"] == "PENDING"]
    assert len(pending) == 1
    job_id = str(pending[0]["job_id"])
    assert queue_position(doc["jobs"], job_id) == 1
    assert queue_position(doc["jobs"], job_id, partition="debug") == 1
    assert queue_position(doc["jobs"], job_id, partition="other") is None
    running = str(next(j for j in doc["jobs"] if j["job_state"] == "RUNNING")["job_id"])
    assert queue_position(doc["jobs"], running) is None
    jobs = [{"job_id": 7, "job_state": "PENDING", "priority": 10, "partition": "p"},
            {"job_id": 5, "job_state": "PENDING", "priority": 20, "partition": "p"},
            {"job_id": 6, "job_state": "PENDING", "priority": 10, "partition": "p"}]
    assert [queue_position(jobs, i) for i in ("5", "6", "7")] == [1, 2, 3]


def test_errors_recorded_from_slurmrestd_become_one_line():
    status, doc = recorded("job_unknown.json")
    assert status == 500 and doc["errors"][0]["error_number"] == 2017
    assert rest_error_message(status, doc) == \
        "slurmrestd error (HTTP 500): Unable to find JobId=424242 (Invalid job id specified)"
    status, doc = recorded("nodes_bad_token.json")
    assert "could not authenticate with the token" in rest_error_message(status, doc)
    assert "refused the credentials (HTTP 401: Authentication failure)" in \
        rest_error_message(401, {"_text": "Authentication failure"})


def test_submit_body_carries_what_the_sbatch_lines_say():
    subvars = {"homedir": "/h/ann", "username": "ann", "partition": "gpu", "account": "proj1", "qos": "short",
               "runtime": "2:00:00", "memory": "4096M", "gres": "gpu:a100:2", "nprocs": "2"}
    script = jinja2.Template(BATCH_SCRIPT).render(keepvars="PATH", srun="srun", cmd="x", prologue="",
                                                  epilogue="", **subvars)
    body = job_submit_body(script, {"PATH": "/bin", "FEDHUB_GPUS": 2}, subvars)
    assert body["script"] == script
    assert body["job"] == {
        "name": "fedhub-ann", "current_working_directory": "/h/ann", "standard_output": "/h/ann/fedhub-slurm-%j.log",
        "environment": {"PATH": "/bin", "FEDHUB_GPUS": "2"}, "partition": "gpu", "account": "proj1",
        "qos": "short", "gres": "gpu:a100:2", "time_limit": "2:00:00", "cpus_per_task": 2, "memory_per_node": 4096}
    cpu_only = job_submit_body(script, {}, {**subvars, "gres": "", "account": "", "qos": "", "partition": ""})
    assert not {"gres", "account", "qos", "partition"} & set(cpu_only["job"])
    assert [memory_mb(v) for v in ("512M", "2G", "100", "1T")] == [512, 2048, 100, 1024**2]


def test_token_claims_and_expiry_are_read_locally(tmp_path):
    assert token_claims("not-a-token") == {}
    expired = "x." + _b64({"exp": 1000, "sun": "fedhub"}) + ".sig"
    assert token_claims(expired) == {"exp": 1000, "sun": "fedhub"}
    token_file = tmp_path / "jwt"
    token_file.write_text("SLURM_JWT=" + expired + "\n")  # as `scontrol token` prints it
    with pytest.raises(SlurmRestAuthError, match=f"token in jwt_file {token_file} expired at 1970-01-01 00:16:40 UTC"):
        SlurmRestClient("http://127.0.0.1:1", "fedhub", jwt_file=str(token_file)).token()
    with pytest.raises(SlurmRestAuthError, match="cannot read the slurmrestd token from jwt_file /nonexistent"):
        SlurmRestClient("http://127.0.0.1:1", "fedhub", jwt_file="/nonexistent").token()


def _b64(claims: dict) -> str:
    import base64
    return base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")


# ---------------------------------------------------------------- option validation


def rest_site(**options) -> dict:
    return {"sites": [{"name": "hpc", "kind": "slurm", "options": options}]}


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "hpc.jwt"
    path.write_text("token\n")
    return str(path)


def test_rest_options_select_the_rest_backend(token_file, monkeypatch):
    fed = Federation(catalogue_from_dict(rest_site(rest_url="http://127.0.0.1:6820", rest_user="fedhub",
                                                   jwt_file=token_file, partition="gpu"), "sites.yaml"))
    backend = fed.backends["hpc"]
    assert type(backend).__name__ == "SlurmRestBackend" and backend.rest.url == "http://127.0.0.1:6820"
    assert backend.rest.timeout == 10  # a hanging slurmrestd counts as down as soon as a hanging sinfo would
    o = backend.spawner_overrides(Allocation("hpc", "n1", 2, 2**30, "a100", (0,)), SessionRequest(gpus=1))
    assert (o["rest_url"], o["rest_user"], o["jwt_file"], o["jwt_env"]) == (
        "http://127.0.0.1:6820", "fedhub", token_file, "")
    assert o["req_gres"] == "gpu:a100:1" and "SLURM_CONF" not in o["environment"]
    monkeypatch.setenv("HPC_JWT", "token")
    fed = Federation(catalogue_from_dict(rest_site(rest_url="https://slurm.example.org", rest_user="fedhub",
                                                   jwt_env="HPC_JWT"), "sites.yaml"))
    assert fed.backends["hpc"].rest.jwt_env == "HPC_JWT"
    fed = Federation(catalogue_from_dict(rest_site(rest_url="https://slurm.example.org", rest_user="fedhub",
                                                   jwt_env="HPC_JWT", poll_interval=30), "sites.yaml"))
    assert fed.backends["hpc"].rest.timeout == 60


@pytest.mark.parametrize("options, message", [
    ({"rest_user": "u", "jwt_file": "TOKEN"},
     "sites.yaml: sites[0].options.rest_url: expected the slurmrestd URL (http://host:port) when jwt_file is set"),
    ({"rest_url": "http://h:6820", "rest_user": "u"},
     "sites.yaml: sites[0].options.jwt_file: expected the path of a file holding the slurmrestd JWT "
     "(or jwt_env: an environment variable holding it) when rest_url is set"),
    ({"rest_url": "http://h:6820", "rest_user": "u", "jwt_file": "TOKEN", "slurm_conf": "/etc/slurm/slurm.conf"},
     "sites.yaml: sites[0].options.slurm_conf: expected no slurm_conf when rest_url is set (a site is reached by "
     "its slurm.conf or by slurmrestd, not both), got '/etc/slurm/slurm.conf'"),
    ({"rest_url": "http://h:6820", "rest_user": "u", "jwt_file": "/srv/missing.jwt"},
     "sites.yaml: sites[0].options.jwt_file: expected an existing, readable file holding the JWT, "
     "got '/srv/missing.jwt'"),
    ({"rest_url": "http://h:6820", "rest_user": "u", "jwt_file": "TOKEN", "jwt_env": "X"},
     "sites.yaml: sites[0].options.jwt_env: expected only one of jwt_file and jwt_env"),
    ({"rest_url": "http://h:6820", "rest_user": "u", "jwt_env": "FEDHUB_TEST_UNSET_JWT"},
     "sites.yaml: sites[0].options.jwt_env: expected the name of an environment variable set in the hub's "
     "environment, got 'FEDHUB_TEST_UNSET_JWT'"),
    ({"rest_url": "slurm.example.org:6820", "rest_user": "u", "jwt_file": "TOKEN"},
     "sites.yaml: sites[0].options.rest_url: expected slurmrestd's http(s) URL, e.g. "
     "http://slurm.example.org:6820, got 'slurm.example.org:6820'"),
    ({"rest_url": "http://h:6820", "jwt_file": "TOKEN"},
     "sites.yaml: sites[0].options.rest_user: expected the Slurm user the JWT belongs to (sessions run as this "
     "user)"),
])
def test_bad_rest_options_name_file_key_and_what_was_expected(options, message, token_file):
    options = {k: (token_file if v == "TOKEN" else v) for k, v in options.items()}
    with pytest.raises(CatalogueError) as e:
        Federation(catalogue_from_dict(rest_site(**options), "sites.yaml"))
    assert str(e.value) == message


# ---------------------------------------------------------------- a real cluster behind slurmrestd


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = SlurmCluster(tmp_path_factory.mktemp("slurm-rest") / "r", "site-r", "noder", "a100", 2,
                     cpus=8, memory_mb=8000, rest=True).start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def jwt_file(cluster, tmp_path_factory):
    path = tmp_path_factory.mktemp("jwt") / "hpc-rest.jwt"
    path.write_text(cluster.mint_token("root", lifespan=3600))
    path.chmod(0o600)
    return path


async def test_client_against_the_real_slurmrestd(cluster, jwt_file, monkeypatch):
    client = SlurmRestClient(cluster.rest_url, "root", jwt_file=str(jwt_file))
    [node] = parse_rest_nodes(await client.nodes())
    assert node.name == "noder" and node.gpus == {"a100": 2}
    assert await client.job("424242") is None  # no such job: None, not an error
    await client.cancel("424242")  # cancelling a job that is gone is not an error
    monkeypatch.setenv("FEDHUB_TEST_BAD_JWT", "not-a-token")
    with pytest.raises(SlurmRestAuthError, match="could not authenticate with the token"):
        await SlurmRestClient(cluster.rest_url, "root", jwt_env="FEDHUB_TEST_BAD_JWT").nodes()
    monkeypatch.setenv("FEDHUB_TEST_NOBODY_JWT", cluster.mint_token("nobody", lifespan=600))
    with pytest.raises(SlurmRestError, match="the token was issued for 'nobody', rest_user is 'root'"):
        await SlurmRestClient(cluster.rest_url, "root", jwt_env="FEDHUB_TEST_NOBODY_JWT").nodes()
    with pytest.raises(SlurmRestUnavailable, match="not answering"):
        await SlurmRestClient("http://127.0.0.1:9", "root", jwt_file=str(jwt_file)).nodes()


@pytest.fixture(scope="module")
def hub(module_hub_factory, cluster, jwt_file):
    doc = {"sites": [{"name": "hpc-rest", "kind": "slurm", "gpus": [{"type": "a100", "count": 2}],
                      "options": {"rest_url": cluster.rest_url, "rest_user": "root", "jwt_file": str(jwt_file),
                                  "partition": cluster.partition, "hosts": {cluster.node: "127.0.0.1"},
                                  "poll_interval": 1, "start_timeout": 90}}],
           "defaults": {"cpus": 1, "memory": "512M"}}
    assert "SLURM_CONF" not in os.environ  # the hub knows the cluster by its REST URL only
    h = module_hub_factory(json.dumps(doc), args=["--no-mlflow", "--no-inference", "--keep-servers"])
    with open(h.data_dir / "jupyterhub_config.py", "a") as f:
        f.write("\nc.Spawner.poll_interval = 1\n")  # the hub polls sessions often: none may die of a REST outage
    return h.start()


@pytest.mark.hub
def test_inventory_comes_from_slurmrestd(hub, cluster):
    token = hub.create_user("inv")
    site = wait_for(lambda: (lambda s: s if s["up"] else None)(sites(hub, token)["hpc-rest"]), what="site up")
    assert site["gpus"] == [{"type": "a100", "capacity": 2, "used": 0, "free": 2, "max_free_on_a_node": 2}]
    assert site["cpus"]["capacity"] == 8 and site["nodes"] == 1


@pytest.mark.hub
def test_session_is_a_job_submitted_over_rest_pending_reason_gpu_proxy_and_stop(hub, cluster):
    token = hub.create_user("rita")
    cluster.run("scontrol", "update", f"PartitionName={cluster.partition}", "State=DOWN")
    try:
        poster = threading.Thread(target=hub.spawn, args=("rita",), kwargs={"gpus": 1, "gpu_type": "a100"})
        poster.start()
        wait_for(lambda: (hub.server("rita") or {}).get("pending") == "spawn", what="spawn pending")
        expected = "pending in hpc-rest's queue (reason: PartitionDown, position 1 in the queue)"
        messages = []
        for line in hub.api("GET", "/users/rita/server/progress", stream=True, timeout=180).iter_lines():
            if line.startswith(b"data:"):
                event = json.loads(line[5:])
                messages.append(event.get("message", ""))
                if expected in messages[-1]:
                    cluster.run("scontrol", "update", f"PartitionName={cluster.partition}", "State=UP")
                if event.get("ready") or event.get("failed"):
                    break
        poster.join()
        assert any(expected in m for m in messages), messages
    finally:
        cluster.run("scontrol", "update", f"PartitionName={cluster.partition}", "State=UP")
    server = hub.wait_ready("rita", timeout=120)
    job_id = server["state"]["fedhub"]["child"]["job_id"]
    assert server["state"]["fedhub"]["allocation"]["site"] == "hpc-rest"
    assert f"{job_id} RUNNING" in cluster.jobs()  # squeue sees the job slurmrestd submitted
    env = job_env(job_id, cluster.name)
    assert env["CUDA_VISIBLE_DEVICES"] == "0" and env["FEDHUB_SITE"] == "hpc-rest"  # CUDA_...: set by Slurm
    r = requests.get(f"{hub.url}/user/rita/api/status", headers={"Authorization": f"token {token}"})
    assert r.status_code == 200
    # the job id is in the spawner's state: a restarted hub finds the session again
    hub.stop()
    hub.start()
    assert hub.wait_ready("rita", timeout=60)["state"]["fedhub"]["child"]["job_id"] == job_id
    r = requests.get(f"{hub.url}/user/rita/api/status", headers={"Authorization": f"token {token}"})
    assert r.status_code == 200, r.text
    # slurmrestd away for a few of the hub's polls of the session: the session and its job stay
    cluster.stop_rest()
    try:
        time.sleep(4)
        assert hub.server("rita")["ready"] and f"{job_id} RUNNING" in cluster.jobs()
    finally:
        cluster.start_rest()
    hub.stop_server("rita")
    wait_for(lambda: not cluster.jobs(), what="job gone after stop")


@pytest.mark.hub
def test_slurmrestd_down_mid_start_marks_the_site_down_and_its_job_is_cancelled_when_back(hub, cluster):
    token = hub.create_user("ops")
    hub.create_user("kim")
    wait_for(lambda: sites(hub, token)["hpc-rest"]["up"], what="site up")
    cluster.run("scontrol", "update", f"PartitionName={cluster.partition}", "State=DOWN")  # the job will pend
    try:
        poster = threading.Thread(target=hub.spawn, args=("kim",))
        poster.start()
        wait_for(lambda: any("PENDING" in j for j in cluster.jobs()), what="job pending")
        cluster.stop_rest()
        down = wait_for(lambda: (lambda s: s if not s["up"] else None)(sites(hub, token)["hpc-rest"]),
                        timeout=30, what="site down")
        assert f"slurmrestd at {cluster.rest_url} not answering" in down["down_reason"]
        poster.join()
        wait_for(lambda: hub.server("kim") is None, timeout=60, what="the start given up")
        assert cluster.jobs(), "the job is still there while slurmrestd is away"
    finally:
        cluster.start_rest()
        cluster.run("scontrol", "update", f"PartitionName={cluster.partition}", "State=UP")
    wait_for(lambda: sites(hub, token)["hpc-rest"]["up"], timeout=30, what="site back up")
    wait_for(lambda: not cluster.jobs(), timeout=30, what="the job left by the failed start cancelled")
    assert "cancelled job" in hub.log_tail(400) and "left by a failed start" in hub.log_tail(400)
    assert hub.proc.poll() is None


@pytest.mark.hub
def test_expired_or_bad_token_is_the_sites_health_reason_and_a_new_token_file_heals_it(hub, cluster, jwt_file):
    token = hub.create_user("sec")
    good = jwt_file.read_text()

    def down_reason():
        s = sites(hub, token)["hpc-rest"]
        return s["down_reason"] if not s["up"] else None

    try:
        jwt_file.write_text(cluster.mint_token("root", lifespan=1))
        time.sleep(1.5)
        assert "expired at" in wait_for(down_reason, timeout=30, what="expired token reported")
        jwt_file.write_text("not-a-token")
        wait_for(lambda: "could not authenticate with the token" in (down_reason() or ""), timeout=30,
                 what="bad token reported")
    finally:
        jwt_file.write_text(good)  # rotation: the file is read at every request
    wait_for(lambda: sites(hub, token)["hpc-rest"]["up"], timeout=30, what="site up with the new token")
    assert hub.proc.poll() is None


def test_the_operator_guide_quotes_the_codes_messages(tmp_path):
    guide = (Path(__file__).resolve().parents[1] / "docs" / "site-operators.md").read_text()
    quoted = guide.split("The mistakes the hub refuses to start with:\n\n```\n", 1)[1].split("```", 1)[0]
    token = tmp_path / "hpc-east.jwt"
    token.write_text("t")
    base = {"rest_url": "https://slurm.hpc-east.example.org:6820", "rest_user": "fedhub"}
    cases = [{**base}, {**base, "jwt_file": str(token), "slurm_conf": "/etc/fedhub/slurm/hpc-east.conf"},
             {**base, "jwt_file": "/etc/fedhub/slurm/hpc-east.jwt"}, {"rest_user": "fedhub", "jwt_file": str(token)}]
    messages = []
    for options in cases:
        with pytest.raises(CatalogueError) as e:
            Federation(catalogue_from_dict(rest_site(**options), "sites.yaml"))
        messages.append(str(e.value))
    assert quoted.splitlines() == messages
