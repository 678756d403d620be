"""One-click deployment through the real hub: MLflow model -> embedded Triton-protocol server.

A real `fedhub up` (JupyterHub, proxy, fedhub API, MLflow behind the hub login, the
embedded inference server as a hub service). Users log scikit-learn models with the
unmodified mlflow client and their hub token, deploy them through the fedhub API, and
call them with the unmodified tritonclient over HTTP (directly and through the hub's
proxy) and gRPC. Nothing is mocked.
"""

from __future__ import annotations

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


def wait_services(hub, token: str, timeout: float = 150) -> None:
    """MLflow and the inference server take a few seconds to start after the hub."""
    deadline = time.monotonic() + timeout
    for url in (f"{hub.url}/services/mlflow/api/2.0/mlflow/experiments/search?max_results=1",
                f"{hub.url}/services/inference/v2/health/ready"):
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
    # through the hub, no token -> refused by the gate
    r = requests.get(f"{ep['http_via_hub']}/v2/models/{ep['model_name']}", timeout=10)
    assert r.status_code in (401, 403), r.text

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
