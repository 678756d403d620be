"""Slurm sites: a session is a batch job running jupyterhub-singleuser, via batchspawner.

Site options (catalogue `sites[i].options`):

    slurm_conf:   path of the cluster's slurm.conf (exported as SLURM_CONF, which picks the cluster)
    rest_url, rest_user, jwt_file | jwt_env: instead of slurm_conf, reach the cluster through
                  slurmrestd with a JWT (see slurm_rest.py)
    partition:    partition to submit to (default: the cluster's default)
    account, qos: passed as --account / --qos when set
    runtime:      --time for session jobs (default 8:00:00)
    hosts:        map of Slurm node name -> address the hub reaches it at (default: DNS)
    poll_interval: seconds between inventory polls (default 5)
    start_timeout: seconds a job may take to start before the next site is tried (default 300)

GPUs are requested as --gres=gpu:TYPE:N; Slurm sets CUDA_VISIBLE_DEVICES in the job.
The inventory comes from one poller per cluster (`sinfo`, or slurmrestd's /nodes), shared by
all spawners.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import shlex
import socket
from dataclasses import dataclass, field

from batchspawner import MultiSlurmSpawner
from traitlets import Dict, Unicode, default

from ..inventory import Allocation, Node, SiteInventory
from .base import SiteBackend, SiteOptionError
from .dataset_links import LINKS_FOLDER, link_overrides, link_script

REST_OPTIONS = {"rest_url", "rest_user", "jwt_file", "jwt_env"}
OPTIONS = {"slurm_conf", "partition", "account", "qos", "runtime", "hosts", "poll_interval",
           "start_timeout"} | REST_OPTIONS

BATCH_SCRIPT = """#!/bin/bash
#SBATCH --output={{homedir}}/fedhub-slurm-%j.log
#SBATCH --job-name=fedhub-{{username}}
#SBATCH --chdir={{homedir}}
#SBATCH --export={{keepvars}}
{% if partition %}#SBATCH --partition={{partition}}
{% endif %}{% if account %}#SBATCH --account={{account}}
{% endif %}{% if qos %}#SBATCH --qos={{qos}}
{% endif %}{% if runtime %}#SBATCH --time={{runtime}}
{% endif %}{% if memory %}#SBATCH --mem={{memory}}
{% endif %}{% if gres %}#SBATCH --gres={{gres}}
{% endif %}{% if nprocs %}#SBATCH --cpus-per-task={{nprocs}}
{% endif %}
set -euo pipefail
trap 'echo SIGTERM received' TERM
{{prologue}}
{% if srun %}{{srun}} {% endif %}{{cmd}}
echo "jupyterhub-singleuser ended gracefully"
{{epilogue}}
"""


# ---------------------------------------------------------------- pure parsing

SINFO_FORMAT = "NodeList:|,CPUsState:|,Memory:|,AllocMem:|,Gres:|,GresUsed:|,StateLong:|"
_GRES_RE = re.compile(r"gpu:([\w.-]+):(\d+)")
_GRES_USED_RE = re.compile(r"gpu:([\w.-]+):(\d+)\(IDX:([^)]*)\)")
_UNUSABLE = ("down", "drain", "fail", "inval", "maint", "future", "unknown", "not_responding")


DEFAULT_RUNTIME = "8:00:00"  # --time of session jobs when the site names none
_SLURM_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


def slurm_time_seconds(value: str) -> int:
    """A Slurm time limit in seconds: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS (sbatch --time)."""
    m = _SLURM_TIME.fullmatch(value.strip())
    if not m or value.strip() in ("", "0"):
        raise ValueError("MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS, more than zero")
    days, a, b, c = m.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        secs = int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:  # HH:MM:SS
        secs = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # MM:SS
        secs = int(a) * 60 + int(b)
    else:  # MM
        secs = int(a) * 60
    if secs <= 0:
        raise ValueError("more than zero")
    return secs


@dataclass
class SlurmNode:
    name: str
    cpus: int
    cpus_alloc: int
    memory: int  # bytes
    memory_alloc: int
    gpus: dict[str, int] = field(default_factory=dict)
    gpus_used: dict[str, set[int]] = field(default_factory=dict)
    state: str = "idle"

    @property
    def usable(self) -> bool:
        return not any(s in self.state for s in _UNUSABLE)


def _indices(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            if lo.isdigit() and hi.isdigit():
                out.update(range(int(lo), int(hi) + 1))
        elif part.isdigit():
            out.add(int(part))
    return out


def parse_gres(gres: str, gres_used: str) -> tuple[dict[str, int], dict[str, set[int]]]:
    """GPUs per type and the indices in use, from Slurm's GRES strings ('gpu:a100:4',
    'gpu:a100:2(IDX:0,2)'): the same text in sinfo's columns and slurmrestd's node fields."""
    gpus = {gtype: int(count) for gtype, count in _GRES_RE.findall(gres or "")}
    used = {gtype: _indices(idx) for gtype, _count, idx in _GRES_USED_RE.findall(gres_used or "")}
    return gpus, used


def parse_sinfo(text: str) -> list[SlurmNode]:
    """Parse `sinfo -N -h -O SINFO_FORMAT` output (one line per node and partition)."""
    nodes: dict[str, SlurmNode] = {}
    for line in text.splitlines():
        cols = line.split("|")
        if len(cols) < 7 or not cols[0].strip() or cols[0].strip() in nodes:
            continue
        name, cpus_state, mem, alloc_mem, gres, gres_used, state = (c.strip() for c in cols[:7])
        alloc, _idle, _other, total = (int(x) for x in cpus_state.split("/"))
        gpus, used = parse_gres(gres, gres_used)
        nodes[name] = SlurmNode(name, total, alloc, int(mem) * 2**20, int(alloc_mem or 0) * 2**20,
                                gpus, used, state.lower())
    return list(nodes.values())


def pending_reason(job_status: str) -> str:
    """'PENDING Resources n/a' -> 'Resources' (the query prints state, reason, host)."""
    parts = job_status.split()
    return parts[1] if len(parts) >= 2 else ""


def batch_prologue(datasets: dict[str, str], homedir: str, prologue: str = "") -> str:
    """The batch script's prologue: the dataset links in the session's home (on the node that
    holds the data), then the site's own prologue."""
    links = link_script(datasets, shlex.quote(f"{homedir.rstrip('/')}/{LINKS_FOLDER}"))
    return links + (prologue or "")


# ---------------------------------------------------------------- spawner


class SlurmSiteSpawner(MultiSlurmSpawner):
    """batchspawner's SlurmSpawner for hub users who have no Unix account on the hub.

    The job runs as the hub's Slurm user (root in the embedded setup); homes live under
    home_dir_template. Site-specific settings arrive as trait values from SlurmBackend.
    """

    home_dir_template = Unicode(
        "/tmp/fedhub-homes/{username}", config=True,
        help="Home (job working directory) of a user's Slurm sessions; {username} is expanded.")
    batch_script = Unicode(BATCH_SCRIPT, config=True, help="Jinja template of the session's batch job.")
    batch_query_cmd = Unicode("squeue -h -j {job_id} -o '%T %r %B'", config=True,
                              help="Job query: state, pending reason, node.")
    req_account = Unicode("", config=True, help="--account for session jobs.")
    fedhub_site = Unicode("", help="The catalogue site this spawner submits to (set by the backend).")
    slurm_conf = Unicode("", help="slurm.conf of the site's cluster (set by the backend).")
    dataset_links = Dict(
        default_value=None, allow_none=True,
        help="Datasets this session may use (name -> path on the site): the batch script links them as "
             "~/datasets/<name> on the node and removes links to any other. None (no policy): ~/datasets "
             "is left alone. Set by FederatedSpawner from the governance policy.")

    def get_req_subvars(self):
        subvars = super().get_req_subvars()
        if self.dataset_links is not None:
            subvars["prologue"] = batch_prologue(self.dataset_links, subvars.get("homedir", ""),
                                                 subvars.get("prologue", ""))
        return subvars

    async def run_command(self, cmd, input=None, env=None):
        # every sbatch/squeue/scancel must talk to this site's cluster, not the default one
        env = dict(env if env is not None else os.environ)
        if self.slurm_conf:
            env["SLURM_CONF"] = self.slurm_conf
        return await super().run_command(cmd, input=input, env=env)

    @default("exec_prefix")
    def _default_exec_prefix(self):
        return ""  # submit as the hub's own user; hub users need no Unix account

    @default("req_homedir")
    def _default_req_homedir(self):
        return self.home_dir_template.format(username=self.user.name)

    def user_env(self, env):
        env["USER"] = self.user.name
        env["HOME"] = self.req_homedir
        return env

    def make_preexec_fn(self, name):
        return None

    async def submit_batch_script(self):
        os.makedirs(self.req_homedir, exist_ok=True)
        job_id = await super().submit_batch_script()
        self._fedhub_job_id = job_id  # kept after clear_state, so a failed start can be cleaned up
        return job_id

    def state_gethost(self):
        host = super().state_gethost()
        try:
            return self.daemon_resolver.get(host) or socket.gethostbyname(host)
        except OSError:
            return host

    async def queue_position(self) -> int | None:
        """1-based place of this job among the partition's pending jobs, by priority."""
        part = f"-p {self.req_partition} " if self.req_partition else ""
        try:
            out = await self.run_command(f"squeue -h -t PD {part}-o %i --sort=-p,i")
        except Exception:
            return None
        ids = out.split()
        return ids.index(self.job_id) + 1 if self.job_id in ids else None

    async def cancel_batch_job(self):
        if self.job_id:  # a submission that never returned an id has nothing to cancel
            await super().cancel_batch_job()

    async def progress(self):
        last = None
        while not getattr(self, "_fedhub_abandoned", False):
            if self.state_ispending():
                reason = pending_reason(self.job_status) or "waiting"
                position = await self.queue_position()
                where = f", position {position} in the queue" if position else ""
                message = (f"Job {self.job_id} pending in {self.fedhub_site}'s queue "
                           f"(reason: {reason}{where})")
            elif self.state_isrunning():
                message = f"Job {self.job_id} running on {self.fedhub_site}; waiting for the server"
            else:
                message = f"Submitting the session job to {self.fedhub_site}"
            if message != last:
                yield {"message": message}
                last = message
            if self.state_isrunning():
                return
            await asyncio.sleep(0.5)


# ---------------------------------------------------------------- backend


class SlurmBackend(SiteBackend):
    kind = "slurm"
    site_counts_sessions = True  # sinfo's allocation counts every running job, fedhub's too
    _pollers: dict[str, "asyncio.Task"] = {}

    def __new__(cls, site, log=None):
        # one catalogue kind, two ways in: a site with rest_url is reached through slurmrestd
        if cls is SlurmBackend and "rest_url" in (site.options or {}):
            from .slurm_rest import SlurmRestBackend
            cls = SlurmRestBackend
        return super().__new__(cls)

    def __init__(self, site, log=None):
        unknown = sorted(set(site.options) - OPTIONS)
        if unknown:
            raise SiteOptionError(unknown[0], f"one of the Slurm site options {sorted(OPTIONS)}")
        self.check_cluster_options(site.options)
        for key in ("poll_interval", "start_timeout"):
            value = site.options.get(key, 1)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise SiteOptionError(key, "a positive number of seconds", value)
        if "runtime" in site.options and not isinstance(site.options["runtime"], str):
            # unquoted 4:00:00 is a YAML sexagesimal number (14400), which Slurm reads as minutes
            raise SiteOptionError("runtime", "a Slurm time string in quotes, e.g. '4:00:00'",
                                  site.options["runtime"])
        runtime = str(site.options.get("runtime", DEFAULT_RUNTIME))
        try:
            # sessions end before Slurm kills the job: the hub's expiry warns within this walltime
            if runtime.upper() not in ("UNLIMITED", "INFINITE"):
                self.max_session_hours = slurm_time_seconds(runtime) / 3600
        except ValueError as e:
            raise SiteOptionError("runtime", f"a Slurm time limit ({e})", site.options.get("runtime"))
        if not isinstance(site.options.get("hosts", {}), dict):
            raise SiteOptionError("hosts", "a map of node name -> address", site.options["hosts"])
        self.poll_interval = float(site.options.get("poll_interval", 5))
        self.start_timeout = float(site.options.get("start_timeout", 300))
        self.pending: list[Allocation] = []  # fedhub jobs not yet counted by Slurm
        self.orphans: set[str] = set()  # job ids to cancel once the controller answers
        self.last_error = ""
        super().__init__(site, log)

    def check_cluster_options(self, options: dict) -> None:
        """How the hub reaches the cluster: here its slurm.conf (slurm_rest.py: slurmrestd)."""
        rest = sorted(REST_OPTIONS & set(options))
        if rest:
            raise SiteOptionError("rest_url", f"the slurmrestd URL (http://host:port) when {rest[0]} is set")
        if not options.get("slurm_conf"):
            raise SiteOptionError("slurm_conf", "the path of the cluster's slurm.conf (or rest_url and a JWT)")
        if not os.path.exists(str(options["slurm_conf"])):
            raise SiteOptionError("slurm_conf", "an existing slurm.conf", options["slurm_conf"])
        self.slurm_conf = str(options["slurm_conf"])

    @property
    def watch_key(self) -> str:
        # one poller per site: sites may be different partitions of one cluster
        return f"{self.slurm_conf}#{self.site.name}"

    def down_reason(self, error: Exception) -> str:
        return f"controller not answering: {error}"

    @property
    def env(self) -> dict:
        return {**os.environ, "SLURM_CONF": self.slurm_conf}

    def build_inventory(self) -> SiteInventory:
        # capacity from the catalogue until the first poll replaces it with Slurm's own view
        inv = SiteInventory(self.site.name, kind=self.kind, max_sessions=self.site.max_sessions)
        inv.set_health(False, "not polled yet")
        return inv

    def apply_nodes(self, nodes: list[SlurmNode]) -> None:
        """Make the inventory Slurm's view, plus fedhub's own jobs Slurm has not placed yet."""
        inv = self.inventory
        usable = {s.name for s in nodes if s.usable}
        for name in [n for n in inv.nodes if n not in usable]:
            inv.remove_node(name)
        for s in nodes:
            if not s.usable:
                continue
            node = Node(s.name, s.cpus, s.memory, s.gpus)
            node.cpus_used = float(s.cpus_alloc)
            node.memory_used = s.memory_alloc
            for gtype, used in s.gpus_used.items():
                node.gpu_free.get(gtype, set()).difference_update(used)
            inv.add_node(node)
        for alloc in self.pending:
            node = inv.nodes.get(alloc.node)
            if node is not None and node.fits(alloc.cpus, alloc.memory):
                inv._unindex(node)
                node.cpus_used += alloc.cpus
                node.memory_used += alloc.memory
                free = node.gpu_free.get(alloc.gpu_type, set())
                for i in sorted(free)[:len(alloc.gpu_ids)]:
                    free.discard(i)
                inv._index(node)

    async def poll_once(self) -> None:
        partition = ["-p", str(self.site.options["partition"])] if self.site.options.get("partition") else []
        proc = await asyncio.create_subprocess_exec(
            "sinfo", "-N", "-h", *partition, "-O", SINFO_FORMAT, env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout=max(10, self.poll_interval * 2))
        except asyncio.TimeoutError:
            proc.kill()
            raise RuntimeError("sinfo timed out")
        if proc.returncode != 0:
            raise RuntimeError(err.decode(errors="replace").strip().splitlines()[-1] if err else "sinfo failed")
        self.apply_nodes(parse_sinfo(out.decode()))
        self.inventory.set_health(True)

    async def _poll_forever(self, on_change) -> None:
        seen = None
        while True:
            try:
                await self.poll_once()
                self.last_error = ""
                await self.cancel_orphans()
            except Exception as e:  # a dead cluster must never take the hub down
                self.last_error = str(e)
                self.inventory.set_health(False, self.down_reason(e))
            if self.inventory.version != seen:  # the snapshot file is rewritten only on change
                seen = self.inventory.version
                on_change()
            await asyncio.sleep(self.poll_interval)

    def abandon(self, spawner) -> None:
        job_id = getattr(spawner, "job_id", "") or getattr(spawner, "_fedhub_job_id", "")
        if job_id:
            self.orphans.add(job_id)

    async def cancel_orphans(self) -> None:
        if not self.orphans:
            return
        jobs = sorted(self.orphans)
        proc = await asyncio.create_subprocess_exec("scancel", *jobs, env=self.env,
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.DEVNULL)
        if await proc.wait() == 0:
            self.orphans.difference_update(jobs)
            if self.log:
                self.log.info("%s: cancelled jobs left by failed starts: %s", self.site.name, jobs)

    def note_starting(self, allocation):
        self.pending.append(allocation)

    def note_settled(self, allocation):
        if allocation in self.pending:
            self.pending.remove(allocation)

    async def start_watching(self, on_change=lambda: None) -> None:
        key = self.watch_key
        if key not in SlurmBackend._pollers or SlurmBackend._pollers[key].done():
            SlurmBackend._pollers[key] = asyncio.ensure_future(self._poll_forever(on_change))

    async def stop_watching(self) -> None:
        task = SlurmBackend._pollers.pop(self.watch_key, None)
        if task:
            task.cancel()

    def spawner_class(self):
        return SlurmSiteSpawner

    def spawner_overrides(self, allocation, request):
        o = self.site.options
        gres = f"gpu:{allocation.gpu_type}:{len(allocation.gpu_ids)}" if allocation.gpu_ids else ""
        env = self.session_env(allocation, request)
        if self.slurm_conf:
            env["SLURM_CONF"] = self.slurm_conf
        return {
            "environment": env,
            "fedhub_site": self.site.name,
            "slurm_conf": self.slurm_conf,
            "req_partition": str(o.get("partition", "")),
            "req_account": str(o.get("account", "")),
            "req_qos": str(o.get("qos", "")),
            "req_runtime": str(o.get("runtime", DEFAULT_RUNTIME)),
            "req_nprocs": str(max(1, math.ceil(allocation.cpus - 1e-9))),
            "req_memory": f"{max(1, allocation.memory // 2**20)}M",
            "req_gres": gres,
            "daemon_resolver": dict(o.get("hosts", {})),
        }

    def dataset_overrides(self, datasets):
        return link_overrides(datasets)
