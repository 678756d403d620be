"""KServe v2 / Triton HTTP/REST endpoints (tornado), with Triton's binary tensor data extension.

Binary data extension: the body is a JSON header of `Inference-Header-Content-Length` bytes
followed by raw tensors, in input order, for inputs whose `parameters.binary_data_size` is
set; outputs come back the same way when asked for (`binary_data` per output or
`binary_data_output` for all), which is tritonclient's default. Errors are `{"error": msg}`.
"""

from __future__ import annotations

import gzip
import json
import logging
import zlib

import tornado.web

from .inference import InferRequest, InferResponse, Tensor
from .model_config import ModelConfigError, config_from_json, config_to_dict
from .tensors import (InferenceServerError, InvalidArgument, NotFound, from_list, from_raw, to_list,
                      to_raw)

log = logging.getLogger("fedhub.deploy.http")
HEADER_LENGTH = "Inference-Header-Content-Length"
STATUS = {"invalid": 400, "not_found": 404, "unavailable": 400, "unauthenticated": 401}
MODEL = r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?"


class Handler(tornado.web.RequestHandler):
    """Base: JSON replies, protocol errors as {"error"}, the optional token check."""

    public = False  # health endpoints answer without a token, like load balancer probes need

    def initialize(self, server):
        self.server = server

    async def prepare(self):
        if not self.public and self.server.authorize is not None:
            await self.server.check_token(self.request.headers.get("Authorization", ""))

    def check_xsrf_cookie(self):  # an API for programs: no cookies, no XSRF
        pass

    def reply(self, body=None):
        if body is None:
            self.finish()
        else:
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps(body))

    def json_body(self) -> dict:
        if not self.request.body:
            return {}
        try:
            body = json.loads(self.request.body)
        except ValueError as exc:
            raise InvalidArgument(f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidArgument("request body must be a JSON object")
        return body

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None))[1]
        message = str(exc) if isinstance(exc, (InferenceServerError, tornado.web.HTTPError)) and str(exc) \
            else self._reason
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message}))

    def log_exception(self, typ, value, tb):
        if isinstance(value, InferenceServerError):
            return  # a refused request, answered with its error; not a server fault
        super().log_exception(typ, value, tb)

    def _handle_request_exception(self, e):
        if isinstance(e, InferenceServerError):
            self.send_error(STATUS.get(e.kind, 400), exc_info=(type(e), e, e.__traceback__))
        elif isinstance(e, ModelConfigError):
            self.send_error(400, exc_info=(InvalidArgument, InvalidArgument(str(e)), None))
        else:
            super()._handle_request_exception(e)


class Live(Handler):
    public = True

    def get(self):
        self.reply()


class Ready(Handler):
    public = True

    def get(self):
        if not self.server.ready:
            self.set_status(400)
        self.reply()


class ServerMetadata(Handler):
    def get(self):
        self.reply(self.server.metadata())


class ModelMetadata(Handler):
    def get(self, model, version=None):
        found = self.server.repository.get(model, version or "")
        self.reply(found.metadata(self.server.repository.versions_of(model)))


class ModelReady(Handler):
    def get(self, model, version=None):
        if not self.server.repository.is_ready(model, version or ""):
            self.set_status(400)
        self.reply()


class ModelConfig(Handler):
    def get(self, model, version=None):
        self.reply(config_to_dict(self.server.repository.get(model, version or "").config))


class ModelStats(Handler):
    def get(self, model=None, version=None):
        self.reply({"model_stats": self.server.statistics(model or "", version or "")})


class RepositoryIndex(Handler):
    def post(self):
        ready_only = bool(self.json_body().get("ready", False))
        rows = self.server.repository.index()
        self.reply([r for r in rows if not ready_only or r.get("state") == "READY"])


class RepositoryLoad(Handler):
    async def post(self, model):
        parameters = self.json_body().get("parameters") or {}
        config = None
        for key in parameters:
            if key.startswith("file:"):
                raise InvalidArgument("loading model files through the request is not supported; "
                                      "put them in the model repository")
        if "config" in parameters:
            config = config_from_json(str(parameters["config"]), f"load request for '{model}'")
        await self.server.repository.load(model, config)
        self.reply()


class RepositoryUnload(Handler):
    async def post(self, model):
        await self.server.repository.unload(model)
        self.reply()


class Infer(Handler):
    async def post(self, model, version=None):
        found = self.server.repository.get(model, version or "")  # unknown model: 404 first
        header, binary = self._split_body()
        request = parse_infer_request(header, binary, model, version or "")
        response = await found.infer(request)
        self._send(response, header)

    def _split_body(self) -> tuple[dict, memoryview]:
        body = self.request.body
        encoding = self.request.headers.get("Content-Encoding", "").lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
        except (OSError, zlib.error) as exc:
            raise InvalidArgument(f"cannot decompress the {encoding} request body: {exc}") from None
        length = self.request.headers.get(HEADER_LENGTH)
        if length is None:
            json_part, binary = body, memoryview(b"")
        else:
            if not length.isdigit() or int(length) > len(body):
                raise InvalidArgument(f"{HEADER_LENGTH} {length!r} does not fit a body of {len(body)} bytes")
            json_part, binary = body[:int(length)], memoryview(body)[int(length):]
        try:
            header = json.loads(json_part)
        except ValueError as exc:
            raise InvalidArgument(f"inference request header is not valid JSON: {exc}") from None
        if not isinstance(header, dict):
            raise InvalidArgument("inference request must be a JSON object")
        return header, binary

    def _send(self, response: InferResponse, header: dict):
        all_binary = bool((header.get("parameters") or {}).get("binary_data_output", False))
        wanted = {o.get("name"): bool((o.get("parameters") or {}).get("binary_data", all_binary))
                  for o in header.get("outputs") or [] if isinstance(o, dict)}
        outputs, chunks = [], []
        for tensor in response.outputs:
            entry = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
            if wanted.get(tensor.name, all_binary):
                raw = to_raw(tensor.data, tensor.datatype)
                entry["parameters"] = {"binary_data_size": len(raw)}
                chunks.append(raw)
            else:
                entry["data"] = to_list(tensor.data, tensor.datatype)
            outputs.append(entry)
        body = {"model_name": response.model_name, "model_version": response.model_version,
                "outputs": outputs}
        if response.id:
            body["id"] = response.id
        encoded = json.dumps(body).encode()
        if chunks:
            self.set_header(HEADER_LENGTH, str(len(encoded)))
            self.set_header("Content-Type", "application/octet-stream")
            payload = b"".join([encoded, *chunks])
        else:
            self.set_header("Content-Type", "application/json")
            payload = encoded
        # tritonclient's response_compression_algorithm asks for one of these
        accepted = self.request.headers.get("Accept-Encoding", "")
        if "gzip" in accepted:
            self.set_header("Content-Encoding", "gzip")
            payload = gzip.compress(payload, compresslevel=1)
        elif "deflate" in accepted:
            self.set_header("Content-Encoding", "deflate")
            payload = zlib.compress(payload, 1)
        self.finish(payload)


def parse_infer_request(header: dict, binary: memoryview, model: str, version: str) -> InferRequest:
    """The JSON header (+ binary tail) of a v2 infer request -> InferRequest."""
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidArgument("inference request needs a non-empty 'inputs' list")
    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidArgument("'parameters' must be a JSON object")
    # binary_data_output is about this wire format, not for the model (Triton drops it too)
    request = InferRequest(model, version, str(header.get("id", "")),
                           parameters={k: v for k, v in parameters.items() if k != "binary_data_output"})
    offset = 0
    for item in inputs:
        if not isinstance(item, dict):
            raise InvalidArgument("each input must be a JSON object")
        try:
            name, datatype = str(item["name"]), str(item["datatype"])
            shape = [int(d) for d in item["shape"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"input needs name, datatype and an integer shape ({exc!r})") from None
        if name in request.inputs:
            raise InvalidArgument(f"input '{name}' is given twice")
        parameters = item.get("parameters") or {}
        if "shared_memory_region" in parameters:
            raise InvalidArgument("shared memory inputs are not supported by this server")
        if "binary_data_size" in parameters:
            size = int(parameters["binary_data_size"])
            if size < 0 or offset + size > len(binary):
                raise InvalidArgument(f"input '{name}': binary_data_size {size} runs past the "
                                      f"{len(binary)} bytes of binary data")
            data = from_raw(binary[offset:offset + size], datatype, shape)
            offset += size
        elif "data" in item:
            data = from_list(item["data"], datatype, shape)
        else:
            raise InvalidArgument(f"input '{name}' has neither 'data' nor binary data")
        request.inputs[name] = Tensor(name, datatype, shape, data)
    if offset != len(binary):
        raise InvalidArgument(f"{len(binary) - offset} bytes of binary data are not claimed by any input")
    for output in header.get("outputs") or []:
        if not isinstance(output, dict) or "name" not in output:
            raise InvalidArgument("each requested output must be an object with a 'name'")
        request.requested_outputs.append(str(output["name"]))
    return request


class SharedMemoryStatus(Handler):
    def get(self, region=None):
        self.reply([])  # no region is ever registered here


class NotSupported(Handler):
    def get(self, *args):
        raise InvalidArgument(f"{self.request.path} is not supported by fedhub's embedded inference server")

    post = get


def make_app(server) -> tornado.web.Application:
    args = {"server": server}
    return tornado.web.Application([
        (r"/v2/health/live", Live, args),
        (r"/v2/health/ready", Ready, args),
        (r"/v2", ServerMetadata, args),
        (r"/v2/models/stats", ModelStats, args),
        (MODEL + r"/ready", ModelReady, args),
        (MODEL + r"/config", ModelConfig, args),
        (MODEL + r"/stats", ModelStats, args),
        (MODEL + r"/infer", Infer, args),
        (MODEL, ModelMetadata, args),
        (r"/v2/repository/index", RepositoryIndex, args),
        (r"/v2/repository/models/(?P<model>[^/]+)/load", RepositoryLoad, args),
        (r"/v2/repository/models/(?P<model>[^/]+)/unload", RepositoryUnload, args),
        (r"/v2/(?:system|cuda)sharedmemory(?:/region/(?P<region>[^/]+))?/status", SharedMemoryStatus, args),
        (r"/v2/(?:system|cuda)sharedmemory/.*", NotSupported, args),
        (r"/v2(?:/models/[^/]+)?/trace/setting", NotSupported, args),
        (r"/v2/logging", NotSupported, args),
    ], default_handler_class=NotFoundHandler, default_handler_args=args)


class NotFoundHandler(Handler):
    public = True

    def prepare(self):
        raise NotFound(f"no such endpoint: {self.request.method} {self.request.path}")
