"""Build a signed edge bundle from an fp32 ONNX model (on the hub).

The model is quantised to int8 with onnxruntime's dynamic quantisation (weights stored as
int8, activations quantised at run time: no calibration data needed, and MatMul/Gemm-heavy
models shrink about 4x). fp32 and int8 are both scored on a held-out sample when one is
given (accuracy on labels), and always compared with each other (agreement of the
predicted classes, largest output difference), so the manifest says what quantising cost.
The manifest is signed with the hub's Ed25519 key (the provenance ledger's key).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort

from . import manifest as fmt

BUNDLE_SUFFIX = ".fedhub-edge.zip"
SAMPLE_ROWS = 256  # synthetic rows for the fp32-vs-int8 comparison when no held-out data is given
_ORT_TO_PROTOCOL = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16",
                    "tensor(int64)": "INT64", "tensor(int32)": "INT32", "tensor(int8)": "INT8",
                    "tensor(uint8)": "UINT8", "tensor(bool)": "BOOL", "tensor(string)": "BYTES"}
_PROTOCOL_TO_NUMPY = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64,
                      "INT32": np.int32, "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}


class BundleError(ValueError):
    """The model cannot be bundled; the message says why."""


CALIBRATION_ROWS = 128  # static quantisation: held-out rows whose activation ranges are measured
QUANTIZATION_METHODS = ("dynamic", "static")


def quantize_int8(fp32_model: Path, int8_model: Path, calibration: np.ndarray | None = None) -> Path:
    """int8 quantisation with onnxruntime.quantization. Without calibration rows: dynamic
    (weights int8, activations quantised at run time). With them: static, QDQ format,
    activation ranges calibrated on those rows (one input models)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic
    from onnxruntime.quantization import quantize_static

    try:
        if calibration is None:
            quantize_dynamic(str(fp32_model), str(int8_model), weight_type=QuantType.QInt8)
            return int8_model
        session = ort.InferenceSession(str(fp32_model), providers=["CPUExecutionProvider"])
        (inp,) = session.get_inputs()
        dtype = _PROTOCOL_TO_NUMPY.get(_ORT_TO_PROTOCOL.get(inp.type, ""), np.float32)
        batches = [{inp.name: calibration[i:i + 16].astype(dtype)} for i in range(0, len(calibration), 16)]

        class Rows(CalibrationDataReader):
            def __init__(self):
                self.rows = iter(batches)

            def get_next(self):
                return next(self.rows, None)

        quantize_static(str(fp32_model), str(int8_model), Rows(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    except Exception as exc:  # the quantiser raises bare exceptions on unsupported graphs
        raise BundleError(f"int8 quantisation failed: {exc}") from None
    return int8_model


def tensors(session: ort.InferenceSession) -> tuple[list[dict], list[dict]]:
    """The session's inputs and outputs as v2 metadata: name, datatype, shape (-1 open)."""
    def describe(values):
        out = []
        for v in values:
            datatype = _ORT_TO_PROTOCOL.get(v.type)
            if datatype is None:
                raise BundleError(f"tensor {v.name!r} of type {v.type} cannot be served by the edge agent")
            out.append({"name": v.name, "datatype": datatype,
                        "shape": [d if isinstance(d, int) and d > 0 else -1 for d in v.shape]})
        return out
    return describe(session.get_inputs()), describe(session.get_outputs())


def predicted_classes(outputs: dict[str, np.ndarray]) -> np.ndarray | None:
    """Class predictions: a `label` output, else the argmax of the first 2-D output."""
    if "label" in outputs:
        return np.asarray(outputs["label"]).reshape(-1)
    for value in outputs.values():
        if value.ndim == 2 and value.shape[1] > 1:
            return value.argmax(axis=1)
    return None


def _run(session: ort.InferenceSession, X: np.ndarray) -> dict[str, np.ndarray]:
    (inp,) = session.get_inputs()
    dtype = _PROTOCOL_TO_NUMPY.get(_ORT_TO_PROTOCOL.get(inp.type, ""), np.float32)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {inp.name: X.astype(dtype)})))


def synthetic_sample(inputs: list[dict], rows: int = SAMPLE_ROWS, seed: int = 0) -> np.ndarray:
    (inp,) = inputs
    shape = [rows] + [d if d > 0 else 1 for d in inp["shape"][1:]]
    return np.random.default_rng(seed).random(shape)


def compare(fp32_model: Path, int8_model: Path, X: np.ndarray | None = None, y: np.ndarray | None = None) -> dict:
    """Accuracy of fp32 and int8 on (X, y), their agreement and largest output difference."""
    fp32 = ort.InferenceSession(str(fp32_model), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(int8_model), providers=["CPUExecutionProvider"])
    if len(fp32.get_inputs()) != 1:
        raise BundleError("the fp32/int8 comparison needs a model with one input")
    sample = X if X is not None else synthetic_sample(tensors(fp32)[0])
    a, b = _run(fp32, sample), _run(int8, sample)
    report: dict = {"samples": int(len(sample)), "sample": "held-out" if y is not None else "synthetic",
                    "fp32": None, "int8": None, "agreement": None}
    floats = [k for k, v in a.items() if np.issubdtype(v.dtype, np.floating)]
    report["max_abs_diff"] = max((float(np.abs(a[k] - b[k]).max()) for k in floats), default=0.0)
    pa, pb = predicted_classes(a), predicted_classes(b)
    if pa is not None:
        report["agreement"] = round(float((pa == pb).mean()), 6)
        if y is not None:
            y = np.asarray(y).reshape(-1)
            report["fp32"] = round(float((pa == y).mean()), 6)
            report["int8"] = round(float((pb == y).mean()), 6)
    return report


def build_bundle(fp32_model: str | Path, out_dir: str | Path, *, name: str, version: int | str, key,
                 held_out: tuple[np.ndarray, np.ndarray] | None = None, provenance_id: str = "",
                 extra: dict | None = None, progress: Callable[[str], None] | None = None,
                 quantization: str = "dynamic") -> Path:
    """Quantise, score, sign and pack: returns `out_dir/NAME-VERSION.fedhub-edge.zip`.
    quantization "static" calibrates on the first CALIBRATION_ROWS held-out rows (inputs only;
    the labels are not used). `progress`, if given, is called with a line per step."""
    say = progress or (lambda message: None)
    if quantization not in QUANTIZATION_METHODS:
        raise BundleError(f"quantization must be one of {', '.join(QUANTIZATION_METHODS)}, got {quantization!r}")
    if quantization == "static" and held_out is None:
        raise BundleError("static quantization calibrates on held-out rows: give a held-out sample")
    fp32_model = Path(fp32_model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fedhub-bundle-") as tmp:
        content = Path(tmp) / "bundle"
        content.mkdir()
        X, y = held_out if held_out is not None else (None, None)
        calibration = X[:CALIBRATION_ROWS] if quantization == "static" else None
        say(f"quantising to int8 (onnxruntime {quantization} quantisation"
            + (f", calibrated on {len(calibration)} held-out rows)" if calibration is not None else ")"))
        int8_model = quantize_int8(fp32_model, content / fmt.MODEL, calibration)
        say(f"comparing fp32 and int8 on {len(X)} held-out rows" if X is not None
            else f"comparing fp32 and int8 on {SAMPLE_ROWS} synthetic rows (no held-out sample)")
        accuracy = compare(fp32_model, int8_model, X, y)
        inputs, outputs = tensors(ort.InferenceSession(str(int8_model), providers=["CPUExecutionProvider"]))
        say(f"signing the manifest with the hub key {fmt.key_id(key.public_key())}")
        fmt.sign_directory(content, {
            "name": name, "version": str(version), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "provenance_id": provenance_id, "inputs": inputs, "outputs": outputs,
            "quantization": {"method": quantization, "weights": "int8", "tool": f"onnxruntime {ort.__version__}",
                             **({"format": "QDQ", "activations": "int8", "calibration_rows": len(calibration)}
                                if calibration is not None else {})},
            "accuracy": accuracy,
            "sizes": {"fp32_bytes": fp32_model.stat().st_size, "int8_bytes": int8_model.stat().st_size},
            **(extra or {}),
        }, key)
        archive = out_dir / f"{name}-{version}{BUNDLE_SUFFIX}"
        return fmt.pack(content, archive)


def read_manifest(archive: str | Path) -> dict:
    """The manifest inside a bundle archive (unverified: for display on the hub)."""
    import zipfile
    with zipfile.ZipFile(archive) as zf:
        return json.loads(zf.read(fmt.MANIFEST))


def hub_key(state_dir: str | Path):
    """The hub's signing key: the provenance ledger's, created on first use in the data dir."""
    from ...ledger import Ledger
    return Ledger(state_dir).key


def load_held_out(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A held-out sample saved with numpy.savez(path, X=..., y=...)."""
    try:
        with np.load(path) as data:
            return data["X"], data["y"]
    except (OSError, KeyError, ValueError) as exc:
        raise BundleError(f"options.held_out {path}: expected an .npz file with arrays X and y ({exc})") from None


def build_bundle_for_deployment(staged: str | Path, out_dir: str | Path, state_dir: str | Path, record: dict,
                                version: int, options: dict, progress: Callable[[str], None] | None = None) -> Path:
    """The deployment manager's step: the packaged repository entry (staged = REPO/NAME with
    config.pbtxt and VERSION/model.onnx) -> a bundle in out_dir, signed with the hub's key.
    options: `held_out` (an .npz with X and y on the hub) for accuracy figures,
    `quantization` ("dynamic", the default, or "static": calibrated on held-out rows)."""
    staged = Path(staged)
    model = staged / str(version) / fmt.MODEL
    if not model.is_file():
        found = sorted(staged.glob(f"*/{fmt.MODEL}"))
        if not found:
            raise BundleError(f"{staged}: no packaged ONNX model to bundle")
        model = found[-1]
    held_out = load_held_out(options["held_out"]) if options.get("held_out") else None
    with tempfile.TemporaryDirectory(prefix="fedhub-bundle-src-") as tmp:
        copy = Path(tmp) / fmt.MODEL
        shutil.copyfile(model, copy)
        return build_bundle(copy, out_dir, name=record.get("model_name") or record["name"], version=version,
                            key=hub_key(state_dir), held_out=held_out,
                            provenance_id=str(record.get("provenance_id") or record.get("id") or ""),
                            extra={"deployment": {"id": record.get("id"), "owner": record.get("owner"),
                                                  "target": record.get("target")}}, progress=progress,
                            quantization=options.get("quantization", "dynamic"))
