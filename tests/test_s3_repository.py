"""Triton model repositories in an S3-compatible store.

Stand-in: no MinIO server installs from the registries here, so the S3-compatible server is
moto's server mode (`python -m moto.server`, a real HTTP S3 API) in its own process on a
loopback port, with authentication on: only the IAM key made for the test gets in. The
deployment manager (the real deploy path: resolve, package, write, load, ready), the embedded
Triton-protocol server (its own process, `--model-repository s3://host:port/bucket/prefix`)
and tritonclient are real; keys reach them only through the environment.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time

import boto3
import numpy as np
import pytest
import requests
import tritonclient.http as triton_http

import inference_models
from conftest import fedhub_env, free_port
from fedhub.hub.deploy.manager import ACTIVE, DeployError, DeploymentManager
from fedhub.hub.deploy.model_config import parse_config
from fedhub.hub.deploy.repository import served_versions
from fedhub.hub.deploy.s3repo import (S3Location, S3ModelRepository, S3RepositoryError, parse_s3_uri)
from fedhub.hub.deploy.store import DeploymentStore

BUCKET = "fedhub-models"
PREFIX = "triton"
READY_LINE = re.compile(r"ready: HTTP (\S+):(\d+) gRPC (\S+):(\d+)")
ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


def _wait_answering(url: str, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            requests.get(url, timeout=2)
            return
        except requests.ConnectionError:
            time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer in {timeout} s")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """moto's S3 server (auth on, one IAM key), the bucket, and the embedded server reading it."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    try:
        _wait_answering(endpoint, moto, "moto server")
        setup = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup",
                     aws_secret_access_key="setup")
        iam = boto3.client("iam", **setup)
        iam.create_user(UserName="fedhub")
        iam.put_user_policy(UserName="fedhub", PolicyName="all", PolicyDocument=json.dumps(ALLOW_ALL))
        key = iam.create_access_key(UserName="fedhub")["AccessKey"]
        boto3.client("s3", **setup).create_bucket(Bucket=BUCKET)
        requests.post(f"{endpoint}/moto-api/reset-auth", data="0", timeout=10).raise_for_status()  # auth on
        env = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
               "AWS_DEFAULT_REGION": "us-east-1"}
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        # the server gets Triton's own URI form, with the endpoint in it
        log_path = tmp_path_factory.mktemp("server-log") / "server.log"
        with open(log_path, "wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "fedhub.hub.deploy.server", "--model-repository",
                 f"s3://127.0.0.1:{port}/{BUCKET}/{PREFIX}", "--cache-dir", str(tmp_path_factory.mktemp("cache")),
                 "--http-port", "0", "--grpc-port", "0"],
                env={**fedhub_env(), **env}, stdout=subprocess.PIPE, stderr=log, text=True)
        match, deadline = None, time.monotonic() + 60
        while match is None and time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line and server.poll() is not None:
                raise RuntimeError(f"server exited {server.returncode}:\n{log_path.read_text()}")
            match = READY_LINE.search(line)
        assert match, log_path.read_text()
        with pytest.MonkeyPatch.context() as mp:  # the manager runs here: keys in this environment only
            for k, v in {**env, "FEDHUB_S3_ENDPOINT_URL": endpoint}.items():
                mp.setenv(k, v)
            mp.delenv("AWS_ENDPOINT_URL", raising=False)
            yield {"endpoint": endpoint, "port": port, "s3": s3, "env": env, "http": f"{match[1]}:{match[2]}",
                   "log": log_path}
    finally:
        if server is not None and server.poll() is None:
            server.terminate()
            server.wait(timeout=20)
        moto.terminate()
        moto.wait(timeout=20)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    homes = tmp_path_factory.mktemp("homes")
    pipeline = inference_models.sklearn_digits_model(homes / "carol" / "work", "digits")
    return homes, homes / "carol" / "work" / "digits" / "1" / "model.onnx", pipeline


def make_manager(tmp_path, stack, workspace, repository=f"s3://{BUCKET}/{PREFIX}") -> DeploymentManager:
    settings = {"homes_dir": str(workspace[0]), "models_dir": str(tmp_path / "unused-models"),
                "model_repository": repository, "inference_http": stack["http"]}
    return DeploymentManager(DeploymentStore(tmp_path / "state"), settings)


async def settle(manager: DeploymentManager, dep_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while dep_id in manager.records and manager.records[dep_id]["status"] in ACTIVE:
        assert time.monotonic() < deadline, manager.records[dep_id]
        await asyncio.sleep(0.1)
    return manager.records[dep_id]


def keys_of(stack, model: str, prefix: str = PREFIX) -> set[str]:
    folder = f"{prefix}/{model}/"
    listed = stack["s3"].list_objects_v2(Bucket=BUCKET, Prefix=folder).get("Contents", [])
    return {o["Key"][len(folder):] for o in listed}


def served_policy(stack, model: str, prefix: str = PREFIX) -> list[int]:
    body = stack["s3"].get_object(Bucket=BUCKET, Key=f"{prefix}/{model}/config.pbtxt")["Body"].read().decode()
    config = parse_config(body)
    assert config.name == model
    return list(config.version_policy.specific.versions)


def infer_labels(stack, model: str, version: str = "") -> np.ndarray:
    X = inference_models.digits()[0][:16]
    client = triton_http.InferenceServerClient(stack["http"])
    tensor = triton_http.InferInput("X", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    return client.infer(model, [tensor], model_version=version).as_numpy("label")


async def test_deploy_writes_tritons_s3_layout_the_server_loads_it_and_rollback_undeploy_follow(
        tmp_path, stack, workspace):
    _, onnx_file, pipeline = workspace
    manager = make_manager(tmp_path, stack, workspace)
    record = await manager.deploy("carol", "", {"model": str(onnx_file), "name": "digits"})
    record = await settle(manager, record["id"])
    assert record["status"] == "ready", record["error"]
    assert [(s["name"], s["status"]) for s in record["steps"]] == [
        (s, "done") for s in ("resolve", "package", "write", "load", "ready")]
    model = record["model_name"]
    write = next(s for s in record["steps"] if s["name"] == "write")
    assert write["message"] == f"3 objects in s3://127.0.0.1:{stack['port']}/{BUCKET}/{PREFIX}/{model}"
    # Triton's layout: MODEL/config.pbtxt, MODEL/VERSION/model.onnx (+ fedhub's hidden manifest)
    assert keys_of(stack, model) == {"config.pbtxt", "1/model.onnx", "1/.fedhub-version.json"}
    assert served_policy(stack, model) == [1]
    onnx_key = f"{PREFIX}/{model}/1/model.onnx"
    assert stack["s3"].get_object(Bucket=BUCKET, Key=onnx_key)["Body"].read() == onnx_file.read_bytes()
    X = inference_models.digits()[0][:16]
    np.testing.assert_array_equal(infer_labels(stack, model), pipeline.predict(X))
    assert not (tmp_path / "unused-models").exists()  # nothing written to the local folder

    # version 2, then back to version 1: the served config in S3 follows, the server too
    await manager.deploy("carol", "", {"model": str(onnx_file), "name": "digits"})
    record = await settle(manager, record["id"])
    assert record["status"] == "ready" and record["current_version"] == 2, record["error"]
    assert keys_of(stack, model) >= {"2/model.onnx", "2/.fedhub-version.json", "1/model.onnx"}
    assert served_policy(stack, model) == [2]
    client = triton_http.InferenceServerClient(stack["http"])
    assert client.is_model_ready(model, "2") and not client.is_model_ready(model, "1")
    rolled = await manager.rollback("carol", record["id"])
    assert rolled["status"] == "ready" and rolled["current_version"] == 1, rolled["error"]
    assert served_policy(stack, model) == [1]
    assert client.is_model_ready(model, "1") and not client.is_model_ready(model, "2")
    np.testing.assert_array_equal(infer_labels(stack, model, "1"), pipeline.predict(X))

    # undeploy: unloaded, and nothing of it left in the bucket
    await manager.undeploy("carol", record["id"])
    assert keys_of(stack, model) == set()
    assert not client.is_model_ready(model)
    assert all(m.get("state") != "READY" for m in client.get_model_repository_index() if m["name"] == model)


async def test_store_failures_fail_the_step_with_the_reason_and_other_models_keep_serving(
        tmp_path, stack, workspace, monkeypatch):
    _, onnx_file, pipeline = workspace
    X = inference_models.digits()[0][:16]
    keeper = make_manager(tmp_path / "keeper", stack, workspace)
    kept = await settle(keeper, (await keeper.deploy("carol", "", {"model": str(onnx_file), "name": "kept"}))["id"])
    assert kept["status"] == "ready", kept["error"]

    async def failed_deploy(name: str, repository: str = f"s3://{BUCKET}/{PREFIX}") -> dict:
        manager = make_manager(tmp_path / name, stack, workspace, repository)
        record = await settle(manager, (await manager.deploy("carol", "", {"model": str(onnx_file), "name": name}))["id"])
        assert record["status"] == "failed"
        step = next(s for s in record["steps"] if s["status"] == "failed")
        # the server keeps serving the other deployment
        np.testing.assert_array_equal(infer_labels(stack, kept["model_name"]), pipeline.predict(X))
        return {**record, "failed_step": step["name"], "reason": step["message"]}

    wrong_bucket = await failed_deploy("nobucket", f"s3://no-such-bucket/{PREFIX}")
    assert wrong_bucket["failed_step"] == "write"
    assert f"bucket 'no-such-bucket' does not exist at {stack['endpoint']}" in wrong_bucket["reason"]
    assert "step write failed" in wrong_bucket["error"]

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    bad_keys = await failed_deploy("badkeys")
    assert bad_keys["failed_step"] == "write" and "access denied" in bad_keys["reason"]
    assert "SignatureDoesNotMatch" in bad_keys["reason"] and "not-the-secret" not in bad_keys["reason"]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", stack["env"]["AWS_SECRET_ACCESS_KEY"])

    down = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("FEDHUB_S3_ENDPOINT_URL", down)
    endpoint_down = await failed_deploy("down")
    assert endpoint_down["failed_step"] == "write"
    assert f"the S3 endpoint {down} does not answer" in endpoint_down["reason"]
    monkeypatch.setenv("FEDHUB_S3_ENDPOINT_URL", stack["endpoint"])

    # the server's side: an incomplete upload is refused on load, with the reason
    s3 = stack["s3"]
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/partial/config.pbtxt",
                  Body=s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/{kept['model_name']}/config.pbtxt")["Body"].read())
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/partial/1/.fedhub-version.json", Body=json.dumps(
        {"version": 1, "config": "", "files": {"model.onnx": {"size": 10, "sha256": "0" * 64}}}).encode())
    r = requests.post(f"http://{stack['http']}/v2/repository/models/partial/load", timeout=60)
    assert r.status_code == 400 and "model.onnx is missing (an incomplete upload?)" in r.json()["error"]
    # ...and so is a file changed after it was deployed (same size, other bytes)
    kept_prefix = f"{PREFIX}/{kept['model_name']}/"
    for obj in s3.list_objects_v2(Bucket=BUCKET, Prefix=kept_prefix)["Contents"]:
        body = s3.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
        if obj["Key"].endswith("model.onnx"):
            body = bytes(len(body))
        s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/tampered/{obj['Key'][len(kept_prefix):]}", Body=body)
    r = requests.post(f"http://{stack['http']}/v2/repository/models/tampered/load", timeout=60)
    assert r.status_code == 400 and "1/model.onnx: differs from what was deployed" in r.json()["error"]
    r = requests.post(f"http://{stack['http']}/v2/repository/models/not-there/load", timeout=60)
    assert r.status_code == 404 and "no model 'not-there'" in r.json()["error"]
    np.testing.assert_array_equal(infer_labels(stack, kept["model_name"]), pipeline.predict(X))
    await keeper.undeploy("carol", kept["id"])


async def test_rollback_and_undeploy_with_the_store_down_say_so_and_can_be_retried(tmp_path, stack, workspace,
                                                                                    monkeypatch):
    _, onnx_file, _ = workspace
    manager = make_manager(tmp_path, stack, workspace)
    body = {"model": str(onnx_file), "name": "retry"}
    record = await settle(manager, (await manager.deploy("carol", "", body))["id"])
    record = await settle(manager, (await manager.deploy("carol", "", body))["id"])
    assert record["status"] == "ready" and record["current_version"] == 2, record["error"]
    # folder markers and keys that climb out of the model's folder are never copied
    for junk in ("1/", "1/../../escaped.txt"):
        stack["s3"].put_object(Bucket=BUCKET, Key=f"{PREFIX}/{record['model_name']}/{junk}", Body=b"")
    monkeypatch.setenv("FEDHUB_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    manager.repository = S3ModelRepository.from_uri(f"s3://{BUCKET}/{PREFIX}")  # as after a restart
    rolled = await manager.rollback("carol", record["id"])
    assert rolled["status"] == "ready" and rolled["current_version"] == 2
    assert rolled["error"].startswith("rollback failed: ") and "does not answer" in rolled["error"]
    assert triton_http.InferenceServerClient(stack["http"]).is_model_ready(record["model_name"], "2")
    with pytest.raises(DeployError, match="could not be removed: .*does not answer") as e:
        await manager.undeploy("carol", record["id"])
    assert e.value.status == 502 and manager.records[record["id"]]["status"] == "failed"
    monkeypatch.setenv("FEDHUB_S3_ENDPOINT_URL", stack["endpoint"])
    manager.repository = S3ModelRepository.from_uri(f"s3://{BUCKET}/{PREFIX}")
    rolled = await manager.rollback("carol", record["id"], 1)  # the store is back: the retry works
    assert rolled["status"] == "ready" and rolled["current_version"] == 1, rolled["error"]
    assert not any(p.name == "escaped.txt" for p in tmp_path.parent.rglob("escaped.txt"))
    await manager.undeploy("carol", record["id"])
    assert keys_of(stack, record["model_name"]) == set() and record["id"] not in manager.records


def test_sync_reports_store_errors_in_words(tmp_path, stack, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
    reader = S3ModelRepository(S3Location(BUCKET, PREFIX, stack["endpoint"]))
    with pytest.raises(S3RepositoryError, match="access denied .*InvalidAccessKeyId"):
        reader.sync("anything", tmp_path / "anything", served_versions)
    assert not (tmp_path / "anything").exists()


@pytest.mark.parametrize("uri, environ, expected", [
    ("s3://bucket/a/b", {}, S3Location("bucket", "a/b", "")),
    ("s3://bucket/a/b", {"AWS_ENDPOINT_URL": "http://minio:9000"}, S3Location("bucket", "a/b", "http://minio:9000")),
    ("s3://bucket", {"FEDHUB_S3_ENDPOINT_URL": "https://s3.example.org/", "AWS_ENDPOINT_URL": "http://x:1"},
     S3Location("bucket", "", "https://s3.example.org")),
    ("s3://minio.local:9000/bucket/models/", {}, S3Location("bucket", "models", "http://minio.local:9000")),
    ("s3://https://minio.local:9443/bucket/models", {}, S3Location("bucket", "models", "https://minio.local:9443")),
])
def test_repository_uris_take_tritons_forms(uri, environ, expected):
    location = parse_s3_uri(uri, environ)
    assert location == expected
    # and back to what tritonserver --model-repository takes
    again = parse_s3_uri(location.triton_uri(), {})
    assert (again.bucket, again.prefix, again.triton_uri()) == (location.bucket, location.prefix, location.triton_uri())


def test_triton_uri_of_an_https_endpoint_without_port():
    assert S3Location("b", "p", "https://s3.example.org").triton_uri() == "s3://https://s3.example.org:443/b/p"
    assert S3Location("b", "p/q", "").triton_uri() == "s3://b/p/q"


@pytest.mark.parametrize("uri, words", [
    ("s3://AKIA:secret@minio:9000/bucket", "holds credentials"),
    ("s3://Bad_Bucket/x", "not a valid bucket name"),
    ("s3://", "not a valid bucket name"),
    ("s3://bucket/a/../b", "may not contain '..'"),
    ("gs://bucket/x", "expected s3://bucket/prefix"),
])
def test_bad_repository_uris_are_named(uri, words):
    with pytest.raises(S3RepositoryError, match=re.escape(words)) as e:
        parse_s3_uri(uri, {}, setting="--model-repository")
    assert str(e.value).startswith("--model-repository")


def test_fedhub_up_passes_the_s3_repository_and_only_env_credentials_to_the_services(tmp_path, monkeypatch):
    from traitlets.config import Config

    from fedhub.hub.app import FedhubUp
    from fedhub.hub.hubconfig import configure
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-from-env")
    monkeypatch.setenv("FEDHUB_S3_ENDPOINT_URL", "http://minio:9000")
    uri = "s3://models/triton"
    app = FedhubUp()
    app.initialize(["--data-dir", str(tmp_path), "--model-repository", uri])
    s = app.prepare()
    c = Config()
    configure(c, s)
    services = {svc["name"]: svc for svc in c.JupyterHub.services}
    command = services["inference"]["command"]
    assert command[command.index("--model-repository") + 1] == uri
    for name in ("inference", "fedhub"):
        env = services[name]["environment"]
        assert env["AWS_SECRET_ACCESS_KEY"] == "secret-from-env" and env["FEDHUB_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert json.loads(services["fedhub"]["environment"]["FEDHUB_DEPLOY_SETTINGS"])["model_repository"] == uri
    assert "secret-from-env" not in (tmp_path / "fedhub-up.json").read_text()

    app = FedhubUp()
    app.initialize(["--data-dir", str(tmp_path), "--model-repository", "s3://key:secret@minio:9000/b/p"])
    with pytest.raises(ValueError, match="--model-repository: .*holds credentials"):
        app.prepare()
    app = FedhubUp()
    app.initialize(["--data-dir", str(tmp_path), "--model-repository", "ftp://models/x"])
    with pytest.raises(ValueError, match="--model-repository: expected a folder or s3://bucket/prefix"):
        app.prepare()
    # another folder: served and written as today's folder is
    monkeypatch.chdir(tmp_path)
    app = FedhubUp()
    app.initialize(["--data-dir", str(tmp_path), "--model-repository", "elsewhere/models"])
    s = app.prepare()
    c = Config()
    configure(c, s)
    services = {svc["name"]: svc for svc in c.JupyterHub.services}
    command = services["inference"]["command"]
    assert command[command.index("--model-repository") + 1] == str(tmp_path / "elsewhere" / "models")
    assert json.loads(services["fedhub"]["environment"]["FEDHUB_DEPLOY_SETTINGS"])["model_repository"] == \
        str(tmp_path / "elsewhere" / "models")
    assert services["inference"]["environment"] == {}
    # without --model-repository: today's local folder, no S3 variables handed out
    app = FedhubUp()
    app.initialize(["--data-dir", str(tmp_path)])
    s = app.prepare()
    c = Config()
    configure(c, s)
    inference = next(svc for svc in c.JupyterHub.services if svc["name"] == "inference")
    assert inference["command"][inference["command"].index("--model-repository") + 1] == str(tmp_path / "models")
    assert inference["environment"] == {}


async def test_site_deployment_writes_the_version_where_its_triton_manifest_points(tmp_path, stack, workspace,
                                                                                    monkeypatch):
    """A Kubernetes site reading an S3 repository (settings as `fedhub k8s render` passes them):
    the manifests' --model-repository holds this version, served as Triton would load it."""
    import yaml
    from kubernetes_validate import validate

    from fedhub.hub.deploy.server import InferenceServer
    _, onnx_file, pipeline = workspace
    monkeypatch.setenv("FEDHUB_TRITON_KUBERNETES", json.dumps(
        {"model_repository": f"s3://{BUCKET}/sites", "s3_secret": "fedhub-s3", "s3_endpoint": stack["endpoint"]}))
    settings = {"homes_dir": str(workspace[0]), "models_dir": str(tmp_path / "models")}
    manager = DeploymentManager(DeploymentStore(tmp_path / "state"), settings,
                                sites=lambda: [{"name": "cloud", "kind": "kubernetes"}])
    body = {"model": str(onnx_file), "name": "sited", "target": "site:cloud"}
    record = await settle(manager, (await manager.deploy("carol", "", body))["id"])
    assert record["status"] == "manifests-ready", record["error"]
    model = record["model_name"]
    docs = list(yaml.safe_load_all(manager.manifests("carol", record["id"])))
    for doc in docs:
        validate(doc, "1.37", strict=True)
    (container,) = docs[0]["spec"]["template"]["spec"]["containers"]
    triton_arg = next(a for a in container["args"] if a.startswith("--model-repository="))
    site_repository = triton_arg.split("=", 1)[1]
    assert site_repository == f"s3://127.0.0.1:{stack['port']}/{BUCKET}/sites/{model}"
    assert keys_of(stack, model, f"sites/{model}") == {"config.pbtxt", "1/model.onnx", "1/.fedhub-version.json"}

    # a second version, then a rollback: the config Triton reads in S3 follows
    await manager.deploy("carol", "", body)
    record = await settle(manager, record["id"])
    assert record["current_version"] == 2, record["error"]
    assert served_policy(stack, model, f"sites/{model}") == [2]
    await manager.rollback("carol", record["id"])
    assert served_policy(stack, model, f"sites/{model}") == [1]

    # the manifest's repository argument, as is, loads on a Triton-protocol server
    server = await InferenceServer(site_repository, http_port=0, grpc_port=0, cache_dir=tmp_path / "cache").start()
    try:
        assert server.repository.is_ready(model, "1") and not server.repository.is_ready(model, "2")
    finally:
        await server.stop(0)
    await manager.undeploy("carol", record["id"])
    assert keys_of(stack, model, "sites") == set()


@pytest.mark.hub
def test_fedhub_up_with_an_s3_model_repository_deploys_serves_and_undeploys_through_the_api(stack, hub_factory):
    """The whole path through a real `fedhub up --model-repository s3://...`: the fedhub API, its
    deployment manager and the inference service get the keys from the hub's environment only."""
    import shutil
    hub = hub_factory("sites:\n  - {name: here, kind: local, cpus: 2, memory: 4G}\n",
                      args=["--no-mlflow", "--model-repository", f"s3://{BUCKET}/hub"]).start()
    token = hub.create_user("dana")
    home = hub.data_dir / "homes" / "dana"
    home.mkdir(parents=True, exist_ok=True)
    pipeline = inference_models.sklearn_digits_model(home, "digits")
    deadline = time.monotonic() + 120
    while requests.get(f"{hub.url}/services/inference/v2/health/ready", timeout=10,
                       headers={"Authorization": f"token {token}"}).status_code != 200:
        assert time.monotonic() < deadline, hub.log_tail()
        time.sleep(0.5)
    r = hub.fedhub_api("/deployments", token, method="POST",
                       json={"model": str(home / "digits" / "1" / "model.onnx"), "name": "hubbed"})
    assert r.status_code == 202, r.text
    dep_id = r.json()["id"]
    while (record := hub.fedhub_api(f"/deployments/{dep_id}", token).json())["status"] == "deploying":
        assert time.monotonic() < deadline + 120, hub.log_tail()
        time.sleep(0.3)
    assert record["status"] == "ready", f"{record['error']}\n{hub.log_tail()}"
    model = record["model_name"]
    assert keys_of(stack, model, "hub") == {"config.pbtxt", "1/model.onnx", "1/.fedhub-version.json"}
    assert not (hub.data_dir / "models" / model).exists()  # the store holds it, not the hub's folder
    ports = json.loads((hub.data_dir / "ports.json").read_text())
    np.testing.assert_array_equal(infer_labels({"http": f"127.0.0.1:{ports['inference_http']}"}, model),
                                  pipeline.predict(inference_models.digits()[0][:16]))
    assert stack["env"]["AWS_SECRET_ACCESS_KEY"] not in (hub.data_dir / "fedhub-up.json").read_text()
    r = hub.fedhub_api(f"/deployments/{dep_id}", token, method="DELETE")
    assert r.status_code == 200, r.text
    assert keys_of(stack, model, "hub") == set()
    shutil.rmtree(home, ignore_errors=True)


def test_server_with_its_store_down_starts_serves_health_and_says_why_a_load_fails(tmp_path):
    down = free_port()
    env = {**fedhub_env(), "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1"}
    bad = subprocess.run([sys.executable, "-m", "fedhub.hub.deploy.server", "--model-repository", "s3://Bad_Bucket/x",
                          "--http-port", "0", "--grpc-port", "0"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "--model-repository: 'Bad_Bucket' in 's3://Bad_Bucket/x' is not a valid bucket" \
        in bad.stderr and "Traceback" not in bad.stderr
    server = subprocess.Popen([sys.executable, "-m", "fedhub.hub.deploy.server", "--model-repository",
                               f"s3://127.0.0.1:{down}/{BUCKET}/x", "--http-port", "0", "--grpc-port", "0"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        match = None
        while match is None:
            line = server.stdout.readline()
            assert line, "the server exited"
            match = READY_LINE.search(line)
        http = f"http://{match[1]}:{match[2]}"
        assert requests.get(f"{http}/v2/health/ready", timeout=10).status_code == 200
        r = requests.post(f"{http}/v2/repository/index", timeout=30)
        assert r.status_code == 200 and r.json() == []
        r = requests.post(f"{http}/v2/repository/models/digits/load", timeout=60)
        assert r.status_code == 400
        assert f"the S3 endpoint http://127.0.0.1:{down} does not answer" in r.json()["error"]
        assert requests.get(f"{http}/v2/health/live", timeout=10).status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=20)
