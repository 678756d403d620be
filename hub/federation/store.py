"""Federated jobs on disk: one folder per job under the API service's state dir.

    jobs/<id>/job.json      the Job record, replaced atomically on every change
    jobs/<id>/events.jsonl  progress events, appended (the cursor is the line number)
    jobs/<id>/...           the prepared app, SuperLink and SuperNode homes and logs

Plain files: a job is inspectable with `cat`, and a restart reads them back as they were.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .jobs import Job


class JobStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._events: dict[str, list[dict]] = {}

    def job_dir(self, job_id: str) -> Path:
        return self.root / job_id

    def save(self, job: Job) -> None:
        d = self.job_dir(job.id)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / "job.json.tmp"
        tmp.write_text(json.dumps(job.to_dict(), indent=1))
        os.replace(tmp, d / "job.json")

    def load_all(self) -> list[Job]:
        jobs = []
        for path in sorted(self.root.glob("*/job.json")):
            try:
                jobs.append(Job.from_dict(json.loads(path.read_text())))
            except (OSError, ValueError, TypeError):
                continue  # a half-written or foreign file is not a job
        return jobs

    def events(self, job_id: str) -> list[dict]:
        if job_id not in self._events:
            events = []
            try:
                with open(self.job_dir(job_id) / "events.jsonl") as f:
                    for line in f:
                        try:
                            events.append(json.loads(line))
                        except ValueError:
                            break  # a line cut short by a crash ends the log
            except FileNotFoundError:
                pass
            self._events[job_id] = events
        return self._events[job_id]

    def append_event(self, job_id: str, event: dict) -> dict:
        events = self.events(job_id)
        event = {"seq": len(events) + 1, **event}
        self.job_dir(job_id).mkdir(parents=True, exist_ok=True)
        with open(self.job_dir(job_id) / "events.jsonl", "a") as f:
            f.write(json.dumps(event) + "\n")
        events.append(event)
        return event

    def events_after(self, job_id: str, after: int) -> list[dict]:
        return self.events(job_id)[max(0, after):]

    def secret_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "token"

    def write_secret(self, job_id: str, token: str) -> None:
        path = self.secret_path(job_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)

    def read_secret(self, job_id: str) -> str:
        try:
            return self.secret_path(job_id).read_text().strip()
        except FileNotFoundError:
            return ""

    def drop_secret(self, job_id: str) -> None:
        self.secret_path(job_id).unlink(missing_ok=True)

    def remove_workdirs(self, job_id: str, keep=("job.json", "events.jsonl")) -> None:
        """Free the space of a finished job's app copy and Flower state; logs stay."""
        d = self.job_dir(job_id)
        for sub in ("app", "superlink/flwr"):
            shutil.rmtree(d / sub, ignore_errors=True)
