"""The fedhub API service: a JupyterHub-managed tornado app at /services/fedhub/.

Run by the hub as ``python -m fedhub.hub.service.app --port P --state-dir D``; the
hub passes its API token and URL prefix in the JUPYTERHUB_* environment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import time
from pathlib import Path

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler
from jupyterhub.utils import url_path_join
from tornado import web
from tornado.ioloop import PeriodicCallback
from tornado.log import app_log

from .base import APIError, FedhubAPIHandler
from .provenance import (ProvenanceChainHandler, ProvenanceHandler, ProvenanceRecordHandler,
                         ProvenanceVerifyHandler, SessionRecorder, ledger_of)
from .datasets import ROUTES as DATASET_ROUTES
from .deployments import ROUTES as DEPLOYMENT_ROUTES
from .deployments import manager_of
from .edge import ROUTES as EDGE_ROUTES
from .jobs import ROUTES as JOB_ROUTES
from .jobs import federation_of
from .sessions import SessionsHandler
from .sites import SiteHandler, SitesHandler
from .store import SnapshotStore
from .usage import ROUTES as USAGE_ROUTES
from .usage import book_of
from ..accounting import UsageRecorder
from .expiry import ROUTES as EXPIRY_ROUTES
from ..culler import culler_from_env
from ..statedb import open_state_db
from ..expiry import ExpiryWatcher

API_VERSION = "0.1.0"
OPENAPI_PATH = Path(__file__).with_name("openapi.yaml")
TOKEN_CACHE_SECONDS = 5


class RootHandler(FedhubAPIHandler):
    @web.authenticated
    def get(self):
        self.write_json({"name": "fedhub", "version": API_VERSION, "user": self.current_user["name"]})


class NotFoundHandler(FedhubAPIHandler):
    def prepare(self):
        raise APIError(404, f"No such route: {self.request.path}")


# (path under the service prefix, handler); openapi.yaml documents exactly these
ROUTES = [
    ("api", RootHandler),
    ("api/sites", SitesHandler),
    (r"api/sites/(?P<name>[^/]+)", SiteHandler),
    ("api/sessions", SessionsHandler),
    *DATASET_ROUTES,
    ("api/provenance", ProvenanceHandler),
    ("api/provenance/chain", ProvenanceChainHandler),
    ("api/provenance/verify", ProvenanceVerifyHandler),
    (r"api/provenance/(?P<ref>[0-9a-f]{8,64})", ProvenanceRecordHandler),
    *DEPLOYMENT_ROUTES,
    *EDGE_ROUTES,
    *JOB_ROUTES,
    *USAGE_ROUTES,
    *EXPIRY_ROUTES,
]


async def _hub_call(method: str, path: str):
    from tornado.httpclient import AsyncHTTPClient
    api, token = os.environ["JUPYTERHUB_API_URL"].rstrip("/"), os.environ["JUPYTERHUB_API_TOKEN"]
    return await AsyncHTTPClient().fetch(f"{api}{path}", method=method, headers={"Authorization": f"token {token}"},
                                         request_timeout=30, allow_nonstandard_methods=True)


async def _hub_groups(user: str) -> list[str]:
    return json.loads((await _hub_call("GET", f"/users/{user}")).body).get("groups") or []


async def _stop_server(user: str, server_name: str) -> None:
    await _hub_call("DELETE", f"/users/{user}/servers/{server_name}" if server_name else f"/users/{user}/server")


def make_app(state_dir: str, prefix: str | None = None) -> web.Application:
    prefix = prefix or os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/fedhub/")
    handlers = [(url_path_join(prefix, path) + "/?", h) for path, h in ROUTES]
    handlers.append((url_path_join(prefix, "oauth_callback"), HubOAuthCallbackHandler))
    handlers.append((r".*", NotFoundHandler))
    # revoked and expired tokens must stop working within seconds (HubAuth caches 5 minutes by default)
    HubOAuth.instance(cache_max_age=TOKEN_CACHE_SECONDS)
    store = SnapshotStore(state_dir)
    return web.Application(
        handlers,
        cookie_secret=secrets.token_bytes(32),
        fedhub_store=store,
        fedhub_state_dir=state_dir,
        # jobs, deployments, the ledger: $FEDHUB_STATE_DB_URL (fedhub up --state-db-url) or SQLite
        # in the state dir; migrated to the newest schema and earlier versions' files imported here
        fedhub_state_db=open_state_db(state_dir),
        fedhub_expiry=ExpiryWatcher(store, state_dir, _hub_groups, _stop_server, app_log),
        default_handler_class=NotFoundHandler,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ip", default="127.0.0.1")
    parser.add_argument("--state-dir", required=True)
    args = parser.parse_args(argv)
    asyncio.run(_serve(make_app(args.state_dir), args.ip, args.port))


async def _serve(app: web.Application, ip: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app.listen(port, ip)
    print(json.dumps({"fedhub-api": f"http://{ip}:{port}"}), flush=True)
    recorder = SessionRecorder(app.settings["fedhub_store"], ledger_of(app.settings), app_log)
    usage = UsageRecorder(app.settings["fedhub_store"], book_of(app.settings), app_log)
    sessions_watch = PeriodicCallback(lambda: (recorder.poll(), usage.poll()), 2000)
    expiry = app.settings["fedhub_expiry"]
    expiry_watch = PeriodicCallback(lambda: expiry.poll(time.time()), 1000)
    expiry_watch.start()
    sessions_watch.start()
    culler = culler_from_env(os.environ, app_log)  # fedhub up --cull-idle N
    if culler is not None:
        cull_watch = PeriodicCallback(lambda: loop.create_task(culler.tick()), culler.interval * 1000)
        cull_watch.start()
    reconcile = loop.create_task(manager_of(app.settings).reconcile())  # deployments after a restart
    recover = loop.create_task(federation_of(app.settings).recover())  # jobs a previous process left
    await stop.wait()
    sessions_watch.stop()
    await federation_of(app.settings).shutdown()  # stop every job's SuperLink and SuperNodes


if __name__ == "__main__":
    main()
