"""A `triton_python_backend_utils` for the embedded server: the subset of Triton's Python
backend API that `model.py` files use (`import triton_python_backend_utils as pb_utils`).

The embedded server registers this module under that top-level name before it imports a
model.py, so unmodified Triton Python models run. Not supported: BLS (`InferenceRequest.exec`),
decoupled response senders, DLPack/GPU tensors.
"""

from __future__ import annotations

import json
import logging

import numpy as np

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1

_NUMPY_OF_CONFIG_TYPE = {
    "TYPE_BOOL": np.bool_, "TYPE_UINT8": np.uint8, "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32, "TYPE_UINT64": np.uint64, "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16, "TYPE_INT32": np.int32, "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16, "TYPE_FP32": np.float32, "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}


class TritonModelException(Exception):
    """Raised by the API on misuse (as in Triton)."""


class TritonError:
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = range(8)

    def __init__(self, message: str, code: int = INTERNAL):
        self._message, self._code = str(message), code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, code={self._code})"


class Tensor:
    def __init__(self, name: str, data):
        if not isinstance(data, np.ndarray):
            raise TritonModelException(f"Tensor {name!r}: data must be a numpy array")
        if data.dtype.kind in "SU":  # numpy bytes/str arrays -> Triton's object arrays of bytes
            data = np.array([v.encode() if isinstance(v, str) else v for v in data.ravel()],
                            dtype=object).reshape(data.shape)
        self._name, self._data = name, data

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._data

    def shape(self) -> list[int]:
        return list(self._data.shape)

    def is_cpu(self) -> bool:
        return True

    def triton_dtype(self) -> str:
        from ..tensors import protocol_dtype
        return protocol_dtype(self._data)

    def to_dlpack(self):
        raise TritonModelException("DLPack tensors are not supported by fedhub's embedded server")

    @classmethod
    def from_dlpack(cls, name, capsule):
        raise TritonModelException("DLPack tensors are not supported by fedhub's embedded server")


class InferenceRequest:
    """What `execute(requests)` receives. Building one to call another model (BLS) is not supported."""

    def __init__(self, model_name: str = "", inputs=None, requested_output_names=None,
                 request_id: str = "", correlation_id: int = 0, flags: int = 0,
                 parameters: dict | str | None = None, model_version: int = -1, **_):
        self._model_name, self._inputs = model_name, list(inputs or [])
        self._requested = list(requested_output_names or [])
        self._id, self._correlation_id, self._flags = request_id, correlation_id, flags
        self._parameters = parameters if isinstance(parameters, str) else json.dumps(parameters or {})

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def requested_output_names(self) -> list[str]:
        return self._requested

    def request_id(self) -> str:
        return self._id

    def correlation_id(self) -> int:
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

    def parameters(self) -> str:
        return self._parameters

    def model_name(self) -> str:
        return self._model_name

    def is_cancelled(self) -> bool:
        return False

    def get_response_sender(self):
        raise TritonModelException("decoupled models are not supported by fedhub's embedded server")

    def exec(self, *args, **kwargs):
        raise TritonModelException("BLS (InferenceRequest.exec) is not supported by fedhub's embedded server")

    async_exec = exec


class InferenceResponse:
    def __init__(self, output_tensors=None, error: TritonError | None = None, parameters=None):
        self._outputs, self._error = list(output_tensors or []), error

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


class ModelConfig:
    """What `TritonPythonModel.auto_complete_config` receives and returns: the model's config
    as a dict, with Triton's helpers to fill in what config.pbtxt left out."""

    def __init__(self, model_config: dict):
        self._config = dict(model_config)

    def as_dict(self) -> dict:
        return self._config

    def set_max_batch_size(self, max_batch_size: int) -> None:
        current = int(self._config.get("max_batch_size", 0))
        if current and current != max_batch_size:
            raise TritonModelException(
                f"max_batch_size is {current} in config.pbtxt; auto-complete asked for {max_batch_size}")
        self._config["max_batch_size"] = int(max_batch_size)

    def set_dynamic_batching(self) -> None:
        self._config.setdefault("dynamic_batching", {})

    def set_model_transaction_policy(self, transaction_policy_dict: dict) -> None:
        self._config["model_transaction_policy"] = dict(transaction_policy_dict)

    def add_input(self, input: dict) -> None:  # noqa: A002 (Triton's parameter name)
        self._add("input", input)

    def add_output(self, output: dict) -> None:
        self._add("output", output)

    def _add(self, kind: str, tensor: dict) -> None:
        if "name" not in tensor:
            raise TritonModelException(f"auto-complete: an {kind} needs a 'name'")
        tensors = self._config.setdefault(kind, [])
        existing = next((t for t in tensors if t["name"] == tensor["name"]), None)
        if existing is None:
            tensors.append(dict(tensor))
            return
        for key, value in tensor.items():  # config.pbtxt wins; only fill what it left out
            existing.setdefault(key, value)


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    return next((t for t in request.inputs() if t.name() == name), None)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return next((t for t in response.output_tensors() if t.name() == name), None)


def get_input_config_by_name(model_config: dict, name: str) -> dict | None:
    return next((t for t in model_config.get("input", []) if t["name"] == name), None)


def get_output_config_by_name(model_config: dict, name: str) -> dict | None:
    return next((t for t in model_config.get("output", []) if t["name"] == name), None)


def triton_string_to_numpy(triton_type_string: str):
    return _NUMPY_OF_CONFIG_TYPE[triton_type_string]


def using_decoupled_model_transaction_policy(model_config: dict) -> bool:
    return bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))


class Logger:
    """pb_utils.Logger: model logs go to the server's log."""

    _log = logging.getLogger("fedhub.deploy.model")

    @classmethod
    def log(cls, message, level=logging.INFO):
        cls._log.log(level, message)

    @classmethod
    def log_info(cls, message):
        cls._log.info(message)

    @classmethod
    def log_warn(cls, message):
        cls._log.warning(message)

    @classmethod
    def log_error(cls, message):
        cls._log.error(message)

    @classmethod
    def log_verbose(cls, message):
        cls._log.debug(message)
