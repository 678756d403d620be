"""The deployment manager: one click from an MLflow model to a serving endpoint.

Runs inside the fedhub API service. A deployment is a named model of one owner on one
target — the hub's embedded inference server (`embedded`), a Kubernetes site
(`site:<name>`: manifests to apply there) or a group of edge devices (`edge:<group>`:
a signed bundle the devices pull). Each deploy of the same name adds a version; the
steps of the latest action are kept with timestamps, and every step change is an event
that clients follow (long poll). Records are kept by `DeploymentStore`, so a hub
restart keeps the list with the statuses the server confirms.

Every action runs in its own task with its own error handling: a bad model or a load
error fails that deployment with a reason and never touches the others.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tornado import httpclient

from . import model_source, targets
from .store import DeploymentStore

log = logging.getLogger("fedhub.deploy")

NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
ACTIVE = ("deploying", "rolling-back", "undeploying")
EMBEDDED_STEPS = ("resolve", "package", "write", "load", "ready")
SITE_STEPS = ("resolve", "package", "manifests")
EDGE_STEPS = ("resolve", "package", "bundle", "assign")


class DeployError(Exception):
    """A refused request; `status` is the HTTP status for the caller."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class StepFailed(Exception):
    def __init__(self, step: str, reason: str):
        super().__init__(f"{step}: {reason}")
        self.step, self.reason = step, reason


def model_name_for(owner: str, name: str) -> str:
    """The model's name in the Triton repository: unique per owner and deployment name."""
    safe = re.sub(r"[^A-Za-z0-9-]", "-", owner)
    if safe != owner or len(safe) > 20:  # owners that differ only in odd characters never share a name
        import hashlib
        safe = safe[:16] + "-" + hashlib.sha256(owner.encode()).hexdigest()[:6]
    return f"{safe}_{name}"


def parse_target(target) -> tuple[str, str]:
    if target in (None, "", "embedded"):
        return "embedded", ""
    if isinstance(target, str) and ":" in target:
        kind, _, where = target.partition(":")
        if kind in ("site", "edge") and where:
            return kind, where
    raise DeployError(400, f"'target' must be 'embedded', 'site:<kubernetes site>' or 'edge:<device group>', "
                           f"got {target!r}")


def public(record: dict) -> dict:
    """A record as the API shows it (events have their own route)."""
    return {k: v for k, v in record.items() if k not in ("events",)}


class DeploymentManager:
    def __init__(self, store: DeploymentStore, settings: dict, sites=lambda: [], ledger=None):
        self.store = store
        self.ledger = ledger  # () -> the provenance Ledger, or None
        self.settings = settings
        self.sites = sites  # () -> the inventory's sites (name, kind, up)
        self.models_dir = Path(settings.get("models_dir") or store.root / "models")
        # the embedded server's repository: that folder, or s3://... (settings["model_repository"])
        self.repository = targets.embedded_repository(settings.get("model_repository", ""), self.models_dir)
        self.server_url = f"http://{settings['inference_http']}" if settings.get("inference_http") else ""
        self.records = store.load_all()
        self.devices = store.load_devices()
        self.executor = ThreadPoolExecutor(2, thread_name_prefix="fedhub-deploy")
        self._changed: dict[str, asyncio.Condition] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task] = set()

    # ------------------------------------------------------------------ lookups
    def of_owner(self, owner: str) -> list[dict]:
        return sorted((public(r) for r in self.records.values() if r["owner"] == owner),
                      key=lambda r: r["created"])

    def get(self, owner: str, deployment_id: str) -> dict:
        record = self.records.get(deployment_id)
        if record is None or record["owner"] != owner:  # others' deployments do not exist for you
            raise DeployError(404, f"No deployment {deployment_id}")
        return record

    def _by_name(self, owner: str, name: str) -> dict | None:
        return next((r for r in self.records.values() if r["owner"] == owner and r["name"] == name), None)

    def _lock(self, deployment_id: str) -> asyncio.Lock:
        return self._locks.setdefault(deployment_id, asyncio.Lock())

    def _condition(self, deployment_id: str) -> asyncio.Condition:
        return self._changed.setdefault(deployment_id, asyncio.Condition())

    # ------------------------------------------------------------------ events
    async def _event(self, record: dict, step: str, status: str, message: str = "") -> None:
        now = time.time()
        events = record.setdefault("events", [])
        seq = events[-1]["seq"] + 1 if events else 1
        events.append({"seq": seq, "time": now, "step": step, "status": status, "message": message,
                       "version": record.get("pending_version") or record.get("current_version")})
        del events[:-500]  # a deployment redeployed many times keeps its recent history
        for s in record.get("steps", []):
            if s["name"] == step:
                s["status"] = status
                if status == "running":
                    s["started"] = now
                if status in ("done", "failed"):
                    s["finished"] = now
                if message:
                    s["message"] = message
        record["updated"] = now
        self.store.save(record)
        cond = self._condition(record["id"])
        async with cond:
            cond.notify_all()

    async def events(self, owner: str, deployment_id: str, after: int = 0, wait: float = 0) -> dict:
        record = self.get(owner, deployment_id)
        deadline = time.monotonic() + max(0.0, min(wait, 60.0))
        cond = self._condition(deployment_id)
        while True:
            new = [e for e in record.get("events", []) if e["seq"] > after]
            remaining = deadline - time.monotonic()
            if new or remaining <= 0 or deployment_id not in self.records:
                return {"id": deployment_id, "status": record["status"], "events": new,
                        "last": record["events"][-1]["seq"] if record.get("events") else 0}
            async with cond:
                try:
                    await asyncio.wait_for(cond.wait(), remaining)
                except asyncio.TimeoutError:
                    pass

    # ------------------------------------------------------------------ deploy
    async def deploy(self, owner: str, token: str, body: dict) -> dict:
        """Validate the request now (4xx for the caller), then run the steps in the background."""
        if not isinstance(body, dict):
            raise DeployError(400, "The body must be a JSON object with 'model', 'name' and 'target'")
        unknown = set(body) - {"model", "name", "target", "options"}
        if unknown:
            raise DeployError(400, f"Unknown field(s) {', '.join(sorted(unknown))}; "
                                   "expected 'model', 'name', 'target', 'options'")
        name = body.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise DeployError(400, f"'name' must be 1-40 lowercase letters, digits or '-' (not at either end), "
                                   f"got {name!r}")
        kind, where = parse_target(body.get("target"))
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise DeployError(400, "'options' must be an object")
        self._check_target(owner, kind, where)
        if options.get("held_out") is not None:  # read on the hub: only from the owner's own workspace
            options = {**options, "held_out": str(self._workspace_file(owner, options["held_out"], ".npz"))}
        model = body.get("model")
        if isinstance(model, str) and model.startswith("/"):
            uri = str(self._workspace_onnx(owner, model))
            info = {"flavour": "onnx", "onnx_file": True, "path": uri}
        else:
            info = await self._inspect_mlflow(token, model)
            uri = info["uri"]

        record = self._by_name(owner, name)
        target = "embedded" if kind == "embedded" else f"{kind}:{where}"
        if record is not None:
            if record["status"] in ACTIVE:
                raise DeployError(409, f"Deployment {name} is busy ({record['status']}); try again when it is done")
            if record["target"] != target:
                raise DeployError(409, f"Deployment {name} exists with target {record['target']}; "
                                       "undeploy it first or choose another name")
        else:
            now = time.time()
            record = {"id": uuid.uuid4().hex[:12], "owner": owner, "name": name, "target": target,
                      "kind": kind, "where": where, "model_name": model_name_for(owner, name),
                      "status": "deploying", "current_version": None, "versions": [],
                      "steps": [], "events": [], "endpoint": {}, "error": None,
                      "created": now, "updated": now}
            self.records[record["id"]] = record
        version = max((v["version"] for v in record["versions"]), default=0) + 1
        record["versions"].append({"version": version, "model": uri, "flavour": info["flavour"],
                                   "created": time.time(), "status": "deploying", "error": None})
        steps = {"embedded": EMBEDDED_STEPS, "site": SITE_STEPS, "edge": EDGE_STEPS}[kind]
        record.update(status="deploying", error=None, pending_version=version, action="deploy",
                      steps=[{"name": s, "status": "pending"} for s in steps])
        self.store.save(record)
        await self._event(record, "deploy", "running", f"version {version} of {name}: {uri} -> {target}")
        self._spawn(self._run_deploy(record, version, token, uri, info, options))
        return public(record)

    async def _inspect_mlflow(self, token: str, model) -> dict:
        try:
            uri = model_source.check_uri(model)
        except model_source.ModelSourceError as e:
            raise DeployError(e.status, e.message) from None
        if not self.settings.get("mlflow_url"):
            raise DeployError(409, "This hub runs without MLflow (--no-mlflow): there is no model to deploy from")
        try:
            info = await self._in_thread(model_source.inspect, self.settings["mlflow_url"], token, uri)
        except model_source.ModelSourceError as e:
            raise DeployError(e.status, e.message) from None
        return {**info, "uri": uri}

    def _workspace_onnx(self, owner: str, path: str) -> Path:
        return self._workspace_file(owner, path, ".onnx")

    def _workspace_file(self, owner: str, path, suffix: str) -> Path:
        """A file by absolute path: only inside the owner's own home on this hub."""
        if not isinstance(path, str) or not path.startswith("/"):
            raise DeployError(400, f"{path!r}: expected the absolute path of a {suffix} file in your workspace")
        homes = self.settings.get("homes_dir")
        resolved = Path(path).resolve()
        home = (Path(homes) / owner).resolve() if homes else None
        if home is None or (resolved != home and home not in resolved.parents):
            raise DeployError(403, f"{path}: only {suffix} files in your own workspace ({home or 'none on this hub'}) "
                                   "can be read by path; log other models to MLflow")
        if resolved.suffix != suffix or not resolved.is_file():
            raise DeployError(400, f"{path}: not a {suffix} file in your workspace")
        return resolved

    def _check_target(self, owner: str, kind: str, where: str) -> None:
        if kind == "embedded" and not self.server_url:
            raise DeployError(409, "The embedded inference server is turned off on this hub (--no-inference)")
        if kind == "site":
            k8s = [s["name"] for s in self.sites() if s.get("kind") == "kubernetes"]
            if where not in k8s:
                raise DeployError(400, f"No Kubernetes site {where!r}; Kubernetes sites: {', '.join(k8s) or 'none'}")
        if kind == "edge":
            groups = sorted({d["group"] for d in self.devices.values() if d["owner"] == owner})
            if where not in groups:
                raise DeployError(400, f"No edge device group {where!r}; register a device in it first "
                                       f"(your groups: {', '.join(groups) or 'none'})")

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _in_thread(self, func, *args):
        """Await `func(*args)` run in the manager's worker threads (blocking file, S3, MLflow work)."""
        return asyncio.get_running_loop().run_in_executor(self.executor, func, *args)

    async def _step(self, record: dict, step: str, func, *args):
        """Run one blocking step in a worker thread, with its events; StepFailed on any error."""
        await self._event(record, step, "running")
        try:
            result = await self._in_thread(func, *args)
        except StepFailed:
            raise
        except model_source.ModelSourceError as e:
            raise StepFailed(step, e.message) from None
        except Exception as e:  # packaging and conversion raise many kinds; the reason is what matters
            log.exception("deployment %s: step %s failed", record["id"], step)
            raise StepFailed(step, f"{type(e).__name__}: {e}"[:1000]) from None
        await self._event(record, step, "done", result if isinstance(result, str) else "")
        return result

    async def _run_deploy(self, record, version, token, uri, info, options) -> None:
        async with self._lock(record["id"]):
            work = Path(tempfile.mkdtemp(prefix="fedhub-deploy-"))
            try:
                if info.get("path"):
                    local = await self._step(record, "resolve", model_source.copy_file, Path(info["path"]),
                                             work / "model")
                else:
                    local = await self._step(record, "resolve", model_source.download,
                                             self.settings["mlflow_url"], token, uri, work / "model")
                staged = await self._step(record, "package", targets.package, local, info,
                                          record["model_name"], version, work / "repository", options)
                if record["kind"] == "embedded":
                    await self._activate_embedded(record, version, staged)
                elif record["kind"] == "site":
                    await self._step(record, "manifests", targets.write_site_manifests, record, version, staged,
                                     self.store.artifact_dir(record["id"]), self.sites(), options)
                    self._finish(record, version, "manifests-ready")
                else:
                    await self._step(record, "bundle", targets.build_edge_bundle, record, version, staged,
                                     self.store.artifact_dir(record["id"]), self.store.root, work, options)
                    await self._event(record, "assign", "running")
                    self._finish(record, version, "ready")
                    await self._event(record, "assign", "done", f"group {record['where']} gets version {version}")
                await self._event(record, "deploy", "done", f"version {version} is {record['status']}")
            except StepFailed as e:
                await self._fail(record, version, e)
            except Exception as e:  # never let one deployment's surprise escape its task
                log.exception("deployment %s failed", record["id"])
                await self._fail(record, version, StepFailed("deploy", f"{type(e).__name__}: {e}"))
            finally:
                shutil.rmtree(work, ignore_errors=True)

    def _finish(self, record: dict, version: int, status: str) -> None:
        for v in record["versions"]:
            if v["version"] == version:
                v["status"] = "ready"
                if not v.get("provenance"):
                    v["provenance"] = self._provenance(record, v)
        record.update(status=status, current_version=version, pending_version=None, error=None)
        record["endpoint"] = self.endpoint(record)

    def _provenance(self, record: dict, version: dict) -> str | None:
        """A signed ledger record of this version (who, which model, where); its hash."""
        if self.ledger is None:
            return None
        try:
            entry = self.ledger().append("deployment", record["id"], record["owner"], {
                "name": record["name"], "target": record["target"], "version": version["version"],
                "model": version["model"], "flavour": version["flavour"], "model_name": record["model_name"]})
            return entry.get("hash")
        except Exception:  # the ledger never blocks serving; its own verify shows gaps
            log.exception("deployment %s: provenance record not written", record["id"])
            return None

    async def _fail(self, record: dict, version: int, e: StepFailed) -> None:
        reason = f"step {e.step} failed: {e.reason}"
        for v in record["versions"]:
            if v["version"] == version:
                v.update(status="failed", error=reason)
        record["pending_version"] = None
        if record["kind"] == "embedded":
            # the files of a failed version never serve, not even after a restart
            try:
                await self._in_thread(self.repository.discard_version, record["model_name"], version)
            except Exception as err:
                log.warning("deployment %s: version %s not removed from %s: %s", record["id"], version,
                            self.repository, err)
            if record.get("current_version"):
                await self._restore_embedded(record)
        record["status"] = "ready" if record.get("current_version") and record["kind"] != "site" else (
            "manifests-ready" if record.get("current_version") else "failed")
        if record["status"] != "failed":
            reason += f" (version {record['current_version']} keeps serving)"
        record["error"] = reason
        await self._event(record, e.step, "failed", e.reason)
        await self._event(record, "deploy", "failed", reason)

    # ------------------------------------------------------------------ embedded server
    async def _server(self, method: str, path: str, body=None, timeout: float = 120) -> tuple[int, dict]:
        try:
            resp = await httpclient.AsyncHTTPClient().fetch(
                f"{self.server_url}/{path}", method=method, raise_error=False, request_timeout=timeout,
                body=json.dumps(body) if body is not None else (b"" if method == "POST" else None),
                headers={"Content-Type": "application/json"})
        except OSError as e:
            return 503, {"error": f"the inference server does not answer: {e}"}
        if resp.code == 599:
            return 503, {"error": "the inference server does not answer (is it starting?)"}
        try:
            data = json.loads(resp.body or b"{}")
        except ValueError:
            data = {"error": resp.body[:300].decode(errors="replace")}
        return resp.code, data

    async def _activate_embedded(self, record: dict, version: int, staged: Path | None) -> None:
        """Serve `version`: move its files into the repository, point the version policy at it, load."""
        await self._step(record, "write", self.repository.write, staged, record["model_name"], version)
        await self._event(record, "load", "running")
        code, data = await self._server("POST", f"v2/repository/models/{record['model_name']}/load")
        if code != 200:
            raise StepFailed("load", data.get("error") or f"HTTP {code}")
        await self._event(record, "load", "done")
        await self._event(record, "ready", "running")
        code, data = await self._server("GET", f"v2/models/{record['model_name']}/versions/{version}/ready")
        if code != 200:
            raise StepFailed("ready", data.get("error") or f"version {version} is not ready (HTTP {code})")
        self._finish(record, version, "ready")
        await self._event(record, "ready", "done", f"serving {record['model_name']} version {version}")

    async def _restore_embedded(self, record: dict) -> None:
        try:
            await self._in_thread(self.repository.select, record["model_name"], record["current_version"])
            await self._server("POST", f"v2/repository/models/{record['model_name']}/load")
        except Exception:
            log.exception("deployment %s: could not restore version %s", record["id"], record["current_version"])

    def endpoint(self, record: dict) -> dict:
        if record["kind"] == "embedded":
            return {"model_name": record["model_name"], "model_version": str(record["current_version"]),
                    "http": self.server_url, "grpc": self.settings.get("inference_grpc", ""),
                    "http_via_hub": self.settings.get("inference_proxy", "")}
        if record["kind"] == "site":
            return {"site": record["where"], "model_name": record["model_name"],
                    "model_version": str(record["current_version"]),
                    "manifests": f"api/deployments/{record['id']}/manifests"}
        return {"group": record["where"], "model_name": record["model_name"],
                "model_version": str(record["current_version"])}

    async def reconcile(self) -> None:
        """After a restart: actions cut short fail with a reason; embedded deployments are
        confirmed by the server (which loads its repository when it starts)."""
        if self.settings.get("mlflow_url"):
            # the first deploy would otherwise pay for importing mlflow and the converters
            self._in_thread(targets.warm_up)
        for record in list(self.records.values()):
            if record["status"] in ACTIVE:
                record["pending_version"] = None
                record["status"] = "ready" if record.get("current_version") else "failed"
                record["error"] = "interrupted by a hub restart"
                await self._event(record, record.get("action", "deploy"), "failed", record["error"])
        embedded = [r for r in self.records.values() if r["kind"] == "embedded" and r["status"] == "ready"]
        if not embedded or not self.server_url:
            return
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (await self._server("GET", "v2/health/ready", timeout=5))[0] != 200:
            await asyncio.sleep(0.5)
        for record in embedded:
            name, version = record["model_name"], record["current_version"]
            code, _ = await self._server("GET", f"v2/models/{name}/versions/{version}/ready")
            if code != 200:
                code, data = await self._server("POST", f"v2/repository/models/{name}/load")
                if code != 200:
                    record.update(status="failed", error=f"not served after the restart: {data.get('error', code)}")
                    await self._event(record, "restore", "failed", record["error"])

    # ------------------------------------------------------------------ undeploy, rollback
    async def undeploy(self, owner: str, deployment_id: str) -> dict:
        record = self.get(owner, deployment_id)
        async with self._lock(deployment_id):
            record["status"] = "undeploying"
            await self._event(record, "undeploy", "running")
            if record["kind"] == "embedded":
                code, data = await self._server("POST", f"v2/repository/models/{record['model_name']}/unload")
                if code not in (200, 404):
                    log.warning("unload of %s: %s", record["model_name"], data)
            remove = (self.repository.remove, record["model_name"]) if record["kind"] == "embedded" else \
                (targets.remove_site, self.store.artifact_dir(deployment_id), record["model_name"])
            try:
                await self._in_thread(*remove)
            except Exception as e:  # e.g. the S3 store does not answer: say so, keep the record to retry
                record.update(status="failed", error=f"undeploy: {e}")
                await self._event(record, "undeploy", "failed", str(e))
                raise DeployError(502, f"Deployment {record['name']} is unloaded but its files could not "
                                       f"be removed: {e}; undeploy again to retry")
            shutil.rmtree(self.store.artifact_dir(deployment_id), ignore_errors=True)
            record["status"] = "undeployed"
            await self._event(record, "undeploy", "done")
            self.records.pop(deployment_id, None)
            self.store.delete(deployment_id)
        cond = self._condition(deployment_id)
        async with cond:
            cond.notify_all()
        return public(record)

    async def rollback(self, owner: str, deployment_id: str, version: int | None = None) -> dict:
        record = self.get(owner, deployment_id)
        if record["status"] in ACTIVE:
            raise DeployError(409, f"Deployment {record['name']} is busy ({record['status']})")
        ready = [v["version"] for v in record["versions"] if v["status"] in ("ready", "rolled-back")]
        current = record.get("current_version")
        if version is None:
            earlier = [v for v in ready if current is None or v < current]
            if not earlier:
                raise DeployError(409, f"Deployment {record['name']} has no earlier working version to roll back to")
            version = max(earlier)
        elif version not in ready or version == current:
            raise DeployError(400, f"Version {version} is not a working version other than the current one "
                                   f"(working: {ready}, current: {current})")
        record.update(status="rolling-back", action="rollback", pending_version=version, error=None,
                      steps=[{"name": "rollback", "status": "pending"}])
        await self._event(record, "rollback", "running", f"version {current} -> {version}")
        async with self._lock(deployment_id):
            try:
                if record["kind"] == "embedded":
                    await self._step(record, "write", self.repository.select, record["model_name"], version)
                    code, data = await self._server("POST", f"v2/repository/models/{record['model_name']}/load")
                    if code != 200:
                        raise StepFailed("rollback", data.get("error") or f"HTTP {code}")
                elif record["kind"] == "site":
                    await self._step(record, "manifests", targets.select_site_version,
                                     self.store.artifact_dir(deployment_id), version, record["model_name"])
                else:
                    await self._step(record, "bundle", targets.select_edge_version,
                                     self.store.artifact_dir(deployment_id), version)
                for v in record["versions"]:
                    if v["version"] == current:
                        v["status"] = "rolled-back"
                self._finish(record, version, "manifests-ready" if record["kind"] == "site" else "ready")
                await self._event(record, "rollback", "done", f"version {version} is current")
            except StepFailed as e:
                record.update(status="ready" if record["kind"] != "site" else "manifests-ready",
                              pending_version=None, error=f"rollback failed: {e.reason}")
                if record["kind"] == "embedded":
                    await self._restore_embedded(record)
                await self._event(record, "rollback", "failed", e.reason)
        return public(record)

    # ------------------------------------------------------------------ test inference
    async def infer(self, owner: str, deployment_id: str, body: dict) -> dict:
        record = self.get(owner, deployment_id)
        if record["kind"] != "embedded":
            raise DeployError(409, f"Test inference runs on the embedded server; {record['name']} "
                                   f"targets {record['target']}")
        if record["status"] != "ready":
            raise DeployError(409, f"Deployment {record['name']} is {record['status']}, not ready")
        if not isinstance(body, dict) or not (body.get("sample") is True or isinstance(body.get("inputs"), list)):
            raise DeployError(400, "Send {\"sample\": true} or {\"inputs\": [{\"name\", \"shape\", "
                                   "\"datatype\", \"data\"}, ...]} (KServe v2 JSON tensors)")
        name, version = record["model_name"], str(record["current_version"])
        inputs = body.get("inputs")
        if body.get("sample") is True:
            code, meta = await self._server("GET", f"v2/models/{name}/versions/{version}")
            if code != 200:
                raise DeployError(502, f"The inference server has no metadata for {name}: {meta.get('error', code)}")
            inputs = targets.sample_inputs(meta["inputs"])
        request = {"inputs": inputs}
        if body.get("outputs"):
            request["outputs"] = body["outputs"]
        started = time.perf_counter()
        code, data = await self._server("POST", f"v2/models/{name}/versions/{version}/infer", request)
        if code != 200:
            raise DeployError(400 if code < 500 else 502, f"Inference failed: {data.get('error', code)}")
        return {"model_name": name, "model_version": version, "inputs": inputs,
                "outputs": data.get("outputs", []), "ms": round((time.perf_counter() - started) * 1000, 2)}

    # ------------------------------------------------------------------ edge groups
    def save_devices(self) -> None:
        self.store.save_devices(self.devices)

    def edge_deployment(self, owner: str, group: str) -> dict | None:
        """The owner's ready deployment to an edge group (the newest, if several)."""
        found = [r for r in self.records.values() if r["owner"] == owner and r["kind"] == "edge"
                 and r["where"] == group and r["status"] == "ready" and r.get("current_version")]
        return max(found, key=lambda r: r["updated"]) if found else None

    def edge_devices(self, owner: str, group: str) -> list[dict]:
        """What the group's devices last reported (for an edge deployment's record)."""
        return [{"name": d["name"], "last_seen": d.get("last_seen"), **(d.get("status") or {"state": None})}
                for d in self.devices.values() if d["owner"] == owner and d["group"] == group]

    def edge_bundle(self, record: dict) -> Path | None:
        return targets.edge_bundle_path(self.store.artifact_dir(record["id"]), record["current_version"])

    # ------------------------------------------------------------------ files for the caller
    def manifests(self, owner: str, deployment_id: str) -> str:
        record = self.get(owner, deployment_id)
        if record["kind"] != "site" or record["status"] != "manifests-ready":
            raise DeployError(409, f"Deployment {record['name']} has no manifests (target {record['target']}, "
                                   f"status {record['status']})")
        return targets.read_site_manifests(self.store.artifact_dir(deployment_id), record["current_version"])
