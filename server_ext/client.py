"""Clients a session uses: the hub's fedhub API over HTTP, and MLflow through its client.

Under JupyterHub, the session reaches the hub's services at $FEDHUB_URL with its own
token ($JUPYTERHUB_API_TOKEN); standalone (Binder, a laptop) there is no hub and MLflow
is a local store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class SessionContext:
    mode: str  # "hub" or "standalone"
    hub_url: str
    token: str
    user: str

    @property
    def tracking_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI", "") or (
            f"{self.hub_url}/services/mlflow" if self.mode == "hub" else "./mlruns")

    @property
    def mlflow_ui_url(self) -> str:
        if self.mode == "hub":
            return f"{self.hub_url}/services/mlflow/"
        return ""

    @property
    def fedhub_api(self) -> str:
        return f"{self.hub_url}/services/fedhub/api"

    def session_info(self) -> dict:
        env = os.environ
        return {
            "mode": self.mode, "user": self.user, "hub_url": self.hub_url,
            "site": env.get("FEDHUB_SITE", ""), "node": env.get("FEDHUB_NODE", ""),
            "gpu_type": env.get("FEDHUB_GPU_TYPE", ""), "gpus": int(env.get("FEDHUB_GPUS", "0") or 0),
            "cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES", ""),
            "session_type": env.get("FEDHUB_SESSION_TYPE", "jupyterlab"),
            "tracking_uri": self.tracking_uri, "mlflow_ui_url": self.mlflow_ui_url,
        }


def session_context(environ=None) -> SessionContext:
    env = os.environ if environ is None else environ
    token = env.get("JUPYTERHUB_API_TOKEN", "")
    hub_url = env.get("FEDHUB_URL", "").rstrip("/")
    if token and hub_url:
        return SessionContext("hub", hub_url, token, env.get("JUPYTERHUB_USER", ""))
    return SessionContext("standalone", "", "", env.get("USER", ""))


def configure_tracking_env(ctx: SessionContext, environ=None) -> None:
    """Make `import mlflow; mlflow.log_metric(...)` just work in kernels this server starts:
    they inherit these variables. Explicit settings by the user win."""
    env = os.environ if environ is None else environ
    if ctx.mode == "hub":
        env.setdefault("MLFLOW_TRACKING_URI", ctx.tracking_uri)
        env.setdefault("MLFLOW_TRACKING_TOKEN", ctx.token)


# ------------------------------------------------------------------ sharing with hub groups
class ShareError(Exception):
    """The hub's MLflow gate refused (status and message are its answer)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


def _share_call(method: str, experiment_id: str, group: str | None = None, body: dict | None = None,
                ctx: SessionContext | None = None) -> dict:
    import requests
    from urllib.parse import quote

    ctx = ctx or session_context()
    if ctx.mode != "hub":
        raise ShareError(409, "Sharing needs a fedhub hub: this session runs standalone")
    url = f"{ctx.hub_url}/services/mlflow/fedhub/api/experiments/{quote(str(experiment_id), safe='')}/shares"
    if group is not None:
        url += "/" + quote(group, safe="")
    r = requests.request(method, url, json=body, timeout=60, headers={"Authorization": f"token {ctx.token}"})
    try:
        data = r.json()
    except ValueError:
        data = {}
    if r.status_code != 200:
        raise ShareError(r.status_code, data.get("message") or f"the hub answered {r.status_code}")
    return data


def experiment_shares(experiment_id: str, ctx: SessionContext | None = None) -> dict:
    """{"experiment_id", "experiment_name", "shares": [{"group", "permission"}]}."""
    return _share_call("GET", experiment_id, ctx=ctx)


def share_experiment(experiment_id: str, group: str, permission: str = "READ",
                     ctx: SessionContext | None = None) -> dict:
    """Share with a hub group (READ, USE, EDIT or MANAGE); only the owner (MANAGE) may."""
    return _share_call("POST", experiment_id, body={"group": group, "permission": permission}, ctx=ctx)


def unshare_experiment(experiment_id: str, group: str, ctx: SessionContext | None = None) -> dict:
    return _share_call("DELETE", experiment_id, group=group, ctx=ctx)
