"""Federated jobs: POST/GET /api/jobs, GET/DELETE /api/jobs/{id}, POST /api/jobs/{id}/cancel,
GET /api/jobs/{id}/events (long-poll), GET /api/federation/sites.

Reading needs custom:fedhub:jobs:read; launching and cancelling need custom:fedhub:federate.
Callers see only their own jobs: someone else's job is a 404, as if it did not exist.
"""

from __future__ import annotations

import inspect
import json
import os

from tornado import web

from .base import APIError, FedhubAPIHandler

READ_SCOPE = "custom:fedhub:jobs:read"
FEDERATE_SCOPE = "custom:fedhub:federate"
MAX_WAIT = 60
SETTINGS_ENV = "FEDHUB_FEDERATION_SETTINGS"


def federation_of(settings):
    """The service's one federated-job manager, made on first use from $FEDHUB_FEDERATION_SETTINGS
    (JSON: catalogue_file, homes_dir, mlflow_url and any other FederatedJobs setting)."""
    if settings.get("fedhub_federation") is None:
        from fedhub.hub.federation.manager import FederatedJobs
        config = settings.get("fedhub_federation_settings")
        if config is None:
            config = json.loads(os.environ.get(SETTINGS_ENV) or "{}")
        settings["fedhub_federation"] = FederatedJobs(
            settings["fedhub_state_dir"], inventory=settings.get("fedhub_store"), **config)
    return settings["fedhub_federation"]


class _JobsBase(FedhubAPIHandler):
    required_scope = READ_SCOPE
    verb_scopes = {"post": FEDERATE_SCOPE, "delete": FEDERATE_SCOPE}  # the verbs that act

    @property
    def federation(self):
        return federation_of(self.settings)

    def user(self) -> str:
        return self.current_user["name"]

    def caller_token(self) -> str:
        """The hub token of this request: the job logs to MLflow as its owner with it."""
        return self.hub_auth.get_token(self) or ""

    async def check_dataset_policy(self, body) -> None:
        """Federated jobs run only on sites whose datasets' policies allow federated-training to
        the caller's groups (the datasets the body names, else every catalogued one at those sites)."""
        from .datasets import federated_training_refusal, groups_of, policy_of
        if not isinstance(body, dict):
            return  # validate_request names the problem
        datasets = body.get("datasets")  # validate_request resolves their paths for the SuperNodes
        policy = policy_of(self.settings)
        sites = body.get("sites")
        if isinstance(sites, str):
            sites = [s.strip() for s in sites.split(",") if s.strip()]
        if policy is None or not isinstance(sites, list) or not all(isinstance(s, str) for s in sites):
            if datasets is not None and policy is None:
                raise APIError(400, "datasets: this hub has no dataset catalogue (no policy file)")
            return
        refusal = federated_training_refusal(policy, await groups_of(self), sites, datasets)
        if refusal:
            raise APIError(403 if refusal.startswith("sites:") else 400, refusal)

    def call(self, fn, *args):
        from fedhub.hub.federation.jobs import JobError
        try:
            return fn(*args)
        except JobError as e:
            raise APIError(e.status, e.message)


class JobsHandler(_JobsBase):
    @web.authenticated
    def get(self):
        self.write_json({"jobs": [j.public() for j in self.federation.list(self.user())]})

    @web.authenticated
    async def post(self):
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise APIError(400, "expected a JSON body with app, sites and rounds")
        await self.check_dataset_policy(body)
        job = self.call(self.federation.create, self.user(), self.caller_token(), body)
        if inspect.isawaitable(job):  # the manager's create may check sites asynchronously
            from fedhub.hub.federation.jobs import JobError
            try:
                job = await job
            except JobError as e:
                raise APIError(e.status, e.message)
        self.set_header("Location", f"jobs/{job.id}")
        self.write_json(job.public(), status=201)


class _CancelMixin:
    async def _cancel(self, job_id):
        fed = self.federation
        self.call(fed.cancel, self.user(), job_id)
        # answer once everything the job started is stopped, so "cancelled" is true when read
        await fed.wait_cancelled(job_id)
        self.write_json(fed.get(self.user(), job_id).public(), status=200)


class JobHandler(_CancelMixin, _JobsBase):
    @web.authenticated
    def get(self, job_id):
        self.write_json(self.call(self.federation.get, self.user(), job_id).public())

    @web.authenticated
    async def delete(self, job_id):
        await self._cancel(job_id)


class JobCancelHandler(_CancelMixin, _JobsBase):
    required_scope = FEDERATE_SCOPE
    @web.authenticated
    async def post(self, job_id):
        await self._cancel(job_id)


class JobEventsHandler(_JobsBase):
    @web.authenticated
    async def get(self, job_id):
        try:
            after = int(self.get_argument("after", "0"))
            wait = float(self.get_argument("wait", "0"))
        except ValueError:
            raise APIError(400, "after: expected an event number; wait: expected seconds")
        if after < 0 or not 0 <= wait <= MAX_WAIT:
            raise APIError(400, f"after: expected >= 0; wait: expected 0..{MAX_WAIT} seconds")
        from fedhub.hub.federation.jobs import JobError
        try:
            job, events = await self.federation.events(self.user(), job_id, after, wait)
        except JobError as e:
            raise APIError(e.status, e.message)
        self.write_json({"job": job.id, "state": job.state, "events": events,
                         "next": events[-1]["seq"] if events else after})


class FederationSitesHandler(_JobsBase):
    @web.authenticated
    def get(self):
        fed = self.federation
        offers = fed.offers()
        body = {"sites": [o.public() for o in offers.values()]}
        if fed.catalogue_error:
            body["error"] = fed.catalogue_error
        self.write_json(body)


ROUTES = [
    ("api/jobs", JobsHandler),
    (r"api/jobs/(?P<job_id>[^/]+)", JobHandler),
    (r"api/jobs/(?P<job_id>[^/]+)/cancel", JobCancelHandler),
    (r"api/jobs/(?P<job_id>[^/]+)/events", JobEventsHandler),
    ("api/federation/sites", FederationSitesHandler),
]
