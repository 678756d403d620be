"""Usage accounting: CPU-hours and GPU-hours per user and per site.

The hub's federation publishes every session with its allocation (site, cpus, gpu_ids,
``since``) in the inventory snapshot and rewrites the snapshot the moment it releases one.
The API service watches that snapshot (``UsageRecorder.poll``) and persists each session
as an interval in ``usage.jsonl``: a ``start`` line when it first runs, an ``end`` line
stamped with the snapshot's own ``updated`` time when it is gone, so an interval ends when
the hub released the session, not when we happened to look. ``summarise`` is pure.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

USAGE_FILE = "usage.jsonl"


@dataclass
class Interval:
    subject: str
    user: str
    site: str
    cpus: float
    gpus: int
    gpu_type: str | None
    start: float
    end: float | None = None  # None: still running

    def seconds(self, now: float) -> float:
        return max(0.0, (self.end if self.end is not None else now) - self.start)


def subject_of(session: dict) -> str:
    """One session start: the same server restarted later is a new interval."""
    return f"{session['user']}/{session.get('server_name', '')}@{float(session.get('since', 0)):.3f}"


def interval_from_session(session: dict) -> Interval:
    return Interval(subject=subject_of(session), user=session["user"], site=str(session.get("site", "")),
                    cpus=float(session.get("cpus") or 0), gpus=len(session.get("gpu_ids") or []),
                    gpu_type=session.get("gpu_type"), start=float(session.get("since") or time.time()))


def summarise(intervals: list[Interval], now: float, user: str | None = None) -> dict:
    """Per-user, per-site CPU-hours and GPU-hours (open intervals count up to ``now``)."""
    users: dict[str, dict] = {}
    for iv in intervals:
        if user is not None and iv.user != user:
            continue
        secs = iv.seconds(now)
        u = users.setdefault(iv.user, {"cpu_hours": 0.0, "gpu_hours": 0.0, "sessions": 0, "sites": {}})
        s = u["sites"].setdefault(iv.site, {"cpu_hours": 0.0, "gpu_hours": 0.0, "sessions": 0})
        for bucket in (u, s):
            bucket["cpu_hours"] += iv.cpus * secs / 3600
            bucket["gpu_hours"] += iv.gpus * secs / 3600
            bucket["sessions"] += 1
    return {"as_of": now, "users": users,
            "intervals": [{**asdict(iv), "seconds": iv.seconds(now)} for iv in intervals
                          if user is None or iv.user == user]}


class UsageBook:
    """The persisted intervals: an append-only JSON-lines file (one line per start or end)."""

    def __init__(self, state_dir: str | Path):
        self.path = Path(state_dir) / USAGE_FILE

    def intervals(self) -> list[Interval]:
        found: dict[str, Interval] = {}
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a torn last line after a crash: the interval is re-opened by the next poll
            if rec.get("event") == "start":
                found[rec["subject"]] = Interval(**rec["interval"])
            elif rec.get("event") == "end" and rec.get("subject") in found:
                found[rec["subject"]].end = rec["end"]
        return list(found.values())

    def _append(self, rec: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")

    def open(self, iv: Interval) -> None:
        self._append({"event": "start", "subject": iv.subject, "interval": asdict(iv)})

    def close(self, subject: str, end: float) -> None:
        self._append({"event": "end", "subject": subject, "end": end})


class UsageRecorder:
    """Turns the hub's inventory snapshot into persisted intervals."""

    def __init__(self, store, book: UsageBook, log=None):
        self.store, self.book, self.log = store, book, log
        self._open: dict[str, Interval] | None = None

    def poll(self) -> int:
        """Open intervals for new running sessions, close those gone; returns lines written."""
        if self._open is None:
            self._open = {iv.subject: iv for iv in self.book.intervals() if iv.end is None}
        snap = self.store.read()
        live = {subject_of(s): s for s in snap.get("sessions", [])
                if s.get("status") == "running" and "user" in s}
        written = 0
        try:
            for subject, s in live.items():
                if subject not in self._open:
                    iv = interval_from_session(s)
                    self.book.open(iv)
                    self._open[subject] = iv
                    written += 1
            # the federation stamps each release; older hubs only say when the snapshot was written
            ended = {subject_of(r): float(r["ended"]) for r in snap.get("released", []) if "ended" in r}
            ended_at = float(snap.get("updated") or time.time())
            for subject in [k for k in self._open if k not in live]:
                self.book.close(subject, ended.get(subject, ended_at))
                del self._open[subject]
                written += 1
        except OSError as e:  # a full disk must not stop the API service
            if self.log:
                self.log.warning("usage: could not record intervals: %s", e)
        return written
