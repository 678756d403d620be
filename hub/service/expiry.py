"""Session time limits: GET /api/expiry (the caller's sessions: end, phase, warning events),
POST /api/expiry/extend {"hours": h, "server_name": ""} within the group's limit."""

from __future__ import annotations

import json
import time

from tornado import web

from ..expiry import ExpiryError, TimeLimits, phase
from .base import APIError, FedhubAPIHandler


class ExpiryHandler(FedhubAPIHandler):
    required_scope = "custom:fedhub:sessions:read"

    @web.authenticated
    def get(self):
        me = self.current_user["name"]
        watcher = self.settings["fedhub_expiry"]
        now = time.time()  # the hub's clock: a session's browser may be off
        self.write_json({"user": me, "now": now, "sessions": [
            {**r, "phase": phase(now, r["end"], TimeLimits(**r["limits"]))}
            for r in watcher.sessions.values() if r["user"] == me]})


class ExtendHandler(FedhubAPIHandler):
    required_scope = "custom:fedhub:sessions:read"

    @web.authenticated
    def post(self):
        try:
            body = json.loads(self.request.body or b"{}")
            hours = float(body["hours"])
        except (ValueError, KeyError, TypeError):
            raise APIError(400, 'body: expected JSON {"hours": <number>, "server_name": "<optional>"}')
        try:
            rec = self.settings["fedhub_expiry"].extend(self.current_user["name"],
                                                        str(body.get("server_name", "")), hours)
        except ExpiryError as e:
            raise APIError(404 if "no running session" in str(e) else 400, str(e))
        self.write_json(rec)


ROUTES = [("api/expiry", ExpiryHandler), ("api/expiry/extend", ExtendHandler)]
