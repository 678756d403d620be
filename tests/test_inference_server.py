"""The embedded Triton-protocol inference server, called with the unmodified tritonclient.

A real server process (`python -m fedhub.hub.deploy.server`) serves a repository built here:
a scikit-learn pipeline converted with skl2onnx, a PyTorch MLP exported with torch.onnx,
Python-backend models, and a model whose config.pbtxt is malformed. tritonclient.http (binary
tensors, its default) and tritonclient.grpc are used with default options.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

sys.path.insert(0, str(Path(__file__).parent))
import inference_models  # noqa: E402

from fedhub.hub.deploy.model_config import (ModelConfigError, make_config, parse_config,  # noqa: E402
                                            read_config, validate_config, write_config)

READY_LINE = re.compile(r"ready: HTTP (\S+):(\d+) gRPC (\S+):(\d+)")


# ------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("model-repository")
    models = {
        "digits": inference_models.sklearn_digits_model(root),
        # queue delays so that concurrent requests are merged even on a busy machine; the
        # batching test's requests fill the preferred size, which dispatches at once
        "mlp": inference_models.torch_mlp_model(root, delay_us=400_000, preferred=(16,)),
        "recorder_log": inference_models.python_batch_recorder(root, delay_us=1_000_000, preferred=(8,)),
    }
    inference_models.python_text_model(root)
    inference_models.python_auto_complete_model(root)
    inference_models.broken_model(root)
    onnx_bytes = (root / "digits" / "1" / "model.onnx").read_bytes()
    # three versions, of which the policy serves the latest two
    for version in (1, 2, 3):
        (root / "versioned" / str(version)).mkdir(parents=True)
        (root / "versioned" / str(version) / "model.onnx").write_bytes(onnx_bytes)
    config = read_config(root / "digits")
    config.name = "versioned"
    config.version_policy.latest.num_versions = 2
    write_config(config, root / "versioned")
    # no config.pbtxt at all: inputs and outputs come from the ONNX model (Triton's auto-complete)
    (root / "autocomplete" / "1").mkdir(parents=True)
    (root / "autocomplete" / "1" / "model.onnx").write_bytes(onnx_bytes)
    # not an ONNX file, and no config.pbtxt to say otherwise
    (root / "corrupt" / "1").mkdir(parents=True)
    (root / "corrupt" / "1" / "model.onnx").write_bytes(b"this is not an onnx model")
    return root, models


class Server:
    def __init__(self, proc, http_url, grpc_url, log_path):
        self.proc, self.http_url, self.grpc_url, self.log_path = proc, http_url, grpc_url, log_path

    def http(self):
        return triton_http.InferenceServerClient(self.http_url)

    def grpc(self):
        return triton_grpc.InferenceServerClient(self.grpc_url)

    def log(self) -> str:
        return self.log_path.read_text()


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    root, _ = repo
    log_path = tmp_path_factory.mktemp("server-log") / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedhub.hub.deploy.server", "--model-repository", str(root),
             "--http-port", "0", "--grpc-port", "0"],
            stdout=subprocess.PIPE, stderr=log, text=True)
    deadline = time.monotonic() + 60
    match = None
    while match is None and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}:\n{log_path.read_text()}")
        match = READY_LINE.search(line)
    assert match, f"server not ready in 60 s:\n{log_path.read_text()}"
    started = Server(proc, f"{match[1]}:{match[2]}", f"{match[3]}:{match[4]}", log_path)
    yield started
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def http_input(name, array, datatype, binary=True):
    tensor = triton_http.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def grpc_input(name, array, datatype):
    tensor = triton_grpc.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def digits_sample(n=16, offset=0):
    X, _ = inference_models.digits()
    return X[offset:offset + n]


# ------------------------------------------------------------------------ health, metadata
def test_health_and_server_metadata(server):
    http, grpc = server.http(), server.grpc()
    assert http.is_server_live() and http.is_server_ready()
    assert grpc.is_server_live() and grpc.is_server_ready()
    meta = http.get_server_metadata()
    assert meta["name"] == "fedhub" and "model_repository" in meta["extensions"]
    assert "binary_tensor_data" in meta["extensions"]
    assert grpc.get_server_metadata().name == "fedhub"


def test_model_metadata_and_config(server):
    http, grpc = server.http(), server.grpc()
    meta = http.get_model_metadata("digits")
    assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 64]}]
    assert {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]} in meta["outputs"]
    gmeta = grpc.get_model_metadata("mlp", "1")
    assert [(t.name, t.datatype, list(t.shape)) for t in gmeta.inputs] == [("x", "FP32", [-1, 8])]
    config = http.get_model_config("digits")
    assert config["max_batch_size"] == 64 and config["input"][0]["dims"] == [64]
    assert "dynamic_batching" in config
    gconfig = grpc.get_model_config("text").config
    assert gconfig.backend == "python" and gconfig.input[0].name == "TEXT"
    assert http.is_model_ready("digits", "1") and grpc.is_model_ready("text")


def test_repository_index_shows_every_model_and_why_one_failed(server):
    index = {row["name"]: row for row in server.http().get_model_repository_index()}
    ready = ("autocomplete", "autopy", "digits", "mlp", "recorder", "text", "versioned")
    assert {n: index[n]["state"] for n in ready} == dict.fromkeys(ready, "READY")
    assert index["broken"]["state"] == "UNAVAILABLE"
    assert "config.pbtxt" in index["broken"]["reason"] and "max_batch_sizes" in index["broken"]["reason"]
    assert index["corrupt"]["state"] == "UNAVAILABLE" and "corrupt" in index["corrupt"]["reason"]
    grpc_index = {m.name: m.state for m in server.grpc().get_model_repository_index().models}
    assert grpc_index["digits"] == "READY" and grpc_index["broken"] == "UNAVAILABLE"


def test_version_policy_and_config_auto_complete(server, repo):
    http, grpc = server.http(), server.grpc()
    assert http.get_model_metadata("versioned")["versions"] == ["2", "3"]
    assert not http.is_model_ready("versioned", "1") and grpc.is_model_ready("versioned", "2")
    X = digits_sample(3)
    want = repo[1]["digits"].predict(X)
    for version in ("2", "3", ""):
        result = grpc.infer("versioned", [grpc_input("X", X, "FP32")], model_version=version)
        np.testing.assert_array_equal(result.as_numpy("label"), want)
        assert result.get_response().model_version == (version or "3")
    with pytest.raises(InferenceServerException) as refused:
        http.infer("versioned", [http_input("X", X, "FP32")], model_version="1")
    assert refused.value.status() == "404"
    meta = http.get_model_metadata("autocomplete")
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 64]}]
    assert {o["name"] for o in meta["outputs"]} == {"label", "probabilities"}
    result = http.infer("autocomplete", [http_input("X", X, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("label"), want)
    # a Python model's auto_complete_config() fills in what config.pbtxt left out
    config = grpc.get_model_config("autopy").config
    assert config.max_batch_size == 8 and config.HasField("dynamic_batching")
    assert http.get_model_metadata("autopy")["inputs"] == [{"name": "A", "datatype": "INT32", "shape": [-1, 2]}]
    a = np.array([[1, 2], [30, 40]], dtype=np.int32)
    np.testing.assert_array_equal(grpc.infer("autopy", [grpc_input("A", a, "INT32")]).as_numpy("SUM"), [[3], [70]])


# ------------------------------------------------------------------------ inference
def test_sklearn_outputs_equal_the_pipelines_predictions(server, repo):
    pipeline = repo[1]["digits"]
    X = digits_sample(40, offset=100)
    want_label, want_proba = pipeline.predict(X), pipeline.predict_proba(X)
    binary = server.http().infer("digits", [http_input("X", X, "FP32")])  # binary, the default
    np.testing.assert_array_equal(binary.as_numpy("label"), want_label)
    np.testing.assert_allclose(binary.as_numpy("probabilities"), want_proba, atol=1e-5)
    as_json = server.http().infer(
        "digits", [http_input("X", X, "FP32", binary=False)],
        outputs=[triton_http.InferRequestedOutput("probabilities", binary_data=False)])
    np.testing.assert_allclose(as_json.as_numpy("probabilities"), want_proba, atol=1e-5)
    assert as_json.as_numpy("label") is None  # only what was asked for
    over_grpc = server.grpc().infer("digits", [grpc_input("X", X, "FP32")])
    np.testing.assert_array_equal(over_grpc.as_numpy("label"), want_label)
    np.testing.assert_allclose(over_grpc.as_numpy("probabilities"), want_proba, atol=1e-5)


def test_compressed_http_and_grpc_streaming(server, repo):
    pipeline = repo[1]["digits"]
    X = digits_sample(8, offset=7)
    for request_algo, response_algo in (("gzip", "deflate"), ("deflate", "gzip")):
        result = server.http().infer("digits", [http_input("X", X, "FP32")],
                                     request_compression_algorithm=request_algo,
                                     response_compression_algorithm=response_algo)
        np.testing.assert_array_equal(result.as_numpy("label"), pipeline.predict(X))
    # gRPC bidirectional stream: a response per request, a bad one reported without ending it
    import queue
    received = queue.Queue()
    client = server.grpc()
    client.start_stream(callback=lambda result, error: received.put((result, error)))
    try:
        client.async_stream_infer("digits", [grpc_input("X", X, "FP32")], request_id="a")
        client.async_stream_infer("digits", [grpc_input("X", X[:, :10].copy(), "FP32")], request_id="b")
        client.async_stream_infer("digits", [grpc_input("X", X[:2], "FP32")], request_id="c")
        replies = [received.get(timeout=10) for _ in range(3)]
    finally:
        client.stop_stream()
    first, bad, last = replies
    np.testing.assert_array_equal(first[0].as_numpy("label"), pipeline.predict(X))
    assert bad[0] is None and "unexpected shape" in bad[1].message()
    np.testing.assert_array_equal(last[0].as_numpy("label"), pipeline.predict(X[:2]))


def test_grpc_typed_contents_are_accepted(server, repo):
    """Clients other than tritonclient may send typed `contents` instead of raw bytes."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    X = digits_sample(2, offset=50)
    request = service_pb2.ModelInferRequest(model_name="digits")
    tensor = request.inputs.add(name="X", datatype="FP32", shape=[2, 64])
    tensor.contents.fp32_contents.extend(X.ravel().tolist())
    request.outputs.add(name="label")
    text = service_pb2.ModelInferRequest(model_name="text")
    text.inputs.add(name="TEXT", datatype="BYTES", shape=[2]).contents.bytes_contents.extend([b"ab", b"c"])
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        reply = stub.ModelInfer(request)
        assert [o.name for o in reply.outputs] == ["label"]
        labels = np.frombuffer(reply.raw_output_contents[0], dtype=np.int64)
        np.testing.assert_array_equal(labels, repo[1]["digits"].predict(X))
        upper = stub.ModelInfer(text)
        assert upper.raw_output_contents[0] == b"\x02\x00\x00\x00AB\x01\x00\x00\x00C"
        short = service_pb2.ModelInferRequest(model_name="digits")
        short.inputs.add(name="X", datatype="FP32", shape=[1, 64]).contents.fp32_contents.extend([1.0] * 3)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(short)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_torch_outputs_equal_the_modules_forward(server, repo):
    import torch
    module = repo[1]["mlp"]
    x = np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(server.http().infer("mlp", [http_input("x", x, "FP32")]).as_numpy("y"),
                               want, atol=1e-5)
    np.testing.assert_allclose(server.grpc().infer("mlp", [grpc_input("x", x, "FP32")]).as_numpy("y"),
                               want, atol=1e-5)


def test_bytes_tensors_round_trip_through_the_python_backend(server):
    text = np.array(["hello".encode(), "grüße".encode(), b"", b"a\x00b"], dtype=object)
    want_upper = np.array([t.upper() for t in text], dtype=object)
    want_length = np.array([len(t) for t in text], dtype=np.int32)
    for result in (server.http().infer("text", [http_input("TEXT", text, "BYTES")]),
                   server.grpc().infer("text", [grpc_input("TEXT", text, "BYTES")])):
        np.testing.assert_array_equal(result.as_numpy("UPPER"), want_upper)
        np.testing.assert_array_equal(result.as_numpy("LENGTH"), want_length)


# ------------------------------------------------------------------------ dynamic batching
def run_concurrently(calls):
    results, errors = [None] * len(calls), []
    barrier = threading.Barrier(len(calls))

    def run(i):
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:  # reported below, with the others
            errors.append(exc)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    return results


def test_dynamic_batching_merges_concurrent_requests_and_keeps_results_apart(server, repo):
    log = repo[1]["recorder_log"]
    log.write_text("")
    inputs = [np.full((1, 4), i, dtype=np.float32) for i in range(8)]

    def call(i):
        client = server.http() if i % 2 else server.grpc()
        make = http_input if i % 2 else grpc_input
        return lambda: client.infer("recorder", [make("INPUT0", inputs[i], "FP32")]).as_numpy("OUTPUT0")
    outputs = run_concurrently([call(i) for i in range(8)])
    for i, out in enumerate(outputs):
        np.testing.assert_array_equal(out, inputs[i] * 2)
    lines = [line.split() for line in log.read_text().splitlines()]
    sizes = [int(size) for size, _ in lines]
    assert sum(sizes) == 8 and max(sizes) > 1, sizes  # execute() got several requests at once
    # a Python model never runs on the event loop's thread (it may sleep, as this one does)
    assert all(thread.startswith("fedhub-infer") for _, thread in lines), lines

    # ONNX: requests of different batch sizes merged along dim 0, split back per request
    import torch
    rows = [1, 3, 2, 4, 1, 5]
    xs = [np.random.default_rng(r + 10 * i).normal(size=(r, 8)).astype(np.float32) for i, r in enumerate(rows)]
    before = server.http().get_inference_statistics("mlp")["model_stats"][0]["execution_count"]
    got = run_concurrently([lambda x=x: server.grpc().infer("mlp", [grpc_input("x", x, "FP32")]).as_numpy("y")
                            for x in xs])
    module = repo[1]["mlp"]
    for x, y in zip(xs, got):
        with torch.no_grad():
            np.testing.assert_allclose(y, module(torch.from_numpy(x)).numpy(), atol=1e-5)
    stats = server.http().get_inference_statistics("mlp")["model_stats"][0]
    assert stats["execution_count"] - before < len(xs), stats
    assert max(b["batch_size"] for b in stats["batch_stats"]) > max(rows), stats

    # no queue delay (digits): whatever gets merged under load, each caller gets its own rows
    pipeline = repo[1]["digits"]
    samples = [digits_sample(1 + i % 3, offset=20 * i) for i in range(12)]
    got = run_concurrently([lambda x=x, i=i: (server.http() if i % 2 else server.grpc()).infer(
        "digits", [(http_input if i % 2 else grpc_input)("X", x, "FP32")]).as_numpy("label")
        for i, x in enumerate(samples)])
    for x, labels in zip(samples, got):
        np.testing.assert_array_equal(labels, pipeline.predict(x))


# ------------------------------------------------------------------------ repository API
def test_unload_and_load_through_the_repository_api(server):
    http, grpc = server.http(), server.grpc()
    X = digits_sample(2)
    http.unload_model("digits")
    assert not http.is_model_ready("digits") and not grpc.is_model_ready("digits")
    with pytest.raises(InferenceServerException) as refused:
        http.infer("digits", [http_input("X", X, "FP32")])
    assert refused.value.status() == "400" and "digits" in refused.value.message()
    with pytest.raises(InferenceServerException) as refused:
        grpc.infer("digits", [grpc_input("X", X, "FP32")])
    assert refused.value.status() == "StatusCode.UNAVAILABLE"
    unloaded = {r["name"]: r for r in http.get_model_repository_index()}["digits"]
    assert unloaded["state"] == "UNAVAILABLE"
    # the other models keep serving
    assert grpc.infer("text", [grpc_input("TEXT", np.array([b"x"], dtype=object), "BYTES")]).as_numpy("UPPER")[0] == b"X"
    grpc.load_model("digits")
    assert http.is_model_ready("digits")
    assert http.infer("digits", [http_input("X", X, "FP32")]).as_numpy("label").shape == (2,)
    http.unload_model("mlp")
    http.load_model("mlp")
    assert grpc.is_model_ready("mlp")


def test_load_with_a_bad_config_keeps_the_previous_model_serving(server):
    http, grpc = server.http(), server.grpc()
    bad = json.dumps({"name": "digits", "platform": "onnxruntime_onnx", "max_batch_size": 4,
                      "input": [{"name": "not_in_model", "data_type": "TYPE_FP32", "dims": [64]}],
                      "output": [{"name": "label", "data_type": "TYPE_INT64", "dims": [1]}]})
    with pytest.raises(InferenceServerException) as refused:
        http.load_model("digits", config=bad)
    assert refused.value.status() == "400" and "not_in_model" in refused.value.message()
    assert http.is_model_ready("digits")
    assert grpc.infer("digits", [grpc_input("X", digits_sample(1), "FP32")]).as_numpy("label").shape == (1,)


def test_a_config_whose_datatype_disagrees_with_the_onnx_model_is_refused(server):
    config = server.http().get_model_config("digits")
    config["input"][0]["data_type"] = "TYPE_FP64"
    with pytest.raises(InferenceServerException) as refused:
        server.grpc().load_model("digits", config=json.dumps(config))
    assert "'X' is FP64 in config.pbtxt but FP32 in the ONNX model" in refused.value.message()
    assert server.grpc().is_model_ready("digits")


def test_malformed_config_pbtxt_is_refused_then_fixed_and_loaded(server, repo):
    http, grpc = server.http(), server.grpc()
    for load in (http.load_model, grpc.load_model):
        with pytest.raises(InferenceServerException) as refused:
            load("broken")
        assert "config.pbtxt" in refused.value.message() and "max_batch_sizes" in refused.value.message()
        assert refused.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
    with pytest.raises(InferenceServerException) as refused:
        http.load_model("no_such_model")
    assert refused.value.status() == "404"
    # the operator fixes the file; a load picks it up
    root = repo[0]
    broken = root / "broken"
    (broken / "1" / "model.py").write_text(
        (root / "text" / "1" / "model.py").read_text())
    write_config(make_config("broken", [("TEXT", "BYTES", [-1])],
                             [("UPPER", "BYTES", [-1]), ("LENGTH", "INT32", [-1])], backend="python"),
                 broken)
    grpc.load_model("broken")
    assert http.is_model_ready("broken")


# ------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("case", ["wrong shape", "wrong dtype", "unknown input", "batch too big",
                                  "unknown model", "unknown version"])
def test_bad_requests_get_the_protocols_error_and_the_server_keeps_serving(server, case):
    model, version, name, array, datatype = "digits", "", "X", digits_sample(2), "FP32"
    if case == "wrong shape":
        array = array[:, :63].copy()
    elif case == "wrong dtype":
        array, datatype = array.astype(np.float64), "FP64"
    elif case == "unknown input":
        name = "Y"
    elif case == "batch too big":
        array = digits_sample(65)
    elif case == "unknown model":
        model = "nope"
    elif case == "unknown version":
        version = "7"
    not_found = case.startswith("unknown model") or case == "unknown version"
    with pytest.raises(InferenceServerException) as over_http:
        server.http().infer(model, [http_input(name, array, datatype)], model_version=version)
    assert over_http.value.status() == ("404" if not_found else "400")
    with pytest.raises(InferenceServerException) as over_grpc:
        server.grpc().infer(model, [grpc_input(name, array, datatype)], model_version=version)
    assert over_grpc.value.status() == ("StatusCode.NOT_FOUND" if not_found else "StatusCode.INVALID_ARGUMENT")
    assert over_http.value.message() and over_grpc.value.message()
    assert server.http().infer("digits", [http_input("X", digits_sample(1), "FP32")]).as_numpy("label").shape == (1,)
    assert server.proc.poll() is None


def test_malformed_http_bodies_are_json_400s(server):
    url = f"http://{server.http_url}/v2/models/digits/infer"
    header = json.dumps({"inputs": [{"name": "X", "shape": [1, 64], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 256}}]}).encode()
    cases = [
        ({}, b"{not json"),
        ({}, b"[1, 2]"),
        ({"Inference-Header-Content-Length": "99999"}, header),
        ({"Inference-Header-Content-Length": str(len(header))}, header + b"\0" * 100),  # short data
        ({"Inference-Header-Content-Length": str(len(header))}, header + b"\0" * 300),  # extra data
        ({}, json.dumps({"inputs": [{"name": "X", "shape": [1, 64], "datatype": "FP32",
                                     "data": [1.0] * 3}]}).encode()),
        ({}, json.dumps({"inputs": [{"name": "X", "shape": [1, 64], "datatype": "FP32",
                                     "data": ["a"] * 64}]}).encode()),
    ]
    for headers, body in cases:
        reply = requests.post(url, data=body, headers=headers, timeout=10)
        assert reply.status_code == 400, (body[:60], reply.text)
        assert reply.headers["Content-Type"].startswith("application/json")
        assert reply.json()["error"], reply.text
    missing = requests.get(f"http://{server.http_url}/v2/nothing/here", timeout=10)
    assert missing.status_code == 404 and "error" in missing.json()
    wrong_verb = requests.get(url, timeout=10)
    assert wrong_verb.status_code == 405 and "error" in wrong_verb.json()


def test_unsupported_extensions_answer_cleanly(server):
    http, grpc = server.http(), server.grpc()
    assert http.get_system_shared_memory_status() == []
    assert list(grpc.get_cuda_shared_memory_status().regions) == []
    with pytest.raises(InferenceServerException) as refused:
        http.register_system_shared_memory("r", "/r", 16)
    assert refused.value.status() == "400" and "not supported" in refused.value.message()
    for call in (lambda: grpc.register_system_shared_memory("r", "/r", 16), grpc.get_log_settings,
                 grpc.get_trace_settings):
        with pytest.raises(InferenceServerException) as refused:
            call()
        assert refused.value.status() == "StatusCode.UNIMPLEMENTED" and "not supported" in refused.value.message()
    with pytest.raises(InferenceServerException) as refused:
        http.get_log_settings()
    assert refused.value.status() == "400"
    assert len(http.get_inference_statistics()["model_stats"]) >= 4


def test_a_python_models_error_fails_only_that_request(server):
    failing = np.array([b"fail"], dtype=object)
    with pytest.raises(InferenceServerException) as refused:
        server.http().infer("text", [http_input("TEXT", failing, "BYTES")])
    assert "asked to fail" in refused.value.message() and refused.value.status() == "400"
    with pytest.raises(InferenceServerException):
        server.grpc().infer("text", [grpc_input("TEXT", failing, "BYTES")])
    ok = server.grpc().infer("text", [grpc_input("TEXT", np.array([b"ok"], dtype=object), "BYTES")])
    assert ok.as_numpy("UPPER")[0] == b"OK"


def test_sigterm_stops_the_server_gracefully(server):
    # runs last in this module: the module's server stops here
    assert server.http().is_server_live()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=20) == 0
    assert "Traceback" not in server.log(), server.log()


def test_the_command_line_reports_a_bad_repository_without_a_traceback(tmp_path):
    missing = tmp_path / "nowhere"
    run = subprocess.run([sys.executable, "-m", "fedhub.hub.deploy.server", "--model-repository",
                          str(missing), "--http-port", "0", "--grpc-port", "0"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert f"model repository {missing} is not a directory" in run.stderr
    assert "Traceback" not in run.stderr
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run([sys.executable, "-m", "fedhub.hub.deploy.server", "--model-repository",
                              str(tmp_path), "--http-port", str(port), "--grpc-port", "0"],
                             capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and f"HTTP port 127.0.0.1:{port}: Address already in use" in run.stderr
    assert "Traceback" not in run.stderr


def test_the_command_line_token_file(tmp_path):
    (tmp_path / "token").write_text("cli-token\n")
    (tmp_path / "models").mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "fedhub.hub.deploy.server", "--model-repository",
                             str(tmp_path / "models"), "--http-port", "0", "--grpc-port", "0",
                             "--token-file", str(tmp_path / "token")], stdout=subprocess.PIPE, text=True)
    try:
        match = READY_LINE.search(proc.stdout.readline())
        assert match, "server did not start"
        http = triton_http.InferenceServerClient(f"{match[1]}:{match[2]}")
        assert http.is_server_live()
        with pytest.raises(InferenceServerException) as refused:
            http.get_model_repository_index()
        assert refused.value.status() == "401"
        assert http.get_model_repository_index(headers={"Authorization": "Bearer cli-token"}) == []
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


# ------------------------------------------------------------------------ in-process, token hook
async def test_embedded_server_checks_bearer_tokens_when_asked(tmp_path):
    import asyncio

    import tritonclient.grpc.aio as grpc_aio
    import tritonclient.http.aio as http_aio

    from fedhub.hub.deploy.server import InferenceServer

    inference_models.python_text_model(tmp_path)
    seen = []

    async def ask_the_hub(token):  # the hook may be a coroutine, e.g. a call to the hub's API
        seen.append(token)
        await asyncio.sleep(0)
        return token == "s3cret"
    server = await InferenceServer(tmp_path, http_port=0, grpc_port=0, authorize=ask_the_hub).start()
    http = http_aio.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    grpc = grpc_aio.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    good = {"Authorization": "Bearer s3cret"}
    try:
        assert await http.is_server_live() and await grpc.is_server_ready()  # probes need no token
        with pytest.raises(InferenceServerException) as refused:
            await http.get_model_metadata("text")
        assert refused.value.status() == "401"
        with pytest.raises(InferenceServerException) as refused:
            await grpc.get_model_metadata("text", headers={"authorization": "Bearer wrong"})
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        text = np.array([b"edge"], dtype=object)
        tensor = http_aio.InferInput("TEXT", [1], "BYTES")
        tensor.set_data_from_numpy(text)
        result = await http.infer("text", [tensor], headers=good)
        assert result.as_numpy("UPPER")[0] == b"EDGE"
        # gRPC metadata keys must be lower case
        assert (await grpc.get_model_metadata("text", headers={"authorization": "Bearer s3cret"})).name == "text"
        assert "wrong" in seen and "s3cret" in seen
    finally:
        await http.close()
        await grpc.close()
        await server.stop()


async def test_unload_lets_queued_requests_finish_and_refuses_later_ones(tmp_path):
    """In-process, so the test knows the requests are queued before it unloads."""
    import asyncio

    from fedhub.hub.deploy.inference import InferRequest, Tensor
    from fedhub.hub.deploy.server import InferenceServer
    from fedhub.hub.deploy.tensors import Unavailable

    inference_models.python_batch_recorder(tmp_path, delay_us=2_000_000, sleep_s=0.01)
    server = await InferenceServer(tmp_path, http_port=0, grpc_port=0).start()
    try:
        model = server.repository.get("recorder")
        inputs = [np.full((1, 4), i, dtype=np.float32) for i in range(4)]
        tasks = [asyncio.create_task(model.infer(InferRequest(
            "recorder", inputs={"INPUT0": Tensor("INPUT0", "FP32", [1, 4], x)}))) for x in inputs]
        deadline = time.monotonic() + 20
        while model.scheduler.pending() < 4:  # all four wait out the 2 s queue delay
            assert time.monotonic() < deadline, model.scheduler.pending()
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await server.repository.unload("recorder")  # returns once the queue has drained
        assert time.monotonic() - started < 1.5  # the gathered batch went at once, not after 2 s
        responses = await asyncio.wait_for(asyncio.gather(*tasks), 5)
        for x, response in zip(inputs, responses):
            np.testing.assert_array_equal(response.outputs[0].data, x * 2)
        assert not server.repository.is_ready("recorder")
        with pytest.raises(Unavailable):
            await model.infer(InferRequest("recorder", inputs={"INPUT0": Tensor("INPUT0", "FP32", [1, 4], inputs[0])}))
    finally:
        await server.stop()


# ------------------------------------------------------------------------ config.pbtxt
def test_config_errors_name_the_file_line_and_field(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text('name: "m"\nmax_batch_size: "eight"\n')
    with pytest.raises(ModelConfigError, match=r"m/config.pbtxt: .*2:.*max_batch_size"):
        read_config(tmp_path / "m")
    checks = [
        (make_config("other", [("x", "FP32", [2])], [("y", "FP32", [2])]), "name"),
        (make_config("m", [("x", "FP32", [2])], [("y", "FP32", [2])], dynamic_batching=True),
         "dynamic_batching: needs max_batch_size > 0"),
        (make_config("m", [("x", "FP32", [2])], [("y", "FP32", [2])], max_batch_size=4,
                     dynamic_batching=True, preferred_batch_sizes=[8]), "preferred_batch_size"),
        (make_config("m", [("x", "FP32", [0])], [("y", "FP32", [2])]), r"input\[0\].dims"),
        (make_config("m", [("x", "FP32", [2])], [("y", "FP32", [2])], platform="tensorrt_plan"),
         "tensorrt_plan"),
    ]
    for config, message in checks:
        with pytest.raises(ModelConfigError, match=message):
            validate_config(config, "m", "m/config.pbtxt")
    sequence = make_config("m", [("x", "FP32", [2])], [("y", "FP32", [2])], max_batch_size=4)
    sequence.sequence_batching.max_sequence_idle_microseconds = 1000
    with pytest.raises(ModelConfigError, match="sequence_batching: not supported"):
        validate_config(sequence, "m")
    validate_config(sequence, "m", embedded=False)  # fine for Triton itself
    tensorrt = make_config("m", [("x", "FP32", [2])], [("y", "FP32", [2])], platform="tensorrt_plan")
    validate_config(tensorrt, "m", embedded=False)
    good = make_config("m", [("x", "FP32", [2])], [("y", "INT64", [1])], max_batch_size=8,
                       dynamic_batching=True, preferred_batch_sizes=[4, 8], max_queue_delay_microseconds=100)
    write_config(good, tmp_path / "m")
    assert read_config(tmp_path / "m") == good
    assert parse_config((tmp_path / "m" / "config.pbtxt").read_text()).dynamic_batching.preferred_batch_size == [4, 8]
