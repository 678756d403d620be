"""Deploying to an S3 model repository vs the local folder (the baseline).

The real deploy path (DeploymentManager: resolve, package, write, load, ready) and the real
embedded Triton-protocol server, twice: once with its repository in a folder (today's
default), once in an S3-compatible store (moto's S3 server in its own process: the
stand-in, since no MinIO installs here; loopback, so the figures show fedhub's own
overhead, not a network's). Per round a new version of the same deployment is deployed,
then rolled back. Two models: the digits classifier (~10 KB ONNX) and a 2048x2048 MatMul
(16 MB of weights), to show what the transfer adds.

    .venv/bin/python benchmarks/s3_repository.py [--rounds 5]

Prints medians side by side (S3 / folder ratios) and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import free_port  # noqa: E402

READY = re.compile(r"ready: HTTP (\S+):(\d+)")


def big_matmul_onnx(path: Path, size: int = 2048) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    weights = numpy_helper.from_array(np.random.default_rng(0).random((size, size), dtype=np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["Y"])], "matmul",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, size])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, size])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def start_server(repository: str, env: dict, cache: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "fedhub.hub.deploy.server", "--model-repository", repository,
                             "--cache-dir", cache, "--http-port", "0", "--grpc-port", "0"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    while True:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"server for {repository} exited")
        if match := READY.search(line):
            return proc, f"{match[1]}:{match[2]}"


async def rounds(manager, model_file: Path, name: str, n: int) -> dict[str, list[float]]:
    from fedhub.hub.deploy.manager import ACTIVE
    times: dict[str, list[float]] = {"deploy": [], "write": [], "load": [], "rollback": []}
    dep_id = None
    for _ in range(n):
        started = time.perf_counter()
        record = await manager.deploy("bench", "", {"model": str(model_file), "name": name})
        dep_id = record["id"]
        while manager.records[dep_id]["status"] in ACTIVE:
            await asyncio.sleep(0.005)
        record = manager.records[dep_id]
        assert record["status"] == "ready", record["error"]
        times["deploy"].append(time.perf_counter() - started)
        steps = {s["name"]: s for s in record["steps"]}
        times["write"].append(steps["write"]["finished"] - steps["write"]["started"])
        times["load"].append(steps["ready"]["finished"] - steps["load"]["started"])
        if record["current_version"] > 1:
            started = time.perf_counter()
            rolled = await manager.rollback("bench", dep_id)
            assert rolled["status"] == "ready", rolled["error"]
            times["rollback"].append(time.perf_counter() - started)
    await manager.undeploy("bench", dep_id)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import boto3
    import inference_models
    from fedhub.hub.deploy.manager import DeploymentManager
    from fedhub.hub.deploy.store import DeploymentStore

    work = Path(tempfile.mkdtemp(prefix="fedhub-bench-s3-"))
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    keys = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update({**keys, "FEDHUB_S3_ENDPOINT_URL": endpoint})
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [moto]
    try:
        for _ in range(300):
            try:
                boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
                break
            except Exception:
                time.sleep(0.1)
        homes = work / "homes"
        inference_models.sklearn_digits_model(homes / "bench", "digits")
        big_matmul_onnx(homes / "bench" / "big" / "model.onnx")
        models = {"digits (10 KB)": homes / "bench" / "digits" / "1" / "model.onnx",
                  "matmul (16 MB)": homes / "bench" / "big" / "model.onnx"}
        results: dict[str, dict] = {}
        for label, repository in (("folder", str(work / "models")), ("s3", "s3://bench/triton")):
            (work / "models").mkdir(exist_ok=True)
            server, http = start_server(repository, {**os.environ}, str(work / f"cache-{label}"))
            procs.append(server)
            settings = {"homes_dir": str(homes), "models_dir": str(work / "models"), "inference_http": http,
                        "model_repository": "" if label == "folder" else repository}
            manager = DeploymentManager(DeploymentStore(work / f"state-{label}"), settings)
            for model_label, path in models.items():
                name = "digits" if "digits" in model_label else "big"
                results[f"{label}|{model_label}"] = asyncio.run(rounds(manager, path, name, args.rounds))
        print(f"{args.rounds} rounds per cell; medians in ms (S3 = moto on loopback)\n")
        print(f"{'model':16} {'measure':9} {'folder':>9} {'s3':>9} {'s3/folder':>10}")
        summary = {}
        for model_label in models:
            for measure in ("deploy", "write", "load", "rollback"):
                a = statistics.median(results[f"folder|{model_label}"][measure]) * 1000
                b = statistics.median(results[f"s3|{model_label}"][measure]) * 1000
                summary[f"{model_label}|{measure}"] = {"folder_ms": round(a, 1), "s3_ms": round(b, 1),
                                                       "ratio": round(b / a, 2)}
                print(f"{model_label:16} {measure:9} {a:9.1f} {b:9.1f} {b / a:10.2f}")
        print(json.dumps({"benchmark": "s3_repository", "rounds": args.rounds, "results": summary}))
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=20)


if __name__ == "__main__":
    main()
