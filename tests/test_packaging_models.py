"""Model packaging: real MLflow models (a local sqlite store in tmp) -> Triton model repository
entries, checked by running the written model.onnx with onnxruntime against the original
model's own predictions, and by reading config.pbtxt back through the ModelConfig protobuf."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from mlflow.models import Model, infer_signature
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tritonclient.grpc import model_config_pb2 as mc

from fedhub.hub.deploy.model_config import read_config
from fedhub.hub.deploy.packaging import (PackagingError, Tensor, build_config, check_model_name,
                                         config_from_signature, package_model, reconcile, signature_tensors,
                                         sklearn_to_onnx)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:1200], y[:1200], X[1200:], y[1200:]


@pytest.fixture(scope="module")
def store(tmp_path_factory, digits):
    """A real MLflow tracking + registry store (sqlite) with a scikit-learn model registered
    as digits-clf/1 and a PyTorch model logged to a run."""
    import mlflow
    import mlflow.pytorch
    import mlflow.sklearn
    import torch

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    X, y, X_test, _ = digits
    experiment = mlflow.create_experiment("packaging", artifact_location=str(root / "artifacts"))
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=200)).fit(X, y)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    Xt = torch.from_numpy(X.astype(np.float32))
    with mlflow.start_run(experiment_id=experiment):
        # pip_requirements given: MLflow's requirement inference would take seconds per model
        mlflow.sklearn.log_model(clf, name="model", registered_model_name="digits-clf",
                                 signature=infer_signature(X[:5], clf.predict(X[:5])),
                                 pip_requirements=["scikit-learn"])
    with mlflow.start_run(experiment_id=experiment) as run:
        net.eval()
        sample = X_test[:5].astype(np.float32)
        mlflow.pytorch.log_model(net, name="net", pip_requirements=["torch"], input_example=sample,
                                 signature=infer_signature(sample, net(torch.from_numpy(sample)).detach().numpy()))
    mlflow.set_tracking_uri(previous)
    yield {"uri": uri, "clf": clf, "net": net, "torch_run": run.info.run_id, "root": root, "Xt": Xt}


@pytest.fixture(scope="module")
def packaged(store, tmp_path_factory):
    """Both models packaged once into one repository (the torch export takes seconds)."""
    repo = tmp_path_factory.mktemp("repository")
    return {
        "repo": repo,
        "digits": package_model("models:/digits-clf/1", repo, "digits", tracking_uri=store["uri"]),
        "net": package_model(f"runs:/{store['torch_run']}/net", repo, "digits-net", version=3,
                             tracking_uri=store["uri"]),
    }


def run_onnx(path, feeds):
    session = ort.InferenceSession(str(path))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


# ---------------------------------------------------------------- real models

def test_registered_sklearn_model_becomes_a_repository_entry_that_predicts_like_sklearn(store, digits, packaged):
    _, _, X_test, _ = digits
    repo, packaged = packaged["repo"], packaged["digits"]
    assert packaged.flavour == "sklearn"
    assert packaged.model_file == repo / "digits" / "1" / "model.onnx"
    assert (repo / "digits" / "config.pbtxt").is_file()

    out = run_onnx(packaged.model_file, {"input": X_test.astype(np.float32)})
    np.testing.assert_array_equal(out["label"], store["clf"].predict(X_test))
    np.testing.assert_allclose(out["probabilities"], store["clf"].predict_proba(X_test), atol=1e-4)

    config = read_config(packaged.model_dir)  # read back through the protobuf
    assert config == packaged.config
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 64
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    (inp,) = config.input
    assert (inp.name, inp.data_type, list(inp.dims)) == ("input", mc.TYPE_FP32, [64])  # float64 narrowed
    label, proba = config.output
    assert (label.name, label.data_type, list(label.dims)) == ("label", mc.TYPE_INT64, [1])
    assert label.HasField("reshape") and list(label.reshape.shape) == []  # [N] labels: Triton's reshape case
    assert (proba.name, proba.data_type, list(proba.dims)) == ("probabilities", mc.TYPE_FP32, [10])


def test_pytorch_model_from_a_run_becomes_a_batching_repository_entry(store, digits, packaged):
    import torch

    _, _, X_test, _ = digits
    packaged = packaged["net"]
    assert packaged.flavour == "pytorch" and packaged.model_file.parent.name == "3"
    config = read_config(packaged.model_dir)
    assert config.max_batch_size == 64 and config.HasField("dynamic_batching")
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("input", mc.TYPE_FP32, [64])]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [("output", mc.TYPE_FP32, [10])]
    with torch.no_grad():
        for batch in (1, 7, len(X_test)):  # the batch dim is dynamic
            x = X_test[:batch].astype(np.float32)
            out = run_onnx(packaged.model_file, {"input": x})["output"]
            np.testing.assert_allclose(out, store["net"](torch.from_numpy(x)).numpy(), atol=1e-4)


def test_packaging_reports_each_step(store, tmp_path):
    lines = []
    package_model("models:/digits-clf/1", tmp_path / "repo", "steps", tracking_uri=store["uri"], progress=lines.append)
    assert lines == ["fetching models:/digits-clf/1", "converting the sklearn model to ONNX (skl2onnx)",
                     "writing steps/config.pbtxt and steps/1/model.onnx"]


def test_pickled_pytorch_module_is_packaged_too(store, digits, tmp_path):
    """MLflow's other PyTorch format (serialization_format="pickle": the nn.Module itself)."""
    import mlflow.pytorch
    import torch

    _, _, X_test, _ = digits
    x = X_test[:6].astype(np.float32)
    with torch.no_grad():
        expected = store["net"](torch.from_numpy(x)).numpy()
    local = tmp_path / "pickled"
    mlflow.pytorch.save_model(store["net"], str(local), serialization_format="pickle", pip_requirements=["torch"],
                              signature=infer_signature(x, expected))
    packaged = package_model(local, tmp_path / "repo", "pickled-net")
    assert packaged.flavour == "pytorch" and read_config(packaged.model_dir).max_batch_size == 64
    np.testing.assert_allclose(run_onnx(packaged.model_file, {"input": x})["output"], expected, atol=1e-4)


def test_onnx_file_is_packaged_from_its_graph(store, digits, tmp_path):
    X, _, X_test, _ = digits
    model = sklearn_to_onnx(store["clf"], [Tensor("pixels", "FP32", (-1, 64))])
    path = tmp_path / "clf.onnx"
    path.write_bytes(model.SerializeToString())
    packaged = package_model(path, tmp_path / "repo", "from-file", max_batch_size=16, dynamic_batching=False)
    config = read_config(packaged.model_dir)
    assert config.max_batch_size == 16 and not config.HasField("dynamic_batching")
    assert [t.name for t in config.input] == ["pixels"]
    out = run_onnx(packaged.model_file, {"pixels": X_test[:9].astype(np.float32)})
    np.testing.assert_array_equal(out["label"], store["clf"].predict(X_test[:9]))


def test_mlflow_onnx_flavour_is_packaged_unchanged_with_its_signature(store, digits, tmp_path):
    import mlflow.onnx

    _, _, X_test, _ = digits
    model = sklearn_to_onnx(store["clf"], [Tensor("input", "FP32", (-1, 64))])
    local = tmp_path / "onnx-model"
    x = X_test[:4].astype(np.float32)
    mlflow.onnx.save_model(model, str(local), pip_requirements=["onnxruntime"],
                           signature=infer_signature(x, store["clf"].predict(X_test[:4])))
    packaged = package_model(local, tmp_path / "repo", "onnx-flavour")
    assert packaged.flavour == "onnx"
    assert packaged.model_file.read_bytes() == model.SerializeToString()
    assert read_config(packaged.model_dir).max_batch_size == 64
    out = run_onnx(packaged.model_file, {"input": x})
    np.testing.assert_array_equal(out["label"], store["clf"].predict(X_test[:4]))


def test_config_pbtxt_round_trips_through_the_protobuf(packaged):
    for entry in (packaged["digits"], packaged["net"]):
        text = (entry.model_dir / "config.pbtxt").read_text()
        parsed = text_format.Parse(text, mc.ModelConfig())
        assert parsed == entry.config
        assert text_format.MessageToString(parsed) == text
        assert f'name: "{entry.name}"' in text and "max_batch_size: 64" in text


# ---------------------------------------------------------------- pure: signature -> config

def test_tensor_signature_to_config_is_pure_data():
    X = np.zeros((3, 8, 8), dtype=np.float32)
    signature = infer_signature(X, np.zeros((3, 4), dtype=np.float64))
    config = config_from_signature("img", signature, max_batch_size=8)
    assert config.max_batch_size == 8
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("input", mc.TYPE_FP32, [8, 8])]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [("output", mc.TYPE_FP64, [4])]


def test_column_signature_becomes_one_tensor_and_mixed_columns_are_refused():
    import pandas as pd

    same = infer_signature(pd.DataFrame({"a": [1.0], "b": [2.0], "c": [3.0]}), np.array([1]))
    assert signature_tensors(same.inputs, "input") == [Tensor("input", "FP64", (-1, 3))]
    mixed = infer_signature(pd.DataFrame({"a": [1.0], "city": ["x"]}), np.array([1]))
    with pytest.raises(PackagingError, match=r"mixed types \(a: double, city: string\)"):
        signature_tensors(mixed.inputs, "input")


def test_unbatched_models_get_max_batch_size_zero():
    config = build_config("fixed", [Tensor("x", "FP32", (1, 3))], [Tensor("y", "FP32", (1,))])
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [1, 3]


def test_reconcile_fills_open_graph_dims_from_the_signature_and_catches_conflicts():
    graph = [Tensor("input", "FP32", (-1, -1))]
    assert reconcile([Tensor("input", "FP64", (-1, 64))], graph, "input") == [Tensor("input", "FP32", (-1, 64))]
    with pytest.raises(PackagingError, match=r"graph has shape \[-1, 32\] but the signature declares \[-1, 64\]"):
        reconcile([Tensor("input", "FP32", (-1, 64))], [Tensor("input", "FP32", (-1, 32))], "input")
    with pytest.raises(PackagingError, match="declares 2 inputs but the ONNX graph has 1"):
        reconcile([Tensor("a", "FP32", (-1,)), Tensor("b", "FP32", (-1,))], graph, "input")


# ---------------------------------------------------------------- bad input -> clear errors

@pytest.mark.parametrize("name", ["", "../etc", "has space", "-lead", "x" * 65, "a/b"])
def test_bad_model_names_are_refused(name, tmp_path):
    with pytest.raises(PackagingError, match="is not valid"):
        check_model_name(name)
    with pytest.raises(PackagingError, match="is not valid"):
        package_model(tmp_path / "m.onnx", tmp_path / "repo", name)


def test_unsupported_flavour_and_missing_signature_are_named(store, tmp_path):
    import mlflow.sklearn

    other = tmp_path / "xgb"
    other.mkdir()
    Model(flavors={"xgboost": {"data": "model.xgb"}, "python_function": {}}).save(str(other / "MLmodel"))
    with pytest.raises(PackagingError, match="flavour xgboost is not supported; expected one of sklearn, pytorch, onnx"):
        package_model(other, tmp_path / "repo", "m")

    unsigned = tmp_path / "unsigned"
    mlflow.sklearn.save_model(store["clf"], str(unsigned), pip_requirements=["scikit-learn"])
    with pytest.raises(PackagingError, match="has no signature; log it with signature="):
        package_model(unsigned, tmp_path / "repo", "m")
    assert not (tmp_path / "repo" / "m").exists()


def test_missing_sources_are_named(store, tmp_path):
    with pytest.raises(PackagingError, match="no such ONNX file"):
        package_model(tmp_path / "absent.onnx", tmp_path / "repo", "m")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(PackagingError, match="not an ONNX model"):
        package_model(tmp_path / "junk.onnx", tmp_path / "repo", "m")
    with pytest.raises(PackagingError, match="models:/nope/1: cannot fetch the MLflow model"):
        package_model("models:/nope/1", tmp_path / "repo", "m", tracking_uri=store["uri"])
    with pytest.raises(PackagingError, match="neither an MLflow model URI"):
        package_model(tmp_path / "no-such-dir", tmp_path / "repo", "m")
    with pytest.raises(PackagingError, match="version must be a positive integer"):
        package_model("models:/digits-clf/1", tmp_path / "repo", "m", version=0)


def test_converted_graphs_are_valid_onnx(packaged):
    for entry in (packaged["digits"], packaged["net"]):
        onnx.checker.check_model(onnx.load(str(entry.model_file)))


# ---------------------------------------------------------------- served for real

async def test_packaged_models_serve_on_the_embedded_server_over_http_and_grpc(store, digits, packaged):
    """The repository packaging writes is what the embedded Triton-protocol server serves:
    the unmodified tritonclient (HTTP binary default, and gRPC) gets the models' own predictions."""
    import torch
    import tritonclient.grpc.aio as grpcclient
    import tritonclient.http.aio as httpclient

    from fedhub.hub.deploy.server import InferenceServer

    _, _, X_test, _ = digits
    repo = packaged["repo"]
    x = X_test[:25].astype(np.float32)
    with torch.no_grad():
        expected_net = store["net"](torch.from_numpy(x)).numpy()
    server = await InferenceServer(repo, http_port=0, grpc_port=0).start()
    http = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    try:
        for client, module in ((http, httpclient), (grpc, grpcclient)):
            inp = module.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            result = await client.infer("digits", [inp])
            np.testing.assert_array_equal(result.as_numpy("label").reshape(-1), store["clf"].predict(X_test[:25]))
            np.testing.assert_allclose(result.as_numpy("probabilities"), store["clf"].predict_proba(X_test[:25]),
                                       atol=1e-4)
            result = await client.infer("digits-net", [inp])
            np.testing.assert_allclose(result.as_numpy("output"), expected_net, atol=1e-4)
    finally:
        await http.close()
        await grpc.close()
        await server.stop()
