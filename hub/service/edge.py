"""Edge device routes: register devices, and the agent's side of fedhub.hub.deploy.edge.contract.

POST /api/edge/devices                       register a device (name, group). With a user's
                                             token: a new device token of least scope
                                             (custom:fedhub:edge:device only) comes back once.
                                             With that device token: idempotent re-registration.
GET  /api/edge/devices                       the caller's devices, their group and last status
GET  /api/edge/groups/{group}/bundle         the bundle assigned to the group (204: none yet)
GET  /api/edge/groups/{group}/bundle/{id}    the signed bundle archive
POST /api/edge/devices/{name}/status         a device's status report
GET  /api/edge/key                           the hub's public key that signs bundles (PEM)

Groups belong to their owner: a device sees only its owner's deployments to its group.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

from tornado import httpclient, web

from ..deploy.edge import contract
from .base import APIError
from .deployments import DEPLOY, READ, _Deployments

DEVICE = "custom:fedhub:edge:device"
MAX_DEVICES_PER_USER = 1000


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _Edge(_Deployments):
    required_scope = DEVICE

    def check(self, func, doc):
        try:
            return func(doc)
        except contract.ContractError as e:
            raise APIError(400, str(e)) from None

    def own_device(self, name: str) -> dict:
        device = self.manager.devices.get(f"{self.user}/{name}")
        if device is None:
            raise APIError(404, f"No edge device {name!r} of yours; register it first")
        return device

    def calling_device(self) -> dict | None:
        token_id = self.current_user.get("token_id")
        return next((d for d in self.manager.devices.values()
                     if d["owner"] == self.user and token_id and d.get("token_id") == token_id), None)


class EdgeDevicesHandler(_Edge):
    verb_scopes = {"get": READ}

    @web.authenticated
    def get(self):
        devices = [self._public(d) for d in self.manager.devices.values() if d["owner"] == self.user]
        self.write_json({"devices": sorted(devices, key=lambda d: (d["group"], d["name"]))})

    @staticmethod
    def _public(device: dict) -> dict:
        return {k: v for k, v in device.items() if k != "token_id"}

    @web.authenticated
    async def post(self):
        doc = self.check(contract.check_registration, self.body())
        key = f"{self.user}/{doc['name']}"
        devices = self.manager.devices
        caller = self.calling_device()
        if caller is not None:  # the agent (re)registering with its own token
            if caller["name"] != doc["name"] or caller["group"] != doc["group"]:
                raise APIError(403, f"This token belongs to device {caller['name']} in group {caller['group']}")
            caller.update(platform=doc.get("platform") or caller.get("platform"), last_seen=time.time())
            self.manager.save_devices()
            self.write_json(self._public(caller))
            return
        if DEPLOY not in set(self.current_user.get("scopes", [])):
            raise APIError(403, f"Registering a new device needs the scope {DEPLOY}")
        if key in devices:
            raise APIError(409, f"You already have a device named {doc['name']!r} (group {devices[key]['group']}); "
                                "choose another name")
        if sum(d["owner"] == self.user for d in devices.values()) >= MAX_DEVICES_PER_USER:
            raise APIError(409, f"At most {MAX_DEVICES_PER_USER} devices per user")
        token = await self._mint_device_token(doc["name"], doc["group"])
        device = {"name": doc["name"], "group": doc["group"], "owner": self.user, "token_id": token["id"],
                  "platform": doc.get("platform") or {}, "registered": time.time(), "last_seen": None,
                  "status": None}
        devices[key] = device
        self.manager.save_devices()
        self.write_json({**self._public(device), "token": token["token"],
                         "token_scopes": [DEVICE]}, status=201)

    async def _mint_device_token(self, name: str, group: str) -> dict:
        """A hub token of the caller that can do nothing but be this device (the API service's
        role may create tokens; the hub caps them at the owner's own permissions)."""
        api = os.environ.get("JUPYTERHUB_API_URL", "").rstrip("/")
        service_token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
        if not api or not service_token:
            raise APIError(409, "Device tokens need the hub: this API service runs without one")
        try:
            resp = await httpclient.AsyncHTTPClient().fetch(
                f"{api}/users/{self.user}/tokens", method="POST", raise_error=False,
                headers={"Authorization": f"token {service_token}", "Content-Type": "application/json"},
                body=json.dumps({"scopes": [DEVICE], "note": f"fedhub edge device {name} (group {group})"}))
        except OSError as e:
            raise APIError(502, f"The hub did not answer while creating the device token: {e}") from None
        if resp.code != 201:
            raise APIError(502, f"The hub refused to create the device token ({resp.code}): "
                                f"{resp.body[:300].decode(errors='replace')}")
        return json.loads(resp.body)


class EdgeDeviceStatusHandler(_Edge):
    @web.authenticated
    def post(self, name):
        doc = self.check(contract.check_status, self.body())
        device = self.own_device(name)
        caller = self.calling_device()
        if caller is not None and caller is not device:
            raise APIError(403, f"This token belongs to device {caller['name']}, not {name}")
        device.update(status={k: doc.get(k) for k in ("state", "serving", "bundle_id", "reason", "previous")},
                      last_seen=time.time())
        self.manager.save_devices()
        self.set_status(204)
        self.finish()


def _assignment(handler: _Edge, group: str):
    record = handler.manager.edge_deployment(handler.user, group)
    if record is None:
        return None, None
    path = handler.manager.edge_bundle(record)
    return record, path


class EdgeAssignmentHandler(_Edge):
    @web.authenticated
    def get(self, group):
        caller = self.calling_device()
        if caller is not None and caller["group"] != group:
            raise APIError(403, f"Device {caller['name']} belongs to group {caller['group']}, not {group}")
        if caller is not None:
            caller["last_seen"] = time.time()
        record, path = _assignment(self, group)
        if path is None:
            self.set_status(204)
            self.finish()
            return
        sha = _sha256(path)
        bundle_id = f"{record['model_name']}-{record['current_version']}-{sha[:12]}"
        self.write_json(self.check(contract.check_assignment, {
            "bundle_id": bundle_id, "name": record["model_name"], "version": record["current_version"],
            "url": f"bundle/{bundle_id}", "sha256": sha, "size": path.stat().st_size,
            "deployment": record["id"]}))


class EdgeBundleHandler(_Edge):
    @web.authenticated
    def get(self, group, bundle_id):
        caller = self.calling_device()
        if caller is not None and caller["group"] != group:
            raise APIError(403, f"Device {caller['name']} belongs to group {caller['group']}, not {group}")
        record, path = _assignment(self, group)
        if path is None or not bundle_id.startswith(f"{record['model_name']}-{record['current_version']}-"):
            raise APIError(404, f"Bundle {bundle_id} is not assigned to group {group}")
        self.set_header("Content-Type", "application/zip")
        self.set_header("Content-Disposition", f'attachment; filename="{path.name}"')
        with open(path, "rb") as f:
            self.finish(f.read())


class EdgeKeyHandler(_Edge):
    @web.authenticated
    def get(self):
        from ..deploy.edge.bundle import hub_key
        from ..deploy.edge.manifest import public_key_pem
        self.set_header("Content-Type", "application/x-pem-file")
        self.finish(public_key_pem(hub_key(self.settings["fedhub_state_dir"]).public_key()))


ROUTES = [
    ("api/edge/devices", EdgeDevicesHandler),
    (r"api/edge/devices/(?P<name>[^/]+)/status", EdgeDeviceStatusHandler),
    (r"api/edge/groups/(?P<group>[^/]+)/bundle", EdgeAssignmentHandler),
    (r"api/edge/groups/(?P<group>[^/]+)/bundle/(?P<bundle_id>[^/]+)", EdgeBundleHandler),
    ("api/edge/key", EdgeKeyHandler),
]
