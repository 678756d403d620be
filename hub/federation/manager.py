"""The API service's federated-job manager: sites offered, jobs, their runners and events.

One instance lives in the fedhub API service. It reads the site catalogue (which sites
exist and how to reach them) and the hub's live inventory snapshot (which are up), keeps
every job in a `JobStore`, runs each job in its own `JobRunner` task, and fans progress
events out to long-polling readers. At start it settles jobs a previous service process
left unfinished: their processes are stopped and the job is marked failed with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path

from traitlets import Float, Integer, Unicode, default
from traitlets.config import LoggingConfigurable

from ..policy import datasets_at
from . import supernodes
from .jobs import FINAL_STATES, Job, JobError, SiteOffer, validate_request
from .store import JobStore
from .tracking import JobTracking, TrackingError

log = logging.getLogger("fedhub.federation")


class FederatedJobs(LoggingConfigurable):
    """Settings of federated jobs in the fedhub API service."""

    superlink_host = Unicode(
        "127.0.0.1", config=True,
        help="Address a job's SuperLink listens on and SuperNodes connect to. The default "
             "(loopback) suits local sites and Slurm nodes on the hub's machine; use an address "
             "the sites' nodes can reach for remote clusters.")
    max_active_jobs_per_user = Integer(
        3, config=True, help="Queued, starting or running federated jobs one user may have at once.")
    superlink_start_timeout = Float(60, config=True, help="Seconds a job's SuperLink may take to listen.")
    supernode_start_timeout = Float(
        300, config=True,
        help="Seconds every SuperNode may take to join the SuperLink (Slurm jobs may wait in the queue).")
    status_interval = Float(
        3, config=True, help="Seconds between checks of the Flower run's status through the Control API.")
    catalogue_file = Unicode("", config=True, help="The site catalogue (sites.yaml) the hub uses.")
    homes_dir = Unicode(
        "", config=True,
        help="Folder holding users' homes (<homes_dir>/<user>); a job's app must be inside its owner's home.")
    policy_file = Unicode(
        config=True,
        help="The governance policy (policy.yaml) whose dataset catalogue tells each SuperNode where the "
             "datasets a job names are at its site. Default: $FEDHUB_POLICY_FILE (set by fedhub up); "
             "empty: no datasets.")
    mlflow_url = Unicode(
        "", config=True,
        help="The hub's MLflow service (the gate, e.g. http://127.0.0.1:PORT/services/mlflow); "
             "each job is one run there, logged with its owner's hub token. Empty: no MLflow.")

    def __init__(self, state_dir: str | Path, inventory=None, **kw):
        super().__init__(**kw)
        self.store = JobStore(Path(state_dir) / "jobs")
        self.inventory = inventory  # SnapshotStore of the hub's live inventory (or None)
        self.jobs: dict[str, Job] = {job.id: job for job in self.store.load_all()}
        self.runners: dict = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._catalogue = None
        self._catalogue_mtime = None
        self.catalogue_error = ""

    # ---------------------------------------------------------------- sites
    def _load_catalogue(self):
        from fedhub.hub.catalogue import CatalogueError, load_catalogue
        if not self.catalogue_file:
            self.catalogue_error = "no site catalogue configured"
            return None
        try:
            mtime = os.stat(self.catalogue_file).st_mtime_ns
        except OSError:
            mtime = None
        if mtime != self._catalogue_mtime:
            try:
                self._catalogue, self.catalogue_error = load_catalogue(self.catalogue_file), ""
            except CatalogueError as e:
                self._catalogue, self.catalogue_error = None, str(e)
            self._catalogue_mtime = mtime
        return self._catalogue

    @default("policy_file")
    def _default_policy_file(self):
        return os.environ.get("FEDHUB_POLICY_FILE", "")

    def _load_policy(self, catalogue):
        """The policy (None without one, or when invalid: the jobs API refuses then, naming it)."""
        from fedhub.hub.policy import PolicyError, cached_policy
        try:
            return cached_policy(self.policy_file, catalogue)
        except PolicyError as e:
            self.log.warning("federated jobs: governance policy not usable: %s", e)
            return None

    def offers(self) -> dict[str, SiteOffer]:
        """Every catalogue site, and whether federated jobs may use it (and why not)."""
        cat = self._load_catalogue()
        if cat is None:
            return {}
        live = {s.get("name"): s for s in (self.inventory.sites() if self.inventory else [])}
        policy = self._load_policy(cat)
        out = {}
        for site in cat.sites:
            state = live.get(site.name)
            allowed, reason = True, ""
            if site.federated is False:
                allowed, reason = False, "the catalogue marks this site federated: false"
            elif site.kind == "kubernetes":
                allowed, reason = False, ("SuperNodes on Kubernetes sites are built as pod manifests, "
                                          "but this hub does not submit them yet")
            elif state is not None and not state.get("up", True):
                allowed, reason = False, f"site is down: {state.get('down_reason') or 'not answering'}"
            elif site.kind == "local":
                reason = "SuperNode as a process on the hub's machine"
            else:
                part = site.options.get("partition")
                reason = "SuperNode as a Slurm batch job" + (f" in partition {part}" if part else "")
            data_path = str(site.federated.get("data_path", "")) if isinstance(site.federated, dict) else ""
            paths = {d.name: d.path_at(site.name) for d in policy.datasets if site.name in d.sites} if policy else {}
            out[site.name] = SiteOffer(site.name, site.kind, allowed, reason, dict(site.options),
                                       datasets_at(policy, site), data_path, paths)
        return out

    # ---------------------------------------------------------------- jobs
    def home_of(self, user: str) -> Path:
        return Path(self.homes_dir) / user

    async def create(self, user: str, token: str, body) -> Job:
        from .runner import JobRunner
        if self._load_catalogue() is None:
            raise JobError(503, f"federated jobs are unavailable: {self.catalogue_error}")
        home = self.home_of(user)
        if not home.is_dir():
            raise JobError(400, f"app: you have no home folder on the hub yet ({home}); start a session first")
        # reading the app (and Flower's config checks) must not hold up other requests
        spec = await asyncio.get_running_loop().run_in_executor(None, validate_request, body, home, self.offers())
        active = [j for j in self.jobs.values() if j.owner == user and not j.final]
        if len(active) >= self.max_active_jobs_per_user:
            raise JobError(429, f"you already have {len(active)} federated jobs running "
                                f"(at most {self.max_active_jobs_per_user}); wait or cancel one")
        job = Job.from_spec(spec, user)
        self.jobs[job.id] = job
        self.store.save(job)
        if token:
            self.store.write_secret(job.id, token)
        self.emit(job, {"time": time.time(), "type": "state", "state": "queued",
                        "message": f"Job {job.id} queued: {spec.app_display} on {', '.join(spec.sites)}"})
        runner = JobRunner(self, job, token)
        self.runners[job.id] = runner
        runner.task = asyncio.ensure_future(runner.run())
        return job

    def get(self, user: str, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None or job.owner != user:  # others' jobs do not exist for the caller
            raise JobError(404, f"no federated job {job_id!r}")
        return job

    def list(self, user: str) -> list[Job]:
        return sorted((j for j in self.jobs.values() if j.owner == user), key=lambda j: j.created,
                      reverse=True)

    def cancel(self, user: str, job_id: str) -> Job:
        job = self.get(user, job_id)
        if job.final:
            raise JobError(409, f"job {job_id} already {job.state}")
        runner = self.runners.get(job_id)
        if runner is not None:
            runner.cancel(f"cancelled by {user}")
        return job

    async def wait_cancelled(self, job_id: str, timeout: float = 60) -> None:
        runner = self.runners.get(job_id)
        if runner is not None and runner.task is not None:
            await asyncio.wait([runner.task], timeout=timeout)

    # ---------------------------------------------------------------- events
    def save(self, job: Job) -> None:
        self.store.save(job)

    def emit(self, job: Job, event: dict) -> None:
        event = self.store.append_event(job.id, event)
        job.events = event["seq"]
        self.store.save(job)
        changed = self._changed.pop(job.id, None)
        if changed is not None:
            changed.set()

    async def events(self, user: str, job_id: str, after: int, wait: float) -> tuple[Job, list[dict]]:
        job = self.get(user, job_id)
        deadline = time.monotonic() + wait
        while True:
            events = self.store.events_after(job_id, after)
            remaining = deadline - time.monotonic()
            if events or job.final or remaining <= 0:
                return job, events
            changed = self._changed.setdefault(job_id, asyncio.Event())
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    def finished(self, job: Job) -> None:
        self.runners.pop(job.id, None)
        self.store.save(job)
        self.record_provenance(job)

    def record_provenance(self, job: Job) -> None:
        """A signed ledger record of the finished job: who, which code, where, the outcome."""
        from fedhub.hub.ledger import Ledger
        try:
            Ledger(self.store.root.parent, db=self.store.db).append("job", job.id, job.owner, {
                "app": job.app_display, "code_sha256": _tree_sha256(job.app), "sites": job.sites,
                "site_kinds": {s: st.get("kind", "") for s, st in job.site_status.items()},
                "rounds": job.rounds, "strategy": job.strategy, "compression": job.compression,
                "run_config": job.run_config, "state": job.state, "error": job.error[:500],
                "last_round": job.round_metrics[-1] if job.round_metrics else None, "bytes": job.bytes,
                "flower_run_id": job.flower_run_id, "mlflow_run_id": job.mlflow_run_id,
                "started": job.started, "finished": job.finished})
        except Exception as e:  # the ledger never fails a job; `provenance verify` shows what is there
            self.log.warning("federated job %s: no provenance record: %s", job.id, e)

    # ---------------------------------------------------------------- restarts
    async def recover(self) -> None:
        """Settle jobs a previous service process left unfinished (it was stopped or crashed)."""
        for job in [j for j in self.jobs.values() if j.state not in FINAL_STATES]:
            if job.id in self.runners:
                continue
            for d in job.supernodes:
                handle = supernodes.SuperNodeHandle.from_dict(d)
                if handle.kind == "local" and _is_flower(handle.pid):
                    supernodes.kill_group(handle.pid, signal.SIGKILL)
                elif handle.kind == "slurm":
                    await supernodes.stop(handle)
            if _is_flower(job.superlink_pid):
                supernodes.kill_group(job.superlink_pid, signal.SIGKILL)
            strays = supernodes.processes_under(self.store.job_dir(job.id))
            if strays:
                await supernodes.stop_tree(None, strays, grace=3)
            job.state, job.finished = "failed", time.time()
            job.error = ("the fedhub API service stopped while this job was running; its SuperLink and "
                         "SuperNodes were stopped when the service started again")
            for site in job.site_status:
                job.site_status[site] = {"state": "stopped", "detail": ""}
            token = self.store.read_secret(job.id)
            if token and self.mlflow_url and job.mlflow_run_id:
                tracking = JobTracking(self.mlflow_url, token)
                tracking.run_id = job.mlflow_run_id
                try:
                    await tracking.finish("FAILED", {"fedhub.state": "failed", "fedhub.error": job.error})
                except (TrackingError, LookupError) as e:
                    job.warnings.append(f"MLflow: could not close the run: {e}")
            self.store.drop_secret(job.id)
            self.emit(job, {"time": time.time(), "type": "state", "state": "failed",
                            "message": f"Job failed: {job.error}"})
            self.record_provenance(job)

    async def shutdown(self, timeout: float = 30) -> None:
        """The service is stopping: end every running job and stop what it started."""
        tasks = []
        for runner in list(self.runners.values()):
            runner.cancel("the fedhub API service stopped")
            if runner.task is not None:
                tasks.append(runner.task)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)


def _is_flower(pid) -> bool:
    """Is pid still one of Flower's processes (and not a reused pid)?"""
    if not supernodes.pid_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"flower-super" in f.read()
    except OSError:
        return False


def _tree_sha256(root: str, limit: int = 2000) -> str:
    """One checksum of an app folder's files (names and contents), hidden folders skipped."""
    import hashlib
    h = hashlib.sha256()
    base = Path(root)
    try:
        files = sorted(p for p in base.rglob("*") if p.is_file()
                       and not any(part.startswith(".") or part == "__pycache__" for part in p.relative_to(base).parts))
    except OSError:
        return ""
    for path in files[:limit]:
        h.update(str(path.relative_to(base)).encode() + b"\0")
        try:
            h.update(hashlib.sha256(path.read_bytes()).digest())
        except OSError:
            continue
    return h.hexdigest()
