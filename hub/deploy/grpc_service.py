"""The GRPCInferenceService of tritonclient's `service_pb2_grpc` on grpc.aio.

Tensors arrive either as `raw_input_contents` (tritonclient's way) or as typed `contents`;
outputs always go back as `raw_output_contents`. Refusals become gRPC status codes:
INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE, UNAUTHENTICATED.
"""

from __future__ import annotations

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from .inference import InferRequest, InferResponse, Tensor
from .model_config import ModelConfigError, config_from_json
from .tensors import (InferenceServerError, InvalidArgument, Unauthenticated, element_count,
                      from_raw, numpy_dtype, to_raw)

CODES = {"invalid": grpc.StatusCode.INVALID_ARGUMENT, "not_found": grpc.StatusCode.NOT_FOUND,
         "unavailable": grpc.StatusCode.UNAVAILABLE, "unauthenticated": grpc.StatusCode.UNAUTHENTICATED}
# typed contents field per protocol datatype (FP16/BF16 only travel raw)
CONTENTS_FIELD = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
                  "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
                  "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
                  "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}
PUBLIC = {"ServerLive", "ServerReady"}


def _protocol_errors(method):
    """Turn InferenceServerError into the matching status code; check the token first."""
    name = method.__name__

    async def wrapper(self, request, context):
        try:
            if name not in PUBLIC and self.server.authorize is not None:
                await self._check_token(context)
            return await method(self, request, context)
        except InferenceServerError as exc:
            await context.abort(CODES.get(exc.kind, grpc.StatusCode.INVALID_ARGUMENT), str(exc))
        except ModelConfigError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    wrapper.__name__ = name
    return wrapper


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, server):
        self.server = server

    async def _check_token(self, context) -> None:
        metadata = dict(context.invocation_metadata() or ())
        await self.server.check_token(metadata.get("authorization", ""))

    @_protocol_errors
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    @_protocol_errors
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.server.ready)

    @_protocol_errors
    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self.server.repository.is_ready(request.name, request.version))

    @_protocol_errors
    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(**self.server.metadata())

    @_protocol_errors
    async def ModelMetadata(self, request, context):
        repository = self.server.repository
        meta = repository.get(request.name, request.version).metadata(repository.versions_of(request.name))
        tensors = lambda items: [pb.ModelMetadataResponse.TensorMetadata(**t) for t in items]  # noqa: E731
        return pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"],
                                        platform=meta["platform"], inputs=tensors(meta["inputs"]),
                                        outputs=tensors(meta["outputs"]))

    @_protocol_errors
    async def ModelConfig(self, request, context):
        response = pb.ModelConfigResponse()
        response.config.CopyFrom(self.server.repository.get(request.name, request.version).config)
        return response

    @_protocol_errors
    async def ModelStatistics(self, request, context):
        response = pb.ModelStatisticsResponse()
        for row in self.server.statistics(request.name, request.version):
            stats = response.model_stats.add(name=row["name"], version=row["version"],
                                             inference_count=row["inference_count"],
                                             execution_count=row["execution_count"])
            stats.inference_stats.success.count = row["inference_stats"]["success"]["count"]
            stats.inference_stats.fail.count = row["inference_stats"]["fail"]["count"]
            for batch in row["batch_stats"]:
                stats.batch_stats.add(batch_size=batch["batch_size"]).compute_infer.count = \
                    batch["compute_infer"]["count"]
        return response

    @_protocol_errors
    async def RepositoryIndex(self, request, context):
        response = pb.RepositoryIndexResponse()
        for row in self.server.repository.index():
            if request.ready and row.get("state") != "READY":
                continue
            response.models.add(**row)
        return response

    @_protocol_errors
    async def RepositoryModelLoad(self, request, context):
        config = None
        for key in request.parameters:
            if key.startswith("file:"):
                raise InvalidArgument("loading model files through the request is not supported; "
                                      "put them in the model repository")
        if "config" in request.parameters:
            config = config_from_json(request.parameters["config"].string_param,
                                      f"load request for '{request.model_name}'")
        await self.server.repository.load(request.model_name, config)
        return pb.RepositoryModelLoadResponse()

    @_protocol_errors
    async def RepositoryModelUnload(self, request, context):
        await self.server.repository.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    @_protocol_errors
    async def ModelInfer(self, request, context):
        found = self.server.repository.get(request.model_name, request.model_version)
        response = await found.infer(parse_infer_request(request))
        return build_infer_response(response)


    # Shared memory, trace and log settings are not served: status calls say "no regions",
    # the rest answer UNIMPLEMENTED with a message (not the generated stub's traceback).
    @_protocol_errors
    async def SystemSharedMemoryStatus(self, request, context):
        return pb.SystemSharedMemoryStatusResponse()

    @_protocol_errors
    async def CudaSharedMemoryStatus(self, request, context):
        return pb.CudaSharedMemoryStatusResponse()

    async def _unimplemented(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            "not supported by fedhub's embedded inference server")

    SystemSharedMemoryRegister = SystemSharedMemoryUnregister = _unimplemented
    CudaSharedMemoryRegister = CudaSharedMemoryUnregister = _unimplemented
    TraceSetting = LogSettings = _unimplemented

    async def ModelStreamInfer(self, request_iterator, context):
        """Streaming inference: one response per request, errors in `error_message` (Triton's
        non-decoupled stream behaviour), so one bad request does not end the stream."""
        if self.server.authorize is not None:
            try:
                await self._check_token(context)
            except Unauthenticated as exc:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        async for request in request_iterator:
            try:
                found = self.server.repository.get(request.model_name, request.model_version)
                response = await found.infer(parse_infer_request(request))
                yield pb.ModelStreamInferResponse(infer_response=build_infer_response(response))
            except (InferenceServerError, ModelConfigError) as exc:
                yield pb.ModelStreamInferResponse(error_message=str(exc), infer_response=pb.ModelInferResponse(
                    model_name=request.model_name, model_version=request.model_version, id=request.id))


def parse_infer_request(message: pb.ModelInferRequest) -> InferRequest:
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidArgument(f"{len(raw)} raw_input_contents for {len(message.inputs)} inputs")
    request = InferRequest(message.model_name, message.model_version, message.id,
                           parameters={k: _parameter_value(v) for k, v in message.parameters.items()})
    for i, item in enumerate(message.inputs):
        shape = list(item.shape)
        if item.name in request.inputs:
            raise InvalidArgument(f"input '{item.name}' is given twice")
        if "shared_memory_region" in item.parameters:
            raise InvalidArgument("shared memory inputs are not supported by this server")
        if raw:
            data = from_raw(raw[i], item.datatype, shape)
        else:
            data = _from_contents(item, shape)
        request.inputs[item.name] = Tensor(item.name, item.datatype, shape, data)
    request.requested_outputs = [o.name for o in message.outputs]
    return request


def _from_contents(item, shape) -> np.ndarray:
    field = CONTENTS_FIELD.get(item.datatype)
    if field is None:
        numpy_dtype(item.datatype)  # unknown datatype -> its own error
        raise InvalidArgument(f"input '{item.name}': {item.datatype} data must be sent as raw contents")
    values = list(getattr(item.contents, field))
    if len(values) != element_count(shape):
        raise InvalidArgument(f"input '{item.name}': {len(values)} values for shape {shape} "
                              f"({element_count(shape)} expected)")
    return np.array(values, dtype=numpy_dtype(item.datatype)).reshape(shape)


def _parameter_value(parameter: pb.InferParameter):
    kind = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, kind) if kind else None


def build_infer_response(response: InferResponse) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(model_name=response.model_name,
                                    model_version=response.model_version, id=response.id)
    for tensor in response.outputs:
        message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape))
        message.raw_output_contents.append(to_raw(tensor.data, tensor.datatype))
    return message
