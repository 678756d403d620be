"""GET /api/sessions: the caller's sessions and where they run."""

from __future__ import annotations

from tornado import web

from .base import FedhubAPIHandler


class SessionsHandler(FedhubAPIHandler):
    required_scope = "custom:fedhub:sessions:read"

    @web.authenticated
    def get(self):
        user = self.current_user["name"]
        self.write_json({"user": user, "sessions": self.store.sessions_of(user)})
