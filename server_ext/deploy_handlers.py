"""Session-API routes of the Deploy panel: the models a user can deploy (MLflow runs with
logged models, registered models, ONNX files in the workspace), and deployments, which
the hub runs (forwarded to its fedhub API)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

from tornado import web

from .fl_handlers import SKIPPED_DIRS, server_root
from .handlers import SessionAPIError
from .hub_forward import HubForwardHandler

#: how many logged and registered models the picker lists at most
MAX_MODELS = 200
#: how deep under the server root ONNX files are looked for
ONNX_SEARCH_DEPTH = 3
MAX_ONNX_FILES = 200
MODEL_URI_SCHEMES = ("runs:/", "models:/")


def model_choices(client, max_models: int = MAX_MODELS) -> dict:
    """The user's logged models (newest first) and registered models with their versions,
    each with the model URI a deployment takes. Blocking: MLflow's own client."""
    experiments = list(client.search_experiments(max_results=1000))
    names = {e.experiment_id: e.name for e in experiments}
    logged = []
    if experiments:
        page = client.search_logged_models(
            experiment_ids=list(names), max_results=max_models,
            order_by=[{"field_name": "creation_time", "ascending": False}])
        for m in page:
            if m.source_run_id is None:
                continue
            logged.append({
                "uri": f"runs:/{m.source_run_id}/{m.name}", "model_uri": m.model_uri, "model_id": m.model_id,
                "name": m.name, "run_id": m.source_run_id, "experiment": names.get(m.experiment_id, ""),
                "created": m.creation_timestamp, "flavor": m.model_type or "",
                "metrics": {x.key: x.value for x in (m.metrics or [])}})
    if logged:  # the run's name helps more than its id
        run_ids = sorted({m["run_id"] for m in logged})
        runs = {r.info.run_id: r.info.run_name for r in client.search_runs(
            list(names), filter_string="attributes.run_id IN ({})".format(",".join(f"'{i}'" for i in run_ids)),
            max_results=1000)}
        for m in logged:
            m["run_name"] = runs.get(m["run_id"], "")
    registered = []
    for rm in client.search_registered_models(max_results=min(max_models, 1000)):
        versions = sorted(rm.latest_versions or [], key=lambda v: int(v.version), reverse=True)
        for v in versions:
            registered.append({"uri": f"models:/{rm.name}/{v.version}", "name": rm.name,
                               "version": str(v.version), "run_id": v.run_id or ""})
    return {"logged_models": logged, "registered_models": registered}


def find_onnx_files(root: Path, depth: int = ONNX_SEARCH_DEPTH) -> list[dict]:
    root = root.resolve()
    found = []
    for current, dirs, files in os.walk(root):
        here = Path(current)
        rel = here.relative_to(root)
        if len(rel.parts) >= depth:
            dirs[:] = []
        else:
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS
                             and not (here / d / "pyvenv.cfg").exists())
        for f in sorted(files):
            if f.endswith(".onnx"):
                p = here / f
                found.append({"path": (rel / f).as_posix(), "abs_path": str(p), "size": p.stat().st_size})
                if len(found) >= MAX_ONNX_FILES:
                    return found
    return found


def resolve_model(root: Path, model) -> str:
    """A model URI passes as it is; an ONNX file named relative to the server root becomes
    the absolute path the hub reads. 400 when it is neither."""
    if not isinstance(model, str) or not model.strip():
        raise SessionAPIError(400, "model: expected runs:/RUN_ID/PATH, models:/NAME/VERSION or the path "
                                   "of an .onnx file in your workspace")
    if model.startswith(MODEL_URI_SCHEMES):
        return model
    root = root.resolve()
    path = (root / model).resolve()
    if path != root and root not in path.parents:
        raise SessionAPIError(400, f"model: {model!r} is outside your workspace ({root})")
    if not path.is_file():
        raise SessionAPIError(400, f"model: no file {model!r} in your workspace, and not a "
                                   "runs:/ or models:/ URI")
    if path.suffix != ".onnx":
        raise SessionAPIError(400, f"model: {model!r} is not an .onnx file")
    return str(path)


class ModelChoicesHandler(HubForwardHandler):
    """GET deploy/models: what the model picker offers (works standalone too)."""

    @web.authenticated
    async def get(self):
        choices = await self.call(model_choices, self.tracking.client)
        choices["onnx_files"] = find_onnx_files(server_root(self))
        self.write_json(choices)


class DeploymentsHandler(HubForwardHandler):
    feature = "Deployments"

    @web.authenticated
    async def get(self):
        await self.forward("GET", "deployments")

    @web.authenticated
    async def post(self):
        body = self.json_body()
        self.require_hub()
        if "model" in body:
            body["model"] = resolve_model(server_root(self), body["model"])
        await self.forward("POST", "deployments", body=body)


def _path(dep_id: str, *rest: str) -> str:
    return "/".join(["deployments", quote(dep_id, safe=""), *rest])


class DeploymentHandler(HubForwardHandler):
    feature = "Deployments"

    @web.authenticated
    async def get(self, dep_id):
        await self.forward("GET", _path(dep_id))

    @web.authenticated
    async def delete(self, dep_id):
        await self.forward("DELETE", _path(dep_id))


class DeploymentEventsHandler(HubForwardHandler):
    feature = "Deployments"

    @web.authenticated
    async def get(self, dep_id):
        query, timeout = self.events_query()
        await self.forward("GET", _path(dep_id, "events"), query=query, timeout=timeout)


class DeploymentRollbackHandler(HubForwardHandler):
    feature = "Deployments"

    @web.authenticated
    async def post(self, dep_id):
        await self.forward("POST", _path(dep_id, "rollback"), body=self.json_body())


class DeploymentInferHandler(HubForwardHandler):
    feature = "Deployments"

    @web.authenticated
    async def post(self, dep_id):
        await self.forward("POST", _path(dep_id, "infer"), body=self.json_body())


class DeploymentSnippetHandler(HubForwardHandler):
    feature = "Deployments"

    @web.authenticated
    async def get(self, dep_id):
        await self.forward("GET", _path(dep_id, "snippet"))


ROUTES = [
    ("deploy/models", ModelChoicesHandler),
    ("deployments", DeploymentsHandler),
    (r"deployments/(?P<dep_id>[^/]+)", DeploymentHandler),
    (r"deployments/(?P<dep_id>[^/]+)/events", DeploymentEventsHandler),
    (r"deployments/(?P<dep_id>[^/]+)/rollback", DeploymentRollbackHandler),
    (r"deployments/(?P<dep_id>[^/]+)/infer", DeploymentInferHandler),
    (r"deployments/(?P<dep_id>[^/]+)/snippet", DeploymentSnippetHandler),
]
