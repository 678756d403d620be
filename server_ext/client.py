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
