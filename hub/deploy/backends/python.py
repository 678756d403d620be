"""Triton Python-backend models (`model.py` with a `TritonPythonModel` class), run in-process.

Triton runs each model in a stub process; here the model runs in the server's worker
threads. Dynamic batching hands `execute()` several requests at once, as Triton does.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from pathlib import Path

from ..inference import InferRequest, Tensor
from ..model_config import (ModelConfig, ModelConfigError, config_from_json, config_to_dict,
                            config_type_to_protocol)
from ..tensors import InvalidArgument, protocol_dtype
from . import triton_python_backend_utils as pb_utils

DEFAULT_FILENAME = "model.py"
_module_ids = itertools.count()


def _model_class(config: ModelConfig, version_dir: Path):
    """Import model.py (each load gets a fresh module) and return its TritonPythonModel."""
    path = version_dir / (config.default_model_filename or DEFAULT_FILENAME)
    if not path.is_file():
        raise ModelConfigError(f"{path}: model file not found")
    # model.py does `import triton_python_backend_utils as pb_utils`
    sys.modules.setdefault("triton_python_backend_utils", pb_utils)
    spec = importlib.util.spec_from_file_location(f"fedhub_python_model_{next(_module_ids)}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        return module.TritonPythonModel
    except Exception as exc:
        raise ModelConfigError(f"{path}: cannot load the Python model: {type(exc).__name__}: {exc}") from None


def complete_config(config: ModelConfig, version_dir: Path) -> None:
    """Call the model's `auto_complete_config(pb_utils.ModelConfig)` if it has one (Triton
    does, before `initialize`), and take the inputs, outputs and batching it sets."""
    model_class = _model_class(config, version_dir)
    if not hasattr(model_class, "auto_complete_config"):
        return
    try:
        completed = model_class.auto_complete_config(pb_utils.ModelConfig(config_to_dict(config)))
        completed_config = config_from_json(json.dumps(completed.as_dict()), "auto_complete_config")
    except Exception as exc:
        raise ModelConfigError(f"{version_dir}: auto_complete_config() failed: "
                               f"{type(exc).__name__}: {exc}") from None
    config.CopyFrom(completed_config)


class PythonBackend:
    def __init__(self, config: ModelConfig, version_dir: Path, model_name: str, version: int):
        self.config, self.model_name = config, model_name
        path = version_dir / (config.default_model_filename or DEFAULT_FILENAME)
        model_class = _model_class(config, version_dir)
        try:
            self.model = model_class()
        except Exception as exc:
            raise ModelConfigError(f"{path}: cannot create TritonPythonModel: {type(exc).__name__}: {exc}") from None
        self.output_types = {t.name: config_type_to_protocol(t.data_type) for t in config.output}
        args = {"model_config": json.dumps(config_to_dict(config)), "model_instance_kind": "CPU",
                "model_instance_name": f"{model_name}_0", "model_instance_device_id": "0",
                "model_repository": str(version_dir.parent), "model_version": str(version),
                "model_name": model_name}
        if hasattr(self.model, "initialize"):
            try:
                self.model.initialize(args)
            except Exception as exc:
                raise ModelConfigError(f"{path}: initialize() failed: {type(exc).__name__}: {exc}") from None

    def execute(self, requests: list[InferRequest]) -> list:
        pb_requests = [pb_utils.InferenceRequest(
            model_name=r.model_name, request_id=r.id, parameters=r.parameters,
            inputs=[pb_utils.Tensor(t.name, t.data) for t in r.inputs.values()],
            requested_output_names=r.requested_outputs or list(self.output_types))
            for r in requests]
        try:
            responses = self.model.execute(pb_requests)
        except Exception as exc:  # the model's own error: every request of this batch fails
            return [InvalidArgument(f"model '{self.model_name}' failed: {type(exc).__name__}: {exc}")] * len(requests)
        if not isinstance(responses, (list, tuple)) or len(responses) != len(requests):
            got = len(responses) if isinstance(responses, (list, tuple)) else type(responses).__name__
            return [InvalidArgument(f"model '{self.model_name}' returned {got} responses for "
                                    f"{len(requests)} requests")] * len(requests)
        return [self._convert(request, response) for request, response in zip(requests, responses)]

    def _convert(self, request: InferRequest, response):
        if response.has_error():
            return InvalidArgument(f"model '{self.model_name}': {response.error().message()}")
        wanted = request.requested_outputs or list(self.output_types)
        outputs = []
        for tensor in response.output_tensors():
            if tensor.name() not in wanted:
                continue
            data = tensor.as_numpy()
            datatype = self.output_types.get(tensor.name()) or protocol_dtype(data)
            outputs.append(Tensor(tensor.name(), datatype, list(data.shape), data))
        return outputs

    def close(self) -> None:
        if hasattr(self.model, "finalize"):
            try:
                self.model.finalize()
            except Exception:  # an unload must complete even if the model's cleanup fails
                pass
