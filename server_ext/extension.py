"""The jupyter-server extension: registers the session API and prepares the session.

Loaded automatically (etc/jupyter/jupyter_server_config.d/fedhub.json). Under
JupyterHub it points MLflow at the hub's service with the session's token, so
notebooks need no URI or password.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from jupyter_server.utils import url_path_join

from .client import configure_tracking_env, session_context
from .handlers import ROUTES, NotFoundHandler
from .tracking import Tracking


class Reproductions:
    """Background re-executions, by id (one thread each; results kept for the session)."""

    def __init__(self):
        self._results: dict[str, dict] = {}
        self._lock = threading.Lock()

    def start(self, rid: str, run_id: str) -> None:
        with self._lock:
            self._results[rid] = {"id": rid, "run_id": run_id, "status": "running", "comparison": [],
                                  "child_run_id": None, "identical": None, "message": "", "log_tail": ""}
        threading.Thread(target=self._run, args=(rid, run_id), daemon=True).start()

    def _run(self, rid: str, run_id: str) -> None:
        try:
            from .reproduce import reproduce_run
            result = reproduce_run(run_id).to_dict()
            result["id"] = rid
        except Exception as e:  # reported to the panel, never raised into the server
            result = {**self._results[rid], "status": "failed", "message": str(e)}
        with self._lock:
            self._results[rid] = result

    def get(self, rid: str) -> dict | None:
        with self._lock:
            return self._results.get(rid)


def load(serverapp) -> None:
    ctx = session_context()
    configure_tracking_env(ctx)
    from .capture_settings import configure_auto_capture
    auto_capture = configure_auto_capture(serverapp)  # kernels inherit $FEDHUB_AUTO_CAPTURE
    web_app = serverapp.web_app
    base = url_path_join(web_app.settings["base_url"], "fedhub", "api")
    from .deploy_handlers import ROUTES as DEPLOY_ROUTES
    from .fl_handlers import ROUTES as FL_ROUTES
    from .activity import ROUTES as ACTIVITY_ROUTES  # the hub's idle culler asks what is running
    from .expiry_handlers import ROUTES as EXPIRY_ROUTES  # the session's time limit and Extend
    handlers = [(url_path_join(base, path) + "/?$", h)
                for path, h in [*ROUTES, *FL_ROUTES, *DEPLOY_ROUTES, *ACTIVITY_ROUTES, *EXPIRY_ROUTES]]
    handlers.append((url_path_join(base, "(.*)"), NotFoundHandler))
    web_app.settings.update(
        fedhub_context=ctx,
        fedhub_tracking=Tracking(ThreadPoolExecutor(4, thread_name_prefix="fedhub-mlflow")),
        fedhub_reproductions=Reproductions(),
    )
    web_app.add_handlers(".*$", handlers)
    serverapp.log.info("fedhub: session API at %s (%s mode, tracking at %s, automatic capture %s)", base,
                       ctx.mode, ctx.tracking_uri, "on" if auto_capture else "off")
