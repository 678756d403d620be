"""Sharing MLflow experiments with hub groups, enforced by MLflow's own roles.

A hub group `lab` is mirrored as the MLflow role `hub-group:lab` (default workspace).
Sharing experiment 7 with `lab` at READ adds the role permission (experiment, 7, READ);
unsharing removes it. The role's members are the group's members: the gate assigns and
unassigns a user's `hub-group:*` roles on that user's own requests, from the groups in
the hub's answer to the token check (`sync_user`). MLflow only decides access when a
user calls it, and every call passes the gate, so syncing there is exact and costs
nothing while nobody calls; a membership change reaches MLflow within the gate's token
cache (`--auth-cache-seconds`).

The record of a share is the role permission itself: nothing else to keep in step.
Only a caller with MANAGE on the experiment (its creator, or whoever it was shared with
at MANAGE) or a hub admin may share or unshare.
"""

from __future__ import annotations

import asyncio
import json
import logging
from urllib.parse import quote, urlencode

from jupyterhub.services.auth import HubOAuthenticated
from tornado import httpclient, web

from .tracking_auth import ADMIN_HEADER, SECRET_HEADER, USER_HEADER

ROLE_PREFIX = "hub-group:"
WORKSPACE = "default"
PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE")
MLFLOW_ADMIN = "fedhub-admin"
log = logging.getLogger("fedhub.mlflow.share")


class ShareError(web.HTTPError):
    """An answer for the caller: JSON with this status and message, never a traceback."""

    def __init__(self, status: int, message: str):
        super().__init__(status, message.replace("%", "%%"))
        self.status, self.message = status, message


class MlflowUnavailable(Exception):
    pass


class GroupShares:
    """Shares (role permissions) and role membership (hub groups), through MLflow's REST API."""

    def __init__(self, mlflow_url: str, gate_secret: str, hub_api_url: str = "", hub_token: str = ""):
        self.mlflow_url, self.gate_secret = mlflow_url, gate_secret
        self.hub_api_url, self.hub_token = hub_api_url.rstrip("/"), hub_token
        self._synced: dict[str, frozenset] = {}  # user -> groups last applied to their roles
        self._generation = 0  # bumped when roles appear: everyone is synced again
        self._locks: dict[str, asyncio.Lock] = {}

    # ------------------------------------------------------------------ MLflow calls
    async def mlflow(self, method: str, path: str, *, params: dict | None = None, body: dict | None = None,
                     as_user: str = MLFLOW_ADMIN) -> tuple[int, dict]:
        """Call MLflow directly (not through the hub) as `as_user`; only the gate holds the secret."""
        url = self.mlflow_url + path + ("?" + urlencode(params) if params else "")
        headers = {USER_HEADER: as_user, ADMIN_HEADER: "1" if as_user == MLFLOW_ADMIN else "0",
                   SECRET_HEADER: self.gate_secret, "Content-Type": "application/json"}
        try:
            r = await httpclient.AsyncHTTPClient().fetch(
                url, method=method, headers=headers, body=json.dumps(body) if body is not None else None,
                allow_nonstandard_methods=True, raise_error=False, request_timeout=30)
        except (OSError, httpclient.HTTPClientError) as e:
            raise MlflowUnavailable(str(e)) from None
        if r.code == 599:
            raise MlflowUnavailable(str(r.error))
        try:
            data = json.loads(r.body) if r.body else {}
        except ValueError:
            data = {"message": r.body[:200].decode(errors="replace")}
        return r.code, data if isinstance(data, dict) else {}

    async def _ok(self, method: str, path: str, **kw) -> dict:
        code, data = await self.mlflow(method, path, **kw)
        if code >= 400:
            raise ShareError(502, f"MLflow refused {method} {path}: {data.get('message', code)}")
        return data

    async def roles(self) -> dict[str, dict]:
        """hub group name -> its MLflow role (only groups something was shared with)."""
        data = await self._ok("GET", "/api/3.0/mlflow/roles/list", params={"workspace": WORKSPACE})
        return {r["name"][len(ROLE_PREFIX):]: r for r in data.get("roles", []) if r["name"].startswith(ROLE_PREFIX)}

    # ------------------------------------------------------------------ membership
    async def sync_user(self, user: dict) -> None:
        """Make the user's `hub-group:*` roles match their hub groups (no-op when unchanged)."""
        name, groups = user["name"], frozenset(user.get("groups") or ())
        if self._synced.get(name) == groups:
            return
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if self._synced.get(name) == groups:
                return
            generation = self._generation
            roles = await self.roles()
            # the user exists in MLflow's store once MLflow has seen them (authorization_function)
            await self.mlflow("GET", "/api/2.0/mlflow/users/current", as_user=name)
            code, data = await self.mlflow("GET", "/api/3.0/mlflow/users/roles/list", params={"username": name})
            if code >= 400:
                raise ShareError(502, f"MLflow could not list the roles of {name}: {data.get('message', code)}")
            current = {r["id"] for r in data.get("roles", []) if r["name"].startswith(ROLE_PREFIX)}
            wanted = {roles[g]["id"] for g in groups if g in roles}
            for role_id in wanted - current:
                code, data = await self.mlflow("POST", "/api/3.0/mlflow/roles/assign",
                                               body={"username": name, "role_id": role_id})
                if code >= 400 and data.get("error_code") != "RESOURCE_ALREADY_EXISTS":
                    raise ShareError(502, f"MLflow could not assign a group role to {name}: {data.get('message')}")
            for role_id in current - wanted:
                await self._ok("DELETE", "/api/3.0/mlflow/roles/unassign", body={"username": name, "role_id": role_id})
            if generation == self._generation:
                self._synced[name] = groups

    def _roles_changed(self) -> None:
        self._generation += 1
        self._synced.clear()

    # ------------------------------------------------------------------ shares
    async def _check_experiment(self, experiment_id: str, user: dict, need_manage: bool) -> str:
        """The experiment's name; 404 if it does not exist, 403 if the caller may not do this."""
        code, data = await self.mlflow("GET", "/api/2.0/mlflow/experiments/get",
                                       params={"experiment_id": experiment_id})
        if code >= 400:
            raise ShareError(404, f"No experiment {experiment_id!r}")
        name = data["experiment"]["name"]
        if user.get("admin"):
            return name
        code, perm = await self.mlflow("GET", "/api/3.0/mlflow/users/permissions/get", params={
            "username": user["name"], "resource_type": "experiment", "resource_id": experiment_id})
        have = perm.get("permission", "NO_PERMISSIONS") if code == 200 else "NO_PERMISSIONS"
        if have in ("NO_PERMISSIONS", "DENY"):
            raise ShareError(404, f"No experiment {experiment_id!r}")  # do not reveal others' experiments
        if need_manage and have != "MANAGE":
            raise ShareError(403, f"Only the owner of experiment {name!r} (MANAGE) can share it; "
                                  f"you have {have}")
        return name

    async def _check_group(self, group: str) -> None:
        if not self.hub_api_url:
            raise ShareError(503, "This MLflow gate does not know the hub's API")
        try:
            r = await httpclient.AsyncHTTPClient().fetch(
                f"{self.hub_api_url}/groups/{quote(group, safe='')}", raise_error=False, request_timeout=20,
                headers={"Authorization": f"token {self.hub_token}"})
        except (OSError, httpclient.HTTPClientError) as e:
            raise ShareError(502, f"The hub is not reachable: {e}") from None
        if r.code == 404:
            raise ShareError(404, f"No hub group {group!r}")
        if r.code != 200:
            raise ShareError(502, f"The hub answered {r.code} when asked for group {group!r}")

    async def list_shares(self, experiment_id: str, user: dict) -> dict:
        name = await self._check_experiment(experiment_id, user, need_manage=False)
        shares = []
        for group, role in sorted((await self.roles()).items()):
            for p in role.get("permissions", []):
                if p["resource_type"] == "experiment" and p["resource_pattern"] == experiment_id:
                    shares.append({"group": group, "permission": p["permission"]})
        return {"experiment_id": experiment_id, "experiment_name": name, "shares": shares}

    async def share(self, experiment_id: str, group: str, permission: str, user: dict) -> dict:
        permission = (permission or "READ").upper()
        if permission not in PERMISSIONS:
            raise ShareError(400, f"permission: expected one of {', '.join(PERMISSIONS)}, got {permission!r}")
        if not group or not isinstance(group, str):
            raise ShareError(400, "group: expected the name of a hub group")
        name = await self._check_experiment(experiment_id, user, need_manage=True)
        await self._check_group(group)
        role = (await self.roles()).get(group)
        if role is None:
            code, data = await self.mlflow("POST", "/api/3.0/mlflow/roles/create", body={
                "name": ROLE_PREFIX + group, "workspace": WORKSPACE,
                "description": f"members of the hub group {group} (kept in step by fedhub)"})
            if code >= 400 and data.get("error_code") != "RESOURCE_ALREADY_EXISTS":
                raise ShareError(502, f"MLflow could not create a role for {group!r}: {data.get('message')}")
            role = (await self.roles())[group]
            self._roles_changed()
        existing = [p for p in role.get("permissions", [])
                    if p["resource_type"] == "experiment" and p["resource_pattern"] == experiment_id]
        if existing:
            await self._ok("PATCH", "/api/3.0/mlflow/roles/permissions/update",
                           body={"role_permission_id": existing[0]["id"], "permission": permission})
        else:
            await self._ok("POST", "/api/3.0/mlflow/roles/permissions/add", body={
                "role_id": role["id"], "resource_type": "experiment", "resource_pattern": experiment_id,
                "permission": permission})
        log.info("%s shared experiment %s (%s) with group %s at %s", user["name"], experiment_id, name,
                 group, permission)
        return {"experiment_id": experiment_id, "experiment_name": name, "group": group, "permission": permission}

    async def unshare(self, experiment_id: str, group: str, user: dict) -> dict:
        name = await self._check_experiment(experiment_id, user, need_manage=True)
        role = (await self.roles()).get(group)
        found = [p for p in (role or {}).get("permissions", [])
                 if p["resource_type"] == "experiment" and p["resource_pattern"] == experiment_id]
        if not found:
            raise ShareError(404, f"Experiment {name!r} is not shared with group {group!r}")
        for p in found:
            await self._ok("DELETE", "/api/3.0/mlflow/roles/permissions/remove",
                           body={"role_permission_id": p["id"]})
        log.info("%s unshared experiment %s (%s) from group %s", user["name"], experiment_id, name, group)
        return {"experiment_id": experiment_id, "experiment_name": name, "group": group, "permission": None}


# ---------------------------------------------------------------------- handlers
class ShareAPIHandler(HubOAuthenticated, web.RequestHandler):
    """/services/mlflow/fedhub/api/experiments/<id>/shares[/<group>] (docs/session-api.md)."""

    def get_login_url(self):
        raise web.HTTPError(401, "Authentication required: send your hub token")

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ShareError):
            message = exc.message
        elif isinstance(exc, web.HTTPError):
            message = exc.log_message or self._reason
        else:
            message = "Internal error; the MLflow service log has the details"
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status_code, "message": message}))

    @property
    def shares(self) -> GroupShares:
        return self.settings["group_shares"]

    async def act(self, coro_fn, *args):
        try:
            await self.shares.sync_user(self.current_user)
            result = await coro_fn(*args, self.current_user)
        except MlflowUnavailable as e:
            raise ShareError(503, f"MLflow is not answering yet ({e}); try again in a few seconds") from None
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(result))

    def body(self) -> dict:
        try:
            data = json.loads(self.request.body or b"{}")
        except ValueError as e:
            raise web.HTTPError(400, f"request body: expected a JSON object ({e})") from None
        if not isinstance(data, dict):
            raise web.HTTPError(400, "request body: expected a JSON object")
        return data


class SharesHandler(ShareAPIHandler):
    @web.authenticated
    async def get(self, experiment_id):
        await self.act(self.shares.list_shares, experiment_id)

    @web.authenticated
    async def post(self, experiment_id):
        body = self.body()
        await self.act(self.shares.share, experiment_id, body.get("group") or "", body.get("permission") or "READ")


class ShareHandler(ShareAPIHandler):
    @web.authenticated
    async def delete(self, experiment_id, group):
        await self.act(self.shares.unshare, experiment_id, group)


def share_routes(prefix: str) -> list:
    base = prefix.rstrip("/") + "/fedhub/api/experiments/([^/]+)/shares"
    return [(base + "/?", SharesHandler), (base + "/([^/]+)/?", ShareHandler)]
