"""Deploy click -> first successful inference on the embedded server (goal <= 5 s).

A real `fedhub up` with MLflow and the embedded inference server. A user logs a
scikit-learn model (digits, logistic regression) with the mlflow client and their hub
token, once. Then N times (default 7): POST /services/fedhub/api/deployments (a new
deployment name each time, as a click in the Deploy panel would), follow the events
(long poll, as the panel does) and call the model with the unmodified tritonclient over
HTTP until it answers. Measured from just before the POST to the first good answer.
Reported side by side with the floor: the same model converted (skl2onnx), loaded
(onnxruntime) and run in this process, with nothing in between. The first deploy after a
hub start also pays for imports in the API service; it is reported apart (cold).

    .venv/bin/python benchmarks/deploy_latency.py [--rounds 7]

Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _hubs import PYTHON, FedhubHub  # noqa: E402


class FedhubHubWithMlflow(FedhubHub):
    def command(self) -> list[str]:
        return [PYTHON, "-m", "fedhub.server_ext.cli", "up", "--port", str(self.port),
                "--data-dir", str(self.data_dir), *self.extra_args]


def wait_ok(url: str, token: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, headers={"Authorization": f"token {token}"}, timeout=10).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not come up in {timeout}s")


def model_and_data():
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    return LogisticRegression(max_iter=300).fit(X[:1000], y[:1000]), X[1000:1010]


def log_model(hub_url: str, token: str, model, X) -> str:
    import mlflow
    from mlflow.models import infer_signature
    os.environ["MLFLOW_TRACKING_TOKEN"] = token
    mlflow.set_tracking_uri(f"{hub_url}/services/mlflow")
    mlflow.set_experiment("bench-deploy")
    with mlflow.start_run() as run:
        mlflow.sklearn.log_model(model, name="model", signature=infer_signature(X, model.predict(X)),
                                 pip_requirements=["scikit-learn"])
    return f"runs:/{run.info.run_id}/model"


def one_deploy(hub_url: str, token: str, uri: str, name: str, X, expected) -> tuple[float, dict]:
    import tritonclient.http as httpclient
    api = f"{hub_url}/services/fedhub/api"
    headers = {"Authorization": f"token {token}"}
    t0 = time.perf_counter()
    r = requests.post(f"{api}/deployments", json={"model": uri, "name": name}, headers=headers, timeout=120)
    r.raise_for_status()
    dep_id, after = r.json()["id"], 0
    while True:
        data = requests.get(f"{api}/deployments/{dep_id}/events", params={"after": after, "wait": 30},
                            headers=headers, timeout=60).json()
        after = data["last"]
        if data["status"] != "deploying":
            break
    record = requests.get(f"{api}/deployments/{dep_id}", headers=headers, timeout=30).json()
    if record["status"] != "ready":
        raise SystemExit(f"deployment failed: {record['error']}")
    ep = record["endpoint"]
    client = httpclient.InferenceServerClient(ep["http"].split("://")[1])
    inp = httpclient.InferInput(client.get_model_metadata(ep["model_name"])["inputs"][0]["name"], list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    out = client.infer(ep["model_name"], [inp]).as_numpy("label")
    elapsed = time.perf_counter() - t0
    assert np.array_equal(out.reshape(-1), expected), "wrong predictions"
    steps = {s["name"]: s["finished"] - s["started"] for s in record["steps"] if "finished" in s}
    return elapsed, steps


def floor(model, X) -> float:
    """Convert + load + infer in this process (what any deployment has to do at least)."""
    import onnxruntime as ort
    from skl2onnx import to_onnx
    t0 = time.perf_counter()
    onx = to_onnx(model, X[:1], options={"zipmap": False}, target_opset=17)
    session = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    session.run(None, {session.get_inputs()[0].name: X})
    return time.perf_counter() - t0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    model, X = model_and_data()
    expected = model.predict(X)
    with tempfile.TemporaryDirectory(prefix="fedhub-bench-deploy-") as tmp:
        hub = FedhubHubWithMlflow(Path(tmp) / "hub")
        hub.start(timeout=180)
        try:
            admin = {"Authorization": f"token {hub.token}"}
            requests.post(f"{hub.url}/hub/api/users/bench-user", headers=admin, timeout=30)
            token = requests.post(f"{hub.url}/hub/api/users/bench-user/tokens", json={"note": "bench"},
                                  headers=admin, timeout=30)
            if token.status_code != 201:
                raise SystemExit(f"could not create the user's token: {token.status_code} {token.text}")
            token = token.json()["token"]
            wait_ok(f"{hub.url}/services/mlflow/api/2.0/mlflow/experiments/search?max_results=1", token)
            wait_ok(f"{hub.url}/services/inference/v2/health/ready", token)
            uri = log_model(hub.url, token, model, X)
            cold, cold_steps = one_deploy(hub.url, token, uri, "bench-cold", X, expected)
            times, steps = [], []
            for i in range(args.rounds):
                t, s = one_deploy(hub.url, token, uri, f"bench-{i}", X, expected)
                times.append(t)
                steps.append(s)
        finally:
            hub.stop()
    floors = [floor(model, X) for _ in range(args.rounds)]
    med, fl = statistics.median(times), statistics.median(floors)
    step_medians = {k: round(statistics.median(s[k] for s in steps), 3) for k in steps[0]}
    print(f"{'':<38}{'median s':>10}{'max s':>10}")
    print(f"{'deploy click -> first inference':<38}{med:>10.2f}{max(times):>10.2f}")
    print(f"{'  (first after hub start, cold)':<38}{cold:>10.2f}")
    print(f"{'floor: convert+load+infer in process':<38}{fl:>10.3f}{max(floors):>10.3f}")
    print(f"ratio deploy/floor (medians): {med / fl:.1f}x   goal: <= 5 s -> {'met' if med <= 5 else 'NOT met'}")
    print("step medians (s): " + ", ".join(f"{k} {v}" for k, v in step_medians.items()))
    print(json.dumps({"benchmark": "deploy_latency", "rounds": args.rounds, "median_s": round(med, 3),
                      "max_s": round(max(times), 3), "cold_s": round(cold, 3), "floor_median_s": round(fl, 4),
                      "ratio": round(med / fl, 2), "steps_median_s": step_medians, "cold_steps_s": cold_steps}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
