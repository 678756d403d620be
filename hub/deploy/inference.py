"""Inference requests and responses, independent of the wire (HTTP or gRPC), and their
checks against a model's config: input names, datatypes, shapes, batch size."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .model_config import ModelConfig, config_type_to_protocol
from .tensors import InvalidArgument


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray


@dataclass
class InferRequest:
    model_name: str
    model_version: str = ""
    id: str = ""
    inputs: dict[str, Tensor] = field(default_factory=dict)
    requested_outputs: list[str] = field(default_factory=list)  # empty: every output
    parameters: dict = field(default_factory=dict)

    def batch_size(self, max_batch_size: int) -> int:
        """Rows this request adds to a dynamic batch (1 for models without a batch dim)."""
        if max_batch_size == 0 or not self.inputs:
            return 1
        return next(iter(self.inputs.values())).shape[0]


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[Tensor]


def tensor_metadata(config_tensors, max_batch_size: int) -> list[dict]:
    batch = [-1] if max_batch_size > 0 else []
    return [{"name": t.name, "datatype": config_type_to_protocol(t.data_type),
             "shape": batch + [int(d) for d in t.dims]} for t in config_tensors]


def check_request(config: ModelConfig, request: InferRequest) -> None:
    """Raise InvalidArgument unless `request` fits `config` (Triton's own checks)."""
    model = request.model_name
    declared = {t.name: t for t in config.input}
    for name in request.inputs:
        if name not in declared:
            raise InvalidArgument(
                f"unexpected inference input '{name}' for model '{model}'; "
                f"expected {sorted(declared)}")
    batch_sizes = set()
    for name, spec in declared.items():
        tensor = request.inputs.get(name)
        if tensor is None:
            if spec.optional:
                continue
            raise InvalidArgument(
                f"expected {len(declared)} inputs but got {len(request.inputs)} inputs for "
                f"model '{model}'; missing input '{name}'")
        expected_type = config_type_to_protocol(spec.data_type)
        if tensor.datatype != expected_type:
            raise InvalidArgument(
                f"inference input '{name}' data-type is '{tensor.datatype}', but model "
                f"'{model}' expects '{expected_type}'")
        shape = list(tensor.shape)
        if config.max_batch_size > 0:
            if not shape:
                raise InvalidArgument(f"input '{name}' for model '{model}' needs a batch dimension")
            batch, shape = shape[0], shape[1:]
            if not 1 <= batch <= config.max_batch_size:
                raise InvalidArgument(
                    f"inference request batch-size {batch} for model '{model}' must be "
                    f"between 1 and max_batch_size {config.max_batch_size}")
            batch_sizes.add(batch)
        dims = list(spec.dims)
        if len(shape) != len(dims) or any(d != -1 and d != s for d, s in zip(dims, shape)):
            expected = ([-1] if config.max_batch_size > 0 else []) + dims
            raise InvalidArgument(
                f"unexpected shape for input '{name}' for model '{model}'. Expected "
                f"{expected}, got {list(tensor.shape)}")
    if len(batch_sizes) > 1:
        raise InvalidArgument(f"inputs of model '{model}' disagree on batch size: {sorted(batch_sizes)}")
    outputs = {t.name for t in config.output}
    for name in request.requested_outputs:
        if name not in outputs:
            raise InvalidArgument(
                f"unexpected inference output '{name}' for model '{model}'; expected {sorted(outputs)}")
