"""FederatedSpawner: the JupyterHub adapter that places a session on a federated site.

It validates the request, asks placement for ranked sites, reserves capacity on the
best one and delegates to that site's backend spawner; if the site fails to start the
session it releases the reservation and tries the next, saying so in progress().
Its state (site, allocation, the backend spawner's own state) goes through
get_state/load_state, so a restarted hub reconnects to running sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time

from jupyterhub.spawner import Spawner
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from traitlets import Dict, Integer, List, Unicode, default, observe

from fedhub.hub.catalogue import CatalogueError
from fedhub.hub.policy import QuotaError, cached_policy, check_gpu_quota

from .backends.base import merged_overrides
from .federation import Federation
from .form import (PolicyRefusal, RequestError, form_to_options, parse_request, parse_time_limit, render_form,
                   time_limits_for)
from .inventory import Allocation
from .placement import SessionRequest, rank_sites


class FederatedSpawner(Spawner):
    catalogue_file = Unicode(
        "", config=True,
        help="Path of the site catalogue YAML (schema: docs/catalogue.md).",
    )
    catalogue = Dict(
        {}, config=True,
        help="Catalogue entries that override the file: 'sites' merge by name, 'defaults' and 'limits' "
             "merge key by key, anything else replaces. "
             "With no catalogue_file, this is the whole catalogue.",
    )
    state_dir = Unicode(
        "", config=True,
        help="Folder where the hub writes the live inventory snapshot the fedhub API service reads.",
    )
    policy_file = Unicode(
        "", config=True,
        help="Governance policy YAML (group grants: sites, GPU types, GPU quotas, datasets; the dataset "
             "catalogue; schema: docs/governance.md). Empty: no policy, every user may use everything.",
    )
    site_start_timeout = Integer(
        300, config=True,
        help="Seconds one site may take to start a session before the next site is tried "
             "(a site's own start_timeout option wins).",
    )
    max_sites_tried = Integer(
        3, config=True,
        help="How many sites one spawn may try before giving up when sites fail to start it.",
    )
    session_types = List(
        ["jupyterlab"], config=True,
        help="Session types offered in the spawn form.",
    )
    progress_poll_interval = Integer(
        1, config=True, help="Seconds between progress checks while waiting for new events.")
    max_concurrent_starts = Integer(
        config=True,
        help="Sessions started at once by this hub; the rest wait in a queue shown in progress(). "
             "A server start costs ~3.5 CPU-seconds, so more than the core count only adds contention.",
    )

    @default("max_concurrent_starts")
    def _default_max_concurrent_starts(self):
        return max(2, os.cpu_count() or 2)

    _slots: asyncio.Semaphore | None = None  # shared by every spawner of this hub process
    _queued = 0

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._events: list[dict] = []
        self._start_done = True
        self._event_signal = asyncio.Event()
        self._starting_child: Spawner | None = None

    @observe("port")
    def _forward_port(self, change):
        # batchspawner's hub API handler reports the job's port on *this* spawner (it finds
        # the spawner by token); the backend spawner waiting for it is the child
        child = self._starting_child or self.child
        if child is not None and change.new and not getattr(child, "_fedhub_abandoned", False):
            child.port = change.new

    request: SessionRequest | None = None
    time_limit_hours: float | None = None  # the session's length from the form (hub/expiry.py ends it)
    allocation: Allocation | None = None
    child: Spawner | None = None

    # ------------------------------------------------------------ federation

    @property
    def federation(self) -> Federation:
        try:
            fed = Federation.get(self.catalogue_file, self.catalogue, self.state_dir or None, self.log)
            fed.start_watching()  # no-op once running
            return fed
        except CatalogueError as e:
            raise web.HTTPError(500, f"Site catalogue is invalid: {e}")

    @property
    def policy(self):
        """The governance policy (None without a policy file); re-read when the file changes."""
        from fedhub.hub.policy import PolicyError
        try:
            return cached_policy(self.policy_file, self.federation.catalogue)
        except PolicyError as e:
            raise web.HTTPError(500, f"Governance policy is invalid: {e}")

    @property
    def user_groups(self) -> list[str]:
        return sorted(g.name for g in getattr(self.user, "groups", []) or [])

    def _charge_gpus(self, fed: Federation, req: SessionRequest) -> str:
        """Refuse a request over a GPU quota (403 naming it); the group the GPUs count against."""
        policy = self.policy
        if policy is None or not req.gpus:
            return ""
        groups = self.user_groups
        mine, per_group = 0, {}
        for (user, _), (alloc, info) in fed.sessions.items():
            if (user, _) == self._key:
                continue
            n = len(alloc.gpu_ids)
            mine += n if user == self.user.name else 0
            if info.get("charged_group"):
                per_group[info["charged_group"]] = per_group.get(info["charged_group"], 0) + n
        try:
            return check_gpu_quota(policy, groups, req.gpus, req.gpu_type, mine, per_group)
        except QuotaError as e:
            raise web.HTTPError(403, f"Refused: {e}")

    def granted_datasets(self, site: str, req: SessionRequest) -> dict | None:
        """name -> location on `site` of the datasets this user may use interactively there (those
        asked for, else all of them); None without a policy (then fedhub manages no datasets)."""
        policy = self.policy
        if policy is None:
            return None
        usable = {d.name: d for d in policy.usable_datasets(self.user_groups, "interactive", site)}
        names = [n for n in req.datasets if n in usable] if req.datasets else list(usable)
        return {n: usable[n].location_at(site) for n in names}

    def dataset_environment(self, site: str, req: SessionRequest) -> dict:
        """FEDHUB_DATASETS (JSON name -> path) and FEDHUB_DATASET_<NAME>: the granted datasets
        (granted_datasets) where the session sees them, nothing else."""
        granted = self.granted_datasets(site, req)
        if granted is None:
            return {}
        paths = self.federation.backends[site].dataset_paths(granted)
        env = {"FEDHUB_DATASETS": json.dumps(paths)}
        for n, path in paths.items():
            env["FEDHUB_DATASET_" + n.upper().replace("-", "_")] = path
        return env

    @property
    def _key(self) -> tuple[str, str]:
        return (self.user.name, self.name or "")

    # ------------------------------------------------------------ form and options

    @default("options_form")
    def _default_options_form(self):
        def form(spawner):
            fed = spawner.federation
            return render_form(fed.catalogue, fed.inventories, spawner.session_types,
                               spawner.policy, spawner.user_groups,
                               time_limits_for(spawner.state_dir, spawner.user_groups, spawner.log))
        return form

    def options_from_form(self, formdata):
        return form_to_options(formdata)

    @default("apply_user_options")
    def _default_apply_user_options(self):
        return lambda spawner, options: spawner.validate_options(options)

    def validate_options(self, options: dict) -> SessionRequest:
        """The one gate for user input: bad input is a 400 naming the field, nothing starts."""
        try:
            req = parse_request(options, self.federation.catalogue, self.policy, self.user_groups)
            limits = time_limits_for(self.state_dir, self.user_groups, self.log)
            self.time_limit_hours = parse_time_limit(options, limits) if limits else None
        except PolicyRefusal as e:
            raise web.HTTPError(403, f"Refused by policy: {e}")
        except RequestError as e:
            raise web.HTTPError(400, f"Invalid session request: {e}")
        if req.session_type not in self.session_types:
            raise web.HTTPError(400, f"Invalid session request: session_type {req.session_type!r} "
                                     f"is not offered here; offered: {list(self.session_types)}")
        self.request = req
        return req

    # ------------------------------------------------------------ progress

    def _emit(self, message: str, progress: int) -> None:
        self._events.append({"progress": progress, "message": message})
        self.log.info("%s: %s", self._log_name, message)
        self._event_signal.set()

    async def progress(self):
        sent = 0
        while True:
            while sent < len(self._events):
                yield self._events[sent]
                sent += 1
            if self._start_done:
                break
            self._event_signal.clear()
            try:
                await asyncio.wait_for(self._event_signal.wait(), self.progress_poll_interval)
            except asyncio.TimeoutError:
                pass

    # ------------------------------------------------------------ lifecycle

    def _make_child(self, alloc: Allocation, req: SessionRequest) -> Spawner:
        backend = self.federation.backends[alloc.site]
        overrides = backend.spawner_overrides(alloc, req)
        if req.session_type == "vscode":  # code-server through jupyter-server-proxy (server_ext/vscode.py)
            overrides.setdefault("default_url", "/vscode/")
        env = {**self.environment, **overrides.pop("environment", {}), **self.dataset_environment(alloc.site, req)}
        granted = self.granted_datasets(alloc.site, req)
        if granted is not None:  # links or volumes for exactly the granted datasets
            overrides = merged_overrides(overrides, backend.dataset_overrides(granted))
        child = backend.spawner_class()(
            user=self.user, orm_spawner=self.orm_spawner, hub=self.hub,
            authenticator=self.authenticator, config=self.config, proxy_spec=self.proxy_spec,
            _deprecated_db_session=self._deprecated_db_session, oauth_client_id=self.oauth_client_id,
            cookie_options=self.cookie_options,
            cookie_host_prefix_enabled=self.cookie_host_prefix_enabled,
            trusted_alt_names=self.trusted_alt_names, user_options=self.user_options,
            public_url=self.public_url, public_hub_url=self.public_hub_url,
            environment=env, **overrides,
        )
        child.api_token = self.api_token
        return child

    def _session_info(self, req: SessionRequest, reason: str, site: str) -> dict:
        # site_max_hours: the expiry watcher ends the session (with its warning) before the
        # site's walltime does (a Slurm job killed at --time gives no warning)
        return {"session_type": req.session_type, "reason": reason, "since": time.time(),
                "time_limit_hours": self.time_limit_hours,
                "site_max_hours": self.federation.backends[site].max_session_hours}

    async def start(self):
        self._events, self._start_done, self._event_signal = [], False, asyncio.Event()
        try:
            return await self._start()
        finally:
            self._start_done = True
            self._event_signal.set()

    async def _start(self):
        req = self.request or self.validate_options(self.user_options or {})
        fed = self.federation
        self._emit(f"Placing a {req.session_type} session: {req.describe()}", 5)
        tried: list[str] = []
        failures: list[str] = []
        policy = self.policy
        entitlements = policy.entitlements(self.user_groups) if policy is not None else None
        while len(tried) < self.max_sites_tried:
            ranking = rank_sites(req, fed.inventories, entitlements)
            candidates = [c for c in ranking.candidates if c.site not in tried]
            if not candidates:
                if not tried:
                    raise web.HTTPError(409, ranking.refusal(req))
                break
            cand = candidates[0]
            tried.append(cand.site)
            # rank + quota + reserve with no await in between: concurrent spawns cannot double-book
            charged = self._charge_gpus(fed, req)
            alloc = fed.reserve(self._key, cand, req,
                                {**self._session_info(req, cand.reason, cand.site), "charged_group": charged})
            gpus = f", GPUs {cand.gpu_type} {list(alloc.gpu_ids)}" if alloc.gpu_ids else ""
            self._emit(f"Placed on {cand.site} ({cand.reason}){gpus}", 20)
            walltime = fed.backends[cand.site].max_session_hours
            if walltime is not None and self.time_limit_hours and self.time_limit_hours > walltime:
                self._emit(f"{cand.site} runs a session for at most {walltime:g} h (its batch time limit): "
                           f"this session ends after {walltime:g} h, not {self.time_limit_hours:g} h", 21)
            child = self._starting_child = self._make_child(alloc, req)
            try:
                async with self._start_slot():
                    url = await self._start_on_site(child, cand.site)
                    await self._wait_until_answering(child, url)
            except Exception as e:  # any backend failure: release and fall through
                failures.append(f"{cand.site}: {e}")
                fed.release(self._key)
                try:
                    await asyncio.wait_for(child.stop(now=True), 30)
                except Exception:
                    self.log.debug("cleanup after failed start on %s failed", cand.site, exc_info=True)
                fed.backends[cand.site].abandon(child)
                self._emit(f"{cand.site} could not start the session ({e}); trying the next site", 30)
                continue
            self._starting_child = None
            self.child, self.allocation = child, alloc
            fed.set_status(self._key, "running")
            self._emit(f"Session on {cand.site} is answering", 90)
            return url
        raise web.HTTPError(503, "No site could start the session. " + "; ".join(failures))

    async def _start_on_site(self, child: Spawner, site: str):
        """child.start(), relaying its progress, bounded by the site's start timeout, and
        abandoned as soon as the site's watcher reports the site down."""
        backend = self.federation.backends[site]
        timeout = backend.start_timeout or self.site_start_timeout
        start = asyncio.ensure_future(child.start())
        relay = asyncio.ensure_future(self._relay_progress(child))
        deadline = time.monotonic() + timeout
        try:
            while not start.done():
                await asyncio.wait([start], timeout=0.5)
                if start.done():
                    break
                if not backend.inventory.up:
                    raise RuntimeError(f"site went down while starting ({backend.inventory.down_reason})")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not started within {timeout:g} s")
            return start.result()
        finally:
            relay.cancel()
            if not start.done():
                # batchspawner's bare `except:` can swallow the cancel: mark the attempt
                # abandoned so it stops reporting, and collect whatever it ends with
                child._fedhub_abandoned = True
                start.cancel()
                start.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _relay_progress(self, child: Spawner) -> None:
        try:
            async for event in child.progress():
                if getattr(child, "_fedhub_abandoned", False):
                    return
                if event.get("message"):
                    self._emit(event["message"], 50)
        except Exception:
            self.log.debug("progress relay from the site's spawner ended", exc_info=True)

    @contextlib.asynccontextmanager
    async def _start_slot(self):
        cls = type(self)
        if cls._slots is None:
            cls._slots = asyncio.Semaphore(self.max_concurrent_starts)
        if cls._slots.locked():
            cls._queued += 1
            self._emit(f"Waiting for a start slot: {cls._queued} session(s) queued on this hub", 25)
            try:
                await cls._slots.acquire()
            finally:
                cls._queued -= 1
        else:
            await cls._slots.acquire()
        try:
            yield
        finally:
            cls._slots.release()

    async def _wait_until_answering(self, child: Spawner, url) -> None:
        """Hold the start slot until the server answers HTTP, or fail if it exits first."""
        if not isinstance(url, str):
            url = f"http://{url[0]}:{url[1]}"
        probe = url.rstrip("/") + self.server.base_url + "api"
        client = AsyncHTTPClient()
        deadline = time.monotonic() + self.http_timeout
        while time.monotonic() < deadline:
            status = await child.poll()
            if status is not None:
                raise RuntimeError(f"server exited with status {status} before answering")
            try:
                await client.fetch(probe, request_timeout=5, raise_error=False)
                return
            except (OSError, HTTPClientError):
                await asyncio.sleep(0.2)
        raise TimeoutError(f"server did not answer at {probe} within {self.http_timeout} s")

    async def poll(self):
        if self.child is None:
            return 0
        return await self.child.poll()

    async def stop(self, now=False):
        if self.child is not None:
            await self.child.stop(now=now)
        self.federation.release(self._key)

    # ------------------------------------------------------------ state

    def get_state(self):
        state = super().get_state()
        if self.child is not None and self.allocation is not None:
            info = self.federation.sessions.get(self._key, (None, {}))[1]
            state["fedhub"] = {
                "allocation": self.allocation.to_dict(),
                "request": self.request.to_dict() if self.request else None,
                "child": self.child.get_state(),
                # the group its GPUs count against, so group quotas still hold after a hub restart
                "charged_group": info.get("charged_group", ""),
                "time_limit_hours": self.time_limit_hours,
                # when it started: a hub restart must not restart the session's time limit
                "since": info.get("since"),
            }
        return state

    def load_state(self, state):
        super().load_state(state)
        saved = (state or {}).get("fedhub")
        if not saved:
            return
        alloc = Allocation.from_dict(saved["allocation"])
        req = SessionRequest(**saved["request"]) if saved.get("request") else SessionRequest()
        self.time_limit_hours = saved.get("time_limit_hours")
        fed = self.federation
        if alloc.site not in fed.backends:
            self.log.warning("%s: saved site %s is no longer in the catalogue", self._log_name, alloc.site)
            return
        info = self._session_info(req, "reconnected after hub restart", alloc.site)
        restored = fed.restore(self._key, alloc, {**info, "status": "running",
                                                  "since": saved.get("since") or info["since"],
                                                  "charged_group": saved.get("charged_group", "")})
        self.request, self.allocation = req, restored or alloc
        self.child = self._make_child(self.allocation, req)
        self.child.load_state(saved.get("child") or {})

    def clear_state(self):
        super().clear_state()
        if self.child is not None:
            self.child.clear_state()
        self.child = self.allocation = None
        self.federation.release(self._key)
