"""Session-API routes of the Federated panel: the Flower apps in the user's workspace,
and federated jobs, which the hub runs (forwarded to its fedhub API)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from urllib.parse import quote

from tornado import web

from .handlers import SessionAPIError
from .hub_forward import HubForwardHandler

#: how deep under the server root Flower apps are looked for
APP_SEARCH_DEPTH = 3
#: folders never searched (environments, caches, VCS data)
SKIPPED_DIRS = {"node_modules", "__pycache__", "site-packages", "mlruns", "mlartifacts"}
#: a workspace with more folders than this is searched only this far
MAX_DIRS_SCANNED = 5000


def flower_app_info(pyproject: Path) -> dict | None:
    """The `[tool.flwr.app]` facts of a pyproject.toml, or None when it is not a Flower app.
    A pyproject that does not parse is reported with its error rather than hidden."""
    try:
        text = pyproject.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        if "tool.flwr.app" in text:
            return {"error": f"{pyproject.name} does not parse: {e}"}
        return None
    app = data.get("tool", {}).get("flwr", {}).get("app")
    if not isinstance(app, dict):
        return None
    components = app.get("components", {}) if isinstance(app.get("components"), dict) else {}
    project = data.get("project", {}) if isinstance(data.get("project"), dict) else {}
    config = app.get("config", {}) if isinstance(app.get("config"), dict) else {}
    return {
        "name": str(project.get("name", pyproject.parent.name)),
        "version": str(project.get("version", "")),
        "publisher": str(app.get("publisher", "")),
        "serverapp": str(components.get("serverapp", "")),
        "clientapp": str(components.get("clientapp", "")),
        "config": {k: v for k, v in config.items() if isinstance(v, (str, int, float, bool))},
    }


def find_flower_apps(root: Path, depth: int = APP_SEARCH_DEPTH) -> list[dict]:
    """Folders under `root` (itself included, `depth` levels down) whose pyproject.toml has
    `[tool.flwr.app]`; paths relative to root. Hidden folders and environments are skipped."""
    root = root.resolve()
    apps, scanned = [], 0
    for current, dirs, files in os.walk(root):
        here = Path(current)
        rel = here.relative_to(root)
        scanned += 1
        if len(rel.parts) >= depth or scanned > MAX_DIRS_SCANNED:
            dirs[:] = []
        else:
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS
                             and not (here / d / "pyvenv.cfg").exists())
        if "pyproject.toml" in files:
            info = flower_app_info(here / "pyproject.toml")
            if info is not None:
                apps.append({"path": rel.as_posix() if rel.parts else ".", "abs_path": str(here), **info})
    return sorted(apps, key=lambda a: a["path"])


def server_root(handler) -> Path:
    return Path(handler.settings.get("server_root_dir") or os.getcwd()).expanduser()


def workspace_app_path(root: Path, app: str) -> str:
    """An app path from the panel (relative to the server root, or absolute inside it) as the
    absolute path the hub reads; 400 when it leaves the workspace or is no Flower app."""
    if not isinstance(app, str) or not app.strip():
        raise SessionAPIError(400, "app: expected the path of a Flower app folder in your workspace")
    root = root.resolve()
    path = (root / app).resolve()
    if path != root and root not in path.parents:
        raise SessionAPIError(400, f"app: {app!r} is outside your workspace ({root})")
    pyproject = path / "pyproject.toml"
    if not pyproject.is_file():
        raise SessionAPIError(400, f"app: {app!r} has no pyproject.toml; a Flower app folder has one "
                                   "with a [tool.flwr.app] table")
    info = flower_app_info(pyproject)
    if info is None:
        raise SessionAPIError(400, f"app: {app!r} is not a Flower app: its pyproject.toml has no "
                                   "[tool.flwr.app] table")
    if "error" in info:
        raise SessionAPIError(400, f"app: {app!r}: {info['error']}")
    return str(path)


class FlowerAppsHandler(HubForwardHandler):
    """GET fl/apps: the Flower apps in the workspace (works standalone too)."""

    @web.authenticated
    def get(self):
        root = server_root(self)
        self.write_json({"root": str(root.resolve()), "apps": find_flower_apps(root)})


class FederationSitesHandler(HubForwardHandler):
    feature = "Federated learning"

    @web.authenticated
    async def get(self):
        await self.forward("GET", "federation/sites")


class JobsHandler(HubForwardHandler):
    feature = "Federated jobs"

    @web.authenticated
    async def get(self):
        await self.forward("GET", "jobs")

    @web.authenticated
    async def post(self):
        body = self.json_body()
        self.require_hub()
        if "app" in body:  # the panel names apps relative to the server root; the hub wants a path
            body["app"] = workspace_app_path(server_root(self), body["app"])
        await self.forward("POST", "jobs", body=body)


class JobHandler(HubForwardHandler):
    feature = "Federated jobs"

    @web.authenticated
    async def get(self, job_id):
        await self.forward("GET", f"jobs/{quote(job_id, safe='')}")


class JobCancelHandler(HubForwardHandler):
    feature = "Federated jobs"

    @web.authenticated
    async def post(self, job_id):
        await self.forward("POST", f"jobs/{quote(job_id, safe='')}/cancel", body={})


class JobEventsHandler(HubForwardHandler):
    feature = "Federated jobs"

    @web.authenticated
    async def get(self, job_id):
        query, timeout = self.events_query()
        await self.forward("GET", f"jobs/{quote(job_id, safe='')}/events", query=query, timeout=timeout)


ROUTES = [
    ("fl/apps", FlowerAppsHandler),
    ("fl/sites", FederationSitesHandler),
    ("jobs", JobsHandler),
    (r"jobs/(?P<job_id>[^/]+)", JobHandler),
    (r"jobs/(?P<job_id>[^/]+)/cancel", JobCancelHandler),
    (r"jobs/(?P<job_id>[^/]+)/events", JobEventsHandler),
]
