"""Model backends of the embedded inference server: ONNX (onnxruntime) and Triton's Python API.

A backend turns a list of InferRequest (one dynamic batch) into one result per request:
a list of output Tensors, or an InferenceServerError for that request alone.
"""

from __future__ import annotations

from pathlib import Path

from ..model_config import ONNX_BACKEND, ModelConfig, backend_of


def create_backend(config: ModelConfig, version_dir: Path, model_name: str, version: int):
    if backend_of(config) == ONNX_BACKEND:
        from .onnx import OnnxBackend
        return OnnxBackend(config, version_dir, model_name, version)
    from .python import PythonBackend
    return PythonBackend(config, version_dir, model_name, version)
