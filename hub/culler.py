"""Idle culling that spares sessions doing work.

jupyterhub-idle-culler decides from the hub's ``last_activity`` alone, so a long training
loop in a kernel nobody is watching, or a build in a terminal, looks idle to it. fedhub's
check adds what the session itself knows: kernels whose ``execution_state`` is busy
(``/api/kernels``), terminals with processes running under them, and utilisation of the
session's GPUs. ``decide`` is the pure decision; ``GpuProbe`` reads utilisation (nvidia-smi
where present, nothing otherwise); ``session_activity`` asks a running server over HTTP.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field

import requests

GPU_BUSY_PERCENT = 5.0  # above this a GPU is working (idle GPUs report 0-1 %)


@dataclass
class Activity:
    """What is known about one session at the moment of the check."""
    last_activity: float | None  # the hub's last_activity, epoch seconds (None: never)
    busy_kernels: int = 0
    terminal_processes: int = 0  # processes running under the session's terminals / code-server
    gpu_utilisation: list[float] = field(default_factory=list)  # percent, one per GPU of the session


@dataclass(frozen=True)
class Decision:
    cull: bool
    reason: str


def decide(activity: Activity, now: float, idle_timeout: float,
           gpu_busy_percent: float = GPU_BUSY_PERCENT) -> Decision:
    """Cull only a session idle for longer than ``idle_timeout`` with nothing running."""
    if activity.busy_kernels:
        return Decision(False, f"{activity.busy_kernels} kernel(s) busy")
    if activity.terminal_processes:
        return Decision(False, f"{activity.terminal_processes} process(es) running in terminals")
    busy_gpus = [u for u in activity.gpu_utilisation if u > gpu_busy_percent]
    if busy_gpus:
        return Decision(False, f"{len(busy_gpus)} GPU(s) in use ({max(busy_gpus):.0f} %)")
    if activity.last_activity is None:
        return Decision(True, "never active")
    idle = now - activity.last_activity
    if idle <= idle_timeout:
        return Decision(False, f"active {idle:.0f} s ago (limit {idle_timeout:.0f} s)")
    return Decision(True, f"idle for {idle:.0f} s (limit {idle_timeout:.0f} s)")


class GpuProbe:
    """Utilisation of GPUs by index; the base class sees no GPUs."""

    def utilisation(self, gpu_ids: list[int]) -> list[float]:
        return []


class NvidiaSmiProbe(GpuProbe):
    """Reads ``nvidia-smi --query-gpu=index,utilization.gpu`` (no nvidia-smi: no GPUs)."""

    def __init__(self, command: str = "nvidia-smi", timeout: float = 10):
        self.command, self.timeout = command, timeout

    @staticmethod
    def parse(csv_text: str) -> dict[int, float]:
        found = {}
        for line in csv_text.splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 2 and parts[0].isdigit():
                try:
                    found[int(parts[0])] = float(parts[1])
                except ValueError:
                    continue  # "[N/A]" on GPUs that do not report utilisation
        return found

    def utilisation(self, gpu_ids: list[int]) -> list[float]:
        exe = shutil.which(self.command)
        if exe is None or not gpu_ids:
            return []
        try:
            out = subprocess.run([exe, "--query-gpu=index,utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=self.timeout, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            return []  # a broken driver must not make every session look busy or idle
        by_index = self.parse(out)
        return [by_index[i] for i in gpu_ids if i in by_index]


def session_activity(server_url: str, token: str, last_activity: float | None,
                     gpu_utilisation: list[float] | None = None, timeout: float = 10) -> Activity:
    """Ask a running single-user server (fedhub's /fedhub/api/activity route) what runs in it."""
    r = requests.get(f"{server_url.rstrip('/')}/fedhub/api/activity",
                     headers={"Authorization": f"token {token}"}, timeout=timeout)
    r.raise_for_status()
    data = r.json()
    return Activity(last_activity=last_activity, busy_kernels=int(data["busy_kernels"]),
                    terminal_processes=int(data["terminal_processes"]),
                    gpu_utilisation=list(gpu_utilisation or []))


def _parse_time(stamp: str | None) -> float | None:
    from datetime import datetime
    if not stamp:
        return None
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def cull_once(hub_url: str, token: str, idle_timeout: float, probe: GpuProbe | None = None,
              now: float | None = None, log=None) -> dict[str, Decision]:
    """One pass over ready servers: stop those ``decide`` calls idle. Homes are untouched
    (stopping a server never deletes files). ``token`` needs admin:servers and access:servers."""
    import time
    probe = probe or NvidiaSmiProbe()
    headers = {"Authorization": f"token {token}"}
    users = requests.get(f"{hub_url}/hub/api/users", params={"state": "ready"}, headers=headers, timeout=30)
    users.raise_for_status()
    decisions: dict[str, Decision] = {}
    for user in users.json():
        for name, server in (user.get("servers") or {}).items():
            key = f"{user['name']}/{name}"
            gpu_ids = (((server.get("state") or {}).get("fedhub") or {}).get("allocation") or {}).get("gpu_ids") or []
            try:
                activity = session_activity(f"{hub_url}{server['url']}", token,
                                            _parse_time(server.get("last_activity")),
                                            gpu_utilisation=probe.utilisation(list(gpu_ids)))
            except (requests.RequestException, KeyError, ValueError) as e:
                # a session we cannot ask is judged on the hub's last_activity alone
                if log:
                    log.warning("culler: could not ask %s what runs: %s", key, e)
                activity = Activity(_parse_time(server.get("last_activity")))
            d = decisions[key] = decide(activity, time.time() if now is None else now, idle_timeout)
            if d.cull:
                path = f"/hub/api/users/{user['name']}/servers/{name}" if name else \
                    f"/hub/api/users/{user['name']}/server"
                requests.delete(f"{hub_url}{path}", headers=headers, timeout=60)
    return decisions


class PeriodicCuller:
    """The culler as the fedhub API service runs it: `cull_once` in a worker thread (it
    blocks on HTTP), every quarter of the idle timeout, never two passes at once."""

    def __init__(self, hub_url: str, token: str, idle_timeout: float, log=None, probe: GpuProbe | None = None):
        self.hub_url, self.token, self.idle_timeout = hub_url.rstrip("/"), token, idle_timeout
        self.interval = max(5.0, idle_timeout / 4)
        self.log, self.probe = log, probe
        self._running = False
        self.culled: list[str] = []

    async def tick(self) -> None:
        import asyncio
        if self._running:
            return
        self._running = True
        try:
            decisions = await asyncio.get_running_loop().run_in_executor(
                None, lambda: cull_once(self.hub_url, self.token, self.idle_timeout, self.probe, log=self.log))
            for key, d in decisions.items():
                if d.cull:
                    self.culled.append(key)
                    if self.log:
                        self.log.info("culler: stopped %s (%s)", key, d.reason)
        except Exception as e:  # a failed pass is retried next time; it never stops the service
            if self.log:
                self.log.warning("culler: pass failed: %s", e)
        finally:
            self._running = False


def culler_from_env(environ, log=None) -> PeriodicCuller | None:
    """The culler `fedhub up --cull-idle N` asks for ($FEDHUB_CULLER), or None."""
    import json
    raw = environ.get("FEDHUB_CULLER")
    if not raw:
        return None
    conf = json.loads(raw)
    return PeriodicCuller(conf["hub_url"], environ["JUPYTERHUB_API_TOKEN"], float(conf["idle_timeout"]), log)
