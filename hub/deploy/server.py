"""The embedded Triton-protocol inference server: HTTP/REST and gRPC in one asyncio loop.

    python -m fedhub.hub.deploy.server --model-repository DIR --http-port 8000 --grpc-port 8001
    python -m fedhub.hub.deploy.server --model-repository s3://bucket/prefix [--cache-dir DIR] ...

An s3:// repository (Triton's URI forms, fedhub.hub.deploy.s3repo) is served from a local
cache: each model is copied from the store when it loads. Keys come from the environment.

`InferenceServer` is the programmatic form (the edge agent embeds it). `authorize`, when set,
is called (sync or async) with the bearer token of every request except the health probes,
so the hub can front the server with its own tokens.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import shutil
import signal
import socket
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Awaitable, Callable

import grpc
import tornado.httpserver
import tornado.netutil
from traitlets import Integer, Unicode
from traitlets.config import Application
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from .grpc_service import InferenceServicer
from .http import make_app
from .repository import ModelRepository
from .s3repo import S3ModelRepository, is_s3_uri
from .tensors import Unauthenticated

log = logging.getLogger("fedhub.deploy")
SERVER_NAME = "fedhub"
EXTENSIONS = ["model_repository", "model_configuration", "statistics",
              "binary_tensor_data"]
GRPC_MAX_MESSAGE = 2**31 - 1  # what tritonclient's channel allows


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("fedhub")
    except Exception:
        return "0"


class InferenceServer:
    def __init__(self, model_repository: str | Path, host: str = "127.0.0.1", http_port: int = 8000,
                 grpc_port: int = 8001,
                 authorize: Callable[[str], bool | Awaitable[bool]] | None = None,
                 workers: int = 4, cache_dir: str | Path | None = None):
        self.model_repository = model_repository if is_s3_uri(model_repository) else Path(model_repository)
        self.host, self.cache_dir = host, cache_dir
        self._own_cache: str | None = None
        self.http_port, self.grpc_port = http_port, grpc_port
        self.authorize, self.workers = authorize, workers
        self.ready = False
        self.repository: ModelRepository | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._http: tornado.httpserver.HTTPServer | None = None
        self._grpc: grpc.aio.Server | None = None

    async def check_token(self, header_value: str) -> None:
        """Raise Unauthenticated unless `header_value` ("Bearer TOKEN") passes `authorize`,
        which may be a plain function or a coroutine function (e.g. one asking the hub)."""
        scheme, _, token = str(header_value or "").partition(" ")
        allowed = False
        if scheme.lower() in ("bearer", "token") and token.strip():
            allowed = self.authorize(token.strip())
            if inspect.isawaitable(allowed):
                allowed = await allowed
        if not allowed:
            raise Unauthenticated("a valid bearer token is required")

    def metadata(self) -> dict:
        return {"name": SERVER_NAME, "version": _version(), "extensions": EXTENSIONS}

    def statistics(self, name: str = "", version: str = "") -> list[dict]:
        """Per loaded model version, in the shape of Triton's model statistics."""
        rows = []
        for model_name, entry in sorted(self.repository.models.items()):
            if name and model_name != name:
                continue
            for number, loaded in sorted(entry.versions.items()):
                if version and str(number) != version:
                    continue
                stats = loaded.scheduler.stats
                rows.append({
                    "name": model_name, "version": str(number),
                    "inference_count": stats.inference_count, "execution_count": stats.execution_count,
                    "inference_stats": {"success": {"count": stats.success_count, "ns": 0},
                                        "fail": {"count": stats.fail_count, "ns": 0}},
                    "batch_stats": [{"batch_size": size, "compute_infer": {"count": count, "ns": 0}}
                                    for size, count in sorted(stats.batch_sizes.items())]})
        if name and not rows:
            self.repository.get(name, version)  # raises NotFound / Unavailable
        return rows

    async def start(self) -> "InferenceServer":
        """Load the repository's models, then listen; ports given as 0 are chosen by the OS."""
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="fedhub-infer")
        if is_s3_uri(self.model_repository):
            remote = S3ModelRepository.from_uri(self.model_repository, setting="--model-repository")
            if not self.cache_dir:  # as Triton does: a temporary copy, removed when the server stops
                self.cache_dir = self._own_cache = tempfile.mkdtemp(prefix="fedhub-s3-models-")
            self.repository = ModelRepository(self.cache_dir, self._executor, remote=remote)
        else:
            self.repository = ModelRepository(self.model_repository, self._executor)
        await self.repository.load_all()
        try:
            sockets = tornado.netutil.bind_sockets(self.http_port, self.host, family=socket.AF_INET)
        except OSError as exc:
            raise OSError(f"HTTP port {self.host}:{self.http_port}: {exc.strerror}") from None
        self.http_port = sockets[0].getsockname()[1]
        self._http = tornado.httpserver.HTTPServer(make_app(self), max_body_size=1 << 30,
                                                   max_buffer_size=1 << 30)
        self._http.add_sockets(sockets)
        self._grpc = grpc.aio.server(options=[("grpc.max_receive_message_length", GRPC_MAX_MESSAGE),
                                              ("grpc.max_send_message_length", GRPC_MAX_MESSAGE)])
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(self), self._grpc)
        try:
            self.grpc_port = self._grpc.add_insecure_port(f"{self.host}:{self.grpc_port}")
        except RuntimeError:
            raise OSError(f"gRPC port {self.host}:{self.grpc_port}: cannot listen there "
                          "(address in use?)") from None
        await self._grpc.start()
        self.ready = True
        log.info("serving %s: HTTP on http://%s:%d, gRPC on %s:%d", self.model_repository,
                 self.host, self.http_port, self.host, self.grpc_port)
        return self

    async def stop(self, grace: float = 5.0) -> None:
        """Stop listening, let requests in flight finish (up to `grace` s), unload models."""
        self.ready = False
        if self._http is not None:
            self._http.stop()
            try:
                await asyncio.wait_for(self._http.close_all_connections(), max(grace, 0.1))
            except asyncio.TimeoutError:
                log.warning("HTTP connections still open after %.0f s; closing anyway", grace)
        if self._grpc is not None:
            await self._grpc.stop(grace)
        if self.repository is not None:
            await self.repository.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if self._own_cache:
            shutil.rmtree(self._own_cache, ignore_errors=True)


class InferenceServerApp(Application):
    name = "fedhub-inference-server"
    description = "Serve a Triton model repository over the KServe v2 / Triton HTTP and gRPC protocols."

    model_repository = Unicode(help="Triton model repository to serve: NAME/config.pbtxt and "
                                    "NAME/VERSION/model files, in a folder or in S3 (s3://bucket/prefix, "
                                    "s3://host:port/bucket/prefix; keys from $AWS_ACCESS_KEY_ID and "
                                    "$AWS_SECRET_ACCESS_KEY, endpoint also from $FEDHUB_S3_ENDPOINT_URL "
                                    "or $AWS_ENDPOINT_URL).").tag(config=True)
    cache_dir = Unicode("", help="With an s3:// repository: the folder models are copied into when they "
                                 "load. Default: a temporary folder, removed when the server stops."
                        ).tag(config=True)
    host = Unicode("127.0.0.1", help="Address both protocols listen on.").tag(config=True)
    http_port = Integer(8000, help="HTTP/REST port (0: any free port).").tag(config=True)
    grpc_port = Integer(8001, help="gRPC port (0: any free port).").tag(config=True)
    workers = Integer(4, help="Worker threads that run model executions (onnxruntime and "
                              "Python models), so the event loop keeps serving.").tag(config=True)
    token_file = Unicode("", help="If set, a file holding the bearer token every request except "
                                  "the health probes must carry.").tag(config=True)

    aliases = {"model-repository": "InferenceServerApp.model_repository",
               "host": "InferenceServerApp.host", "http-port": "InferenceServerApp.http_port",
               "grpc-port": "InferenceServerApp.grpc_port", "workers": "InferenceServerApp.workers",
               "token-file": "InferenceServerApp.token_file", "cache-dir": "InferenceServerApp.cache_dir",
               "log-level": "Application.log_level"}

    def start(self):
        if not self.model_repository:
            self.exit_with("--model-repository is required")
        authorize = None
        if self.token_file:
            import hmac
            expected = Path(self.token_file).read_text().strip()
            authorize = lambda token: hmac.compare_digest(token, expected)  # noqa: E731
        logging.basicConfig(level=self.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
        server = InferenceServer(self.model_repository, self.host, self.http_port, self.grpc_port,
                                 authorize=authorize, workers=self.workers, cache_dir=self.cache_dir or None)
        asyncio.run(self._serve(server))

    def exit_with(self, message: str):
        self.log.error(message)
        self.exit(2)

    async def _serve(self, server: InferenceServer) -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        try:
            await server.start()
        except Exception as exc:
            self.log.error("cannot start: %s", exc)
            await server.stop(0)
            raise SystemExit(1)
        print(f"fedhub inference server ready: HTTP {server.host}:{server.http_port} "
              f"gRPC {server.host}:{server.grpc_port}", flush=True)
        await stopping.wait()
        log.info("stopping")
        await server.stop()


def main(argv=None):
    InferenceServerApp.launch_instance(argv)


if __name__ == "__main__":
    main()
