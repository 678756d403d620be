"""Read, write and check Triton `config.pbtxt` files.

The config is Triton's own ModelConfig protobuf (`tritonclient.grpc.model_config_pb2`) in
protobuf text format, so a repository written here is served unchanged by Triton Inference
Server and by fedhub's embedded server. Errors name the file, the field and what was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

ModelConfig = mc.ModelConfig
CONFIG_FILE = "config.pbtxt"

# platform/backend names fedhub's embedded server can run; Triton accepts more.
ONNX_PLATFORM = "onnxruntime_onnx"
ONNX_BACKEND = "onnxruntime"
PYTHON_BACKEND = "python"

# Triton's protocol datatype names ("FP32") <-> ModelConfig enum names ("TYPE_FP32").
PROTOCOL_DTYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
                   "INT64", "FP16", "FP32", "FP64", "BYTES", "BF16")


class ModelConfigError(ValueError):
    """A config.pbtxt that cannot be parsed or does not describe a servable model."""


def config_type_to_protocol(data_type: int) -> str:
    """mc.TYPE_FP32 -> "FP32"; TYPE_STRING -> "BYTES" (Triton's naming on the wire)."""
    name = mc.DataType.Name(data_type)[len("TYPE_"):]
    return "BYTES" if name == "STRING" else name


def protocol_to_config_type(datatype: str) -> int:
    """"FP32" -> mc.TYPE_FP32; "BYTES" -> TYPE_STRING."""
    name = "STRING" if datatype == "BYTES" else datatype
    try:
        return mc.DataType.Value(f"TYPE_{name}")
    except ValueError:
        raise ModelConfigError(
            f"unknown datatype {datatype!r}; expected one of {', '.join(PROTOCOL_DTYPES)}") from None


def parse_config(text: str, source: str = CONFIG_FILE) -> ModelConfig:
    """Parse config.pbtxt text; a syntax error names `source`, the line and the field."""
    config = ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ModelConfigError(f"{source}: not a valid Triton model config: {exc}") from None
    return config


def read_config(path: str | Path) -> ModelConfig:
    """Read a config.pbtxt file (or a model directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILE
    try:
        text = path.read_text()
    except OSError as exc:
        raise ModelConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ModelConfigError(f"{path}: not UTF-8 text") from None
    return parse_config(text, str(path))


def config_to_text(config: ModelConfig) -> str:
    return text_format.MessageToString(config)


def write_config(config: ModelConfig, model_dir: str | Path) -> Path:
    """Write `model_dir/config.pbtxt` (model_dir is created). Returns the file's path."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / CONFIG_FILE
    path.write_text(config_to_text(config))
    return path


def config_to_dict(config: ModelConfig) -> dict:
    """The JSON form Triton's HTTP /config endpoint returns (proto field names, and 64-bit
    integers as JSON numbers like Triton, where protobuf's JSON mapping would quote them)."""
    return _int64_as_numbers(config, json_format.MessageToDict(
        config, preserving_proto_field_name=True))


_INT64_TYPES = {json_format.descriptor.FieldDescriptor.TYPE_INT64,
                json_format.descriptor.FieldDescriptor.TYPE_UINT64,
                json_format.descriptor.FieldDescriptor.TYPE_SINT64}


def _int64_as_numbers(message, data: dict) -> dict:
    for field in message.DESCRIPTOR.fields:
        if field.name not in data:
            continue
        value = getattr(message, field.name)
        if field.type in _INT64_TYPES:
            data[field.name] = list(value) if _is_repeated(field) else int(value)
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            if _is_repeated(field):
                for sub, sub_data in zip(value, data[field.name]):
                    _int64_as_numbers(sub, sub_data)
            else:
                _int64_as_numbers(value, data[field.name])
    return data


def _is_repeated(field) -> bool:
    if hasattr(field, "is_repeated"):  # protobuf >= 6; `label` is deprecated there
        return field.is_repeated
    return field.label == field.LABEL_REPEATED


def config_from_json(text: str, source: str = "config") -> ModelConfig:
    """A config given as JSON (the `config` parameter of a repository load request)."""
    config = ModelConfig()
    try:
        json_format.Parse(text, config)
    except json_format.ParseError as exc:
        raise ModelConfigError(f"{source}: not a valid Triton model config: {exc}") from None
    return config


def tensor_config(name: str, datatype: str, dims: Sequence[int]) -> tuple[str, int, list[int]]:
    return name, protocol_to_config_type(datatype), [int(d) for d in dims]


def make_config(name: str, inputs: Iterable[tuple[str, str, Sequence[int]]],
                outputs: Iterable[tuple[str, str, Sequence[int]]], *,
                platform: str = ONNX_PLATFORM, backend: str = "", max_batch_size: int = 0,
                dynamic_batching: bool = False, preferred_batch_sizes: Sequence[int] = (),
                max_queue_delay_microseconds: int = 0, instance_count: int = 0,
                parameters: dict[str, str] | None = None) -> ModelConfig:
    """Build a ModelConfig. inputs/outputs are (name, protocol datatype "FP32", dims) where
    dims exclude the batch dimension when max_batch_size > 0 (Triton's convention)."""
    config = ModelConfig(name=name, max_batch_size=max_batch_size)
    if backend:
        config.backend = backend
    else:
        config.platform = platform
    for tname, dtype, dims in inputs:
        config.input.add(name=tname, data_type=protocol_to_config_type(dtype), dims=list(dims))
    for tname, dtype, dims in outputs:
        config.output.add(name=tname, data_type=protocol_to_config_type(dtype), dims=list(dims))
    if dynamic_batching:
        config.dynamic_batching.preferred_batch_size.extend(preferred_batch_sizes)
        config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_microseconds
    if instance_count:
        config.instance_group.add(count=instance_count, kind=mc.ModelInstanceGroup.KIND_CPU)
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = value
    return config


def backend_of(config: ModelConfig) -> str:
    """"onnxruntime" or "python" (the embedded server's backends), from platform or backend."""
    if config.backend in (ONNX_BACKEND, PYTHON_BACKEND):
        return config.backend
    if not config.backend and config.platform == ONNX_PLATFORM:
        return ONNX_BACKEND
    what = f"backend {config.backend!r}" if config.backend else f"platform {config.platform!r}"
    raise ModelConfigError(
        f"{what} is not served by the embedded server; expected platform "
        f"'{ONNX_PLATFORM}', backend '{ONNX_BACKEND}' or backend '{PYTHON_BACKEND}'")


def validate_config(config: ModelConfig, model_name: str, source: str = CONFIG_FILE,
                    require_io: bool = True, embedded: bool = True) -> None:
    """Check a config; raise ModelConfigError naming the file and field. With `embedded`
    (the default) also refuse what the embedded server cannot serve (other platforms,
    sequence batching, ensembles); embedded=False checks a config meant for Triton itself."""
    def fail(field: str, expected: str) -> None:
        raise ModelConfigError(f"{source}: {field}: {expected}")

    if config.name and config.name != model_name:
        fail("name", f"{config.name!r} must match the model's directory name {model_name!r}")
    if embedded:
        try:
            backend_of(config)
        except ModelConfigError as exc:
            fail("platform/backend", str(exc))
        for unsupported in ("sequence_batching", "ensemble_scheduling"):
            if config.HasField(unsupported):
                fail(unsupported, "not supported by the embedded server (use Triton on a site)")
    elif not (config.platform or config.backend):
        fail("platform/backend", "set platform (e.g. 'onnxruntime_onnx') or backend")
    if config.max_batch_size < 0:
        fail("max_batch_size", f"must be >= 0, got {config.max_batch_size}")
    if require_io and not config.input:
        fail("input", "at least one input is required")
    if require_io and not config.output:
        fail("output", "at least one output is required")
    for kind, tensors in (("input", config.input), ("output", config.output)):
        seen = set()
        for i, tensor in enumerate(tensors):
            where = f"{kind}[{i}]"
            if not tensor.name:
                fail(f"{where}.name", "a tensor name is required")
            if tensor.name in seen:
                fail(f"{where}.name", f"{tensor.name!r} is declared twice")
            seen.add(tensor.name)
            if tensor.data_type in (mc.TYPE_INVALID,):
                fail(f"{where}.data_type", f"{tensor.name!r} needs a data_type such as TYPE_FP32")
            if not tensor.dims and config.max_batch_size == 0:
                fail(f"{where}.dims", f"{tensor.name!r} needs dims (use [-1] for any length)")
            for d in tensor.dims:
                if d < -1 or d == 0:
                    fail(f"{where}.dims", f"{tensor.name!r}: each dim must be -1 or > 0, got {d}")
    if config.HasField("dynamic_batching"):
        db = config.dynamic_batching
        if config.max_batch_size == 0:
            fail("dynamic_batching", "needs max_batch_size > 0")
        for size in db.preferred_batch_size:
            if not 0 < size <= config.max_batch_size:
                fail("dynamic_batching.preferred_batch_size",
                     f"{size} must be between 1 and max_batch_size {config.max_batch_size}")
    for i, group in enumerate(config.instance_group):
        if group.count < 0:
            fail(f"instance_group[{i}].count", f"must be >= 0, got {group.count}")
    policy = config.version_policy
    if policy.HasField("latest") and policy.latest.num_versions < 1:
        fail("version_policy.latest.num_versions", "must be >= 1")
    if policy.HasField("specific") and not policy.specific.versions:
        fail("version_policy.specific.versions", "list at least one version")


def instance_count(config: ModelConfig) -> int:
    """How many requests/batches may execute at once (sum of instance_group counts, >= 1)."""
    return max(1, sum(group.count or 1 for group in config.instance_group))
