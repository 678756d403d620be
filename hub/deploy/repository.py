"""A Triton model repository on disk, and the models loaded from it.

Layout (Triton's): `ROOT/NAME/config.pbtxt` and `ROOT/NAME/VERSION/model.onnx` (or model.py).
Versions served follow the config's version_policy (default: the latest one). A model that
fails to load is UNAVAILABLE with the reason in the repository index; other models keep
serving, and a failed reload keeps the previously loaded versions.

With `remote` (an S3 repository, fedhub.hub.deploy.s3repo), ROOT is a local cache: each load
first copies the model's objects from the store into ROOT/NAME and checks the copy is
complete; a store that fails (no bucket, access denied, endpoint down) fails that load with
the reason, and loaded models keep serving.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from .backends import create_backend
from .batching import Scheduler
from .inference import InferRequest, InferResponse, check_request, tensor_metadata
from .model_config import (CONFIG_FILE, ONNX_BACKEND, ModelConfig, ModelConfigError, backend_of,
                           read_config, validate_config)
from .s3repo import ModelNotInStore, S3RepositoryError
from .tensors import InvalidArgument, NotFound, Unavailable

log = logging.getLogger("fedhub.deploy")
MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


@dataclass
class ModelVersion:
    name: str
    version: int
    config: ModelConfig
    backend: object
    scheduler: Scheduler

    def metadata(self, versions: list[int]) -> dict:
        platform = self.config.platform or self.config.backend
        return {"name": self.name, "versions": [str(v) for v in versions], "platform": platform,
                "inputs": tensor_metadata(self.config.input, self.config.max_batch_size),
                "outputs": tensor_metadata(self.config.output, self.config.max_batch_size)}

    async def infer(self, request: InferRequest) -> InferResponse:
        check_request(self.config, request)
        outputs = await self.scheduler.submit(request)
        return InferResponse(self.name, str(self.version), request.id, outputs)


@dataclass
class ModelEntry:
    name: str
    state: str = "UNAVAILABLE"   # READY | UNAVAILABLE | LOADING | UNLOADING (Triton's states)
    reason: str = ""
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def served_versions(config: ModelConfig, available: list[int]) -> list[int]:
    """Which version directories the version_policy serves (Triton's rules)."""
    available = sorted(available)
    policy = config.version_policy
    if policy.HasField("all"):
        return available
    if policy.HasField("specific"):
        return [v for v in available if v in set(policy.specific.versions)]
    count = policy.latest.num_versions if policy.HasField("latest") else 1
    return available[-count:]


class ModelRepository:
    def __init__(self, root: str | Path, executor: Executor, remote=None):
        self.root = Path(root)
        self.executor = executor
        self.remote = remote  # an S3ModelRepository that ROOT caches, or None
        self.models: dict[str, ModelEntry] = {}
        self._remote_names: list[str] = []
        self._remote_listed = 0.0
        self._listing = False
        if remote is not None:
            self.root.mkdir(parents=True, exist_ok=True)
        if not self.root.is_dir():
            raise ModelConfigError(f"model repository {self.root} is not a directory")

    # ------------------------------------------------------------------ discovery
    def model_names(self) -> list[str]:
        if self.remote is not None:
            self._refresh_remote_names()
            return list(self._remote_names)
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and MODEL_NAME.match(p.name) and not p.name.startswith("."))

    def list_remote(self) -> list[str]:
        """Blocking (a worker thread): list the store's models; keep the last good listing."""
        try:
            self._remote_names = self.remote.model_names()
        except S3RepositoryError as exc:
            log.error("model repository %s: %s", self.remote, exc)
        finally:
            self._remote_listed, self._listing = time.monotonic(), False
        return list(self._remote_names)

    def _refresh_remote_names(self) -> None:
        # the event loop never waits on the store: a listing older than 2 s is renewed in a thread
        if self._listing or time.monotonic() - self._remote_listed < 2:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._listing = True
        loop.run_in_executor(self.executor, self.list_remote)

    def _model_dir(self, name: str) -> Path:
        path = self.root / name
        if self.remote is not None and MODEL_NAME.match(name) and (
                name in self._remote_names or name in self.models):
            return path  # in the store; copied on load
        if not MODEL_NAME.match(name) or not path.is_dir():
            raise NotFound(f"failed to load '{name}', failed to poll from model repository: "
                           f"no model directory '{name}' in the repository")
        return path

    def index(self) -> list[dict]:
        """Every model in the repository, loaded or not (Triton's repository index)."""
        rows = []
        for name in sorted(set(self.model_names()) | set(self.models)):
            entry = self.models.get(name)
            if entry is None:
                rows.append({"name": name})
            elif entry.versions:
                rows += [{"name": name, "version": str(v), "state": entry.state, "reason": entry.reason}
                         for v in sorted(entry.versions)]
            else:
                rows.append({"name": name, "state": entry.state, "reason": entry.reason})
        return rows

    # ------------------------------------------------------------------ load / unload
    async def load_all(self) -> None:
        names = self.model_names() if self.remote is None else \
            await asyncio.get_running_loop().run_in_executor(self.executor, self.list_remote)
        for name in names:
            try:
                await self.load(name)
            except (ModelConfigError, InvalidArgument, NotFound) as exc:
                log.error("model %s not loaded: %s", name, exc)

    async def load(self, name: str, config: ModelConfig | None = None) -> None:
        """(Re)load every served version of `name`; `config` overrides config.pbtxt."""
        if self.remote is not None and not MODEL_NAME.match(name):
            raise NotFound(f"failed to load '{name}': not a model name")
        model_dir = self.root / name if self.remote is not None else self._model_dir(name)
        entry = self.models.setdefault(name, ModelEntry(name))
        async with entry.lock:
            previous_state = entry.state
            entry.state = "LOADING"
            try:
                if self.remote is not None:  # copy from the store first, checked complete
                    await asyncio.get_running_loop().run_in_executor(
                        self.executor, self.remote.sync, name, model_dir, served_versions)
                versions = await asyncio.get_running_loop().run_in_executor(
                    self.executor, self._build_versions, name, model_dir, config)
            except ModelNotInStore as exc:
                entry.state = "READY" if entry.versions else "UNAVAILABLE"
                if not entry.versions:
                    self.models.pop(name, None)
                raise NotFound(f"failed to load '{name}', failed to poll from model repository: {exc}") from None
            except Exception as exc:  # whatever breaks one model must not stop the others
                entry.reason = str(exc) if isinstance(exc, (ModelConfigError, S3RepositoryError)) else \
                    f"{model_dir}: {type(exc).__name__}: {exc}"
                entry.state = "READY" if entry.versions else "UNAVAILABLE"
                if entry.versions:
                    log.error("reload of %s failed, previous versions keep serving: %s", name, exc)
                raise InvalidArgument(f"failed to load '{name}': {entry.reason}") from None
            old = entry.versions
            for version in versions.values():
                version.scheduler.start()
            entry.versions, entry.state, entry.reason = versions, "READY", ""
            log.info("model %s ready (versions %s; was %s)", name, sorted(versions), previous_state)
            await self._close(old)

    async def unload(self, name: str) -> None:
        entry = self.models.get(name)
        if entry is None or not entry.versions:
            self._model_dir(name)  # unknown model -> NotFound
            self.models.setdefault(name, ModelEntry(name)).state = "UNAVAILABLE"
            return
        async with entry.lock:
            entry.state = "UNLOADING"
            old, entry.versions = entry.versions, {}
            await self._close(old)
            entry.state, entry.reason = "UNAVAILABLE", "unloaded"
            if self.remote is not None:  # the store keeps the files; the next load copies them again
                shutil.rmtree(self.root / name, ignore_errors=True)

    async def close(self) -> None:
        for entry in self.models.values():
            old, entry.versions = entry.versions, {}
            await self._close(old)

    async def _close(self, versions: dict[int, ModelVersion]) -> None:
        for version in versions.values():
            await version.scheduler.close()
            version.backend.close()

    def _build_versions(self, name: str, model_dir: Path, config: ModelConfig | None) -> dict:
        """Runs in a worker thread: read the config, create one backend per served version."""
        source = str(model_dir / CONFIG_FILE)
        if config is None:
            config = read_config(model_dir) if (model_dir / CONFIG_FILE).exists() else ModelConfig(
                platform="onnxruntime_onnx")
        if not config.name:
            config.name = name
        available = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
        serve = served_versions(config, available)
        if not serve:
            raise ModelConfigError(f"{model_dir}: no version directory (such as 1/) matches the "
                                   f"version_policy; found {sorted(available) or 'none'}")
        validate_config(config, name, source, require_io=False)
        if backend_of(config) == ONNX_BACKEND:
            from .backends.onnx import complete_config
        else:
            from .backends.python import complete_config
        complete_config(config, model_dir / str(serve[-1]))
        validate_config(config, name, source)
        versions: dict[int, ModelVersion] = {}
        try:
            for number in serve:
                backend = create_backend(config, model_dir / str(number), name, number)
                versions[number] = ModelVersion(name, number, config, backend,
                                                Scheduler(config, backend, self.executor))
        except Exception:
            for version in versions.values():
                version.backend.close()
            raise
        return versions

    # ------------------------------------------------------------------ lookup
    def get(self, name: str, version: str = "") -> ModelVersion:
        entry = self.models.get(name)
        if entry is None:
            if name in self.model_names():
                raise Unavailable(f"Request for unknown model: '{name}' is not loaded")
            raise NotFound(f"Request for unknown model: '{name}' is not found")
        if not entry.versions:
            raise Unavailable(f"Request for unknown model: '{name}' has no available versions"
                              + (f" ({entry.reason})" if entry.reason else ""))
        if not version:
            return entry.versions[max(entry.versions)]
        if not version.isdigit():
            raise InvalidArgument(f"model version must be a positive integer, got '{version}'")
        found = entry.versions.get(int(version))
        if found is None:
            raise NotFound(f"Request for unknown model: '{name}' version {version} is not found; "
                           f"available versions: {sorted(entry.versions)}")
        return found

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            self.get(name, version)
            return True
        except (NotFound, Unavailable, InvalidArgument):
            return False

    def versions_of(self, name: str) -> list[int]:
        entry = self.models.get(name)
        return sorted(entry.versions) if entry else []
