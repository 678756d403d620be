"""One Flower SuperNode per participating site, started through that site's backend.

The builders are pure (command line, Slurm batch script, Kubernetes pod manifest) and
tested as data; the launchers start and stop what the builders describe:

- ``local`` sites: a process on the hub's machine, in its own process group;
- ``slurm`` sites: a batch job submitted with the site's SLURM_CONF, cancelled with scancel;
- ``kubernetes`` sites: the pod manifest only (no cluster can be reached from here).

Each SuperNode connects back to the job's SuperLink and gets a node config that tells the
app which share of the data it holds (``partition-id``/``num-partitions``) and which site
it is (``fedhub-site``), plus ``data-path``: the path at that site of the dataset the job
names (from the dataset catalogue), else the site's own ``federated.data_path`` if set.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SUPERNODE_LOG = "supernode.log"
JOB_LABEL = "fedhub.io/federated-job"
SITE_LABEL = "fedhub.io/site"
DEFAULT_IMAGE = "quay.io/jupyter/scipy-notebook:latest"


def node_config(index: int, count: int, site: str, data_path: str = "",
                datasets: dict[str, str] | None = None) -> dict:
    """The Flower node config of the SuperNode of the index-th site (0-based) of count.

    `datasets` (name -> path at this site, from the dataset catalogue) are the datasets the job
    names: `data-path` is the first one's path (else the site's own `data_path`), `dataset` its
    name, and `data-path-<name>` each one's path.
    """
    config: dict = {"partition-id": index, "num-partitions": count, "fedhub-site": site}
    if datasets:
        first = next(iter(datasets))
        config["data-path"], config["dataset"] = datasets[first], first
        config.update({f"data-path-{name}": path for name, path in datasets.items()})
    elif data_path:
        config["data-path"] = data_path
    return config


def node_config_arg(config: dict) -> str:
    """--node-config text: space-separated k=v, strings quoted TOML-style."""
    def value(k, v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return str(v)
        if '"' in str(v):
            raise ValueError(f"node config {k}: Flower node config strings cannot hold a double quote")
        return f'"{v}"'
    return " ".join(f"{k}={value(k, v)}" for k, v in config.items())


def supernode_command(superlink: str, config: dict, port: int | str, bin_dir: str = "") -> list[str]:
    """The flower-supernode command line (port: its own ClientAppIo port on the node)."""
    exe = str(Path(bin_dir) / "flower-supernode") if bin_dir else "flower-supernode"
    return [exe, "--insecure", "--superlink", superlink, "--host", "127.0.0.1", "--port", str(port),
            "--node-config", node_config_arg(config)]


_SLURM_TIME = re.compile(r"^(\d+-)?\d+(:\d{2}){0,2}$")


def slurm_batch_script(*, job_id: str, site: str, superlink: str, config: dict, node_dir: str,
                       bin_dir: str, python: str, partition: str = "", account: str = "", qos: str = "",
                       runtime: str = "2:00:00", cpus: int = 1, memory: str = "1024M") -> str:
    """The batch job running one SuperNode on a Slurm site (pure; `sbatch` reads it on stdin).

    ``--export=NONE``: the job must not inherit the hub service's environment (its token);
    the script sets what the SuperNode needs. The ClientAppIo port is picked on the node.
    """
    if runtime and not _SLURM_TIME.match(runtime):
        raise ValueError(f"runtime: expected a Slurm time such as 2:00:00, got {runtime!r}")
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name=fedhub-fl-{job_id}-{site}",
             f"#SBATCH --output={node_dir}/{SUPERNODE_LOG}",
             f"#SBATCH --chdir={node_dir}",
             "#SBATCH --export=NONE",
             "#SBATCH --ntasks=1",
             f"#SBATCH --cpus-per-task={int(cpus)}",
             f"#SBATCH --mem={memory}"]
    for flag, value in (("partition", partition), ("account", account), ("qos", qos), ("time", runtime)):
        if value:
            lines.append(f"#SBATCH --{flag}={value}")
    free_port = "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"
    command = supernode_command(superlink, config, "$port", bin_dir)
    lines += ["set -euo pipefail",
              f"export PATH={shlex.quote(bin_dir)}:/usr/local/bin:/usr/bin:/bin",
              f"export FLWR_HOME={shlex.quote(node_dir + '/flwr')}",
              f"port=$({shlex.quote(python)} -c {shlex.quote(free_port)})",
              'echo "fedhub: SuperNode of site ' + site + ' on $(hostname), job $SLURM_JOB_ID"',
              # exec: scancel's SIGTERM reaches the SuperNode itself
              "exec " + " ".join('"$port"' if a == "$port" else shlex.quote(a) for a in command),
              ""]
    return "\n".join(lines)


def supernode_pod_manifest(*, job_id: str, site: str, superlink: str, config: dict, owner: str,
                           image: str = DEFAULT_IMAGE, namespace: str = "", cpus: float = 1,
                           memory: str = "1Gi", node_selector: dict | None = None,
                           service_account: str = "") -> dict:
    """The Pod running one SuperNode on a Kubernetes site (pure, a plain dict for the API server).

    restartPolicy Never: a SuperNode that dies is a dropout the job handles, not something
    the kubelet should hide by restarting it.
    """
    name = _k8s_name(f"fedhub-fl-{job_id}-{site}")
    command = supernode_command(superlink, config, 9094)
    pod: dict = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name,
                     "labels": {JOB_LABEL: _k8s_label(job_id), SITE_LABEL: _k8s_label(site),
                                "app.kubernetes.io/component": "flower-supernode",
                                "app.kubernetes.io/managed-by": "fedhub"},
                     "annotations": {"fedhub.io/owner": owner}},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "containers": [{
                "name": "supernode", "image": image, "command": command,
                "env": [{"name": "FLWR_HOME", "value": "/tmp/flwr"}],
                "resources": {"requests": {"cpu": cpus, "memory": memory},
                              "limits": {"cpu": cpus, "memory": memory}},
                "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True},
            }],
        },
    }
    if namespace:
        pod["metadata"]["namespace"] = namespace
    if node_selector:
        pod["spec"]["nodeSelector"] = dict(node_selector)
    if service_account:
        pod["spec"]["serviceAccountName"] = service_account
    return pod


def _k8s_label(text: str) -> str:
    value = re.sub(r"[^A-Za-z0-9_.-]", "-", text)[:63].strip("-_.")
    return value or "x"


def _k8s_name(text: str) -> str:
    value = re.sub(r"[^a-z0-9-]", "-", text.lower())[:63].strip("-")
    return value or "x"


# ---------------------------------------------------------------- launchers


class LaunchError(RuntimeError):
    """A SuperNode could not be started on its site."""


@dataclass
class SuperNodeHandle:
    """What a started SuperNode is, enough to watch it, stop it and find it after a restart."""

    site: str
    kind: str
    log_path: str
    pid: int | None = None
    slurm_job_id: str = ""
    slurm_conf: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"site": self.site, "kind": self.kind, "log_path": self.log_path, "pid": self.pid,
                "slurm_job_id": self.slurm_job_id, "slurm_conf": self.slurm_conf}

    @classmethod
    def from_dict(cls, d: dict) -> "SuperNodeHandle":
        return cls(d["site"], d["kind"], d["log_path"], d.get("pid"), d.get("slurm_job_id", ""),
                   d.get("slurm_conf", ""))


def _bin_dir() -> str:
    return str(Path(sys.executable).parent)


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(flwr_home: Path, extra: dict | None = None) -> dict:
    """Environment of Flower processes: the venv first on PATH (Flower starts its own
    helpers, e.g. flower-superexec, by name) and their own FLWR_HOME (else ~/.flwr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "MLFLOW_TRACKING_TOKEN"))}
    env["PATH"] = f"{_bin_dir()}:{env.get('PATH', '/usr/bin:/bin')}"
    env["FLWR_HOME"] = str(flwr_home)
    env.update(extra or {})
    return env


async def start_local(site: str, superlink: str, config: dict, node_dir: Path) -> SuperNodeHandle:
    node_dir.mkdir(parents=True, exist_ok=True)
    log_path = node_dir / SUPERNODE_LOG
    with open(log_path, "ab") as log:
        proc = await asyncio.create_subprocess_exec(
            *supernode_command(superlink, config, _free_port(), _bin_dir()),
            stdout=log, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
            env=child_env(node_dir / "flwr"), cwd=str(node_dir), start_new_session=True)
    handle = SuperNodeHandle(site, "local", str(log_path), pid=proc.pid)
    handle.extra["proc"] = proc
    return handle


async def run_slurm(args: list[str], slurm_conf: str, stdin: bytes | None = None,
                    timeout: float = 30) -> tuple[int, str, str]:
    env = {**os.environ, "SLURM_CONF": slurm_conf}
    proc = await asyncio.create_subprocess_exec(
        *args, env=env, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return 124, "", f"{args[0]} timed out after {timeout:g}s"
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def start_slurm(site: str, options: dict, job_id: str, superlink: str, config: dict,
                      node_dir: Path) -> SuperNodeHandle:
    node_dir.mkdir(parents=True, exist_ok=True)
    (node_dir / "flwr").mkdir(exist_ok=True)
    slurm_conf = str(options.get("slurm_conf", ""))
    script = slurm_batch_script(
        job_id=job_id, site=site, superlink=superlink, config=config, node_dir=str(node_dir),
        bin_dir=_bin_dir(), python=sys.executable, partition=str(options.get("partition", "")),
        account=str(options.get("account", "")), qos=str(options.get("qos", "")))
    (node_dir / "supernode.sbatch").write_text(script)
    rc, out, err = await run_slurm(["sbatch", "--parsable"], slurm_conf, stdin=script.encode())
    if rc != 0:
        raise LaunchError(f"sbatch on {site} failed: {(err or out).strip().splitlines()[-1:] or rc}")
    slurm_job = out.strip().split(";")[0]
    return SuperNodeHandle(site, "slurm", str(node_dir / SUPERNODE_LOG), slurm_job_id=slurm_job,
                           slurm_conf=slurm_conf)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


async def slurm_state(handle: SuperNodeHandle) -> str:
    """PENDING/RUNNING/..., '' when Slurm no longer lists the job, '?' when Slurm does not answer."""
    rc, out, err = await run_slurm(["squeue", "-h", "-j", handle.slurm_job_id, "-o", "%T"], handle.slurm_conf)
    if rc != 0:
        # squeue errors for a job id it has forgotten; anything else is an unanswering controller
        return "" if "Invalid job id" in err else "?"
    return out.strip().splitlines()[0] if out.strip() else ""


def kill_group(pid: int | None, sig=signal.SIGTERM) -> None:
    if not pid:
        return
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def descendants(pid: int | None) -> list:
    """Every process below pid. Flower starts flower-superexec and the flwr-serverapp and
    flwr-clientapp processes in sessions of their own, so a process group misses them."""
    import psutil
    try:
        return psutil.Process(pid).children(recursive=True) if pid else []
    except psutil.Error:
        return []


def processes_under(home: Path) -> list:
    """Live processes whose FLWR_HOME lies in home (a job's folder): what the job started,
    including children a dead SuperNode left behind (they are re-parented, so no tree finds them)."""
    import psutil
    prefix = str(home)
    found = []
    for p in psutil.process_iter():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and p.environ().get("FLWR_HOME", "").startswith(prefix):
                found.append(p)
        except (psutil.Error, OSError):
            continue
    return found


async def stop_tree(pid: int | None, children: list, grace: float = 5) -> None:
    """SIGTERM pid's group and the given descendants, SIGKILL whatever is left after grace.
    (pid itself is left for its parent to reap: it may be an asyncio child of ours.)"""
    import psutil

    def alive(p) -> bool:
        try:
            return p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    kill_group(pid, signal.SIGTERM)
    for p in children:
        try:
            p.terminate()
        except psutil.Error:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and (pid_alive(pid) or any(alive(p) for p in children)):
        await asyncio.sleep(0.1)
    kill_group(pid, signal.SIGKILL)
    for p in children:
        try:
            p.kill()
        except psutil.Error:
            pass


async def stop(handle: SuperNodeHandle, grace: float = 5) -> None:
    """Stop a SuperNode and everything it started (its ClientApp processes)."""
    if handle.kind == "local" and handle.pid:
        await stop_tree(handle.pid, descendants(handle.pid), grace)
        proc = handle.extra.get("proc")
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except asyncio.TimeoutError:
                pass
    elif handle.kind == "slurm" and handle.slurm_job_id:
        await run_slurm(["scancel", handle.slurm_job_id], handle.slurm_conf)
