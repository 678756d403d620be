"""Real Slurm clusters for tests: slurmctld + slurmd from Debian's slurm-wlm, one munged.

Each cluster has its own ports, state and a node with fake GPUs declared through GRES
(File= points at /dev/null symlinks: Slurm drops file-less GPUs). The config follows
../shared/reference/slurm/, which was verified on these machines.

With rest=True the cluster also accepts JWTs (AuthAltTypes=auth/jwt, an HS256 key file)
and runs slurmrestd on a free loopback port as an unprivileged user; mint_token() asks
the controller for a token (`scontrol token`).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

SLURM_CONF = """\
ClusterName={name}
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/slurmd-%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmdParameters=config_overrides
MessageTimeout=5
GresTypes=gpu
NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} Gres=gpu:{gpu_type}:{gpus} State=UNKNOWN
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""

REST_CONF = """\
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key={root}/etc/jwt_hs256.key
"""
REST_API = "/slurm/v0.0.38"

GRES_CONF = "AutoDetect=off\nNodeName={node} Name=gpu Type={gpu_type} File={root}/dev/nvidia[0-{last}]\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_munged() -> None:
    # one munged for every cluster; the lock keeps parallel test workers from starting two
    with open("/tmp/fedhub-tests-munged.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode == 0:
            return
        if not Path("/etc/munge/munge.key").exists():
            subprocess.run(["/usr/sbin/mungekey", "--create"], check=True)
            shutil.chown("/etc/munge/munge.key", "munge", "munge")
        os.makedirs("/run/munge", exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)


class SlurmCluster:
    def __init__(self, root: Path, name: str, node: str, gpu_type: str, gpus: int,
                 cpus: int = 8, memory_mb: int = 8000, partition: str = "debug", rest: bool = False):
        self.root, self.name, self.node = Path(root), name, node
        self.gpu_type, self.gpus, self.cpus, self.memory_mb = gpu_type, gpus, cpus, memory_mb
        self.partition = partition
        self.ctld_port, self.d_port = free_port(), free_port()
        self.conf = self.root / "etc" / "slurm.conf"
        self.rest = rest
        self.rest_port = free_port() if rest else 0
        self.rest_proc: subprocess.Popen | None = None
        self.rest_etc: Path | None = None  # a copy of slurm.conf that slurmrestd's user can read

    @property
    def env(self) -> dict:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def write_config(self) -> None:
        for sub in ("etc", "state", "run", "log", "dev", f"spool/slurmd-{self.node}"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for i in range(self.gpus):
            dev = self.root / "dev" / f"nvidia{i}"
            if not dev.exists():
                dev.symlink_to("/dev/null")
        host = socket.gethostname().split(".")[0]
        self.conf.write_text(SLURM_CONF.format(
            name=self.name, ctld_port=self.ctld_port, d_port=self.d_port, root=self.root, node=self.node,
            host=host, cpus=self.cpus, memory_mb=self.memory_mb, gpu_type=self.gpu_type, gpus=self.gpus,
            partition=self.partition) + (REST_CONF.format(root=self.root) if self.rest else ""))
        key = self.root / "etc" / "jwt_hs256.key"
        if self.rest and not key.exists():
            key.write_bytes(os.urandom(32))
            key.chmod(0o600)
        (self.root / "etc" / "gres.conf").write_text(GRES_CONF.format(
            node=self.node, gpu_type=self.gpu_type, root=self.root, last=self.gpus - 1))

    def start(self, timeout: float = 60) -> "SlurmCluster":
        ensure_munged()
        self.write_config()
        self.start_controller()
        try:
            subprocess.run(["slurmd", "-f", str(self.conf), "-N", self.node], check=True, env=self.env)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                out = self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
                if out.returncode == 0 and out.stdout.strip() in ("idle", "mixed", "allocated"):
                    if self.rest:
                        self.start_rest()
                    return self
                time.sleep(0.3)
            raise RuntimeError(f"{self.name} did not come up: {out.stdout}{out.stderr}\n{self.log_tail()}")
        except BaseException:
            self.stop()  # leave no daemons behind a failed start
            raise

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def start_rest(self, timeout: float = 20) -> None:
        """slurmrestd with JWT auth on rest_port; it refuses to run as root, so it drops to nobody,
        which reads slurm.conf after dropping: give it a copy outside pytest's private tmp dirs."""
        if self.rest_etc is None:
            self.rest_etc = Path(tempfile.mkdtemp(prefix="fedhub-slurmrestd-"))
            self.rest_etc.chmod(0o755)
            shutil.copy(self.conf, self.rest_etc / "slurm.conf")
            (self.rest_etc / "slurm.conf").chmod(0o644)
        log = open(self.root / "log" / "slurmrestd.log", "ab")
        self.rest_proc = subprocess.Popen(
            ["slurmrestd", "-f", str(self.rest_etc / "slurm.conf"), "-a", "rest_auth/jwt", "-s", "openapi/v0.0.38",
             "-u", "nobody", "-g", "nogroup", f"127.0.0.1:{self.rest_port}"],
            # SLURM_JWT=daemon: talk to slurmctld with the callers' tokens, not munge
            env={**self.env, "SLURM_JWT": "daemon"}, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.rest_proc.poll() is not None:
                raise RuntimeError(f"slurmrestd exited {self.rest_proc.returncode}:\n{self.log_tail()}")
            try:
                urllib.request.urlopen(f"{self.rest_url}{REST_API}/ping", timeout=2)
                return
            except urllib.error.HTTPError:
                return  # 401 without a token: it is answering
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"slurmrestd did not answer on {self.rest_url}")

    def stop_rest(self) -> None:
        if self.rest_proc and self.rest_proc.poll() is None:
            self.rest_proc.terminate()
            try:
                self.rest_proc.wait(10)
            except subprocess.TimeoutExpired:
                self.rest_proc.kill()
                self.rest_proc.wait()
        self.rest_proc = None

    def mint_token(self, user: str = "root", lifespan: int = 3600) -> str:
        out = self.run("scontrol", "token", f"username={user}", f"lifespan={lifespan}").stdout
        return out.strip().split("=", 1)[1]

    def start_controller(self) -> None:
        subprocess.run(["slurmctld", "-f", str(self.conf)], check=True, env=self.env)

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, check=check, timeout=60)

    def _kill_pidfile(self, pattern: str, sig=signal.SIGTERM) -> None:
        for pid_file in (self.root / "run").glob(pattern):
            try:
                pid = int(pid_file.read_text().strip())
                os.kill(pid, sig)
                for _ in range(100):
                    os.kill(pid, 0)
                    with open(f"/proc/{pid}/stat") as f:
                        if f.read().split()[2] == "Z":
                            break
                    time.sleep(0.1)
            except (ValueError, OSError):
                pass

    def kill_controller(self) -> None:
        self._kill_pidfile("slurmctld.pid", signal.SIGKILL)

    def jobs(self) -> list[str]:
        out = self.run("squeue", "-h", "-o", "%i %T", check=False)
        return [line for line in out.stdout.splitlines() if line.strip()]

    def stop(self) -> None:
        self.stop_rest()
        if self.rest_etc is not None:
            shutil.rmtree(self.rest_etc, ignore_errors=True)
            self.rest_etc = None
        self.run("scancel", "--full", "-u", "root", check=False) if self.conf.exists() else None
        self._kill_pidfile("slurmd-*.pid")
        self._kill_pidfile("slurmctld.pid")

    def log_tail(self, n: int = 30) -> str:
        out = []
        for log in (self.root / "log").glob("*.log"):
            out.append(f"== {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-n:]))
        return "\n".join(out)
