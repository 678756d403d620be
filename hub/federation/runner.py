"""Run one federated job: SuperLink, a SuperNode per site, `flwr run`, progress, clean-up.

A `JobRunner` is one asyncio task in the API service. It starts the job's SuperLink on a
free port, one SuperNode per site through the site's backend, waits until every SuperNode
has joined, submits the prepared app with `flwr run`, and then watches: the round events
the app's shim writes (FEDHUB_FL_EVENTS), Flower's run status and traffic, and every
process it started. Whatever ends the job (success, a failure, a cancel, the service
stopping), `_stop_everything()` stops the run, the SuperNodes (scancel on Slurm) and the
SuperLink, and the MLflow run gets its final status. Nothing here can raise into the
service: a failure is the job's state, with the reason and the log tail.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path

from . import supernodes
from .flower import ControlClient, app_config_keys, cli_config_toml, run_config_arg
from .jobs import Job
from .tracking import JobTracking, TrackingError

log = logging.getLogger("fedhub.federation")

_NODE_ID = re.compile(r"SuperNode ID: (\d+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class JobFailed(Exception):
    def __init__(self, message: str, log_tail: str = ""):
        super().__init__(message)
        self.message, self.log_tail = message, log_tail


class JobCancelled(Exception):
    pass


def tail(path: str | Path, lines: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(_ANSI.sub("", text).splitlines()[-lines:])


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


PHASE_PREFIX = {"train": "train", "evaluate": "evaluate", "server-evaluate": "server"}


def round_metrics(event: dict) -> dict[str, float]:
    """A shim round event's aggregate as MLflow metric names: train_<m>, evaluate_<m> (the
    nodes' weighted averages) and server_<m> (the ServerApp's centralised evaluation)."""
    prefix = PHASE_PREFIX.get(str(event.get("phase")))
    out: dict[str, float] = {}
    if prefix is None:
        return out
    for name, value in (event.get("aggregate") or {}).items():
        if name != "num-examples" and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}_{name}"] = float(value)
    return out


class JobRunner:
    """Runs one job; `manager` provides the store, sites, settings and event fan-out."""

    def __init__(self, manager, job: Job, token: str):
        self.m, self.job, self.token = manager, job, token
        self.dir = manager.store.job_dir(job.id)
        self.handles: list[supernodes.SuperNodeHandle] = []
        self.superlink: asyncio.subprocess.Process | None = None
        self.address = ""
        self.control: ControlClient | None = None
        self.tracking: JobTracking | None = None
        self.cancel_reason = ""
        self.wake = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.node_sites: dict[str, str] = {}    # Flower node id -> site
        self.lost: set[str] = set()
        self._events_pos = 0
        self._pending_rounds: dict[int, dict] = {}
        self._last_total = 0
        self._ended = False

    # ---------------------------------------------------------------- helpers
    def event(self, type_: str, message: str, **data) -> None:
        self.m.emit(self.job, {"time": time.time(), "type": type_, "message": message, **data})

    def set_state(self, state: str, message: str) -> None:
        self.job.state = state
        self.event("state", message, state=state)

    def set_site(self, site: str, state: str, detail: str = "") -> None:
        self.job.site_status[site] = {**self.job.site_status.get(site, {}), "state": state, "detail": detail}
        self.event("site", f"{site}: {state}" + (f" ({detail})" if detail else ""), site=site, state=state,
                   detail=detail)

    def cancel(self, reason: str) -> None:
        self.cancel_reason = reason
        self.wake.set()

    def _check_cancel(self) -> None:
        if self.cancel_reason:
            raise JobCancelled(self.cancel_reason)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass
        self._check_cancel()

    # ---------------------------------------------------------------- the job
    async def run(self) -> None:
        state, final_status, error, log_tail = "succeeded", "FINISHED", "", ""
        try:
            await self._run()
        except JobCancelled as e:
            state, final_status, error = "cancelled", "KILLED", str(e)
        except JobFailed as e:
            state, final_status, error, log_tail = "failed", "FAILED", e.message, e.log_tail
        except Exception as e:  # a bug must fail this job only, never the service
            log.exception("federated job %s failed unexpectedly", self.job.id)
            state, final_status, error = "failed", "FAILED", f"internal error: {type(e).__name__}: {e}"
        finally:
            await self._stop_everything()
        # state, error and log tail change together: a reader never sees "failed" without the reason
        self.job.state, self.job.error, self.job.log_tail = state, error, log_tail
        self.job.finished = time.time()
        if self.tracking and self.tracking.run_id:
            try:
                await self.tracking.finish(final_status, {"fedhub.state": self.job.state,
                                                          **({"fedhub.error": error} if error else {})})
            except (TrackingError, LookupError) as e:
                self.job.warnings.append(f"MLflow: could not close the run: {e}")
        self.m.store.drop_secret(self.job.id)
        if self.job.state == "succeeded":
            message = f"Job succeeded: {len(self.job.round_metrics)} rounds"
        elif self.job.state == "cancelled":
            message = f"Job cancelled: {error}"
        else:
            message = f"Job failed: {error}"
        self.set_state(self.job.state, message)
        if log_tail:
            self.event("log", "log tail", log_tail=log_tail)
        self.m.finished(self.job)

    async def _run(self) -> None:
        job = self.job
        job.started = time.time()
        self.set_state("starting", f"Starting job {job.id}: {len(job.sites)} sites, {job.rounds} rounds")
        # MLflow may still be starting with the hub: create the run while the federation starts
        tracking = asyncio.ensure_future(self._start_tracking())
        try:
            app_dir = await asyncio.get_running_loop().run_in_executor(None, self._prepare_app)
            self._check_cancel()
            await self._start_superlink()
            await self._start_supernodes()
            await self._wait_for_supernodes(tracking)
            await tracking  # the run exists before round 1 is logged
        finally:
            if not tracking.done():
                tracking.cancel()
            elif not tracking.cancelled():
                tracking.exception()  # retrieved: a failure here is reported by whoever raised first
        run_id = await self._submit(app_dir)
        self.set_state("running", f"Flower run {run_id} submitted; waiting for round 1")
        await self._watch(run_id)

    async def _start_tracking(self) -> None:
        if not (self.m.mlflow_url and self.token):
            self.job.warnings.append("no MLflow service or token: metrics are kept in the job only")
            return
        self.tracking = JobTracking(self.m.mlflow_url, self.token)
        job = self.job
        try:
            await self.tracking.start(
                job.experiment, job.name or f"federated {Path(job.app).name} {job.id}",
                params={"app": job.app_display, "sites": ",".join(job.sites), "rounds": job.rounds,
                        "strategy": job.strategy, "compression": json.dumps(job.compression),
                        "on_dropout": job.on_dropout,
                        **{f"run_config.{k}": v for k, v in job.run_config.items()}},
                tags={"fedhub.job_id": job.id, "fedhub.kind": "federated", "mlflow.user": job.owner})
        except (TrackingError, LookupError) as e:
            raise JobFailed(f"MLflow: could not start the job's run in experiment {job.experiment!r}: {e}")
        job.mlflow_run_id, job.mlflow_experiment_id = self.tracking.run_id, self.tracking.experiment_id
        self.event("mlflow", f"MLflow run {job.mlflow_run_id} in experiment {job.experiment!r}",
                   run_id=job.mlflow_run_id, experiment_id=job.mlflow_experiment_id)

    def _prepare_app(self) -> Path:
        dest = self.dir / "app"
        shutil.rmtree(dest, ignore_errors=True)
        codec = self.job.compression or {"codec": "none"}
        spec = {"compression": codec["codec"]}
        if codec["codec"] == "topk":
            spec.update(topk_fraction=codec["fraction"], topk_value_bits=codec["value_bits"])
        try:
            from .apps import prepare_app
        except ImportError:  # pragma: no cover - apps.py ships with the package
            prepare_app = None
        try:
            if prepare_app is not None:
                return Path(prepare_app(Path(self.job.app), dest, spec))
            shutil.copytree(self.job.app, dest, ignore=shutil.ignore_patterns(
                ".*", "__pycache__", "*.fab", "node_modules"))
            return dest
        except (OSError, ValueError) as e:
            raise JobFailed(f"could not prepare the app {self.job.app_display!r}: {e}")

    async def _start_superlink(self) -> None:
        host = self.m.superlink_host
        port = free_port(host)
        self.address = f"{host}:{port}"
        sl_dir = self.dir / "superlink"
        (sl_dir / "flwr").mkdir(parents=True, exist_ok=True)
        env = supernodes.child_env(sl_dir / "flwr", {"FEDHUB_FL_EVENTS": str(self.events_file)})
        with open(sl_dir / "superlink.log", "ab") as out:
            self.superlink = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).with_name("flower-superlink")), "--insecure", "--host", host,
                "--port", str(port), "--disable-runtime-dependency-installation",
                stdout=out, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
                env=env, cwd=str(sl_dir), start_new_session=True)
        self.job.superlink_pid = self.superlink.pid
        self.m.save(self.job)
        deadline = time.monotonic() + self.m.superlink_start_timeout
        while time.monotonic() < deadline:
            if self.superlink.returncode is not None:
                raise JobFailed(f"the SuperLink exited with code {self.superlink.returncode} while starting",
                                tail(sl_dir / "superlink.log"))
            try:
                with socket.create_connection((host, port), timeout=1):
                    break
            except OSError:
                await self._sleep(0.3)
        else:
            raise JobFailed(f"the SuperLink did not listen on {self.address} within "
                            f"{self.m.superlink_start_timeout:g}s", tail(sl_dir / "superlink.log"))
        self.control = ControlClient(self.address)
        self.event("superlink", f"SuperLink listening on {self.address}", address=self.address)

    @property
    def events_file(self) -> Path:
        return self.dir / "rounds.jsonl"

    async def _start_supernodes(self) -> None:
        offers = self.m.offers()
        n = len(self.job.sites)
        for i, site in enumerate(self.job.sites):
            self._check_cancel()
            offer = offers.get(site)
            if offer is None or not offer.allowed:
                raise JobFailed(f"site {site} is no longer offered for federated jobs: "
                                f"{offer.reason if offer else 'not in the catalogue'}")
            config = supernodes.node_config(i, n, site, offer.data_path, self.job.data_paths.get(site))
            node_dir = self.dir / "nodes" / site
            try:
                if offer.kind == "local":
                    handle = await supernodes.start_local(site, self.address, config, node_dir)
                    detail = f"process {handle.pid}"
                elif offer.kind == "slurm":
                    handle = await supernodes.start_slurm(site, offer.options, self.job.id, self.address,
                                                          config, node_dir)
                    detail = f"Slurm job {handle.slurm_job_id} submitted"
                else:
                    raise supernodes.LaunchError(f"{offer.kind} sites cannot run SuperNodes from this hub")
            except (supernodes.LaunchError, OSError, ValueError) as e:
                raise JobFailed(f"could not start the SuperNode of site {site}: {e}")
            self.handles.append(handle)
            self.job.supernodes = [h.to_dict() for h in self.handles]
            self.m.save(self.job)
            self.set_site(site, "starting", detail)

    async def _alive(self, handle: supernodes.SuperNodeHandle) -> tuple[bool, str]:
        if handle.kind == "local":
            if supernodes.pid_alive(handle.pid):
                return True, ""
            proc = handle.extra.get("proc")
            code = proc.returncode if proc is not None else None
            return False, f"process {handle.pid} exited" + (f" with code {code}" if code is not None else "")
        state = await supernodes.slurm_state(handle)
        if state in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "?"):
            handle.extra["slurm_state"] = state
            return True, ""
        return False, f"Slurm job {handle.slurm_job_id} ended" + (f" ({state})" if state else "")

    async def _wait_for_supernodes(self, tracking: asyncio.Future | None = None) -> None:
        deadline = time.monotonic() + self.m.supernode_start_timeout
        joined: set[str] = set()
        while len(joined) < len(self.handles):
            if tracking is not None and tracking.done() and tracking.exception() is not None:
                raise tracking.exception()  # MLflow refused the run: no point in going on
            for h in self.handles:
                if h.site in joined:
                    continue
                text = tail(h.log_path, 200)
                m = _NODE_ID.search(text)
                if m:
                    joined.add(h.site)
                    self.node_sites[m.group(1)] = h.site
                    self.set_site(h.site, "connected", f"node {m.group(1)}")
                    continue
                alive, why = await self._alive(h)
                if not alive:
                    self.set_site(h.site, "failed", why)
                    raise JobFailed(f"the SuperNode of site {h.site} stopped before joining: {why}",
                                    tail(h.log_path))
                if h.kind == "slurm" and h.extra.get("slurm_state") == "PENDING":
                    detail = f"Slurm job {h.slurm_job_id} pending"
                    if self.job.site_status[h.site].get("detail") != detail:
                        self.set_site(h.site, "starting", detail)
            if time.monotonic() > deadline:
                missing = [h.site for h in self.handles if h.site not in joined]
                raise JobFailed(f"SuperNodes of {', '.join(missing)} did not join within "
                                f"{self.m.supernode_start_timeout:g}s",
                                "\n".join(tail(h.log_path, 15) for h in self.handles if h.site in missing))
            if self.superlink.returncode is not None:
                raise JobFailed("the SuperLink exited while SuperNodes were joining",
                                tail(self.dir / "superlink" / "superlink.log"))
            if len(joined) < len(self.handles):
                await self._sleep(0.5)

    async def _submit(self, app_dir: Path) -> int:
        cli_home = self.dir / "cli" / "flwr"
        cli_home.mkdir(parents=True, exist_ok=True)
        (cli_home / "config.toml").write_text(cli_config_toml(self.address))
        overrides = dict(self.job.run_config)
        keys = app_config_keys(app_dir)
        if "strategy" in keys:  # apps that let the caller pick their strategy declare this key
            overrides["strategy"] = self.job.strategy
        if "num-server-rounds" in keys:
            overrides["num-server-rounds"] = self.job.rounds
        else:
            self.job.warnings.append("the app has no num-server-rounds config key; it decides its rounds")
        args = [str(Path(sys.executable).with_name("flwr")), "run", str(app_dir), "fedhub", "--format", "json"]
        if overrides:
            args += ["--run-config", run_config_arg(overrides)]
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL, env=supernodes.child_env(cli_home), cwd=str(self.dir))
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 180)
        except asyncio.TimeoutError:
            proc.kill()
            raise JobFailed("flwr run did not answer within 180s")
        text = _ANSI.sub("", out.decode(errors="replace"))
        try:
            result = json.loads(text[text.index("{"):])
        except ValueError:
            result = {}
        if proc.returncode != 0 or not result.get("success") or "run-id" not in result:
            reason = result.get("error-message") or "\n".join(text.strip().splitlines()[-15:])
            raise JobFailed(f"flwr run failed: {reason}", text[-4000:])
        self.job.flower_run_id = str(result["run-id"])
        self.m.save(self.job)
        return int(result["run-id"])

    # ---------------------------------------------------------------- watching
    async def _watch(self, run_id: int) -> None:
        last_status = 0.0
        while True:
            await self._read_round_events(run_id)
            if self.superlink.returncode is not None:
                raise JobFailed(f"the SuperLink exited with code {self.superlink.returncode}",
                                tail(self.dir / "superlink" / "superlink.log"))
            await self._check_supernodes()
            interval = 0.5 if self._ended else self.m.status_interval
            if time.monotonic() - last_status >= interval:
                last_status = time.monotonic()
                status = await self._status(run_id)
                if status is not None and status.status == "finished":
                    await self._read_round_events(run_id, final=True)
                    self.job.bytes = {"inbound": status.bytes_in, "outbound": status.bytes_out,
                                      "total": status.total_bytes}
                    self.job.flower_times = {"running_at": status.running_at, "finished_at": status.finished_at}
                    if status.sub_status == "completed":
                        return
                    if status.sub_status == "stopped":
                        raise JobCancelled(self.cancel_reason or "the Flower run was stopped")
                    raise JobFailed(f"the ServerApp failed: {status.details or status.text}",
                                    await self._serverapp_log(run_id))
            await self._sleep(0.5 if self._ended else 1.0)

    async def _status(self, run_id: int):
        try:
            return await self.control.status(run_id)
        except Exception as e:  # the SuperLink is busy or restarting: try again next tick
            log.debug("status of run %s: %s", run_id, e)
            return None

    async def _check_supernodes(self) -> None:
        now = time.monotonic()
        for h in self.handles:
            if h.site in self.lost:
                continue
            if h.kind == "slurm" and now - h.extra.get("checked", 0) < 3:
                continue  # squeue every few seconds, not every tick
            h.extra["checked"] = now
            alive, why = await self._alive(h)
            if alive:
                continue
            self.lost.add(h.site)
            self.set_site(h.site, "lost", why)
            self.event("error", f"The SuperNode of {h.site} stopped during the run: {why}", site=h.site,
                       log_tail=tail(h.log_path, 20))
            if self.job.on_dropout == "fail":
                raise JobFailed(f"the SuperNode of site {h.site} stopped during the run ({why}) and "
                                "on_dropout is 'fail'", tail(h.log_path))
            remaining = [s for s in self.job.sites if s not in self.lost]
            if not remaining:
                raise JobFailed(f"every SuperNode stopped; the last was {h.site} ({why})", tail(h.log_path))
            warning = f"{h.site} dropped out; continuing with {', '.join(remaining)} (on_dropout: continue)"
            self.job.warnings.append(warning)
            self.event("warning", warning, site=h.site)
            self.m.save(self.job)

    async def _read_round_events(self, run_id: int, final: bool = False) -> None:
        try:
            with open(self.events_file) as f:
                f.seek(self._events_pos)
                chunk = f.read()
        except FileNotFoundError:
            return
        complete = chunk[:chunk.rfind("\n") + 1]  # a line still being written waits for the next tick
        self._events_pos += len(complete.encode())
        for line in complete.splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if isinstance(ev, dict):
                await self._on_app_event(ev, run_id)

    async def _on_app_event(self, ev: dict, run_id: int) -> None:
        """One line of the shim's events (see shim.py): start, round (per phase), end."""
        kind = ev.get("event")
        if kind == "end":
            for rnd in sorted(self._pending_rounds):
                await self._round_done(rnd, run_id)
            self._ended = True  # the ServerApp returned: Flower reports the run finished shortly
            return
        rnd = ev.get("round")
        if kind != "round" or not isinstance(rnd, int) or rnd < 1 or ev.get("phase") not in PHASE_PREFIX:
            return  # round 0 is the initial model's evaluation
        for earlier in [r for r in sorted(self._pending_rounds) if r < rnd]:
            await self._round_done(earlier, run_id)  # a later round began: the earlier one is over
        record = self._pending_rounds.setdefault(rnd, {"round": rnd, "metrics": {}, "nodes": {},
                                                       "payload_bytes": 0, "failures": 0})
        record["metrics"].update(round_metrics(ev))
        phase = PHASE_PREFIX[ev["phase"]]
        record["payload_bytes"] += int(ev.get("bytes_sent") or 0) + int(ev.get("bytes_received") or 0)
        record["failures"] += int(ev.get("failures") or 0)
        for node in ev.get("nodes") or []:
            if not isinstance(node, dict):
                continue
            site = self.node_sites.get(str(node.get("node_id")), str(node.get("node_id")))
            entry = record["nodes"].setdefault(site, {})
            if node.get("error"):
                entry[f"{phase}_error"] = str(node["error"])
            for k, v in (node.get("metrics") or {}).items():
                if k != "num-examples" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    entry[f"{phase}_{k}"] = v
        if ev["phase"] == "server-evaluate":  # the strategy's last step of a round
            await self._round_done(rnd, run_id)

    async def _round_done(self, rnd: int, run_id: int) -> None:
        record = self._pending_rounds.pop(rnd, None)
        if record is None or any(r["round"] == rnd for r in self.job.round_metrics):
            return
        status = await self._status(run_id)
        if status is not None:
            record["bytes_total"] = status.total_bytes
            record["bytes_round"] = status.total_bytes - self._last_total
            self._last_total = status.total_bytes
            self.job.bytes = {"inbound": status.bytes_in, "outbound": status.bytes_out,
                              "total": status.total_bytes}
        record["time"] = time.time()
        self.job.round_metrics.append(record)
        for site, s in self.job.site_status.items():
            if s.get("state") == "connected" and site not in self.lost:
                s["state"] = "training"
        metrics = dict(record["metrics"])
        metrics["payload_bytes"] = record["payload_bytes"]
        if "bytes_round" in record:
            metrics["bytes_round"] = record["bytes_round"]
            metrics["bytes_total"] = record["bytes_total"]
        if self.tracking and self.tracking.run_id:
            try:
                await self.tracking.log_round(rnd, metrics)
            except (TrackingError, LookupError) as e:
                if not any(w.startswith("MLflow:") for w in self.job.warnings):
                    self.job.warnings.append(f"MLflow: round metrics not logged: {e}")
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(record["metrics"].items())[:6])
        bytes_text = f", {record['bytes_round']:,} B this round" if "bytes_round" in record else ""
        self.event("round", f"Round {rnd}/{self.job.rounds}: {shown}{bytes_text}", round=rnd,
                   metrics=record["metrics"], nodes=record["nodes"], bytes_round=record.get("bytes_round"),
                   bytes_total=record.get("bytes_total"))

    async def _serverapp_log(self, run_id: int) -> str:
        """The ServerApp's own log (its traceback), from `flwr log`."""
        cli_home = self.dir / "cli" / "flwr"
        try:
            proc = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).with_name("flwr")), "log", str(run_id), "fedhub", "--show",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
                env=supernodes.child_env(cli_home), cwd=str(self.dir))
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
        except (asyncio.TimeoutError, OSError):
            return tail(self.dir / "superlink" / "superlink.log")
        return "\n".join(_ANSI.sub("", out.decode(errors="replace")).splitlines()[-40:])

    # ---------------------------------------------------------------- clean-up
    async def _stop_everything(self) -> None:
        if self.job.flower_run_id and self.control is not None and self.superlink is not None \
                and self.superlink.returncode is None:
            status = await self._status(int(self.job.flower_run_id))
            if status is not None:  # the traffic so far, also for a job that did not finish
                self.job.bytes = {"inbound": status.bytes_in, "outbound": status.bytes_out,
                                  "total": status.total_bytes}
            if status is not None and status.status != "finished":
                try:
                    await asyncio.wait_for(self.control.stop(int(self.job.flower_run_id)), 10)
                except Exception as e:  # stopping the processes below ends the run anyway
                    log.info("flwr stop %s: %s", self.job.flower_run_id, e)
        await asyncio.gather(*(supernodes.stop(h) for h in self.handles), return_exceptions=True)
        for h in self.handles:
            if h.site not in self.lost and self.job.site_status.get(h.site, {}).get("state") not in ("failed",):
                self.job.site_status[h.site] = {"state": "stopped", "detail": ""}
        if self.superlink is not None:
            await supernodes.stop_tree(self.superlink.pid, supernodes.descendants(self.superlink.pid))
            if self.superlink.returncode is None:
                await self.superlink.wait()
        # leftovers (children of a SuperNode that died) are found by their FLWR_HOME in the job's folder
        loop = asyncio.get_running_loop()
        strays = await loop.run_in_executor(None, supernodes.processes_under, self.dir)
        if strays:
            await supernodes.stop_tree(None, strays, grace=3)
        # Slurm: wait until the cancelled jobs are gone, so "cancelled" means nothing runs
        for h in self.handles:
            if h.kind == "slurm":
                for _ in range(30):
                    if await supernodes.slurm_state(h) in ("", "?"):
                        break
                    await asyncio.sleep(0.5)
        self.m.save(self.job)
