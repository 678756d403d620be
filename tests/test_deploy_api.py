"""One-click deployment through the real hub: MLflow model -> embedded Triton-protocol server.

A real `fedhub up` (JupyterHub, proxy, fedhub API, MLflow behind the hub login, the
embedded inference server as a hub service). Users log scikit-learn models with the
unmodified mlflow client and their hub token, deploy them through the fedhub API, and
call them with the unmodified tritonclient over HTTP (directly and through the hub's
proxy) and gRPC. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import requests

from conftest import fedhub_env



def digits():
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    return X.astype(np.float32), y


def log_model(hub, token: str, experiment: str, model, X, artifact: str = "model") -> str:
    """Log a scikit-learn model as the token's user, through the hub's MLflow; returns runs:/ URI."""
    import mlflow
    from mlflow.models import infer_signature
    os.environ["MLFLOW_TRACKING_TOKEN"] = token
    mlflow.set_tracking_uri(f"{hub.url}/services/mlflow")
    try:
        mlflow.set_experiment(experiment)
        with mlflow.start_run() as run:
            mlflow.sklearn.log_model(model, name=artifact, signature=infer_signature(X[:5], model.predict(X[:5])),
                                     pip_requirements=["scikit-learn"])
        return f"runs:/{run.info.run_id}/{artifact}"
    finally:
        os.environ.pop("MLFLOW_TRACKING_TOKEN", None)
        mlflow.set_tracking_uri(None)


def log_artifact_text(hub, token: str, experiment: str, name: str, text: str) -> str:
    import mlflow
    os.environ["MLFLOW_TRACKING_TOKEN"] = token
    mlflow.set_tracking_uri(f"{hub.url}/services/mlflow")
    try:
        mlflow.set_experiment(experiment)
        with mlflow.start_run() as run:
            mlflow.log_text(text, name)
        return f"runs:/{run.info.run_id}/{name}"
    finally:
        os.environ.pop("MLFLOW_TRACKING_TOKEN", None)
        mlflow.set_tracking_uri(None)


def follow(hub, token: str, dep_id: str, timeout: float = 120) -> tuple[dict, list[dict]]:
    """Long-poll the events until the deployment settles; returns (record, events)."""
    events, after = [], 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = hub.fedhub_api(f"/deployments/{dep_id}/events?after={after}&wait=20", token)
        assert r.status_code == 200, r.text
        data = r.json()
        events += data["events"]
        after = data["last"]
        if data["status"] not in ("deploying", "rolling-back", "undeploying"):
            return hub.fedhub_api(f"/deployments/{dep_id}", token).json(), events
    raise AssertionError(f"deployment {dep_id} did not settle: {events}\n{hub.log_tail()}")


def deploy(hub, token, **body) -> dict:
    r = hub.fedhub_api("/deployments", token, method="POST", json=body)
    assert r.status_code == 202, r.text
    return r.json()


def http_infer(url: str, model: str, X, headers=None, version: str = ""):
    import tritonclient.http as httpclient
    client = httpclient.InferenceServerClient(url=url)
    inp = httpclient.InferInput("X" if "X" in _input_names(client, model, headers) else
                                _input_names(client, model, headers)[0], list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    result = client.infer(model, [inp], model_version=version, headers=headers)
    out = client.get_model_metadata(model, headers=headers)["outputs"][0]["name"]
    return result.as_numpy(out)


def _input_names(client, model, headers):
    return [i["name"] for i in client.get_model_metadata(model, headers=headers)["inputs"]]


def grpc_infer(url: str, model: str, X):
    import tritonclient.grpc as grpcclient
    client = grpcclient.InferenceServerClient(url=url)
    meta = client.get_model_metadata(model, as_json=True)
    inp = grpcclient.InferInput(meta["inputs"][0]["name"], list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    return client.infer(model, [inp]).as_numpy(meta["outputs"][0]["name"])


def wait_services(hub, token: str, timeout: float = 150, mlflow: bool = True) -> None:
    """MLflow and the inference server take a few seconds to start after the hub."""
    deadline = time.monotonic() + timeout
    urls = [f"{hub.url}/services/inference/v2/health/ready", f"{hub.url}/services/fedhub/api"]
    if mlflow:
        urls.insert(0, f"{hub.url}/services/mlflow/api/2.0/mlflow/experiments/search?max_results=1")
    for url in urls:
        while True:
            r = requests.get(url, headers={"Authorization": f"token {token}"}, timeout=10)
            if r.status_code == 200:
                break
            assert r.status_code in (502, 503), r.text
            assert time.monotonic() < deadline, f"{url} not up:\n{hub.log_tail()}"
            time.sleep(0.5)


@pytest.fixture(scope="module")
def env(module_hub_factory):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    hub = module_hub_factory(args=()).start(timeout=120)
    alice, bob = hub.create_user("alice"), hub.create_user("bob")
    wait_services(hub, alice)
    X, y = digits()
    model_a = LogisticRegression(max_iter=300).fit(X[:600], y[:600])
    model_b = make_pipeline(StandardScaler(), LogisticRegression(C=0.001, max_iter=300)).fit(X[:100], y[:100])
    uri_a = log_model(hub, alice, "alice-exp", model_a, X)
    uri_b = log_model(hub, alice, "alice-exp", model_b, X)
    return {"hub": hub, "alice": alice, "bob": bob, "X": X[600:650], "a": (model_a, uri_a), "b": (model_b, uri_b)}


def test_deploy_to_embedded_and_call_with_unmodified_tritonclient(env):
    hub, alice, X = env["hub"], env["alice"], env["X"]
    model, uri = env["a"]
    started = time.monotonic()
    dep = deploy(hub, alice, model=uri, name="digits", target="embedded")
    assert dep["status"] == "deploying" and dep["versions"][0]["version"] == 1
    record, events = follow(hub, alice, dep["id"])
    assert record["status"] == "ready", record
    steps = [e["step"] for e in events if e["status"] == "done"]
    assert steps[:5] == ["resolve", "package", "write", "load", "ready"], events
    assert all(s["status"] == "done" and s["finished"] >= s["started"] for s in record["steps"])
    print(f"deploy -> ready in {time.monotonic() - started:.2f}s")

    ep = record["endpoint"]
    expected = model.predict(X)
    assert np.array_equal(http_infer(ep["http"].split("://")[1], ep["model_name"], X), expected)
    assert np.array_equal(grpc_infer(ep["grpc"], ep["model_name"], X), expected)
    via_hub = ep["http_via_hub"].split("://")[1]
    assert via_hub.endswith("/services/inference")
    assert np.array_equal(http_infer(via_hub, ep["model_name"], X, headers={"Authorization": f"token {alice}"}),
                          expected)
    # through the hub, no token -> refused by the gate; users cannot unload models there
    r = requests.get(f"{ep['http_via_hub']}/v2/models/{ep['model_name']}", timeout=10)
    assert r.status_code in (401, 403), r.text
    r = requests.post(f"{ep['http_via_hub']}/v2/repository/models/{ep['model_name']}/unload",
                      headers={"Authorization": f"token {env['bob']}"}, timeout=10)
    assert r.status_code == 403 and "deployments API" in r.json()["error"]

    # test inference from the API: a generated sample, and the caller's own inputs
    r = hub.fedhub_api(f"/deployments/{dep['id']}/infer", alice, method="POST", json={"sample": True})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"] and r.json()["inputs"][0]["shape"][0] == 1
    r = hub.fedhub_api(f"/deployments/{dep['id']}/infer", alice, method="POST", json={"inputs": [
        {"name": "X" if False else r.json()["inputs"][0]["name"], "shape": [2, 64], "datatype": "FP32",
         "data": X[:2].ravel().tolist()}]})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == expected[:2].tolist()

    # the snippet runs as it is and prints the outputs
    snip = hub.fedhub_api(f"/deployments/{dep['id']}/snippet", alice).json()
    for kind in ("http", "grpc"):
        out = subprocess.run([sys.executable, "-c", snip[kind]], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert ep["model_name"] not in out.stderr
    env["deployment"] = record


def served(ep: dict, X, version: str = ""):
    return http_infer(ep["http"].split("://")[1], ep["model_name"], X, version=version)


def test_redeploy_makes_version_2_and_rollback_serves_version_1(env):
    hub, alice, X = env["hub"], env["alice"], env["X"]
    (model_a, _), (model_b, uri_b) = env["a"], env["b"]
    assert not np.array_equal(model_a.predict(X), model_b.predict(X))  # the two versions are told apart
    dep = deploy(hub, alice, model=uri_b, name="digits", target="embedded")
    assert dep["id"] == env["deployment"]["id"] and dep["pending_version"] == 2
    record, _ = follow(hub, alice, dep["id"])
    assert record["status"] == "ready" and record["current_version"] == 2, record
    assert [v["version"] for v in record["versions"]] == [1, 2]
    # each deployed version left a signed provenance record
    prov = hub.fedhub_api(f"/provenance?kind=deployment&subject={dep['id']}", alice).json()["records"]
    assert {v["provenance"] for v in record["versions"]} <= {p["hash"] for p in prov}
    assert {p["body"]["version"] for p in prov} == {1, 2} and {p["who"] for p in prov} == {"alice"}
    assert np.array_equal(served(record["endpoint"], X), model_b.predict(X))

    r = hub.fedhub_api(f"/deployments/{dep['id']}/rollback", alice, method="POST")
    assert r.status_code == 200, r.text
    record = r.json()
    assert record["status"] == "ready" and record["current_version"] == 1, record
    assert record["endpoint"]["model_version"] == "1"
    assert np.array_equal(served(record["endpoint"], X), model_a.predict(X))
    import tritonclient.http as httpclient
    client = httpclient.InferenceServerClient(record["endpoint"]["http"].split("://")[1])
    assert client.is_model_ready(record["model_name"], "1") and not client.is_model_ready(record["model_name"], "2")
    # nothing earlier than version 1: a clear 409
    r = hub.fedhub_api(f"/deployments/{dep['id']}/rollback", alice, method="POST")
    assert r.status_code == 409 and "no earlier working version" in r.json()["message"]
    env["deployment"] = record


def test_other_users_cannot_see_touch_or_deploy_what_they_cannot_read(env):
    hub, alice, bob = env["hub"], env["alice"], env["bob"]
    dep_id, (_, uri_a) = env["deployment"]["id"], env["a"]
    assert hub.fedhub_api("/deployments", bob).json()["deployments"] == []
    for method, path in (("GET", ""), ("DELETE", ""), ("GET", "/events"), ("POST", "/rollback"),
                         ("POST", "/infer"), ("GET", "/snippet")):
        r = hub.fedhub_api(f"/deployments/{dep_id}{path}", bob, method=method, json={"sample": True})
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["message"] == f"No deployment {dep_id}"
    # alice's run is not readable by bob in MLflow, so bob cannot deploy it
    r = hub.fedhub_api("/deployments", bob, method="POST", json={"model": uri_a, "name": "stolen"})
    assert r.status_code == 403, r.text
    assert "cannot read the model" in r.json()["message"]
    assert hub.fedhub_api("/deployments", bob).json()["deployments"] == []
    # still alice's, still serving
    assert hub.fedhub_api(f"/deployments/{dep_id}", alice).json()["status"] == "ready"


@pytest.mark.parametrize("body, status, words", [
    ({"name": "x"}, 400, "'model' must be an MLflow model URI"),
    ({"model": "runs:/0123456789abcdef0123456789abcdef/model", "name": "Bad Name"}, 400, "'name' must be"),
    ({"model": "runs:/0123456789abcdef0123456789abcdef/model", "name": "x", "target": "mars"}, 400, "'target' must be"),
    ({"model": "runs:/0123456789abcdef0123456789abcdef/model", "name": "x", "target": "site:nowhere"}, 400,
     "No Kubernetes site 'nowhere'"),
    ({"model": "runs:/0123456789abcdef0123456789abcdef/model", "name": "x", "target": "edge:nogroup"}, 400,
     "No edge device group 'nogroup'"),
    ({"model": "runs:/0123456789abcdef0123456789abcdef/model", "name": "x"}, 403, "You cannot read the model"),
    ({"model": "/etc/passwd.onnx", "name": "x"}, 403, "only .onnx files in your own workspace"),
    ({"model": "runs:/0123456789abcdef0123456789abcdef/model", "name": "x", "options": {"held_out": "/etc/x.npz"}},
     403, "only .npz files in your own workspace"),
    ({"model": "runs:/0123456789abcdef0123456789abcdef/model", "name": "x", "colour": "red"}, 400, "Unknown field"),
])
def test_bad_deploy_requests_are_4xx_with_reasons(env, body, status, words):
    r = env["hub"].fedhub_api("/deployments", env["alice"], method="POST", json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["message"]


def test_bad_requests_on_routes_are_4xx(env):
    hub, alice, dep_id = env["hub"], env["alice"], env["deployment"]["id"]
    own_run = env["a"][1].split("/")[1]
    r = hub.fedhub_api("/deployments", alice, method="POST", json={"model": f"runs:/{own_run}/nothing", "name": "x"})
    assert r.status_code == 400 and "No model at" in r.json()["message"], r.text
    r = hub.fedhub_api("/deployments", alice, method="POST", data="{not json")
    assert r.status_code == 400 and "expected JSON" in r.json()["message"]
    r = hub.fedhub_api(f"/deployments/{dep_id}/events?wait=soon", alice)
    assert r.status_code == 400 and "?wait=" in r.json()["message"]
    r = hub.fedhub_api(f"/deployments/{dep_id}/infer", alice, method="POST", json={"inputs": [
        {"name": "nope", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]})
    assert r.status_code == 400 and "Inference failed" in r.json()["message"]
    r = hub.fedhub_api(f"/deployments/{dep_id}/infer", alice, method="POST", json={"what": 1})
    assert r.status_code == 400 and "sample" in r.json()["message"]
    r = hub.fedhub_api(f"/deployments/{dep_id}/rollback", alice, method="POST", json={"version": "one"})
    assert r.status_code == 400
    r = hub.fedhub_api(f"/deployments/{dep_id}/manifests", alice)
    assert r.status_code == 409 and "no manifests" in r.json()["message"]
    # no scope: a token that may only be an edge device
    r = hub.api("POST", "/users/alice/tokens", json={"scopes": ["custom:fedhub:edge:device"]})
    device_only = r.json()["token"]
    r = hub.fedhub_api("/deployments", device_only)
    assert r.status_code == 403 and "custom:fedhub:deployments:read" in r.json()["message"]


class Echo:  # a pyfunc-only model: MLflow can serve it, Triton packaging cannot
    def predict(self, context, model_input, params=None):
        return model_input


def test_unsupported_flavour_is_refused_before_anything_runs(env):
    import mlflow
    import mlflow.pyfunc
    hub, alice = env["hub"], env["alice"]
    os.environ["MLFLOW_TRACKING_TOKEN"] = alice
    mlflow.set_tracking_uri(f"{hub.url}/services/mlflow")
    try:
        mlflow.set_experiment("alice-exp")
        with mlflow.start_run() as run:
            echo = type("EchoModel", (mlflow.pyfunc.PythonModel,), {"predict": Echo.predict})
            mlflow.pyfunc.log_model(name="echo", python_model=echo(), pip_requirements=["mlflow"])
    finally:
        os.environ.pop("MLFLOW_TRACKING_TOKEN", None)
        mlflow.set_tracking_uri(None)
    r = hub.fedhub_api("/deployments", alice, method="POST", json={"model": f"runs:/{run.info.run_id}/echo",
                                                                  "name": "echo"})
    assert r.status_code == 400, r.text
    assert "deployable flavours are onnx, sklearn, pytorch" in r.json()["message"]


def test_broken_model_fails_with_a_reason_and_the_others_keep_serving(env):
    hub, alice, X = env["hub"], env["alice"], env["X"]
    uri = log_artifact_text(hub, alice, "alice-exp", "broken.onnx", "this is not an ONNX graph")
    dep = deploy(hub, alice, model=uri, name="broken")
    record, events = follow(hub, alice, dep["id"])
    assert record["status"] == "failed", record
    assert record["error"].startswith("step package failed") or record["error"].startswith("step load failed")
    assert any(e["status"] == "failed" for e in events)
    assert record["versions"][0]["status"] == "failed" and record["versions"][0]["error"]
    # the server and the other deployment are untouched
    assert np.array_equal(served(env["deployment"]["endpoint"], X), env["a"][0].predict(X))
    env["broken"] = record


def test_edge_device_registers_pulls_verifies_and_serves(env, tmp_path):
    from conftest import free_port
    hub, alice, X = env["hub"], env["alice"], env["X"]
    model_a, uri_a = env["a"]
    r = hub.fedhub_api("/edge/devices", alice, method="POST", json={"name": "pi-1", "group": "lab"})
    assert r.status_code == 201, r.text
    device = r.json()
    assert device["group"] == "lab" and device["token_scopes"] == ["custom:fedhub:edge:device"]
    token = device["token"]
    # the device token is good for being a device, nothing else
    assert hub.fedhub_api("/deployments", token).status_code == 403
    assert hub.fedhub_api("/edge/groups/lab/bundle", token).status_code == 204  # nothing assigned yet
    r = hub.fedhub_api("/edge/devices", token, method="POST", json={"name": "pi-2", "group": "lab"})
    assert r.status_code == 403  # a device cannot register others

    dep = deploy(hub, alice, model=uri_a, name="digits-edge", target="edge:lab")
    record, events = follow(hub, alice, dep["id"], timeout=180)
    assert record["status"] == "ready", record
    assert [e["step"] for e in events if e["status"] == "done"][:4] == ["resolve", "package", "bundle", "assign"]
    assert hub.fedhub_api("/edge/groups/lab/bundle", env["bob"]).status_code == 204  # bob's 'lab' is not alice's

    port = free_port()
    agent = subprocess.Popen(
        [sys.executable, "-m", "fedhub.hub.deploy.edge.agent", "--hub", hub.url, "--name", "pi-1", "--group", "lab",
         "--state-dir", str(tmp_path / "edge"), "--port", str(port), "--once"],
        env={**fedhub_env(), "FEDHUB_EDGE_TOKEN": token}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        status = None
        while time.monotonic() < deadline:
            devices = hub.fedhub_api("/edge/devices", alice).json()["devices"]
            status = devices[0]["status"]
            if status and status["state"] == "serving":
                break
            assert agent.poll() is None, agent.stdout.read()
            time.sleep(0.5)
        assert status and status["state"] == "serving", status
        assert status["serving"].startswith(record["model_name"])
        shown = hub.fedhub_api(f"/deployments/{dep['id']}", alice).json()["devices"]
        assert [(d["name"], d["state"]) for d in shown] == [("pi-1", "serving")]
        predicted = http_infer(f"127.0.0.1:{port}", record["model_name"], X)
        # int8 weights: the labels agree with the fp32 model's on nearly every row
        assert (predicted.reshape(-1) == model_a.predict(X)).mean() >= 0.9
    finally:
        agent.terminate()
        agent.wait(20)


def fedhub_cli(hub, token, *args, timeout=180):
    return subprocess.run([sys.executable, "-m", "fedhub.server_ext.cli", "--hub", hub.url, "--token", token, *args],
                          capture_output=True, text=True, timeout=timeout, env=fedhub_env())


def test_cli_deploy_follow_list_infer_undeploy(env):
    hub, alice = env["hub"], env["alice"]
    out = fedhub_cli(hub, alice, "deploy", env["a"][1], "--name", "cli-digits", "--follow")
    assert out.returncode == 0, out.stderr + out.stdout
    lines = out.stdout.splitlines()
    for step in ("resolve", "package", "write", "load", "ready"):
        assert any(f"ok {step}" in line for line in lines), out.stdout  # one progress line per step
    assert "cli-digits is ready (version 1)" in out.stdout and "/services/inference" in out.stdout
    dep_id = lines[0].split()[1].rstrip(":")
    out = fedhub_cli(hub, alice, "deployments")
    assert out.returncode == 0 and dep_id in out.stdout and "ready" in out.stdout, out.stderr
    out = fedhub_cli(hub, alice, "infer", dep_id, "--sample")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["outputs"][0]["shape"] == [1]
    out = fedhub_cli(hub, env["bob"], "undeploy", dep_id)
    assert out.returncode == 1 and f"404: No deployment {dep_id}" in out.stderr
    out = fedhub_cli(hub, alice, "undeploy", dep_id)
    assert out.returncode == 0 and "undeployed" in out.stdout, out.stderr
    out = fedhub_cli(hub, alice, "deploy", "models:/nothing-here/1", "--name", "x")
    assert out.returncode == 1 and out.stderr.startswith("fedhub deploy: 4"), out.stderr


def test_deploy_widget_deploys_shows_endpoint_and_tests_inference(env):
    from fedhub.server_ext.deploy_cli import DeploymentsClient
    from fedhub.server_ext.deploy_widget import DeployWidget
    hub, alice = env["hub"], env["alice"]
    widget = DeployWidget(client=DeploymentsClient(hub.url, {"Authorization": f"token {alice}"}),
                          models=[env["a"][1]])
    widget.model.value = env["a"][1]
    widget.name.value = "Bad Name"
    widget.deploy_button.click()
    assert "Error" in widget.status.value and "must be 1-40 lowercase" in widget.status.value
    widget.name.value = "widget-digits"
    widget.deploy_button.click()
    widget.thread.join(180)
    assert widget.progress.bar_style == "success" and widget.progress.value == widget.progress.max == 5
    assert "is ready" in widget.status.value and "/services/inference" in widget.endpoint.value
    assert "tritonclient.http" in widget.snippet.value and widget.record["model_name"] in widget.snippet.value
    assert not widget.test_button.disabled
    widget.test_button.click()
    assert "<table>" in widget.output.value and "Error" not in widget.output.value
    widget.client.undeploy(widget.record["id"])


def test_hub_restart_keeps_deployments_and_statuses(env):
    hub, alice, X = env["hub"], env["alice"], env["X"]
    before = {d["id"]: (d["status"], d["current_version"]) for d in hub.fedhub_api("/deployments", alice).json()["deployments"]}
    assert before[env["deployment"]["id"]] == ("ready", 1) and before[env["broken"]["id"]] == ("failed", None)
    hub.stop()
    hub.start(timeout=120)
    wait_services(hub, alice, mlflow=False)  # serving needs no MLflow
    after = {d["id"]: (d["status"], d["current_version"]) for d in hub.fedhub_api("/deployments", alice).json()["deployments"]}
    assert after == before
    assert np.array_equal(served(env["deployment"]["endpoint"], X), env["a"][0].predict(X))
    # through the hub's gate with compressed request and response bodies (tritonclient's options)
    import tritonclient.http as httpclient
    ep = env["deployment"]["endpoint"]
    client = httpclient.InferenceServerClient(ep["http_via_hub"].split("://")[1])
    headers = {"Authorization": f"token {alice}"}
    inp = httpclient.InferInput(_input_names(client, ep["model_name"], headers)[0], list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    result = client.infer(ep["model_name"], [inp], headers=headers, request_compression_algorithm="gzip",
                          response_compression_algorithm="gzip")
    assert np.array_equal(result.as_numpy("label"), env["a"][0].predict(X))


def test_undeploy_makes_the_model_unavailable(env):
    import tritonclient.http as httpclient
    hub, alice, record = env["hub"], env["alice"], env["deployment"]
    r = hub.fedhub_api(f"/deployments/{record['id']}", alice, method="DELETE")
    assert r.status_code == 200 and r.json()["status"] == "undeployed", r.text
    assert hub.fedhub_api(f"/deployments/{record['id']}", alice).status_code == 404
    client = httpclient.InferenceServerClient(record["endpoint"]["http"].split("://")[1])
    assert not client.is_model_ready(record["model_name"])
    assert all(m.get("state") != "READY" for m in client.get_model_repository_index()
               if m["name"] == record["model_name"])
    assert not (hub.data_dir / "models" / record["model_name"]).exists()
    assert client.is_server_live()


async def test_site_target_writes_valid_manifests_from_a_workspace_onnx_file(tmp_path):
    """The manager alone (no hub: the inventory is a list here) for a Kubernetes site: a
    workspace .onnx file -> packaged repository + Triton manifests, valid for Kubernetes 1.37."""
    import yaml
    from kubernetes_validate import validate

    from fedhub.hub.deploy.manager import DeployError, DeploymentManager
    from fedhub.hub.deploy.store import DeploymentStore
    from inference_models import sklearn_digits_model
    home = tmp_path / "homes" / "carol"
    sklearn_digits_model(home / "work", "digits")
    settings = {"homes_dir": str(tmp_path / "homes"), "models_dir": str(tmp_path / "models")}
    sites = [{"name": "cloud", "kind": "kubernetes", "up": False}, {"name": "local", "kind": "local"}]
    manager = DeploymentManager(DeploymentStore(tmp_path / "state"), settings, sites=lambda: sites)
    with pytest.raises(DeployError, match="No Kubernetes site 'local'"):
        await manager.deploy("carol", "", {"model": "/x.onnx", "name": "d", "target": "site:local"})
    with pytest.raises(DeployError, match="only .onnx files in your own workspace"):
        await manager.deploy("dave", "", {"model": str(home / "work/digits/1/model.onnx"), "name": "d",
                                          "target": "site:cloud"})
    record = await manager.deploy("carol", "", {"model": str(home / "work/digits/1/model.onnx"), "name": "digits",
                                                "target": "site:cloud"})
    for _ in range(600):
        if manager.records[record["id"]]["status"] != "deploying":
            break
        await asyncio.sleep(0.1)
    record = manager.get("carol", record["id"])
    assert record["status"] == "manifests-ready", record["error"]
    assert [s["name"] for s in record["steps"]] == ["resolve", "package", "manifests"]
    docs = list(yaml.safe_load_all(manager.manifests("carol", record["id"])))
    assert {d["kind"] for d in docs} == {"Deployment", "Service"}
    for doc in docs:
        validate(doc, "1.37", strict=True)
    assert record["endpoint"]["site"] == "cloud"
    with pytest.raises(DeployError, match="No deployment"):
        manager.manifests("dave", record["id"])
    # a second version, then back to the first
    await manager.deploy("carol", "", {"model": str(home / "work/digits/1/model.onnx"), "name": "digits",
                                       "target": "site:cloud"})
    for _ in range(600):
        if manager.records[record["id"]]["status"] != "deploying":
            break
        await asyncio.sleep(0.1)
    assert manager.get("carol", record["id"])["current_version"] == 2
    rolled = await manager.rollback("carol", record["id"])
    assert rolled["current_version"] == 1 and rolled["status"] == "manifests-ready"
    assert "fedhub.io/version: '1'" in manager.manifests("carol", record["id"])


async def test_no_inference_flag_leaves_the_server_out_and_embedded_deploys_are_refused(tmp_path):
    from traitlets.config import Config

    from fedhub.hub.app import FedhubUp
    from fedhub.hub.deploy.manager import DeployError, DeploymentManager
    from fedhub.hub.deploy.store import DeploymentStore
    from fedhub.hub.hubconfig import configure

    def settings_for(*flags):
        app = FedhubUp()
        app.initialize([*flags, "--data-dir", str(tmp_path)])
        s = app.prepare()
        c = Config()
        configure(c, s)
        return s, c

    s, c = settings_for()
    inference = next(svc for svc in c.JupyterHub.services if svc["name"] == "inference")
    assert inference["url"] == f"http://127.0.0.1:{s['ports']['inference']}"
    assert str(s["ports"]["inference_grpc"]) in inference["command"]
    ports = dict(s["ports"])
    s, c = settings_for("--no-inference")
    assert s["ports"] == ports  # stable across starts, also when the server is off
    assert "inference" not in {svc["name"] for svc in c.JupyterHub.services}
    deploy_settings = json.loads(c.JupyterHub.services[0]["environment"]["FEDHUB_DEPLOY_SETTINGS"])
    assert deploy_settings["inference"] is False and deploy_settings["inference_http"] == ""
    manager = DeploymentManager(DeploymentStore(tmp_path / "state"), deploy_settings)
    with pytest.raises(DeployError, match="--no-inference") as e:
        await manager.deploy("carol", "", {"model": "runs:/0123456789abcdef/model", "name": "d"})
    assert e.value.status == 409
