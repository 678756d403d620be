"""Build small Triton model repositories for tests (and benchmarks): a scikit-learn pipeline
converted with skl2onnx, a PyTorch MLP exported with torch.onnx, and Python-backend models.
Nothing is downloaded: the data is scikit-learn's bundled digits or generated here."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedhub.hub.deploy.model_config import PYTHON_BACKEND, make_config, write_config


def digits():
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    return X.astype(np.float32), y


def sklearn_digits_model(repo: Path, name: str = "digits", *, max_batch_size: int = 64,
                         dynamic_batching: bool = True, delay_us: int = 0):
    """Scaler + logistic regression on digits, as ONNX with zipmap off (probabilities as a
    tensor). Returns the fitted scikit-learn pipeline (the reference predictions)."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from threadpoolctl import threadpool_limits

    X, y = digits()
    # one BLAS thread: on a busy 2-core machine, OpenBLAS threads spin and the fit takes ~9 s
    # instead of ~0.1 s
    with threadpool_limits(1):
        pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(X, y)
    onx = to_onnx(pipeline, X[:1], options={"zipmap": False}, target_opset=17)
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "1" / "model.onnx").write_bytes(onx.SerializeToString())
    config = make_config(name, [("X", "FP32", [64])],
                         [("label", "INT64", []), ("probabilities", "FP32", [10])],
                         max_batch_size=max_batch_size, dynamic_batching=dynamic_batching,
                         max_queue_delay_microseconds=delay_us)
    write_config(config, repo / name)
    return pipeline


def torch_mlp_model(repo: Path, name: str = "mlp", *, max_batch_size: int = 32, delay_us: int = 0,
                    preferred: tuple[int, ...] = ()):
    """A small PyTorch MLP (8 -> 16 -> 3) exported with torch.onnx and a dynamic batch dim.
    Returns the torch module (the reference forward)."""
    import torch

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.onnx.export(module, (torch.randn(2, 8),), str(repo / name / "1" / "model.onnx"),
                      input_names=["x"], output_names=["y"], dynamic_shapes=({0: batch},),
                      dynamo=True, external_data=False, verbose=False)
    write_config(make_config(name, [("x", "FP32", [8])], [("y", "FP32", [3])],
                             max_batch_size=max_batch_size, dynamic_batching=True,
                             preferred_batch_sizes=preferred,
                             max_queue_delay_microseconds=delay_us), repo / name)
    return module


BATCH_RECORDER = '''
import json
import threading
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Doubles INPUT0; appends how many requests each execute() got, and the thread it ran
    on, to batches.log."""

    def initialize(self, args):
        self.config = json.loads(args["model_config"])
        self.log = args["model_repository"] + "/batches.log"
        out = pb_utils.get_output_config_by_name(self.config, "OUTPUT0")
        self.out_dtype = pb_utils.triton_string_to_numpy(out["data_type"])

    def execute(self, requests):
        with open(self.log, "a") as f:
            f.write(f"{len(requests)} {threading.current_thread().name}\\n")
        time.sleep(SLEEP)
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("OUTPUT0", (x * 2).astype(self.out_dtype))]))
        return responses
'''

TEXT_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """BYTES in, BYTES out: upper-cases TEXT, and LENGTH holds each element's byte length.
    An element b"fail" makes that request's response an error."""

    def execute(self, requests):
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            if any(item == b"fail" for item in text.ravel()):
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("asked to fail", pb_utils.TritonError.INVALID_ARG)))
                continue
            upper = np.array([item.upper() for item in text.ravel()], dtype=object).reshape(text.shape)
            length = np.array([len(item) for item in text.ravel()], dtype=np.int32).reshape(text.shape)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("UPPER", upper), pb_utils.Tensor("LENGTH", length)]))
        return responses
'''


AUTO_COMPLETE_MODEL = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """config.pbtxt names only the backend; the model declares its tensors, as Triton allows."""

    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        auto_complete_model_config.add_input({"name": "A", "data_type": "TYPE_INT32", "dims": [2]})
        auto_complete_model_config.add_output({"name": "SUM", "data_type": "TYPE_INT32", "dims": [1]})
        auto_complete_model_config.set_max_batch_size(8)
        auto_complete_model_config.set_dynamic_batching()
        return auto_complete_model_config

    def execute(self, requests):
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(
            "SUM", pb_utils.get_input_tensor_by_name(r, "A").as_numpy().sum(axis=1, keepdims=True))])
            for r in requests]
'''


def python_auto_complete_model(repo: Path, name: str = "autopy") -> None:
    """A Python model whose config.pbtxt says only `backend: "python"`."""
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "1" / "model.py").write_text(AUTO_COMPLETE_MODEL)
    (repo / name / "config.pbtxt").write_text('backend: "python"\n')


def python_batch_recorder(repo: Path, name: str = "recorder", *, delay_us: int = 300_000,
                          sleep_s: float = 0.05, max_batch_size: int = 16,
                          preferred: tuple[int, ...] = ()) -> Path:
    """Python-backend model with dynamic batching that logs the batch sizes it sees."""
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "1" / "model.py").write_text(BATCH_RECORDER.replace("SLEEP", repr(sleep_s)))
    write_config(make_config(name, [("INPUT0", "FP32", [4])], [("OUTPUT0", "FP32", [4])],
                             backend=PYTHON_BACKEND, max_batch_size=max_batch_size,
                             dynamic_batching=True, preferred_batch_sizes=preferred,
                             max_queue_delay_microseconds=delay_us),
                 repo / name)
    return repo / name / "batches.log"


def python_text_model(repo: Path, name: str = "text") -> None:
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "1" / "model.py").write_text(TEXT_MODEL)
    write_config(make_config(name, [("TEXT", "BYTES", [-1])],
                             [("UPPER", "BYTES", [-1]), ("LENGTH", "INT32", [-1])],
                             backend=PYTHON_BACKEND), repo / name)


def broken_model(repo: Path, name: str = "broken") -> None:
    """A model directory whose config.pbtxt is not a valid model config."""
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text('name: "broken"\nmax_batch_sizes: 4\ninput [ {\n')
