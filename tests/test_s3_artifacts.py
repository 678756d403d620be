"""MLflow artifacts in an S3-compatible store, through the hub's MLflow.

Stand-in: no MinIO server installs from the registries here, so the S3-compatible server is
moto's server mode (moto[server], ThreadedMotoServer) on a loopback port: a real HTTP S3
API that boto3 (and so MLflow) talks to. The hub, MLflow and the client are real."""

from __future__ import annotations

import subprocess
import sys
import time

import boto3
import pytest
import requests
from moto.server import ThreadedMotoServer

from conftest import fedhub_env, free_port

pytestmark = pytest.mark.hub

CATALOGUE = "sites:\n  - {name: here, kind: local, cpus: 2, memory: 4G}\n"
BUCKET = "fedhub-artifacts"


@pytest.fixture
def s3_stand_in(monkeypatch):
    """moto's S3 server (the stand-in for MinIO/AWS S3), credentials only in the environment."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {"AWS_ACCESS_KEY_ID": "fedhub-test-key", "AWS_SECRET_ACCESS_KEY": "fedhub-test-secret",
                       "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(key, value)
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket=BUCKET)
    yield s3
    server.stop()


def test_an_artifact_logged_through_the_hub_lands_in_the_bucket_and_reads_back(s3_stand_in, hub_factory):
    hub = hub_factory(CATALOGUE, args=["--no-inference", "--artifacts-uri", f"s3://{BUCKET}/mlflow"]).start()
    token = hub.create_user("sam")
    url = f"{hub.url}/services/mlflow"
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        r = requests.get(f"{url}/api/2.0/mlflow/experiments/search?max_results=1",
                         headers={"Authorization": f"Bearer {token}"}, timeout=30)
        if r.status_code == 200:
            break
        time.sleep(1)
    assert r.status_code == 200, r.text
    script = (
        "import mlflow, tempfile, pathlib\n"
        "mlflow.set_experiment('s3-artifacts')\n"
        "with mlflow.start_run() as run:\n"
        "    mlflow.log_text('weights: 0.25\\n', 'model/notes.txt')\n"
        "d = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path='model/notes.txt',\n"
        "                                        dst_path=tempfile.mkdtemp())\n"
        "print(run.info.run_id, pathlib.Path(d).read_text().strip())\n")
    # the client holds only its hub token: artifacts go through the hub's MLflow, not to S3 directly
    env = {k: v for k, v in fedhub_env().items() if not k.startswith(("AWS_", "MLFLOW_S3"))}
    env.update(MLFLOW_TRACKING_URI=url, MLFLOW_TRACKING_TOKEN=token)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:] + hub.log_tail()
    run_id, text = out.stdout.strip().splitlines()[-1].split(" ", 1)
    assert text == "weights: 0.25"
    # the object is in the bucket, under the configured prefix
    keys = [o["Key"] for o in s3_stand_in.list_objects_v2(Bucket=BUCKET, Prefix="mlflow/").get("Contents", [])]
    key = next(k for k in keys if k.endswith(f"{run_id}/artifacts/model/notes.txt"))
    assert s3_stand_in.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"weights: 0.25\n"
    assert not list((hub.data_dir / "mlflow").glob("mlartifacts/**/notes.txt"))
