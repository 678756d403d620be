"""GET /api/usage: CPU-hours and GPU-hours per user and site (own; admins everyone, ?user=)."""

from __future__ import annotations

import time

from tornado import web

from ..accounting import UsageBook, summarise
from .base import APIError, FedhubAPIHandler


def book_of(settings) -> UsageBook:
    if "fedhub_usage_book" not in settings:
        settings["fedhub_usage_book"] = UsageBook(settings["fedhub_state_dir"])
    return settings["fedhub_usage_book"]


class UsageHandler(FedhubAPIHandler):
    # usage is derived from the caller's own sessions: the same scope that reads them
    required_scope = "custom:fedhub:sessions:read"

    @web.authenticated
    def get(self):
        me = self.current_user
        wanted = self.get_argument("user", None)
        admin = bool(me.get("admin"))
        if wanted is not None and wanted != me["name"] and not admin:
            raise APIError(403, f"Forbidden: only admins may see another user's usage (asked for {wanted!r})")
        who = wanted if wanted is not None else (None if admin else me["name"])
        self.write_json(summarise(book_of(self.settings).intervals(), time.time(), user=who))


ROUTES = [("api/usage", UsageHandler)]
