"""A model -> a Triton model repository entry (`NAME/config.pbtxt` + `NAME/VERSION/model.onnx`).

Sources: an MLflow model (`models:/name/version`, `runs:/ID/path`, any artifact URI or a
local MLflow model folder) of the scikit-learn, PyTorch or ONNX flavour, or a plain ONNX file.

The MLflow signature drives everything it can: the ONNX input names, types and shapes of the
conversion, whether the model batches, and the dims the converted graph leaves open. Names
and datatypes in config.pbtxt are the converted graph's, because that is what the ONNX
runtime will check requests against. One deliberate narrowing: scikit-learn float64 features
become FP32 tensors, the type every skl2onnx converter implements.

The steps that need no model (signature -> ModelConfig, graph -> tensors, reconciling the
two) are pure functions, tested as data.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from .model_config import ModelConfig, ONNX_PLATFORM, make_config, read_config, validate_config, write_config

MODEL_FILE = "model.onnx"
DEFAULT_MAX_BATCH_SIZE = 64
# Short enough not to add latency at low load, long enough to gather concurrent requests.
DEFAULT_QUEUE_DELAY_US = 100
DEFAULT_OPSET = 17  # Triton releases of the last two years run it; skl2onnx and torch emit it
SKLEARN_ML_OPSET = 3
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SUPPORTED_FLAVOURS = ("sklearn", "pytorch", "onnx")

_NUMPY_TO_PROTOCOL = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64", "float16": "FP16",
    "float32": "FP32", "float64": "FP64", "object": "BYTES", "str": "BYTES", "bytes": "BYTES",
}
# MLflow column types (mlflow.types.DataType names) for column-based signatures
_COLUMN_TO_PROTOCOL = {"boolean": "BOOL", "integer": "INT32", "long": "INT64", "float": "FP32",
                       "double": "FP64", "string": "BYTES", "binary": "BYTES"}
# onnx.TensorProto element types
_ONNX_TO_PROTOCOL = {1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64",
                     8: "BYTES", 9: "BOOL", 10: "FP16", 11: "FP64", 12: "UINT32", 13: "UINT64", 16: "BF16"}


class PackagingError(ValueError):
    """A model that cannot become a Triton model repository entry; the message says why."""


@dataclass(frozen=True)
class Tensor:
    """One model input or output: protocol datatype ("FP32") and shape, -1 for any size."""
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class PackagedModel:
    name: str
    version: int
    model_dir: Path  # REPOSITORY/NAME
    model_file: Path  # REPOSITORY/NAME/VERSION/model.onnx
    config: ModelConfig
    source: str
    flavour: str


# ---------------------------------------------------------------- pure: names, signatures, graphs

def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not MODEL_NAME.match(name):
        raise PackagingError(
            f"model name {name!r} is not valid: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit (it becomes a directory of the model repository)")
    return name


def _numpy_datatype(dtype) -> str:
    key = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if key.startswith("str") or key.startswith("bytes"):
        key = "object"
    try:
        return _NUMPY_TO_PROTOCOL[key]
    except KeyError:
        raise PackagingError(f"datatype {key!r} has no Triton equivalent") from None


def signature_tensors(schema, default_name: str) -> list[Tensor]:
    """An MLflow Schema (signature.inputs or .outputs) as tensors.

    Tensor-based schemas map one to one (unnamed tensors get `default_name`, numbered when
    there are several). A column-based schema becomes one tensor [-1, n_columns], which needs
    every column to have the same type.
    """
    if schema is None:
        return []
    specs = list(schema.inputs)
    if not specs:
        return []
    if schema.is_tensor_spec():
        out = []
        for i, spec in enumerate(specs):
            name = spec.name or (default_name if len(specs) == 1 else f"{default_name}_{i}")
            out.append(Tensor(name, _numpy_datatype(spec.type), tuple(int(d) for d in spec.shape)))
        return out
    types = {str(getattr(spec.type, "name", spec.type)) for spec in specs}
    if len(types) != 1:
        listed = ", ".join(f"{s.name}: {getattr(s.type, 'name', s.type)}" for s in specs)
        raise PackagingError(f"a column-based signature with mixed types ({listed}) cannot be one "
                             "tensor; log the model with a tensor signature (numpy input example)")
    (kind,) = types
    if kind not in _COLUMN_TO_PROTOCOL:
        raise PackagingError(f"signature column type {kind!r} has no Triton equivalent")
    return [Tensor(default_name, _COLUMN_TO_PROTOCOL[kind], (-1, len(specs)))]


def batches(tensors: Sequence[Tensor]) -> bool:
    """True when every tensor's first dim is open (-1): the model takes a batch of any size."""
    return bool(tensors) and all(t.shape and t.shape[0] == -1 for t in tensors)


def _config_tensors(tensors: Iterable[Tensor], batched: bool) -> list[tuple[str, str, list[int]]]:
    rows = []
    for t in tensors:
        dims = list(t.shape[1:] if batched else t.shape)
        rows.append((t.name, t.datatype, dims or [1]))
    return rows


def build_config(name: str, inputs: Sequence[Tensor], outputs: Sequence[Tensor], *,
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, dynamic_batching: bool = True,
                 queue_delay_us: int = DEFAULT_QUEUE_DELAY_US) -> ModelConfig:
    """A ModelConfig for an ONNX model. Models whose inputs and outputs all have an open first
    dim batch (Triton strips that dim from `dims`); others get max_batch_size 0."""
    check_model_name(name)
    batched = max_batch_size > 0 and batches(inputs) and batches(outputs)
    config = make_config(
        name, _config_tensors(inputs, batched), _config_tensors(outputs, batched), platform=ONNX_PLATFORM,
        max_batch_size=max_batch_size if batched else 0, dynamic_batching=batched and dynamic_batching,
        max_queue_delay_microseconds=queue_delay_us if batched else 0)
    # A batched tensor that is only the batch dim ([N], e.g. class labels) is Triton's
    # documented `dims: [1]` + `reshape: { shape: [] }` case.
    for tensors, fields in ((inputs, config.input), (outputs, config.output)):
        for t, field in zip(tensors, fields):
            if batched and len(t.shape) == 1:
                field.reshape.SetInParent()
    return config


def config_from_signature(name: str, signature, *, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                          dynamic_batching: bool = True) -> ModelConfig:
    """Pure: an MLflow ModelSignature -> the ModelConfig it declares (inputs named "input",
    outputs "output" when the signature leaves them unnamed)."""
    if signature is None or not signature.inputs:
        raise PackagingError(f"model {name!r} has no input signature")
    inputs = signature_tensors(signature.inputs, "input")
    outputs = signature_tensors(signature.outputs, "output")
    if not outputs:
        raise PackagingError(f"model {name!r} has no output signature")
    return build_config(name, inputs, outputs, max_batch_size=max_batch_size, dynamic_batching=dynamic_batching)


def onnx_tensors(graph_values) -> list[Tensor]:
    """onnx ValueInfoProto list (graph.input / graph.output) -> tensors; symbolic dims are -1."""
    out = []
    for value in graph_values:
        ttype = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise PackagingError(f"ONNX value {value.name!r} is not a tensor (sequences and maps are "
                                 "not servable; convert classifiers with zipmap off)")
        datatype = _ONNX_TO_PROTOCOL.get(ttype.elem_type)
        if datatype is None:
            raise PackagingError(f"ONNX value {value.name!r} has element type {ttype.elem_type} with no "
                                 "Triton equivalent")
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
                     for d in ttype.shape.dim)
        out.append(Tensor(value.name, datatype, dims))
    return out


def graph_inputs(model) -> list:
    """Graph inputs minus initializers (older exporters list weights as inputs too)."""
    weights = {init.name for init in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in weights]


def reconcile(declared: Sequence[Tensor], graph: Sequence[Tensor], kind: str) -> list[Tensor]:
    """The graph's tensors, with dims the graph leaves open filled in from the declaration
    (matched by position, same rank). Names and datatypes stay the graph's: the runtime checks
    requests against those. More declared than graph tensors is an error."""
    if len(declared) > len(graph):
        raise PackagingError(f"the signature declares {len(declared)} {kind}s but the ONNX graph has "
                             f"{len(graph)} ({', '.join(t.name for t in graph)})")
    out = []
    for i, g in enumerate(graph):
        d = declared[i] if i < len(declared) else None
        if d is not None and len(d.shape) == len(g.shape):
            for gd, dd in zip(g.shape, d.shape):
                if gd != -1 and dd != -1 and gd != dd:
                    raise PackagingError(f"{kind} {g.name!r}: the ONNX graph has shape {list(g.shape)} but "
                                         f"the signature declares {list(d.shape)}")
            g = replace(g, shape=tuple(dd if gd == -1 else gd for gd, dd in zip(g.shape, d.shape)))
        out.append(g)
    return out


def config_for_graph(name: str, model, declared: ModelConfig | None = None, *,
                     max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, dynamic_batching: bool = True,
                     signature=None) -> ModelConfig:
    """The config for an ONNX ModelProto: its graph, completed by the signature if given."""
    inputs = onnx_tensors(graph_inputs(model))
    outputs = onnx_tensors(model.graph.output)
    if signature is not None:
        inputs = reconcile(signature_tensors(signature.inputs, "input"), inputs, "input")
        if signature.outputs:
            outputs = reconcile(signature_tensors(signature.outputs, "output"), outputs, "output")
    return build_config(name, inputs, outputs, max_batch_size=max_batch_size, dynamic_batching=dynamic_batching)


# ---------------------------------------------------------------- conversions

def sklearn_to_onnx(model, inputs: Sequence[Tensor], opset: int = DEFAULT_OPSET):
    """A fitted scikit-learn estimator -> ONNX ModelProto; classifiers give `label` and
    `probabilities` tensors (zipmap off) instead of a list of dicts."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import BooleanTensorType, FloatTensorType, Int32TensorType, Int64TensorType
    from skl2onnx.common.data_types import StringTensorType

    kinds = {"FP32": FloatTensorType, "FP64": FloatTensorType,  # float64 narrowed, see module doc
             "INT64": Int64TensorType, "INT32": Int32TensorType, "BOOL": BooleanTensorType,
             "BYTES": StringTensorType}
    initial = []
    for t in inputs:
        if t.datatype not in kinds:
            raise PackagingError(f"input {t.name!r}: scikit-learn models with {t.datatype} inputs are not "
                                 "converted; expected float, integer, bool or string features")
        initial.append((t.name, kinds[t.datatype]([None if d == -1 else d for d in t.shape])))
    try:
        return convert_sklearn(model, initial_types=initial, options={"zipmap": False},
                               target_opset={"": opset, "ai.onnx.ml": SKLEARN_ML_OPSET})
    except Exception as exc:  # skl2onnx raises bare RuntimeError/NameError for unknown estimators
        raise PackagingError(f"skl2onnx cannot convert {type(model).__name__}: {exc}") from None


def pytorch_to_onnx(module, inputs: Sequence[Tensor], outputs: Sequence[Tensor], path: Path,
                    opset: int = DEFAULT_OPSET + 1):
    """A torch.nn.Module -> model.onnx at `path`, first dim dynamic where the signature has -1."""
    try:
        import torch
    except ImportError:
        raise PackagingError("PyTorch models need torch and onnxscript: pip install 'fedhub[torch]'") from None
    torch_dtypes = {"FP32": torch.float32, "FP64": torch.float64, "FP16": torch.float16,
                    "INT64": torch.int64, "INT32": torch.int32, "BOOL": torch.bool}
    examples = []
    for t in inputs:
        if t.datatype not in torch_dtypes:
            raise PackagingError(f"input {t.name!r}: {t.datatype} inputs are not supported for PyTorch models")
        shape = [2 if d == -1 else d for d in t.shape]  # 2, not 1: a 1 would be specialised away
        examples.append(torch.zeros(shape, dtype=torch_dtypes[t.datatype]))
    # Dim.AUTO: the exporter keeps the batch dim symbolic, and shares it between inputs
    dynamic = tuple({0: torch.export.Dim.AUTO} if t.shape and t.shape[0] == -1 else None for t in inputs)
    try:
        module.eval()
    except NotImplementedError:
        pass  # a module loaded from MLflow's pt2 format (torch.export) is already in inference form
    try:
        torch.onnx.export(module, tuple(examples), str(path), input_names=[t.name for t in inputs],
                          output_names=[t.name for t in outputs], dynamic_shapes=dynamic,
                          opset_version=opset, external_data=False, verbose=False)
    except Exception as exc:
        raise PackagingError(f"torch.onnx.export failed for {type(module).__name__}: {exc}") from None


# ---------------------------------------------------------------- sources

def _is_mlflow_source(source: str) -> bool:
    return "://" in source or source.startswith(("models:/", "runs:/")) or (Path(source) / "MLmodel").exists()


def _mlflow_local_dir(source: str, workdir: Path, tracking_uri: str | None) -> Path:
    if (Path(source) / "MLmodel").exists():
        return Path(source)
    import mlflow
    from mlflow.exceptions import MlflowException
    # models:/ URIs resolve through nested lookups that read the process-wide tracking URI,
    # so an explicit one is set for the duration of the download (and put back after).
    previous = mlflow.get_tracking_uri() if tracking_uri else None
    try:
        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(workdir)))
    except MlflowException as exc:
        raise PackagingError(f"{source}: cannot fetch the MLflow model: {exc.message}") from None
    finally:
        if tracking_uri:
            mlflow.set_tracking_uri(previous)


def _write_repository_entry(model_bytes_or_path, repository: Path, name: str, version: int,
                            config: ModelConfig) -> tuple[Path, Path]:
    model_dir = repository / name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    target = version_dir / MODEL_FILE
    if isinstance(model_bytes_or_path, (bytes, bytearray)):
        target.write_bytes(model_bytes_or_path)
    else:
        shutil.copyfile(model_bytes_or_path, target)
    validate_config(config, name)
    write_config(config, model_dir)
    return model_dir, target


def package_model(source: str | Path, repository: str | Path, name: str, version: int = 1, *,
                  tracking_uri: str | None = None, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                  dynamic_batching: bool = True, progress: Callable[[str], None] | None = None) -> PackagedModel:
    """Write `repository/name/config.pbtxt` and `repository/name/version/model.onnx`.
    `progress`, if given, is called with a line per step (fetch, convert, write)."""
    import onnx

    say = progress or (lambda message: None)

    check_model_name(name)
    if not isinstance(version, int) or version < 1:
        raise PackagingError(f"version must be a positive integer, got {version!r}")
    repository = Path(repository)
    source = str(source)
    opts = dict(max_batch_size=max_batch_size, dynamic_batching=dynamic_batching)

    if source.endswith(".onnx") and not _is_mlflow_source(source):
        path = Path(source)
        if not path.is_file():
            raise PackagingError(f"{source}: no such ONNX file")
        try:
            model = onnx.load(str(path))
        except Exception as exc:
            raise PackagingError(f"{source}: not an ONNX model: {exc}") from None
        config = config_for_graph(name, model, **opts)
        say(f"writing {name}/config.pbtxt and {name}/{version}/{MODEL_FILE}")
        model_dir, target = _write_repository_entry(path, repository, name, version, config)
        return PackagedModel(name, version, model_dir, target, config, source, "onnx")

    if not _is_mlflow_source(source):
        raise PackagingError(f"{source!r} is neither an MLflow model URI (models:/NAME/VERSION, runs:/ID/PATH), "
                             "an MLflow model folder nor an .onnx file")
    from mlflow.models import Model

    with tempfile.TemporaryDirectory(prefix="fedhub-package-") as tmp:
        say(f"fetching {source}")
        local = _mlflow_local_dir(source, Path(tmp), tracking_uri)
        try:
            mlmodel = Model.load(str(local))
        except Exception as exc:
            raise PackagingError(f"{source}: not an MLflow model: {exc}") from None
        flavours = [f for f in SUPPORTED_FLAVOURS if f in mlmodel.flavors]
        if not flavours:
            others = ", ".join(sorted(f for f in mlmodel.flavors if f != "python_function")) or "none"
            raise PackagingError(f"{source}: flavour {others} is not supported; expected one of "
                                 f"{', '.join(SUPPORTED_FLAVOURS)}")
        flavour = flavours[0]
        signature = mlmodel.signature
        if flavour == "onnx":
            onnx_path = local / mlmodel.flavors["onnx"].get("data", MODEL_FILE)
            model = onnx.load(str(onnx_path))
            config = config_for_graph(name, model, signature=signature, **opts)
            say(f"writing {name}/config.pbtxt and {name}/{version}/{MODEL_FILE}")
            model_dir, target = _write_repository_entry(onnx_path, repository, name, version, config)
            return PackagedModel(name, version, model_dir, target, config, source, flavour)
        if signature is None or not signature.inputs or not signature.outputs:
            raise PackagingError(f"{source}: the {flavour} model has no signature; log it with "
                                 "signature=mlflow.models.infer_signature(X, model.predict(X))")
        declared = config_from_signature(name, signature, **opts)  # fails early on bad signatures
        inputs = signature_tensors(signature.inputs, "input")
        outputs = signature_tensors(signature.outputs, "output")
        say(f"converting the {flavour} model to ONNX ({'skl2onnx' if flavour == 'sklearn' else 'torch.onnx'})")
        if flavour == "sklearn":
            import mlflow.sklearn
            model = sklearn_to_onnx(mlflow.sklearn.load_model(str(local)), inputs)
        else:
            import mlflow.pytorch
            onnx_path = Path(tmp) / MODEL_FILE
            pytorch_to_onnx(mlflow.pytorch.load_model(str(local), map_location="cpu"), inputs, outputs, onnx_path)
            model = onnx.load(str(onnx_path))
        config = config_for_graph(name, model, signature=signature, **opts)
        if bool(config.max_batch_size) != bool(declared.max_batch_size):
            raise PackagingError(f"{source}: the converted graph does not batch as the signature declares")
        say(f"writing {name}/config.pbtxt and {name}/{version}/{MODEL_FILE}")
        model_dir, target = _write_repository_entry(model.SerializeToString(), repository, name, version, config)
        return PackagedModel(name, version, model_dir, target, config, source, flavour)


def read_packaged_config(model_dir: str | Path) -> ModelConfig:
    """config.pbtxt of a packaged model, parsed back with the ModelConfig protobuf."""
    return read_config(model_dir)
