"""Slurm sites reached through slurmrestd with a JWT, instead of the Slurm commands.

Site options (beside the sbatch-mode ones, except slurm_conf):

    rest_url:  slurmrestd's address, e.g. http://slurm.example.org:6820
    rest_user: the Slurm user the token belongs to; sessions run as this user
    jwt_file:  file holding the token (re-read at every request, so rotating it needs no restart)
    jwt_env:   or: an environment variable of the hub holding the token

The token never goes in the catalogue. Requests carry the X-SLURM-USER-NAME and
X-SLURM-USER-TOKEN headers of Slurm's REST API (OpenAPI plugin v0.0.38, Slurm 22.05+).

The session job is the same batch script as in sbatch mode. slurmrestd does not read
#SBATCH lines, so the job's options travel as the JSON job description (job_submit_body).
Job state is written as the `squeue -o '%T %r %B'` line sbatch mode reads, so batchspawner's
state regular expressions, pending_reason and progress() work unchanged.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from pathlib import Path
from urllib.parse import urlparse

from batchspawner.batchspawner import JobStatus
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import Unicode, default

from .base import SiteOptionError
from .slurm import SlurmBackend, SlurmNode, SlurmSiteSpawner, parse_gres

API = "/slurm/v0.0.38"
_NO_SUCH_JOB = 2017  # ESLURM_INVALID_JOB_ID
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)\s*$", re.IGNORECASE)


class SlurmRestError(RuntimeError):
    """slurmrestd answered with an error (or not at all: SlurmRestUnavailable)."""

    def __init__(self, message: str, status: int = 0, errors: list | None = None):
        super().__init__(message)
        self.status, self.errors = status, errors or []


class SlurmRestUnavailable(SlurmRestError):
    pass


class SlurmRestAuthError(SlurmRestError):
    pass


class NoSuchJob(SlurmRestError):
    pass


# ---------------------------------------------------------------- pure functions


def token_claims(token: str) -> dict:
    """The JWT's payload (unverified: slurmctld checks the signature), {} if unreadable."""
    try:
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}


def clean_token(text: str) -> str:
    """A token as `scontrol token` prints it ('SLURM_JWT=...') or bare."""
    text = text.strip()
    return text.split("=", 1)[1] if text.startswith("SLURM_JWT=") else text


def rest_headers(user: str, token: str) -> dict[str, str]:
    return {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": token,
            "Content-Type": "application/json", "Accept": "application/json"}


def rest_error_message(status: int, doc: dict) -> str:
    """One line from slurmrestd's `errors` list (or its bare 401 body)."""
    errors = doc.get("errors") or []
    parts = []
    for e in errors:
        text = e.get("description") or e.get("error") or ""
        if e.get("error") and e.get("error") not in text:
            text = f"{text} ({e['error']})" if text else e["error"]
        parts.append(text)
    text = "; ".join(p for p in parts if p) or doc.get("_text", "") or "no details"
    if status in (401, 403):
        return f"slurmrestd refused the credentials (HTTP {status}: {text}); check rest_user and the token"
    if any(e.get("error") == "Unspecified error" and e.get("errno", e.get("error_number")) == -1
           and not e.get("source") for e in errors):
        # recorded from slurmrestd 22.05: slurmctld rejecting a bad or expired token reads like this
        return f"slurmrestd could not authenticate with the token (HTTP {status}: {text}); is the token valid?"
    return f"slurmrestd error (HTTP {status}): {text}"


def memory_mb(value: str) -> int:
    """Slurm's --mem text ('4096M', '2G', '512') as MiB for memory_per_node."""
    m = _MEMORY_RE.match(str(value))
    if not m:
        raise ValueError(f"not a Slurm memory size: {value!r}")
    scale = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}[m.group(2).upper()]
    return max(1, int(float(m.group(1)) * scale))


def job_submit_body(script: str, env: dict, subvars: dict) -> dict:
    """POST /job/submit's body: the batch script, and as JSON what its #SBATCH lines say
    (slurmrestd ignores them). subvars are batchspawner's req_* values without the prefix."""
    home = subvars["homedir"]
    job = {
        "name": f"fedhub-{subvars['username']}",
        "current_working_directory": home,
        "standard_output": f"{home}/fedhub-slurm-%j.log",
        "environment": {str(k): str(v) for k, v in env.items()},
    }
    for key, field in (("partition", "partition"), ("account", "account"), ("qos", "qos"),
                       ("gres", "gres"), ("runtime", "time_limit")):
        if subvars.get(key):
            job[field] = str(subvars[key])  # Slurm parses time strings such as '8:00:00'
    if subvars.get("nprocs"):
        job["cpus_per_task"] = int(subvars["nprocs"])
    if subvars.get("memory"):
        job["memory_per_node"] = memory_mb(subvars["memory"])
    return {"script": script, "job": job}


def job_status_line(job: dict) -> str:
    """'<state> <reason> <node>' as the sbatch-mode query (squeue -o '%T %r %B') prints it."""
    host = job.get("batch_host") or job.get("nodes") or "n/a"
    return f"{job.get('job_state', 'UNKNOWN')} {job.get('state_reason') or 'None'} {host}"


def parse_rest_nodes(doc: dict, partition: str = "") -> list[SlurmNode]:
    """GET /nodes -> SlurmNode list (only the partition's nodes when one is given)."""
    nodes = []
    for n in doc.get("nodes") or []:
        if partition and partition not in (n.get("partitions") or []):
            continue
        gpus, used = parse_gres(n.get("gres", ""), n.get("gres_used", ""))
        # flags such as DRAIN or NOT_RESPONDING make the node unusable, as in sinfo's long state
        state = "+".join([str(n.get("state") or "unknown"), *(n.get("state_flags") or [])]).lower()
        nodes.append(SlurmNode(n["name"], int(n.get("cpus") or 0), int(n.get("alloc_cpus") or 0),
                               int(n.get("real_memory") or 0) * 2**20, int(n.get("alloc_memory") or 0) * 2**20,
                               gpus, used, state))
    return nodes


def queue_position(jobs: list[dict], job_id: str, partition: str = "") -> int | None:
    """1-based place of job_id among pending jobs (of the partition), highest priority first."""
    pending = [j for j in jobs if j.get("job_state") == "PENDING"
               and (not partition or j.get("partition") == partition)]
    pending.sort(key=lambda j: (-int(j.get("priority") or 0), int(j.get("job_id") or 0)))
    ids = [str(j.get("job_id")) for j in pending]
    return ids.index(str(job_id)) + 1 if str(job_id) in ids else None


# ---------------------------------------------------------------- client


class SlurmRestClient:
    """Small slurmrestd client: one per site (the poller) and per spawner; holds no token."""

    def __init__(self, url: str, user: str, jwt_file: str = "", jwt_env: str = "", timeout: float = 10):
        self.url, self.user = url.rstrip("/"), user
        self.jwt_file, self.jwt_env, self.timeout = jwt_file, jwt_env, timeout

    def token(self) -> str:
        """Read at every request, so replacing the file (or env) rotates the token."""
        where = f"jwt_file {self.jwt_file}" if self.jwt_file else f"jwt_env {self.jwt_env}"
        try:
            raw = Path(self.jwt_file).read_text() if self.jwt_file else os.environ.get(self.jwt_env, "")
            token = clean_token(raw)
        except OSError as e:
            raise SlurmRestAuthError(f"cannot read the slurmrestd token from {where}: {e.strerror}")
        if not token:
            raise SlurmRestAuthError(f"no slurmrestd token in {where}")
        expires = token_claims(token).get("exp")
        if isinstance(expires, (int, float)) and expires < time.time():
            stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(expires))
            raise SlurmRestAuthError(f"the slurmrestd token in {where} expired at {stamp}")
        return token

    async def call(self, method: str, path: str, body: dict | None = None) -> dict:
        token = self.token()
        request = HTTPRequest(
            f"{self.url}{API}{path}", method=method, headers=rest_headers(self.user, token),
            body=json.dumps(body) if body is not None else None,
            request_timeout=self.timeout, connect_timeout=self.timeout)
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except (OSError, HTTPClientError) as e:
            raise SlurmRestUnavailable(f"slurmrestd at {self.url} not answering: {e}")
        if response.code == 599:  # tornado's code for no HTTP answer (timeout, refused)
            raise SlurmRestUnavailable(f"slurmrestd at {self.url} not answering: {response.error}")
        text = response.body.decode(errors="replace") if response.body else ""
        try:
            doc = json.loads(text) if text else {}
        except ValueError:
            doc = {"_text": text.strip()[:200]}
        if response.code < 400:
            return doc
        errors = doc.get("errors") or []
        message = rest_error_message(response.code, doc)
        issued_for = token_claims(token).get("sun")
        if issued_for and issued_for != self.user:  # only an administrator's token may act as another user
            message += f" (the token was issued for {issued_for!r}, rest_user is {self.user!r})"
        if any(e.get("error_number") == _NO_SUCH_JOB for e in errors):
            raise NoSuchJob(message, response.code, errors)
        if response.code in (401, 403) or "authenticate" in message:
            raise SlurmRestAuthError(message, response.code, errors)
        raise SlurmRestError(message, response.code, errors)

    async def nodes(self) -> dict:
        return await self.call("GET", "/nodes")

    async def jobs(self) -> list[dict]:
        return (await self.call("GET", "/jobs")).get("jobs") or []

    async def job(self, job_id: str) -> dict | None:
        try:
            jobs = (await self.call("GET", f"/job/{job_id}")).get("jobs") or []
        except NoSuchJob:
            return None
        return jobs[0] if jobs else None

    async def submit(self, body: dict) -> str:
        return str((await self.call("POST", "/job/submit", body))["job_id"])

    async def cancel(self, job_id: str) -> None:
        try:
            await self.call("DELETE", f"/job/{job_id}")
        except NoSuchJob:
            pass  # already gone: nothing to cancel


# ---------------------------------------------------------------- spawner


class SlurmRestSpawner(SlurmSiteSpawner):
    """SlurmSiteSpawner whose submit, query and cancel go to slurmrestd; the rest (state,
    progress, host lookup) is batchspawner's and sbatch mode's."""

    rest_url = Unicode("", help="slurmrestd URL of the site (set by the backend).")
    rest_user = Unicode("", help="Slurm user the token belongs to (set by the backend).")
    jwt_file = Unicode("", help="File holding the site's slurmrestd token (set by the backend).")
    jwt_env = Unicode("", help="Environment variable holding the site's slurmrestd token (set by the backend).")

    @default("state_unknown_re")
    def _default_state_unknown_re(self):
        return r"^UNREACHABLE"

    @property
    def rest(self) -> SlurmRestClient:
        return SlurmRestClient(self.rest_url, self.rest_user, self.jwt_file, self.jwt_env)

    async def submit_batch_script(self):
        req = self.get_req_subvars()
        # the script as sbatch mode renders it; the job's options from the req_* values only
        subvars = {**req, "cmd": self.cmd_formatted_for_batch(), **(self.user_options or {})}
        script = await self._get_batch_script(**subvars)
        try:
            os.makedirs(self.req_homedir, exist_ok=True)  # only when the hub shares the cluster's disk
        except OSError:
            pass
        self.job_id = ""
        self.job_id = await self.rest.submit(job_submit_body(script, self.get_env(), req))
        self._fedhub_job_id = self.job_id  # kept after clear_state, so a failed start can be cleaned up
        self.log.info("%s: submitted job %s through slurmrestd", self.fedhub_site, self.job_id)
        return self.job_id

    async def query_job_status(self):
        if not self.job_id:
            self.job_status = ""
            return JobStatus.NOTFOUND
        try:
            job = await self.rest.job(self.job_id)
            self.job_status = job_status_line(job) if job else ""
        except SlurmRestError as e:  # slurmrestd down or token refused: the job may still run
            self.job_status = f"UNREACHABLE {e}"
        if self.state_isrunning():
            return JobStatus.RUNNING
        if self.state_ispending():
            return JobStatus.PENDING
        if self.state_isunknown():
            return JobStatus.UNKNOWN
        return JobStatus.NOTFOUND

    async def cancel_batch_job(self):
        if self.job_id:
            self.log.info("Cancelling job %s through slurmrestd", self.job_id)
            await self.rest.cancel(self.job_id)

    async def queue_position(self) -> int | None:
        try:
            return queue_position(await self.rest.jobs(), self.job_id, self.req_partition)
        except SlurmRestError:
            return None


# ---------------------------------------------------------------- backend


class SlurmRestBackend(SlurmBackend):
    """A Slurm site with rest_url: inventory from slurmrestd's /nodes, jobs over REST."""

    def check_cluster_options(self, options: dict) -> None:
        if "slurm_conf" in options:
            raise SiteOptionError("slurm_conf", "no slurm_conf when rest_url is set "
                                  "(a site is reached by its slurm.conf or by slurmrestd, not both)",
                                  options["slurm_conf"])
        url = options.get("rest_url")
        parsed = urlparse(url) if isinstance(url, str) else None
        if not parsed or parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise SiteOptionError("rest_url", "slurmrestd's http(s) URL, e.g. http://slurm.example.org:6820", url)
        user = options.get("rest_user")
        if not isinstance(user, str) or not user.strip():
            raise SiteOptionError("rest_user", "the Slurm user the JWT belongs to (sessions run as this user)",
                                  user)
        if "jwt_file" in options and "jwt_env" in options:
            raise SiteOptionError("jwt_env", "only one of jwt_file and jwt_env")
        if "jwt_file" not in options and "jwt_env" not in options:
            raise SiteOptionError("jwt_file", "the path of a file holding the slurmrestd JWT "
                                  "(or jwt_env: an environment variable holding it) when rest_url is set")
        jwt_file, jwt_env = str(options.get("jwt_file", "")), str(options.get("jwt_env", ""))
        if "jwt_file" in options and not (os.path.isfile(jwt_file) and os.access(jwt_file, os.R_OK)):
            raise SiteOptionError("jwt_file", "an existing, readable file holding the JWT", options["jwt_file"])
        if "jwt_env" in options and not os.environ.get(jwt_env):
            raise SiteOptionError("jwt_env", "the name of an environment variable set in the hub's environment",
                                  options["jwt_env"])
        self.slurm_conf = ""
        # a poll that hangs counts as down after the same time as a hanging sinfo
        poll = options.get("poll_interval", 5)
        timeout = max(10.0, 2 * poll) if isinstance(poll, (int, float)) and not isinstance(poll, bool) else 10.0
        self.rest = SlurmRestClient(url, user, jwt_file, jwt_env, timeout=timeout)

    @property
    def watch_key(self) -> str:
        return f"{self.rest.url}#{self.site.name}"

    def down_reason(self, error: Exception) -> str:
        return str(error) if isinstance(error, SlurmRestError) else f"slurmrestd poll failed: {error}"

    async def poll_once(self) -> None:
        doc = await self.rest.nodes()
        self.apply_nodes(parse_rest_nodes(doc, str(self.site.options.get("partition", ""))))
        self.inventory.set_health(True)

    async def cancel_orphans(self) -> None:
        for job_id in sorted(self.orphans):
            try:
                await self.rest.cancel(job_id)
            except SlurmRestError as e:  # the poll answered, so the site stays up; retry next poll
                if self.log:
                    self.log.warning("%s: could not cancel job %s yet: %s", self.site.name, job_id, e)
                continue
            self.orphans.discard(job_id)
            if self.log:
                self.log.info("%s: cancelled job %s left by a failed start", self.site.name, job_id)

    def spawner_class(self):
        return SlurmRestSpawner

    def spawner_overrides(self, allocation, request):
        o = self.site.options
        return {**super().spawner_overrides(allocation, request),
                "rest_url": self.rest.url, "rest_user": self.rest.user,
                "jwt_file": str(o.get("jwt_file", "")), "jwt_env": str(o.get("jwt_env", ""))}
