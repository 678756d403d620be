"""A real Flower deployment for tests and benchmarks: one SuperLink, N SuperNodes, `flwr`.

Everything is Flower's own tooling, started as subprocesses on free loopback ports:
`flower-superlink --insecure`, `flower-supernode --insecure --node-config ...` and the
`flwr` CLI (`flwr run`, `flwr ls`), each with its own FLWR_HOME under `root` so nothing
touches ~/.flwr. Use it as a context manager:

    with FlowerDeployment(tmp_path, node_configs=partitions(2)) as flower:
        run = flower.run(app_dir, run_config={"num-server-rounds": 2})
        assert run.status == "finished:completed", run.logs
        flower.traffic(run.run_id)  # Flower's own byte counts for the run
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def partitions(n: int) -> list[dict]:
    """Node configs that split the example app's data IID across n sites."""
    return [{"partition-id": i, "num-partitions": n} for i in range(n)]


def node_config_arg(config: dict) -> str:
    """A node config as Flower's `--node-config` string (TOML values, space separated)."""
    return " ".join(f"{k}={json.dumps(v)}" for k, v in config.items())


def run_config_arg(config: dict) -> list[str]:
    return [arg for k, v in config.items() for arg in ("--run-config", f"{k}={json.dumps(v)}")]


@dataclass
class FlowerRun:
    run_id: int
    status: str          # Flower's status string, e.g. "finished:completed"
    logs: str            # the ServerApp's log (`flwr log`)
    details: dict        # `flwr ls --run-id ... --format json` entry
    wall_seconds: float  # from wait() (or run(): submission) until seen finished


class FlowerDeployment:
    """SuperLink + SuperNodes on loopback; `run()` submits an app with `flwr run`."""

    def __init__(self, root: Path, node_configs: list[dict], env: dict | None = None,
                 superlink_env: dict | None = None):
        self.root = Path(root)
        self.node_configs = node_configs
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {}),
                    "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
        self.superlink_env = superlink_env or {}
        self.procs: list[subprocess.Popen] = []
        self.cli_home = self.root / "cli-home"

    # ------------------------------------------------------------------ processes
    def _spawn(self, name: str, args: list[str], extra_env: dict | None = None) -> None:
        home = self.root / name
        home.mkdir(parents=True, exist_ok=True)
        log = open(self.root / f"{name}.log", "ab")
        env = {**self.env, **(extra_env or {}), "FLWR_HOME": str(home)}
        # own session: stop() takes down the flwr-serverapp/clientapp children too
        self.procs.append(subprocess.Popen(args, cwd=home, stdout=log, stderr=subprocess.STDOUT,
                                           env=env, start_new_session=True))

    def start(self, timeout: float = 60) -> "FlowerDeployment":
        self._spawn("superlink", [str(BIN / "flower-superlink"), "--insecure",
                                  "--host", "127.0.0.1", "--port", str(self.port),
                                  "--disable-runtime-dependency-installation"],
                    self.superlink_env)
        self.cli_home.mkdir(parents=True, exist_ok=True)
        (self.cli_home / "config.toml").write_text(
            f'[superlink]\ndefault = "fedhub"\n\n[superlink.fedhub]\n'
            f'address = "{self.address}"\ninsecure = true\n')
        self._wait_listening(timeout)
        for i, config in enumerate(self.node_configs):
            self._spawn(f"supernode-{i}", [
                str(BIN / "flower-supernode"), "--insecure", "--superlink", self.address,
                "--host", "127.0.0.1", "--port", str(free_port()),
                "--node-config", node_config_arg(config)])
        self._wait_nodes(len(self.node_configs), timeout)
        return self

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"SuperLink did not listen in {timeout}s:\n{self.log('superlink')}")

    def _wait_nodes(self, count: int, timeout: float) -> None:
        """The SuperNodes register with the SuperLink: wait until all are online."""
        deadline = time.monotonic() + timeout
        online = 0
        while time.monotonic() < deadline:
            self._check_alive()
            nodes = self.cli(["supernode", "ls", "--format", "json"], check=False)
            try:
                listed = json.loads(nodes.stdout).get("nodes", [])
                online = sum(1 for n in listed if n.get("status") == "online")
            except (json.JSONDecodeError, AttributeError):
                pass
            if online >= count:
                return
            time.sleep(1.0)
        raise RuntimeError(f"{online}/{count} SuperNodes online after {timeout}s")

    def _check_alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[0]} exited {proc.returncode}:\n"
                                   + self.log("superlink")[-3000:])

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop every process started here and all their descendants. The SuperLink's
        SuperExec starts its own session (so a process-group kill misses it) and it starts
        the flwr-serverapp processes: collect the whole tree first, then signal each."""
        tree: list[psutil.Process] = []
        for proc in self.procs:
            try:
                root = psutil.Process(proc.pid)
                tree += [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        for process in reversed(tree):
            try:
                process.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(tree, timeout=10)
        for process in alive:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        for proc in self.procs:
            try:
                proc.wait(timeout=5)  # reap
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()

    def __enter__(self) -> "FlowerDeployment":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ flwr CLI
    def cli(self, args: list[str], check: bool = True, timeout: float = 120,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(BIN / "flwr"), *args], cwd=cwd or self.root,
                              env={**self.env, "FLWR_HOME": str(self.cli_home)},
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"flwr {' '.join(args)} failed ({proc.returncode}):\n"
                               f"{proc.stdout}\n{proc.stderr}")
        return proc

    def submit(self, app_dir: Path, run_config: dict | None = None) -> int:
        """`flwr run APP --format json`: returns the run id without waiting."""
        out = self.cli(["run", str(app_dir), "fedhub", "--format", "json",
                        *run_config_arg(run_config or {})])
        reply = json.loads(out.stdout)
        if not reply.get("success", True) or "run-id" not in reply:
            raise RuntimeError(f"flwr run did not start a run: {out.stdout}")
        return int(reply["run-id"])

    def submit_many(self, jobs: dict[str, tuple[Path, dict]]) -> dict[str, int]:
        """Submit several apps at once ({name: (app_dir, run_config)} -> {name: run id})."""
        with ThreadPoolExecutor(max_workers=len(jobs) or 1) as pool:
            futures = {name: pool.submit(self.submit, app, config) for name, (app, config) in jobs.items()}
            return {name: future.result() for name, future in futures.items()}

    def details(self, run_id: int | None = None) -> dict:
        """`flwr ls --format json` for one run ({run_id: entry} of all runs when None)."""
        args = ["ls", "--format", "json"] + (["--run-id", str(run_id)] if run_id is not None else [])
        runs = {int(r["run-id"]): r for r in json.loads(self.cli(args).stdout)["runs"]}
        return runs[int(run_id)] if run_id is not None else runs

    def wait_all(self, run_ids: list[int], timeout: float = 300, poll: float = 2.0) -> dict[int, FlowerRun]:
        """Wait until every run has finished. Each `flwr` call is a Python start-up, so
        one `flwr ls` covers all runs and polls are spaced out."""
        started = time.monotonic()
        finished: dict[int, FlowerRun] = {}
        while len(finished) < len(run_ids):
            runs = self.details()
            for run_id in run_ids:
                details = runs.get(int(run_id), {})
                if run_id not in finished and str(details.get("status", "")).startswith("finished"):
                    logs = self.cli(["log", str(run_id), "--show"], check=False, timeout=60)
                    finished[run_id] = FlowerRun(run_id, details["status"], logs.stdout + logs.stderr,
                                                 details, time.monotonic() - started)
            if len(finished) == len(run_ids):
                break
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"runs not finished after {timeout}s: "
                                   f"{ {r: runs.get(int(r), {}).get('status') for r in run_ids} }")
            self._check_alive()
            time.sleep(poll)
        return finished

    def wait(self, run_id: int, timeout: float = 300) -> FlowerRun:
        return self.wait_all([run_id], timeout)[run_id]

    def run(self, app_dir: Path, run_config: dict | None = None, timeout: float = 300) -> FlowerRun:
        """Submit and wait; wall_seconds then counts from the submission."""
        started = time.monotonic()
        run = self.wait(self.submit(app_dir, run_config), timeout)
        run.wall_seconds = time.monotonic() - started
        return run

    def traffic(self, run_id: int) -> dict:
        """Flower's own count of the run's Fleet API bytes: inbound, outbound, total."""
        return self.details(run_id)["network-traffic"]
