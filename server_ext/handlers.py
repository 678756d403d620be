"""Handlers of the session API (contract: docs/session-api.md).

One base class maps domain errors to JSON 4xx answers; every verb is
@tornado.web.authenticated by the Jupyter server's own login.
"""

from __future__ import annotations

import json
import re
import uuid
from urllib.parse import quote

from jupyter_server.base.handlers import APIHandler
from tornado import httpclient, web

MAX_RESULTS = 1000
_ORDER_RE = re.compile(r"^(metrics|params|attributes|tags)\.[`\w .:/-]+?( (ASC|DESC))?$|^[\w.]+( (ASC|DESC))?$",
                       re.IGNORECASE)


class SessionAPIError(web.HTTPError):
    """An error the caller can act on: answered as JSON with its status, no traceback."""

    def __init__(self, status: int, message: str):
        super().__init__(status, message.replace("%", "%%"))
        self.status, self.message = status, message


def _mlflow_error(e) -> SessionAPIError:
    """MLflow's error codes -> the status a caller can act on (never a 500)."""
    code = getattr(e, "error_code", "")
    status = {"RESOURCE_DOES_NOT_EXIST": 404, "INVALID_PARAMETER_VALUE": 400, "BAD_REQUEST": 400,
              "PERMISSION_DENIED": 403, "UNAUTHENTICATED": 401}.get(code, 502)
    message = getattr(e, "message", str(e))
    if status == 502:
        message = f"The tracking server failed: {message}"
    return SessionAPIError(status, message)


class FedhubHandler(APIHandler):
    @property
    def ctx(self):
        return self.settings["fedhub_context"]

    @property
    def tracking(self):
        return self.settings["fedhub_tracking"]

    def write_json(self, data, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data, default=str))

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, SessionAPIError):
            message = exc.message
        elif isinstance(exc, web.HTTPError):
            message = exc.log_message or self._reason
        else:
            message = "Internal error; the server log has the details"
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status_code, "message": message}))

    async def call(self, fn, *args, **kwargs):
        """Run a blocking MLflow call off the event loop; map its errors."""
        try:
            return await self.tracking.run(fn, *args, **kwargs)
        except SessionAPIError:
            raise
        except Exception as e:
            if hasattr(e, "error_code"):
                raise _mlflow_error(e) from None
            self.log.warning("tracking call %s failed: %s", getattr(fn, "__name__", fn), e)
            raise SessionAPIError(502, f"The tracking server is not reachable: {type(e).__name__}") from None

    def int_arg(self, name: str, default: int, lo: int, hi: int) -> int:
        raw = self.get_argument(name, str(default))
        try:
            value = int(raw)
        except ValueError:
            raise SessionAPIError(400, f"{name}: expected a whole number, got {raw!r}") from None
        if not lo <= value <= hi:
            raise SessionAPIError(400, f"{name}: expected {lo} to {hi}, got {value}")
        return value

class SessionHandler(FedhubHandler):
    @web.authenticated
    def get(self):
        self.write_json(self.ctx.session_info())


class SitesHandler(FedhubHandler):
    @web.authenticated
    async def get(self):
        if self.ctx.mode != "hub":
            return self.write_json({"sites": [], "updated": None})
        try:
            r = await httpclient.AsyncHTTPClient().fetch(
                f"{self.ctx.fedhub_api}/sites", headers={"Authorization": f"token {self.ctx.token}"},
                raise_error=False, request_timeout=20)
        except OSError as e:
            raise SessionAPIError(502, f"The hub's fedhub API is not reachable: {e}") from None
        body = json.loads(r.body or b"{}") if r.body else {}
        if r.code != 200:
            raise SessionAPIError(r.code if 400 <= r.code < 500 else 502,
                                  body.get("message", f"fedhub API answered {r.code}"))
        self.write_json(body)


class ExperimentsHandler(FedhubHandler):
    @web.authenticated
    async def get(self):
        max_results = self.int_arg("max_results", 100, 1, MAX_RESULTS)
        page_token = self.get_argument("page_token", None) or None
        self.write_json(await self.call(self.tracking.experiments, max_results, page_token))


class RunsHandler(FedhubHandler):
    @web.authenticated
    async def get(self, experiment_id):
        max_results = self.int_arg("max_results", 50, 1, MAX_RESULTS)
        order_by = self.get_argument("order_by", "") or ""
        if order_by and not _ORDER_RE.match(order_by):
            raise SessionAPIError(400, f"order_by: expected e.g. 'metrics.acc DESC', got {order_by!r}")
        self.write_json(await self.call(
            self.tracking.runs, experiment_id, max_results=max_results,
            page_token=self.get_argument("page_token", None) or None,
            order_by=[order_by] if order_by else None, filter_string=self.get_argument("filter", "")))


class RunHandler(FedhubHandler):
    @web.authenticated
    async def get(self, run_id):
        self.write_json(await self.call(self.tracking.run_dict, run_id))


class MetricHistoryHandler(FedhubHandler):
    @web.authenticated
    async def get(self, run_id, key):
        self.write_json(await self.call(self.tracking.metric_history, run_id, key))


class CompareHandler(FedhubHandler):
    @web.authenticated
    async def get(self):
        ids = [i for i in self.get_argument("run_ids", "").split(",") if i]
        if not 2 <= len(ids) <= 20:
            raise SessionAPIError(400, f"run_ids: expected 2 to 20 comma-separated run ids, got {len(ids)}")
        self.write_json(await self.call(self.tracking.compare, ids))


class ReproduceHandler(FedhubHandler):
    @web.authenticated
    async def post(self, run_id):
        run = await self.call(self.tracking.run_dict, run_id)  # 404 for unknown runs
        if not run["reproducible"]:
            raise SessionAPIError(400, f"run {run_id} was not captured by fedhub.track(); nothing to re-execute")
        rid = uuid.uuid4().hex[:12]
        self.settings["fedhub_reproductions"].start(rid, run_id)
        self.write_json({"id": rid, "status": "running", "run_id": run_id}, status=202)


class ReproductionHandler(FedhubHandler):
    @web.authenticated
    def get(self, rid):
        found = self.settings["fedhub_reproductions"].get(rid)
        if found is None:
            raise SessionAPIError(404, f"No reproduction {rid!r}")
        self.write_json(found)


class ShareGateHandler(FedhubHandler):
    """Sharing an experiment with a hub group: done by the hub's MLflow gate, as this session's user."""

    async def gate(self, method: str, experiment_id: str, group: str | None = None, body: dict | None = None):
        if self.ctx.mode != "hub":
            raise SessionAPIError(409, "Sharing needs a fedhub hub: this session runs standalone, "
                                       "so there are no hub groups to share with")
        url = f"{self.ctx.hub_url}/services/mlflow/fedhub/api/experiments/{quote(experiment_id, safe='')}/shares"
        if group is not None:
            url += "/" + quote(group, safe="")
        try:
            r = await httpclient.AsyncHTTPClient().fetch(
                url, method=method, body=json.dumps(body) if body is not None else None, raise_error=False,
                request_timeout=30, headers={"Authorization": f"token {self.ctx.token}",
                                             "Content-Type": "application/json", "Accept": "application/json"})
        except OSError as e:
            raise SessionAPIError(502, f"The hub's MLflow service is not reachable: {e}") from None
        try:
            data = json.loads(r.body) if r.body else {}
        except ValueError:
            data = {}
        if r.code != 200:
            message = data.get("message") if isinstance(data, dict) else None
            raise SessionAPIError(r.code if 400 <= r.code < 500 else 502,
                                  message or f"The hub's MLflow service answered {r.code}")
        self.write_json(data)


class SharesHandler(ShareGateHandler):
    @web.authenticated
    async def get(self, experiment_id):
        await self.gate("GET", experiment_id)

    @web.authenticated
    async def post(self, experiment_id):
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise SessionAPIError(400, "request body: expected JSON like {\"group\": \"lab\", \"permission\": \"READ\"}") from None
        if not isinstance(body, dict) or not isinstance(body.get("group"), str) or not body["group"]:
            raise SessionAPIError(400, "group: expected the name of a hub group")
        await self.gate("POST", experiment_id, body={"group": body["group"],
                                                     "permission": body.get("permission") or "READ"})


class ShareHandler(ShareGateHandler):
    @web.authenticated
    async def delete(self, experiment_id, group):
        await self.gate("DELETE", experiment_id, group=group)


class NotFoundHandler(FedhubHandler):
    @web.authenticated
    def get(self, *args):
        raise SessionAPIError(404, f"No such route: {self.request.path}")

    post = put = delete = get


ROUTES = [
    ("session", SessionHandler),
    ("sites", SitesHandler),
    ("experiments", ExperimentsHandler),
    (r"experiments/(?P<experiment_id>[^/]+)/runs", RunsHandler),
    (r"runs/(?P<run_id>[^/]+)", RunHandler),
    (r"runs/(?P<run_id>[^/]+)/metrics/(?P<key>.+)", MetricHistoryHandler),
    ("compare", CompareHandler),
    (r"runs/(?P<run_id>[^/]+)/reproduce", ReproduceHandler),
    (r"reproductions/(?P<rid>[^/]+)", ReproductionHandler),
    (r"experiments/(?P<experiment_id>[^/]+)/shares", SharesHandler),
    (r"experiments/(?P<experiment_id>[^/]+)/shares/(?P<group>[^/]+)", ShareHandler),
]
