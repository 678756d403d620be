"""GET /api/datasets (the datasets the caller may see, and why), GET /api/datasets/{name}
(its JSON-LD self-description); plus the policy helpers the jobs API uses.

The policy file is $FEDHUB_POLICY_FILE (set by `fedhub up`); with none, the catalogue is
empty. A dataset the caller may not use is a 404, as if it did not exist.
"""

from __future__ import annotations

import json
import os

from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from .base import APIError, FedhubAPIHandler

READ_SCOPE = "custom:fedhub:datasets:read"


def policy_of(settings):
    """The governance policy (None when none is configured); re-read when the file changes."""
    from fedhub.hub.catalogue import load_catalogue
    from fedhub.hub.policy import PolicyError, cached_policy
    path = settings.get("fedhub_policy_file", os.environ.get("FEDHUB_POLICY_FILE", ""))
    if not path:
        return None
    catalogue_file = settings.get("fedhub_catalogue_file", os.environ.get("FEDHUB_CATALOGUE_FILE", ""))
    try:
        catalogue = load_catalogue(catalogue_file) if catalogue_file else None
        return cached_policy(path, catalogue)
    except PolicyError as e:
        raise APIError(503, f"the governance policy is invalid: {e}")


async def groups_of(handler) -> list[str]:
    """The caller's hub groups: from their user model, else asked of the hub with the service's token."""
    user = handler.current_user
    if isinstance(user.get("groups"), list):
        return sorted(user["groups"])
    auth = handler.hub_auth
    try:
        resp = await AsyncHTTPClient().fetch(
            f"{auth.api_url.rstrip('/')}/users/{user['name']}",
            headers={"Authorization": f"token {auth.api_token}"}, request_timeout=10)
        return sorted(json.loads(resp.body).get("groups") or [])
    except (HTTPClientError, OSError, ValueError) as e:
        raise APIError(503, f"could not read your hub groups from the hub: {e}")


def federated_training_refusal(policy, groups: list[str], sites: list[str], datasets) -> str:
    """'' when a federated job on `sites` using `datasets` (None: every catalogued dataset at those
    sites) is allowed; else the refusal, naming the dataset policy."""
    if policy is None:
        return ""
    if datasets is None:
        used = [(d, s) for d in policy.datasets for s in sites if s in d.sites]
    else:
        if not isinstance(datasets, list) or not all(isinstance(x, str) for x in datasets):
            return f"datasets: expected a list of dataset names, got {datasets!r}"
        used = []
        for name in datasets:
            d = policy.dataset(name)
            if d is None:
                return f"datasets: unknown dataset {name!r}"
            missing = [s for s in sites if s not in d.sites]
            if missing:
                return f"datasets: {name} is not held at {', '.join(missing)} (it is at {', '.join(d.sites)})"
            used += [(d, s) for s in sites]
    for d, site in used:
        decision = policy.may_use(d, groups, "federated-training")
        if not decision:
            return f"sites: {site} holds {d.name}; {decision.reason}"
    return ""


class _DatasetsBase(FedhubAPIHandler):
    required_scope = READ_SCOPE

    def visible(self, policy, groups):
        """(dataset, purposes the caller may use it for, why) for each dataset the caller may see."""
        from fedhub.hub.datasets import PURPOSES
        out = []
        for d in policy.datasets if policy else ():
            decisions = {p: policy.may_use(d, groups, p) for p in PURPOSES}
            allowed = [p for p, dec in decisions.items() if dec]
            if allowed:
                out.append((d, allowed, decisions[allowed[0]].reason))
        return out

    def base_url(self) -> str:
        prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/fedhub/")
        return f"{self.request.protocol}://{self.request.host}{prefix.rstrip('/')}"


class DatasetsHandler(_DatasetsBase):
    @web.authenticated
    async def get(self):
        policy = policy_of(self.settings)
        groups = await groups_of(self)
        items = [{"name": d.name, "title": d.title or d.name, "sites": list(d.sites), "purposes": purposes,
                  "may_leave_site": d.policy.may_leave_site, "why": why,
                  "self_description": f"datasets/{d.name}"}
                 for d, purposes, why in self.visible(policy, groups)]
        self.write_json({"datasets": items, "groups": groups})


class DatasetHandler(_DatasetsBase):
    @web.authenticated
    async def get(self, name):
        policy = policy_of(self.settings)
        groups = await groups_of(self)
        for d, _, _ in self.visible(policy, groups):
            if d.name == name:
                self.set_header("Content-Type", "application/ld+json")
                self.finish(json.dumps(d.jsonld(self.base_url())))
                return
        raise APIError(404, f"No dataset {name!r} that you may use")


ROUTES = [
    ("api/datasets", DatasetsHandler),
    (r"api/datasets/(?P<name>[^/]+)", DatasetHandler),
]
