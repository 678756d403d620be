"""GET /api/sites, GET /api/sites/{site}: the federation's live inventory."""

from __future__ import annotations

from tornado import web

from .base import APIError, FedhubAPIHandler


class SitesHandler(FedhubAPIHandler):
    required_scope = "custom:fedhub:sites:read"

    @web.authenticated
    def get(self):
        data = self.store.read()
        self.write_json({"sites": data.get("sites", []), "updated": data.get("updated")})


class SiteHandler(FedhubAPIHandler):
    required_scope = "custom:fedhub:sites:read"

    @web.authenticated
    def get(self, name):
        site = self.store.site(name)
        if site is None:
            known = [s["name"] for s in self.store.sites()]
            raise APIError(404, f"No site {name!r}; sites: {known}")
        self.write_json(site)
