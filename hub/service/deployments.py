"""Deployment routes: one click from an MLflow model to a serving endpoint.

POST   /api/deployments                 deploy (202 + the record; progress as events)
GET    /api/deployments                 the caller's deployments
GET    /api/deployments/{id}            one deployment (others' are 404)
DELETE /api/deployments/{id}            undeploy
GET    /api/deployments/{id}/events     long poll: ?after=N&wait=S
POST   /api/deployments/{id}/rollback   the previous (or a given) version becomes current
POST   /api/deployments/{id}/infer      test inference: {"sample": true} or v2 JSON inputs
GET    /api/deployments/{id}/snippet    tritonclient code for the real endpoint
GET    /api/deployments/{id}/manifests  Kubernetes manifests of a site deployment (YAML)
"""

from __future__ import annotations

import json
import os

from tornado import web

from ..deploy.manager import DeployError, DeploymentManager
from ..deploy.snippets import snippet
from ..deploy.store import DeploymentStore
from .base import APIError, FedhubAPIHandler
from .provenance import ledger_of

READ, DEPLOY = "custom:fedhub:deployments:read", "custom:fedhub:deploy"
SETTINGS_ENV = "FEDHUB_DEPLOY_SETTINGS"
MAX_BODY_BYTES = 8 * 1024 * 1024  # test-inference inputs included


def deploy_settings_from_env() -> dict:
    try:
        return json.loads(os.environ.get(SETTINGS_ENV, "") or "{}")
    except ValueError:
        return {}


def manager_of(settings) -> DeploymentManager:
    """The service's one manager, made on first use (tests build apps without one)."""
    if settings.get("fedhub_deployments") is None:
        state_dir = settings["fedhub_state_dir"]
        inventory = settings.get("fedhub_store")
        settings["fedhub_deployments"] = DeploymentManager(
            DeploymentStore(state_dir, db=settings.get("fedhub_state_db")), settings.get("fedhub_deploy_settings") or deploy_settings_from_env(),
            sites=(inventory.sites if inventory is not None else (lambda: [])),
            ledger=lambda: ledger_of(settings))
    return settings["fedhub_deployments"]


class _Deployments(FedhubAPIHandler):
    required_scope = READ

    @property
    def manager(self) -> DeploymentManager:
        return manager_of(self.settings)

    @property
    def user(self) -> str:
        return self.current_user["name"]

    def caller_token(self) -> str:
        return self.hub_auth.get_token(self) or ""

    def body(self) -> dict:
        if len(self.request.body) > MAX_BODY_BYTES:
            raise APIError(413, f"Request body too large: at most {MAX_BODY_BYTES} bytes")
        if not self.request.body:
            return {}
        try:
            data = json.loads(self.request.body)
        except (ValueError, UnicodeDecodeError) as e:
            raise APIError(400, f"Request body: expected JSON ({e})") from None
        if not isinstance(data, dict):
            raise APIError(400, f"Request body: expected a JSON object, got {type(data).__name__}")
        return data

    def int_argument(self, name: str, default: int, low: float, high: float) -> float:
        raw = self.get_argument(name, None)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise APIError(400, f"?{name}= must be a number, got {raw!r}") from None
        if not low <= value <= high:
            raise APIError(400, f"?{name}= must be between {low:g} and {high:g}, got {raw}")
        return value

    def write_error(self, status_code: int, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, DeployError):
            self.set_status(exc.status)
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"status": exc.status, "message": exc.message}))
            return
        super().write_error(status_code, **kwargs)

    def log_exception(self, typ, value, tb):
        if isinstance(value, DeployError):
            return  # a refused request, not a server error
        super().log_exception(typ, value, tb)


class DeploymentsHandler(_Deployments):
    verb_scopes = {"post": DEPLOY}

    @web.authenticated
    def get(self):
        self.write_json({"deployments": self.manager.of_owner(self.user)})

    @web.authenticated
    async def post(self):
        record = await self.manager.deploy(self.user, self.caller_token(), self.body())
        self.set_header("Location", f"{self.request.path.rstrip('/')}/{record['id']}")
        self.write_json(record, status=202)


class DeploymentHandler(_Deployments):
    verb_scopes = {"delete": DEPLOY}

    @web.authenticated
    def get(self, deployment_id):
        from ..deploy.manager import public
        record = public(self.manager.get(self.user, deployment_id))
        if record["kind"] == "edge":
            record["devices"] = self.manager.edge_devices(self.user, record["where"])
        self.write_json(record)

    @web.authenticated
    async def delete(self, deployment_id):
        self.write_json(await self.manager.undeploy(self.user, deployment_id))


class DeploymentEventsHandler(_Deployments):
    @web.authenticated
    async def get(self, deployment_id):
        after = int(self.int_argument("after", 0, 0, 2**62))
        wait = self.int_argument("wait", 0, 0, 60)
        self.write_json(await self.manager.events(self.user, deployment_id, after, wait))


class DeploymentRollbackHandler(_Deployments):
    required_scope = DEPLOY

    @web.authenticated
    async def post(self, deployment_id):
        version = self.body().get("version")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
            raise APIError(400, f"'version' must be an integer, got {version!r}")
        self.write_json(await self.manager.rollback(self.user, deployment_id, version))


class DeploymentInferHandler(_Deployments):
    required_scope = DEPLOY

    @web.authenticated
    async def post(self, deployment_id):
        self.write_json(await self.manager.infer(self.user, deployment_id, self.body()))


class DeploymentSnippetHandler(_Deployments):
    @web.authenticated
    def get(self, deployment_id):
        record = self.manager.get(self.user, deployment_id)
        self.write_json(snippet(record))


class DeploymentManifestsHandler(_Deployments):
    @web.authenticated
    def get(self, deployment_id):
        text = self.manager.manifests(self.user, deployment_id)
        self.set_header("Content-Type", "application/yaml")
        self.set_header("Content-Disposition", f'attachment; filename="{deployment_id}-manifests.yaml"')
        self.finish(text)


ROUTES = [
    ("api/deployments", DeploymentsHandler),
    (r"api/deployments/(?P<deployment_id>[^/]+)", DeploymentHandler),
    (r"api/deployments/(?P<deployment_id>[^/]+)/events", DeploymentEventsHandler),
    (r"api/deployments/(?P<deployment_id>[^/]+)/rollback", DeploymentRollbackHandler),
    (r"api/deployments/(?P<deployment_id>[^/]+)/infer", DeploymentInferHandler),
    (r"api/deployments/(?P<deployment_id>[^/]+)/snippet", DeploymentSnippetHandler),
    (r"api/deployments/(?P<deployment_id>[^/]+)/manifests", DeploymentManifestsHandler),
]
