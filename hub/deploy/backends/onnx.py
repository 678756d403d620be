"""ONNX models through onnxruntime, with requests merged along dim 0 for dynamic batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..inference import InferRequest, Tensor
from ..model_config import (ModelConfig, ModelConfigError, config_type_to_protocol,
                            protocol_to_config_type)
from ..tensors import InvalidArgument

# onnxruntime's type strings -> Triton protocol datatypes (for config auto-completion)
ORT_TYPES = {
    "tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16",
    "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32",
    "tensor(int64)": "INT64", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}
DEFAULT_FILENAME = "model.onnx"


def _thread_count(config: ModelConfig, key: str) -> int:
    """Triton's onnxruntime backend parameters (`intra_op_thread_count`, ...), 0 = ORT default."""
    if key not in config.parameters:
        return 0
    value = config.parameters[key].string_value
    try:
        return int(value)
    except ValueError:
        raise ModelConfigError(f"config.pbtxt: parameters[{key!r}]: expected an integer, got {value!r}") from None


def model_file(config: ModelConfig, version_dir: Path) -> Path:
    return version_dir / (config.default_model_filename or DEFAULT_FILENAME)


def complete_config(config: ModelConfig, version_dir: Path) -> None:
    """Fill inputs/outputs missing from config.pbtxt from the ONNX model itself, as Triton's
    auto-complete does (dims exclude the batch dim when max_batch_size > 0)."""
    if config.input and config.output:
        return
    session = ort.InferenceSession(str(model_file(config, version_dir)),
                                   providers=["CPUExecutionProvider"])
    skip = 1 if config.max_batch_size > 0 else 0
    for target, nodes in ((config.input, session.get_inputs()), (config.output, session.get_outputs())):
        if target:
            continue
        for node in nodes:
            dtype = ORT_TYPES.get(node.type)
            if dtype is None:
                raise ModelConfigError(f"{node.name!r}: ONNX type {node.type} is not a tensor type Triton serves")
            dims = [d if isinstance(d, int) and d > 0 else -1 for d in node.shape[skip:]]
            target.add(name=node.name, data_type=protocol_to_config_type(dtype), dims=dims)


class OnnxBackend:
    runs_inline = True  # cost follows the rows: a fast model may run on the event loop
    def __init__(self, config: ModelConfig, version_dir: Path, model_name: str, version: int):
        self.config, self.model_name = config, model_name
        path = model_file(config, version_dir)
        if not path.is_file():
            raise ModelConfigError(f"{path}: model file not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = _thread_count(config, "intra_op_thread_count")
        options.inter_op_num_threads = _thread_count(config, "inter_op_thread_count")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelConfigError(f"{path}: onnxruntime cannot load the model: {exc}") from None
        model_inputs = {i.name: i.type for i in self.session.get_inputs()}
        model_outputs = {o.name: o.type for o in self.session.get_outputs()}
        source = version_dir.parent / "config.pbtxt"
        for kind, declared, present in (("input", config.input, model_inputs),
                                        ("output", config.output, model_outputs)):
            for tensor in declared:
                if tensor.name not in present:
                    raise ModelConfigError(
                        f"{source}: {kind} {tensor.name!r} is not in the ONNX model "
                        f"(it has {sorted(present)})")
                declared_type = config_type_to_protocol(tensor.data_type)
                model_type = ORT_TYPES.get(present[tensor.name])
                if model_type is not None and model_type != declared_type:
                    raise ModelConfigError(
                        f"{source}: {kind} {tensor.name!r} is {declared_type} in config.pbtxt "
                        f"but {model_type} in the ONNX model")
        self.output_types = {t.name: config_type_to_protocol(t.data_type) for t in config.output}

    def execute(self, requests: list[InferRequest]) -> list:
        """Run requests, merged into one batch when their non-batch shapes agree."""
        if len(requests) > 1 and self.config.max_batch_size > 0 and self._mergeable(requests):
            try:
                return self._run_merged(requests)
            except ort_errors():  # one bad request: run them one by one, so only it fails
                pass
        results = []
        for request in requests:
            try:
                results.append(self._run(request.inputs, self._outputs(request)))
            except ort_errors() as exc:
                results.append(InvalidArgument(f"onnxruntime failed on model '{self.model_name}': {exc}"))
        return results

    def close(self) -> None:
        self.session = None

    # ------------------------------------------------------------------ helpers
    def _outputs(self, request: InferRequest) -> list[str]:
        return request.requested_outputs or list(self.output_types)

    @staticmethod
    def _mergeable(requests: list[InferRequest]) -> bool:
        first = requests[0]
        key = {n: tuple(t.shape[1:]) for n, t in first.inputs.items()}
        return all({n: tuple(t.shape[1:]) for n, t in r.inputs.items()} == key for r in requests[1:])

    def _run(self, inputs: dict[str, Tensor], output_names: list[str]) -> list[Tensor]:
        feeds = {name: _feed(t.data) for name, t in inputs.items()}
        arrays = self.session.run(output_names, feeds)
        return [Tensor(name, self.output_types[name], list(array.shape), _fetch(array))
                for name, array in zip(output_names, arrays)]

    def _run_merged(self, requests: list[InferRequest]) -> list:
        names = sorted(set().union(*(self._outputs(r) for r in requests)))
        merged = {name: Tensor(name, t.datatype, [], np.concatenate([r.inputs[name].data for r in requests]))
                  for name, t in requests[0].inputs.items()}
        outputs = self._run(merged, names)
        results, start = [], 0
        for request in requests:
            rows = request.inputs[next(iter(request.inputs))].shape[0]
            wanted = set(self._outputs(request))
            results.append([Tensor(o.name, o.datatype, [rows] + o.shape[1:], o.data[start:start + rows])
                            for o in outputs if o.name in wanted])
            start += rows
        return results


def ort_errors() -> tuple:
    from onnxruntime.capi import onnxruntime_pybind11_state as state
    return (state.Fail, state.InvalidArgument, state.InvalidGraph, state.RuntimeException,
            state.NotImplemented)


def _feed(array: np.ndarray) -> np.ndarray:
    if array.dtype == object:  # BYTES -> ONNX string tensor
        return np.array([v.decode("utf-8") if isinstance(v, bytes) else v for v in array.ravel()],
                        dtype=object).reshape(array.shape)
    return array


def _fetch(array) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == object or array.dtype.kind == "U":
        return np.array([v.encode("utf-8") if isinstance(v, str) else v for v in array.ravel()],
                        dtype=object).reshape(array.shape)
    return array
