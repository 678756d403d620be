"""Import the state files of fedhub before the state database (the upgrade users hit).

Earlier versions kept, under the API service's state dir:

    jobs/<id>/job.json, jobs/<id>/events.jsonl      federated jobs and their events
    deployments/<id>.json, edge/devices.json        deployments, edge devices
    ledger.jsonl, ledger-head.json                  the provenance ledger and its signed head

On the first start with a state database each file is copied in, then renamed with an
`.imported` suffix (kept, not deleted: the operator's backup of the previous version).
Importing is idempotent (rows already present are left as they are), so a crash between
the commit and the renames only repeats harmless work on the next start.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from sqlalchemy import func, select

from ..ledger import RECORD_FIELDS
from .models import DeploymentRow, EdgeDeviceRow, JobEventRow, JobRow, LedgerHeadRow, LedgerRecordRow

log = logging.getLogger("fedhub.statedb")
SUFFIX = ".imported"


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _jsonl(path: Path, stop_at_damage: bool) -> list:
    """The parseable lines. `stop_at_damage`: a broken line ends the log (a line cut short by
    a crash ended the old event logs); else it is skipped (the ledger: verify() reports the gap)."""
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            if stop_at_damage:
                break
    return out


def legacy_files(state_dir: str | Path) -> list[Path]:
    d = Path(state_dir)
    found = [*sorted(d.glob("jobs/*/job.json")), *sorted(d.glob("jobs/*/events.jsonl")),
             *sorted(d.glob("deployments/*.json")), d / "edge" / "devices.json", d / "ledger.jsonl",
             d / "ledger-head.json"]
    return [p for p in found if p.is_file()]


def import_legacy_files(db, state_dir: str | Path) -> dict[str, int]:
    """Copy an earlier version's state files into the database; returns counts per kind."""
    files = legacy_files(state_dir)
    counts = {"jobs": 0, "events": 0, "deployments": 0, "devices": 0, "ledger": 0}
    if not files:
        return counts
    d = Path(state_dir)
    done: list[Path] = []
    with db.writing() as s:
        for path in (p for p in files if p.name == "job.json"):
            doc = _json(path)
            if isinstance(doc, dict) and doc.get("id") == path.parent.name:
                if s.get(JobRow, doc["id"]) is None:
                    s.add(JobRow.of(doc))
                    counts["jobs"] += 1
                done.append(path)
        for path in (p for p in files if p.name == "events.jsonl"):
            job_id = path.parent.name
            have = s.scalar(select(func.count()).select_from(JobEventRow).where(JobEventRow.job_id == job_id))
            if not have:
                for i, ev in enumerate(e for e in _jsonl(path, stop_at_damage=True) if isinstance(e, dict)):
                    s.add(JobEventRow(job_id=job_id, seq=i + 1, document={**ev, "seq": i + 1}))
                    counts["events"] += 1
            done.append(path)
        for path in (p for p in files if p.parent.name == "deployments"):
            doc = _json(path)
            if isinstance(doc, dict) and doc.get("id") == path.stem:
                if s.get(DeploymentRow, doc["id"]) is None:
                    s.add(DeploymentRow.of(doc))
                    counts["deployments"] += 1
                done.append(path)
        devices_file = d / "edge" / "devices.json"
        if devices_file in files:
            devices = _json(devices_file)
            for device_id, doc in (devices.items() if isinstance(devices, dict) else ()):
                if isinstance(doc, dict) and s.get(EdgeDeviceRow, device_id) is None:
                    s.add(EdgeDeviceRow.of(device_id, doc))
                    counts["devices"] += 1
            done.append(devices_file)
        counts["ledger"] = _import_ledger(s, d, files, done)
    for path in done:
        path.rename(path.with_name(path.name + SUFFIX))
    if any(counts.values()):
        log.info("imported the state files of an earlier fedhub version from %s: %s", d, counts)
    return counts


def _import_ledger(s, d: Path, files: list[Path], done: list[Path]) -> int:
    ledger_file, head_file = d / "ledger.jsonl", d / "ledger-head.json"
    if ledger_file not in files:
        return 0
    records = [r for r in _jsonl(ledger_file, stop_at_damage=False) if isinstance(r, dict)]
    existing = s.scalar(select(func.count()).select_from(LedgerRecordRow))
    if existing:
        known = set(s.scalars(select(LedgerRecordRow.hash)))
        if all(r.get("hash") in known for r in records):
            done.extend(p for p in (ledger_file, head_file) if p in files)
        else:  # two different ledgers: keep the file for the operator, import nothing
            log.warning("%s: not imported, the state database already holds another ledger", ledger_file)
        return 0
    n, seen = 0, set()
    for rec in records:
        row = _ledger_row(rec)
        if row is None or row.seq in seen or row.hash in seen:
            # a damaged or duplicated line: left out, so verify() reports the gap it leaves
            log.warning("%s: record %r not imported (damaged or duplicated)", ledger_file, rec.get("seq"))
            continue
        seen.update((row.seq, row.hash))
        s.add(row)  # copied as signed: verify() judges it exactly as it judged the file
        n += 1
    head = _json(head_file) if head_file in files else None
    if isinstance(head, dict):
        row = s.get(LedgerHeadRow, 1)
        row.seq, row.hash, row.sig = int(head.get("seq", -1)), str(head.get("hash", "")), str(head.get("sig", ""))
    done.extend(p for p in (ledger_file, head_file) if p in files)
    s.flush()
    return n


def _ledger_row(rec: dict) -> LedgerRecordRow | None:
    types = {"seq": int, "time": (int, float), "kind": str, "subject": str, "who": str, "body": dict,
             "parents": list, "prev": str, "key_id": str, "hash": str, "sig": str}
    if any(not isinstance(rec.get(k), t) or isinstance(rec.get(k), bool) for k, t in types.items()):
        return None
    return LedgerRecordRow(**{k: rec[k] for k in RECORD_FIELDS})
