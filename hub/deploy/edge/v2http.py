"""A minimal KServe v2 / Triton HTTP endpoint for one ONNX model, for edge devices.

The hub's embedded server (fedhub.hub.deploy.server) needs tornado, grpcio and tritonclient's
protobufs; a device should not. This serves the same HTTP protocol with the standard
library's threaded HTTP server: health, server and model metadata, model ready and infer,
JSON tensors and Triton's binary tensor data extension (tritonclient's default). The wire
codec is shared with the embedded server (fedhub.hub.deploy.tensors: numpy only).
Errors are `{"error": message}` with a 4xx status; the server never dies of a bad request.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import onnxruntime as ort

from ..tensors import InferenceServerError, InvalidArgument, NotFound, from_list, from_raw, to_list, to_raw

HEADER_LENGTH = "Inference-Header-Content-Length"
MODEL_PATH = re.compile(r"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<rest>/ready|/infer)?$")
MAX_BODY = 256 * 1024**2
SERVER_NAME = "fedhub-edge"
_ORT_DTYPES = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16",
               "tensor(int64)": "INT64", "tensor(int32)": "INT32", "tensor(int8)": "INT8",
               "tensor(uint8)": "UINT8", "tensor(bool)": "BOOL", "tensor(string)": "BYTES"}


@dataclass
class LoadedModel:
    """An onnxruntime session with its v2 metadata; `name`/`version` come from the manifest."""
    name: str
    version: str
    session: ort.InferenceSession
    inputs: list[dict]
    outputs: list[dict]
    bundle_id: str = ""

    @classmethod
    def load(cls, path, name: str, version: str, bundle_id: str = "") -> "LoadedModel":
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # devices are small; requests run in parallel threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def describe(values):
            return [{"name": v.name, "datatype": _ORT_DTYPES.get(v.type, "BYTES"),
                     "shape": [d if isinstance(d, int) and d > 0 else -1 for d in v.shape]} for v in values]
        return cls(name, str(version), session, describe(session.get_inputs()), describe(session.get_outputs()),
                   bundle_id)

    def smoke_test(self) -> None:
        """Run one all-zeros row: a model that loads but cannot run fails here, before serving."""
        feeds = {}
        for t in self.inputs:
            shape = [1 if d < 0 else d for d in t["shape"]]
            if t["datatype"] == "BYTES":
                feeds[t["name"]] = np.full(shape, "", dtype=object)
            else:
                feeds[t["name"]] = np.zeros(shape, dtype=from_list([], t["datatype"], [0]).dtype)
        self.session.run(None, feeds)

    def infer(self, arrays: dict[str, np.ndarray], wanted: list[str]) -> dict[str, np.ndarray]:
        known = {t["name"]: t for t in self.inputs}
        missing = sorted(set(known) - set(arrays))
        if missing:
            raise InvalidArgument(f"expected inputs {sorted(known)}, missing {missing}")
        for name, array in arrays.items():
            spec = known.get(name)
            if spec is None:
                raise InvalidArgument(f"unexpected input {name!r}; the model takes {sorted(known)}")
            if len(array.shape) != len(spec["shape"]) or any(
                    d != -1 and d != a for d, a in zip(spec["shape"], array.shape)):
                raise InvalidArgument(f"input {name!r}: shape {list(array.shape)} does not match {spec['shape']}")
        names = [t["name"] for t in self.outputs]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise InvalidArgument(f"unknown outputs {unknown}; the model has {names}")
        try:
            results = self.session.run(wanted or names, arrays)
        except Exception as exc:  # onnxruntime's own argument errors
            raise InvalidArgument(f"inference failed: {exc}") from None
        return dict(zip(wanted or names, results))


class V2Server:
    """Serves whatever `model` currently is (swapped atomically by the agent) on host:port."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.model: LoadedModel | None = None
        self.httpd = ThreadingHTTPServer((host, port), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.v2 = self
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def start(self) -> "V2Server":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="fedhub-edge-v2", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:  # shutdown() waits for serve_forever: only if it runs
            self.httpd.shutdown()
            self._thread = None
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: tritonclient reuses connections
    server_version = SERVER_NAME

    def log_message(self, format, *args):  # noqa: A002 - quiet: the agent logs what matters
        pass

    # ------------------------------------------------------------ plumbing
    def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {"Content-Type": "application/json"}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, doc) -> None:
        self._send(status, json.dumps(doc).encode())

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _model(self, name: str, version: str | None) -> LoadedModel:
        model = self.server.v2.model
        if model is None or model.name != name:
            raise NotFound(f"Request for unknown model: '{name}' is not found")
        if version not in (None, "", model.version):
            raise NotFound(f"Request for unknown model: '{name}' version {version} is not found")
        return model

    def _route(self, method: str):
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            if method == "GET" and path in ("/v2/health/live", "/v2/health/ready"):
                ready = path.endswith("live") or self.server.v2.model is not None
                return self._send(200 if ready else 400, b"")
            if method == "GET" and path == "/v2":
                return self._json(200, {"name": SERVER_NAME, "version": "1", "extensions": ["binary_tensor_data"]})
            match = MODEL_PATH.match(path)
            if not match:
                return self._error(404, f"no route {method} {path}")
            model = self._model(match["model"], match["version"])
            rest = match["rest"]
            if method == "GET" and rest is None:
                return self._json(200, {"name": model.name, "versions": [model.version], "platform": "onnxruntime_onnx",
                                        "inputs": model.inputs, "outputs": model.outputs})
            if method == "GET" and rest == "/ready":
                return self._send(200, b"")
            if method == "POST" and rest == "/infer":
                return self._infer(model)
            return self._error(405, f"{method} is not allowed on {path}")
        except InferenceServerError as exc:
            self._error(404 if exc.kind == "not_found" else 400, str(exc))
        except Exception as exc:  # a bug must not kill the serving thread or leak a traceback
            self._error(400, f"request failed: {type(exc).__name__}: {exc}")

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._route("GET")

    def do_POST(self):  # noqa: N802
        # read the whole body first: an error reply with unread bytes left on a keep-alive
        # connection would corrupt the client's next request
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            return self._error(400, f"request body of {length} bytes is over the {MAX_BODY} byte limit")
        self._body = self.rfile.read(length)
        self._route("POST")

    # ------------------------------------------------------------ infer
    def _infer(self, model: LoadedModel) -> None:
        body = self._body
        if self.headers.get("Content-Encoding"):
            raise InvalidArgument("compressed requests are not supported by the edge agent")
        header_length = int(self.headers.get(HEADER_LENGTH) or len(body))
        try:
            request = json.loads(body[:header_length])
        except ValueError as exc:
            raise InvalidArgument(f"request header is not JSON: {exc}") from None
        binary, offset = memoryview(body)[header_length:], 0
        arrays = {}
        for tensor in request.get("inputs") or []:
            try:
                name, datatype, shape = tensor["name"], tensor["datatype"], [int(d) for d in tensor["shape"]]
            except (KeyError, TypeError, ValueError):
                raise InvalidArgument("each input needs name, datatype and shape") from None
            size = (tensor.get("parameters") or {}).get("binary_data_size")
            if size is not None:
                arrays[name] = from_raw(binary[offset:offset + int(size)], datatype, shape)
                offset += int(size)
            else:
                arrays[name] = from_list(tensor.get("data", []), datatype, shape)
            declared = {t["name"]: t["datatype"] for t in model.inputs}.get(name)
            if declared and declared != datatype:
                raise InvalidArgument(f"input {name!r}: datatype {datatype}, the model expects {declared}")
        all_binary = bool((request.get("parameters") or {}).get("binary_data_output"))
        asked = request.get("outputs") or []
        wanted = [o["name"] for o in asked]
        results = model.infer(arrays, wanted)
        flags = {o["name"]: (o.get("parameters") or {}).get("binary_data", all_binary) for o in asked}
        outputs, blobs = [], []
        datatypes = {t["name"]: t["datatype"] for t in model.outputs}
        for name, array in results.items():
            datatype = datatypes[name]
            entry = {"name": name, "datatype": datatype, "shape": list(array.shape)}
            if flags.get(name, all_binary):
                raw = to_raw(array, datatype)
                entry["parameters"] = {"binary_data_size": len(raw)}
                blobs.append(raw)
            else:
                entry["data"] = to_list(array, datatype)
            outputs.append(entry)
        reply = {"model_name": model.name, "model_version": model.version, "outputs": outputs}
        if "id" in request:
            reply["id"] = request["id"]
        header = json.dumps(reply).encode()
        if not blobs:
            return self._send(200, header)
        self._send(200, header + b"".join(blobs), {"Content-Type": "application/octet-stream",
                                                   HEADER_LENGTH: str(len(header))})
