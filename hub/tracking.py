"""MLflow as a JupyterHub-managed service, reachable only with the hub's login.

This process is the service the hub starts for /services/mlflow/. It runs the real
`mlflow server` (SQLite + local artifacts by default) on a loopback port of its own
and puts a hub-authenticated gate in front of it: browsers log in through the hub's
OAuth, clients send their hub token (``Authorization: token|Bearer``, which is what
the mlflow client sends from MLFLOW_TRACKING_TOKEN). The caller's hub user name is
passed on as X-Fedhub-User. Before passing a request on, the gate brings the caller's
MLflow roles in step with their hub groups, which is how experiments shared with a
group reach its members (fedhub.hub.tracking_share).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated
from jupyterhub.utils import url_path_join
from tornado import httpclient, web

from .tracking_auth import ADMIN_HEADER, SECRET_ENV, SECRET_HEADER, USER_HEADER
from .tracking_share import MLFLOW_ADMIN, GroupShares, MlflowUnavailable, ShareError, share_routes
from .processes import serve_beside, stop_process_group

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailers", "transfer-encoding", "upgrade", "host", "content-length",
              "authorization", "cookie"}
# headers only the gate may set: a client sending them is ignored
GATE_HEADERS = {h.lower() for h in (USER_HEADER, ADMIN_HEADER, SECRET_HEADER)}

AUTH_INI = """[mlflow]
default_permission = NO_PERMISSIONS
database_uri = {database_uri}
admin_username = {admin_username}
admin_password = {admin_password}
authorization_function = fedhub.hub.tracking_auth:authenticate_hub_user
grant_default_workspace_access = true
"""


def stored_secret(path: Path) -> str:
    """A random secret kept in the data dir, so it survives restarts."""
    if not path.exists():
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def write_auth_config(data_dir: Path, database_uri: str = "") -> Path:
    """MLflow auth app settings: every user starts with no access to others' experiments."""
    ini = data_dir / "auth.ini"
    ini.write_text(AUTH_INI.format(
        database_uri=database_uri or f"sqlite:///{data_dir / 'mlflow-auth.db'}", admin_username=MLFLOW_ADMIN,
        admin_password=stored_secret(data_dir / "mlflow-admin-password")))
    ini.chmod(0o600)
    return ini


def mlflow_command(port: int, data_dir: Path, prefix: str, backend_store_uri: str = "",
                   artifacts_destination: str = "") -> list[str]:
    """The `mlflow server` command line (pure, so tests and docs can show it)."""
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    return [
        str(mlflow_bin) if mlflow_bin.exists() else "mlflow", "server",
        "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", backend_store_uri or f"sqlite:///{data_dir / 'mlflow.db'}",
        "--artifacts-destination", artifacts_destination or str(data_dir / "mlartifacts"),
        "--static-prefix", prefix.rstrip("/"),
        "--workers", "1",
        "--app-name", "basic-auth",
    ]


class GateHandler(HubOAuthenticated, web.RequestHandler):
    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

    def get_login_url(self):
        if "text/html" not in self.request.headers.get("Accept", ""):
            raise web.HTTPError(401, "Authentication required: send your hub token")
        return super().get_login_url()

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = exc.log_message if isinstance(exc, web.HTTPError) and exc.log_message else self._reason
        self.set_header("Content-Type", "application/json")
        # MLflow's own error codes, so the mlflow client reports them as it would its own
        code = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 503: "TEMPORARILY_UNAVAILABLE"}
        self.finish(json.dumps({"error_code": code.get(status_code, "INTERNAL_ERROR"),
                                "status": status_code, "message": message}))

    @web.authenticated
    async def proxy(self, *args):
        if self.current_user["name"] == MLFLOW_ADMIN:  # a hub user of that name must not be MLflow's admin
            raise web.HTTPError(403, f"The hub user name {MLFLOW_ADMIN!r} is reserved for fedhub's MLflow admin")
        try:  # experiments shared with the caller's groups: their roles follow the groups
            await self.settings["group_shares"].sync_user(self.current_user)
        except (MlflowUnavailable, ShareError) as e:
            raise web.HTTPError(503, f"MLflow is not answering yet ({e}); try again in a few seconds")
        upstream = self.settings["mlflow_url"] + self.request.uri
        headers = {k: v for k, v in self.request.headers.get_all()
                   if k.lower() not in HOP_BY_HOP and k.lower() not in GATE_HEADERS}
        headers[USER_HEADER] = self.current_user["name"]
        headers[ADMIN_HEADER] = "1" if self.current_user.get("admin") else "0"
        headers[SECRET_HEADER] = self.settings["gate_secret"]
        body = self.request.body if self.request.method in ("POST", "PUT", "PATCH", "DELETE") else None
        if self.request.method == "DELETE" and not body:
            body = None
        try:
            resp = await httpclient.AsyncHTTPClient().fetch(
                upstream, method=self.request.method, headers=headers, body=body,
                allow_nonstandard_methods=True, follow_redirects=False, raise_error=False,
                request_timeout=300,
            )
        except (OSError, httpclient.HTTPClientError) as e:
            raise web.HTTPError(503, f"MLflow is not answering yet ({e}); try again in a few seconds")
        if resp.code == 599:
            raise web.HTTPError(503, "MLflow is starting; try again in a few seconds")
        self.set_status(resp.code, resp.reason)
        for k, v in resp.headers.get_all():
            if k.lower() not in HOP_BY_HOP and k.lower() != "set-cookie":
                self.add_header(k, v)
        if resp.body and self.request.method != "HEAD":
            self.write(resp.body)
        await self.finish()

    get = head = post = put = patch = delete = options = proxy


def make_gate(prefix: str, mlflow_url: str, gate_secret: str, shares: GroupShares | None = None) -> web.Application:
    shares = shares or GroupShares(mlflow_url, gate_secret)
    return web.Application(
        [(url_path_join(prefix, "oauth_callback"), HubOAuthCallbackHandler), *share_routes(prefix),
         (r"/.*", GateHandler)],
        cookie_secret=secrets.token_bytes(32), mlflow_url=mlflow_url, gate_secret=gate_secret,
        group_shares=shares,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="port of the gate (the service URL)")
    parser.add_argument("--mlflow-port", type=int, required=True, help="loopback port of mlflow server")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--backend-store-uri", default="")
    parser.add_argument("--artifacts-destination", default="")
    parser.add_argument("--auth-cache-seconds", type=int, default=10,
                        help="how long a hub token check is trusted: also how soon a change of a "
                             "user's hub groups reaches the experiments shared with them")
    args = parser.parse_args(argv)
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/mlflow/")
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    gate_secret = secrets.token_urlsafe(32)  # new each start; only the gate and mlflow know it
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "TMPDIR": str(data_dir),
           SECRET_ENV: gate_secret, "MLFLOW_AUTH_CONFIG_PATH": str(write_auth_config(data_dir)),
           "MLFLOW_FLASK_SERVER_SECRET_KEY": stored_secret(data_dir / "mlflow-flask-secret")}
    mlflow = subprocess.Popen(
        mlflow_command(args.mlflow_port, data_dir, prefix, args.backend_store_uri, args.artifacts_destination),
        env=env, start_new_session=True,
    )

    mlflow_url = f"http://127.0.0.1:{args.mlflow_port}"
    hub_auth = HubOAuth.instance(cache_max_age=args.auth_cache_seconds)  # the handlers' shared instance
    # mlflow serves everything under the static prefix, its REST API too
    shares = GroupShares(mlflow_url + prefix.rstrip("/"), gate_secret, hub_auth.api_url, hub_auth.api_token)
    try:
        asyncio.run(serve_beside(make_gate(prefix, mlflow_url, gate_secret, shares), args.port, mlflow,
                                 "mlflow server"))
    finally:
        stop_process_group(mlflow)


if __name__ == "__main__":
    main()
