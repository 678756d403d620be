"""Federated jobs: records and events in the state database, work files on disk.

    database   jobs (one row per Job, its document in JSON) and job_events (seq 1, 2, ...;
               the seq is the readers' cursor), fedhub.hub.statedb
    jobs/<id>/ the prepared app, SuperLink and SuperNode homes, logs and the job's token
               (0600): files the job's processes use stay files

A restart reads the rows back as they were; the database may be SQLite in the state dir
(default) or PostgreSQL (`fedhub up --state-db-url`).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from sqlalchemy import func, select

from ..statedb import StateDB, open_state_db
from ..statedb.models import JobEventRow, JobRow
from .jobs import FINAL_STATES, Job

log = logging.getLogger("fedhub.federation")


class JobStore:
    def __init__(self, root: str | Path, db: StateDB | None = None):
        """`root`: the folder of the jobs' work dirs (<state dir>/jobs); `db`: the state
        database (default: the state dir's, see fedhub.hub.statedb.open_state_db)."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.db = db or open_state_db(self.root.parent)

    def job_dir(self, job_id: str) -> Path:
        return self.root / job_id

    def save(self, job: Job) -> None:
        with self.db.writing() as s:
            s.merge(JobRow.of(job.to_dict()))

    def load_all(self) -> list[Job]:
        """Every job, oldest first."""
        jobs = []
        with self.db.reading() as s:
            docs = s.scalars(select(JobRow.document).order_by(JobRow.created, JobRow.id)).all()
        for doc in docs:
            try:
                jobs.append(Job.from_dict(doc))
            except (TypeError, ValueError, AttributeError) as e:  # a row another version wrote
                log.warning("federated jobs: skipping an unreadable job row: %s", e)
        return jobs

    def unfinished_ids(self) -> list[str]:
        """Jobs not in a final state (a restart settles them), from the indexed state column."""
        with self.db.reading() as s:
            return list(s.scalars(select(JobRow.id).where(JobRow.state.not_in(FINAL_STATES))
                                  .order_by(JobRow.created)))

    def events(self, job_id: str) -> list[dict]:
        return self.events_after(job_id, 0)

    def append_event(self, job_id: str, event: dict) -> dict:
        with self.db.writing() as s:
            last = s.scalar(select(func.max(JobEventRow.seq)).where(JobEventRow.job_id == job_id)) or 0
            event = {"seq": last + 1, **{k: v for k, v in event.items() if k != "seq"}}
            s.add(JobEventRow(job_id=job_id, seq=event["seq"], document=event))
        return event

    def events_after(self, job_id: str, after: int) -> list[dict]:
        with self.db.reading() as s:
            return list(s.scalars(select(JobEventRow.document)
                                  .where(JobEventRow.job_id == job_id, JobEventRow.seq > max(0, int(after)))
                                  .order_by(JobEventRow.seq)))

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

    def remove_workdirs(self, job_id: str) -> None:
        """Free the space of a finished job's app copy and Flower state; logs stay."""
        d = self.job_dir(job_id)
        for sub in ("app", "superlink/flwr"):
            shutil.rmtree(d / sub, ignore_errors=True)
