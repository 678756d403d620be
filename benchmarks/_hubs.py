"""Shared helpers for the benchmarks: start real hubs, drive their REST API, measure them.

Two kinds of hub, started side by side on free loopback ports in a temporary folder:

- FedhubHub: `fedhub up --no-mlflow` (FederatedSpawner, the default two-site local catalogue
  unless one is given) with an extra jupyterhub_config.py in its data dir that adds an
  admin service token for the benchmark.
- PlainHub: `python -m jupyterhub` with JupyterHub's own SimpleLocalProcessSpawner, the dummy
  authenticator and the same single-user command, arguments, default URL, PATH and service
  token, so the two differ only in the spawner (and what fedhub runs beside it).
- PlainSlurmHub: the same plain hub with batchspawner's SlurmSpawner submitting to one
  SlurmCluster (tests/slurm_cluster.py), the baseline for Slurm sites.

Slurm helpers: slurm_cluster_class() imports the tests' SlurmCluster (real slurmctld + slurmd
with fake GPUs), slurm_catalogue() writes a fedhub catalogue of Slurm sites, stop_cluster()
cancels every job, stops the daemons and kills any job step left behind.

Every process a Hub starts is stopped by Hub.stop(): the hub is asked to stop (SIGINT, which
makes JupyterHub stop its servers and proxy), then its process group is killed, then any
single-user server whose HOME is under the hub's folder. Use it in `finally:` blocks or
through `running_hubs()`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator

import psutil
import requests

ROOT = Path(__file__).resolve().parents[1]
PYTHON = str(ROOT / ".venv" / "bin" / "python")
VENV_BIN = ROOT / ".venv" / "bin"
CHP = ROOT / "node_modules" / ".bin" / "configurable-http-proxy"
SINGLEUSER = str(VENV_BIN / "jupyterhub-singleuser")
BENCH_SCOPES = ["admin:users", "admin:servers", "admin:server_state", "tokens", "read:hub",
                "access:servers"]


# ---------------------------------------------------------------- small helpers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hub_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{CHP.parent}:{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def percentile(sorted_values: list[float], p: float) -> float:
    """Linear-interpolation percentile of an already sorted list (numpy's default method)."""
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def median(values: Iterable[float]) -> float:
    v = sorted(values)
    return percentile(v, 50) if v else float("nan")


def bench_service_config(token: str) -> str:
    return (
        f'c.JupyterHub.services.append({{"name": "bench", "api_token": {token!r}}})\n'
        f'c.JupyterHub.load_roles.append({{"name": "bench", "services": ["bench"], '
        f'"scopes": {BENCH_SCOPES!r}}})\n'
    )


def code_fingerprint() -> dict:
    """Which fedhub code was measured: a hash of hub/, spawner/ and server_ext/ sources and the
    newest change time. The tree may be edited while a benchmark runs; compare before/after."""
    import datetime
    import hashlib

    h = hashlib.sha256()
    newest = 0.0
    for folder in ("hub", "spawner", "server_ext"):
        for f in sorted((ROOT / folder).rglob("*")):
            if f.is_file() and f.suffix in (".py", ".yaml") and "__pycache__" not in f.parts:
                h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
                newest = max(newest, f.stat().st_mtime)
    when = datetime.datetime.fromtimestamp(newest, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return {"sha256": h.hexdigest()[:12], "newest_change": when}


def check_fingerprint(before: dict) -> dict:
    """The fingerprint now; warns on stderr and marks it if the code changed since `before`."""
    after = code_fingerprint()
    if after["sha256"] != before["sha256"]:
        print(f"WARNING: fedhub code changed during the run ({before['sha256']} -> {after['sha256']}, "
              f"{after['newest_change']}); these figures mix versions", file=sys.stderr)
        return {**before, "changed_during_run_to": after["sha256"]}
    return before


# ---------------------------------------------------------------- hubs

class Hub:
    """A running hub and helpers for its REST API (admin service token)."""

    kind = "hub"

    def __init__(self, label: str, folder: Path):
        self.label = label
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = secrets.token_hex(24)
        self.log_path = self.folder / "hub.log"
        self.proc: subprocess.Popen | None = None
        self._local = threading.local()  # one requests.Session per thread
        self._sessions: list[requests.Session] = []
        self._seen: set[tuple[int, float]] = set()  # (pid, create_time) of every descendant seen

    # -------------------------------------------------------------- process
    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 120) -> "Hub":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                     env=hub_env(), cwd=self.folder, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} hub exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/hub/api/", timeout=2).status_code == 200:
                    r = self.api("GET", "/")  # the token works too
                    if r.status_code == 200:
                        return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.label} hub did not come up in {timeout} s:\n{self.log_tail()}")

    @property
    def process(self) -> psutil.Process:
        """The JupyterHub process itself (`fedhub up` execs into it, so it is our child)."""
        return psutil.Process(self.proc.pid)

    def descendants(self) -> list[psutil.Process]:
        try:
            procs = self.process.children(recursive=True)
        except psutil.Error:
            return []
        for p in procs:
            with contextlib.suppress(psutil.Error):
                self._seen.add((p.pid, p.create_time()))
        return procs

    def stop(self, timeout: float = 60) -> None:
        """Stop the hub and everything it started; safe to call twice."""
        with contextlib.suppress(Exception):
            self.descendants()  # remember every pid, to kill leftovers afterwards
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                self.proc.wait(10)
        self.kill_leftovers()
        for s in self._sessions:
            s.close()

    def restart(self, timeout: float = 60) -> float:
        """Stop the hub process alone (SIGINT, then its process group if it hangs; single-user
        servers a --keep-servers hub leaves running, e.g. Slurm jobs, are not touched) and start
        it again on the same ports; returns seconds from the signal until its API answers."""
        t0 = time.perf_counter()
        with contextlib.suppress(Exception):
            self.descendants()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.start()
        return time.perf_counter() - t0

    def kill_leftovers(self) -> int:
        """Kill single-user servers (and anything else this hub started) that outlived it."""
        killed = 0
        folder = str(self.folder)
        for proc in psutil.process_iter(["pid"]):
            try:
                mine = (proc.pid, proc.create_time()) in self._seen and proc.pid != os.getpid()
                if not mine:
                    mine = proc.environ().get("HOME", "").startswith(folder)
                if mine:
                    proc.kill()
                    killed += 1
            except (psutil.Error, OSError):
                pass
        return killed

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    # -------------------------------------------------------------- REST API
    @property
    def session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
            s.headers["Authorization"] = f"token {self.token}"
            self._sessions.append(s)
        return s

    def api(self, method: str, path: str, **kw) -> requests.Response:
        kw.setdefault("timeout", 120)
        return self.session.request(method, f"{self.url}/hub/api{path}", **kw)

    def create_user(self, name: str) -> None:
        r = self.api("POST", f"/users/{name}")
        if r.status_code not in (201, 409):
            raise RuntimeError(f"{self.label}: create user {name}: {r.status_code} {r.text}")

    def server(self, name: str) -> dict | None:
        r = self.api("GET", f"/users/{name}")
        r.raise_for_status()
        return r.json()["servers"].get("")

    def request_server(self, name: str, options: dict | None = None) -> requests.Response:
        return self.api("POST", f"/users/{name}/server", json=options or {}, timeout=600)

    def wait_ready(self, name: str, timeout: float = 600, interval: float = 0.05) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = self.server(name)
            if server and server["ready"]:
                return server
            if server is None or (not server["pending"] and not server["ready"]):
                raise RuntimeError(f"{self.label}: {name}'s server is gone:\n{self.log_tail()}")
            time.sleep(interval)
        raise TimeoutError(f"{self.label}: {name}'s server not ready in {timeout} s")

    def spawn_and_wait(self, name: str, interval: float = 0.05) -> float:
        """POST the server, poll until ready; seconds from POST to seeing ready."""
        t0 = time.perf_counter()
        r = self.request_server(name)
        if r.status_code not in (201, 202):
            raise RuntimeError(f"{self.label}: POST {name}/server: {r.status_code} {r.text}")
        self.wait_ready(name, interval=interval)
        return time.perf_counter() - t0

    def stop_server(self, name: str, timeout: float = 120, interval: float = 0.1) -> float:
        t0 = time.perf_counter()
        r = self.api("DELETE", f"/users/{name}/server")
        if r.status_code not in (202, 204, 400, 404):  # 400: not running
            raise RuntimeError(f"{self.label}: DELETE {name}/server: {r.status_code} {r.text}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server(name) is None:
                return time.perf_counter() - t0
            time.sleep(interval)
        raise TimeoutError(f"{self.label}: {name}'s server still there after {timeout} s")

    def users(self) -> list[dict]:
        r = self.api("GET", "/users", params={"limit": 1000})
        r.raise_for_status()
        body = r.json()
        return body["items"] if isinstance(body, dict) else body

    def singleuser_pids(self) -> list[int]:
        return [p.pid for p in self.descendants() if _is_singleuser(p)]


def fedhub_job_id(server: dict | None) -> str:
    """Slurm job id of a fedhub session, from the server's state (admin:server_state)."""
    return ((((server or {}).get("state") or {}).get("fedhub") or {}).get("child") or {}).get("job_id", "")


def fedhub_site(server: dict | None) -> str:
    return ((((server or {}).get("state") or {}).get("fedhub") or {}).get("allocation") or {}).get("site", "")


def _is_singleuser(p: psutil.Process) -> bool:
    try:
        return any("jupyterhub-singleuser" in part for part in p.cmdline()[:3])
    except psutil.Error:
        return False


class FedhubHub(Hub):
    """`fedhub up --no-mlflow --port P --data-dir D`, plus the bench service token."""

    kind = "fedhub"

    def __init__(self, folder: Path, catalogue_yaml: str | None = None, label: str = "fedhub",
                 extra_args: Iterable[str] = ()):
        super().__init__(label, folder)
        self.data_dir = self.folder
        self.extra_args = list(extra_args)  # e.g. ["--keep-servers"]
        if catalogue_yaml is not None:
            (self.data_dir / "sites.yaml").write_text(catalogue_yaml)
        (self.data_dir / "jupyterhub_config.py").write_text(bench_service_config(self.token))

    def command(self) -> list[str]:
        return [PYTHON, "-m", "fedhub.server_ext.cli", "up", "--no-mlflow", "--port", str(self.port),
                "--data-dir", str(self.data_dir), *self.extra_args]

    def snapshot(self) -> dict:
        """The live inventory snapshot the hub writes for its API service (sites, sessions)."""
        import json

        try:
            return json.loads((self.data_dir / "state" / "inventory.json").read_text())
        except (FileNotFoundError, ValueError):
            return {"sites": [], "sessions": []}

    def sites(self) -> dict[str, dict]:
        return {s["name"]: s for s in self.snapshot().get("sites", [])}


class PlainHub(Hub):
    """JupyterHub with SimpleLocalProcessSpawner: the baseline fedhub is compared against."""

    kind = "plain"

    def __init__(self, folder: Path, start_timeout: int | None = 600, http_timeout: int | None = 120,
                 label: str = "plain"):
        super().__init__(label, folder)
        self.start_timeout, self.http_timeout = start_timeout, http_timeout
        timeouts = ""
        if start_timeout is not None:
            timeouts += f"c.Spawner.start_timeout = {start_timeout}\n"
        if http_timeout is not None:
            timeouts += f"c.Spawner.http_timeout = {http_timeout}\n"
        f = self.folder
        (f / "cfg.py").write_text(
            "c = get_config()  # noqa\n"
            "c.JupyterHub.ip = '127.0.0.1'\n"
            f"c.JupyterHub.port = {self.port}\n"
            "c.JupyterHub.hub_ip = '127.0.0.1'\n"
            f"c.JupyterHub.hub_port = {free_port()}\n"
            f"c.JupyterHub.db_url = {'sqlite:///' + str(f / 'jupyterhub.sqlite')!r}\n"
            f"c.JupyterHub.cookie_secret_file = {str(f / 'jupyterhub_cookie_secret')!r}\n"
            f"c.JupyterHub.pid_file = {str(f / 'jupyterhub.pid')!r}\n"
            f"c.ConfigurableHTTPProxy.api_url = 'http://127.0.0.1:{free_port()}'\n"
            f"c.ConfigurableHTTPProxy.command = [{str(CHP)!r}]\n"
            f"c.ConfigurableHTTPProxy.pid_file = {str(f / 'proxy.pid')!r}\n"
            "c.JupyterHub.authenticator_class = 'dummy'\n"
            "c.Authenticator.allow_all = True\n"
            f"c.Spawner.cmd = [{SINGLEUSER!r}]\n"
            f"c.Spawner.args = {['--allow-root']!r}\n"
            "c.Spawner.default_url = '/lab'\n"
            + self.spawner_config({"PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"})
            + timeouts +
            "c.JupyterHub.services = []\n"
            "c.JupyterHub.load_roles = []\n"
            + bench_service_config(self.token)
        )

    def spawner_config(self, environment: dict) -> str:
        """The config lines choosing and setting up the spawner."""
        return ("c.JupyterHub.spawner_class = 'simple'\n"
                f"c.SimpleLocalProcessSpawner.home_dir_template = "
                f"{str(self.folder / 'homes' / '{username}')!r}\n"
                f"c.Spawner.environment = {environment!r}\n")

    def command(self) -> list[str]:
        return [PYTHON, "-m", "jupyterhub", "-f", str(self.folder / "cfg.py")]


class PlainSlurmHub(PlainHub):
    """Plain JupyterHub with batchspawner's SlurmSpawner for one SlurmCluster: the baseline for
    Slurm sites. Submits as the hub's own user (exec_prefix ""); query and cancel commands get
    SLURM_CONF through `env` (batchspawner runs them without the spawner's environment) and the
    job gets it through Spawner.environment. Hub users have no Unix account, so each user's
    req_homedir is set (and created) under the hub's folder by a pre-spawn hook, and the one
    method of batchspawner that still looks the user up with pwd (UserEnvMixin.user_env: USER,
    HOME, SHELL of the job) is overridden to use req_homedir, as fedhub's SlurmSiteSpawner does.
    Everything else, the batch script included, is batchspawner's default; with
    get_user_env=False its `#SBATCH --get-user-env=L` line is dropped (fedhub's script has none)."""

    kind = "plain-slurm"

    def __init__(self, folder: Path, cluster, label: str = "plain-slurm", nprocs: int = 1,
                 memory: str = "", runtime: str = "8:00:00", get_user_env: bool = True, **kw):
        self.cluster, self.nprocs, self.memory, self.runtime = cluster, nprocs, memory, runtime
        self.get_user_env = get_user_env
        super().__init__(folder, label=label, **kw)

    def spawner_config(self, environment: dict) -> str:
        conf = str(self.cluster.conf)
        homes = str(self.folder / "homes")
        env = {**environment, "SLURM_CONF": conf}
        return (
            "import os\n"
            "import batchspawner  # registers the hub's /api/batchspawner handler (job -> port)\n"
            "\n"
            "class SlurmSpawnerNoUnixUser(batchspawner.SlurmSpawner):\n"
            "    def user_env(self, env):  # batchspawner's own looks HOME/SHELL up with pwd\n"
            "        env['USER'] = self.user.name\n"
            "        env['HOME'] = self.req_homedir\n"
            "        return env\n"
            "\n"
            "def _homedir(spawner):\n"
            f"    spawner.req_homedir = os.path.join({homes!r}, spawner.user.name)\n"
            "    os.makedirs(spawner.req_homedir, exist_ok=True)\n"
            "\n"
            "c.JupyterHub.spawner_class = SlurmSpawnerNoUnixUser\n"
            "c.Spawner.pre_spawn_hook = _homedir\n"
            f"c.Spawner.environment = {env!r}\n"
            "c.SlurmSpawner.exec_prefix = ''\n"
            f"c.SlurmSpawner.batch_query_cmd = \"env SLURM_CONF={conf} squeue -h -j {{job_id}} -o '%T %B'\"\n"
            f"c.SlurmSpawner.batch_cancel_cmd = 'env SLURM_CONF={conf} scancel {{job_id}}'\n"
            f"c.SlurmSpawner.req_partition = {self.cluster.partition!r}\n"
            f"c.SlurmSpawner.req_nprocs = {str(self.nprocs)!r}\n"
            f"c.SlurmSpawner.req_memory = {self.memory!r}\n"
            f"c.SlurmSpawner.req_runtime = {self.runtime!r}\n"
            + ("" if self.get_user_env else
               "c.SlurmSpawner.batch_script = batchspawner.SlurmSpawner.class_traits()['batch_script']"
               ".default_value.replace('#SBATCH --get-user-env=L\\n', '')\n")
        )

    def job_id(self, name: str) -> str:
        return ((self.server(name) or {}).get("state") or {}).get("job_id", "")


# ---------------------------------------------------------------- Slurm clusters

def slurm_cluster_class():
    """tests/slurm_cluster.py's SlurmCluster: a real slurmctld + slurmd, fake GPUs via GRES."""
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from slurm_cluster import SlurmCluster

    return SlurmCluster


def slurm_site(name: str, cluster, gpu_type: str, **options) -> dict:
    """A catalogue entry (kind: slurm) for a SlurmCluster, as tests/test_slurm.py writes it."""
    return {"name": name, "kind": "slurm", "gpus": [{"type": gpu_type, "count": cluster.gpus}],
            "options": {"slurm_conf": str(cluster.conf), "partition": cluster.partition, **options}}


def slurm_catalogue(*sites: dict, cpus: float = 1, memory: str = "512M") -> str:
    import json

    return json.dumps({"sites": list(sites), "defaults": {"cpus": cpus, "memory": memory}})  # JSON is YAML


def slurm_jobs(cluster) -> list[tuple[str, str]]:
    """(job id, state) of every job the cluster knows; [] when its controller does not answer."""
    try:
        return [tuple(line.split()[:2]) for line in cluster.jobs()]
    except Exception:
        return []


def stop_cluster(cluster, timeout: float = 20) -> int:
    """scancel every job, wait for the queue to empty, stop slurmd and slurmctld, then kill job
    steps (slurmstepd and what it runs) that outlived them; returns how many jobs were left."""
    left = 0
    with contextlib.suppress(Exception):
        cluster.run("scancel", "--full", "-u", "root", check=False)
        deadline = time.monotonic() + timeout
        while slurm_jobs(cluster) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = len(slurm_jobs(cluster))
    with contextlib.suppress(Exception):
        cluster.stop()
    conf = str(cluster.conf)
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, OSError):
            if proc.pid != os.getpid() and proc.environ().get("SLURM_CONF") == conf:
                proc.kill()
    return left


@contextlib.contextmanager
def running_hubs(*hubs: Hub) -> Iterator[tuple[Hub, ...]]:
    """Start the hubs (in order) and stop every one of them on the way out, whatever happens."""
    try:
        for hub in hubs:
            hub.start()
        yield hubs
    finally:
        for hub in hubs:
            try:
                hub.stop()
            except Exception as e:  # keep stopping the others
                print(f"warning: stopping {hub.label}: {e}", file=sys.stderr)


# ---------------------------------------------------------------- resource monitor

class Monitor:
    """Samples a hub's processes: the hub's own CPU-seconds and peak RSS, and the CPU of
    everything it started, split into single-user servers (with their own children) and
    the hub's helpers (proxy, services). Processes that exit between samples keep the
    last CPU times seen, so short-lived helpers are undercounted, never overcounted."""

    def __init__(self, hub: Hub, interval: float = 0.2):
        self.hub, self.interval = hub, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._base: dict[int, float] = {}
        self._last: dict[int, tuple[str, float]] = {}  # pid -> (group, cpu seconds)
        self._server_roots: set[int] = set()
        self.peak_rss = 0
        self.hub_cpu0 = self.hub_cpu1 = 0.0

    @staticmethod
    def _cpu(p: psutil.Process) -> float:
        t = p.cpu_times()
        return t.user + t.system

    def _baseline(self) -> None:
        for p in self.hub.descendants():
            with contextlib.suppress(psutil.Error):
                self._base[p.pid] = self._cpu(p)

    def _sample(self) -> None:
        hub = self.hub.process
        with contextlib.suppress(psutil.Error):
            self.peak_rss = max(self.peak_rss, hub.memory_info().rss)
        procs = self.hub.descendants()
        for p in procs:
            if _is_singleuser(p):
                self._server_roots.add(p.pid)
        singleuser_roots = self._server_roots  # sticky: a dying server (zombie) has no cmdline
        for p in procs:
            try:
                group = "servers" if self._last.get(p.pid, ("",))[0] == "servers" else "helpers"
                q = p
                while q is not None and q.pid != hub.pid:
                    if q.pid in singleuser_roots:
                        group = "servers"
                        break
                    q = q.parent()
                self._last[p.pid] = (group, self._cpu(p))
            except psutil.Error:
                pass

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self._sample()
            self._stop.wait(self.interval)

    def start(self) -> "Monitor":
        self._baseline()
        self.hub_cpu0 = self._cpu(self.hub.process)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict:
        with contextlib.suppress(Exception):
            self._sample()
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.hub_cpu1 = self._cpu(self.hub.process)
        groups = {"servers": 0.0, "helpers": 0.0}
        for pid, (group, cpu) in self._last.items():
            groups[group] += max(0.0, cpu - self._base.get(pid, 0.0))
        return {"hub_cpu_s": round(self.hub_cpu1 - self.hub_cpu0, 2),
                "helpers_cpu_s": round(groups["helpers"], 2),
                "servers_cpu_s": round(groups["servers"], 2),
                "hub_peak_rss_mb": round(self.peak_rss / 2**20, 1)}
