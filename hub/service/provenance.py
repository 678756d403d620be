"""Provenance routes: the caller's ledger records, the chain to verify, PROV JSON-LD.

GET  /api/provenance             the caller's records (admins: everyone's); ?kind= ?subject=
POST /api/provenance             append a `run` record for the caller (sessions' capture does)
GET  /api/provenance/chain       everything needed to verify the ledger offline
GET  /api/provenance/verify      the hub's own verification of the whole ledger
GET  /api/provenance/{ref}       one record (hash or 8+ character prefix); ?format=prov
"""

from __future__ import annotations

import json

from tornado import web

from ..ledger import KINDS, Ledger, LedgerError, to_prov_jsonld
from .base import APIError, FedhubAPIHandler

READ, WRITE = "custom:fedhub:provenance:read", "custom:fedhub:provenance:write"
MAX_BODY_BYTES = 256 * 1024


def ledger_of(settings) -> Ledger:
    if settings.get("fedhub_ledger") is None:
        settings["fedhub_ledger"] = Ledger(settings["fedhub_state_dir"], db=settings.get("fedhub_state_db"))
    return settings["fedhub_ledger"]


class _Provenance(FedhubAPIHandler):
    required_scope = READ

    @property
    def ledger(self) -> Ledger:
        return ledger_of(self.settings)

    @property
    def is_admin(self) -> bool:
        return bool(self.current_user.get("admin"))

    def visible(self, rec: dict) -> bool:
        return self.is_admin or rec.get("who") == self.current_user["name"]


class ProvenanceHandler(_Provenance):
    verb_scopes = {"post": WRITE}

    @web.authenticated
    def get(self):
        kind = self.get_argument("kind", "")
        if kind and kind not in KINDS:
            raise APIError(400, f"kind: expected one of {list(KINDS)}, got {kind!r}")
        subject = self.get_argument("subject", "")
        recs = [r for r in self.ledger.records(kind=kind or None, subject=subject or None) if self.visible(r)]
        self.write_json({"records": recs})

    @web.authenticated
    def post(self):
        if len(self.request.body) > MAX_BODY_BYTES:
            raise APIError(413, f"record too large: at most {MAX_BODY_BYTES} bytes")
        try:
            data = json.loads(self.request.body or b"{}")
        except ValueError:
            raise APIError(400, "body: expected a JSON object")
        if not isinstance(data, dict):
            raise APIError(400, "body: expected a JSON object")
        # users record their runs; sessions, jobs and deployments are recorded by the hub itself
        if data.get("kind", "run") != "run":
            raise APIError(400, "kind: only 'run' records are appended through the API")
        body, parents = data.get("body", {}), data.get("parents", [])
        if not isinstance(body, dict):
            raise APIError(400, "body.body: expected a JSON object")
        if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
            raise APIError(400, "body.parents: expected a list of record hashes")
        try:
            rec = self.ledger.append("run", str(data.get("subject", "")), self.current_user["name"],
                                     body, parents)
        except LedgerError as e:
            raise APIError(400, str(e))
        self.write_json(rec, status=201)


class ProvenanceChainHandler(_Provenance):
    @web.authenticated
    def get(self):
        self.write_json(self.ledger.chain(self.current_user["name"], admin=self.is_admin))


class ProvenanceVerifyHandler(_Provenance):
    @web.authenticated
    def get(self):
        problems = self.ledger.verify()
        self.write_json({"ok": not problems, "records": len(self.ledger.records()),
                         "problems": [p.to_dict() for p in problems]})


class ProvenanceRecordHandler(_Provenance):
    def lineage(self, rec: dict) -> list[dict]:
        """The record and the ancestors the caller may see, for a self-contained export."""
        by_hash = {r.get("hash"): r for r in self.ledger.records() if self.visible(r)}
        out, todo, seen = [], [rec], set()
        while todo:
            r = todo.pop()
            if r["hash"] in seen:
                continue
            seen.add(r["hash"])
            out.append(r)
            todo.extend(by_hash[p] for p in r.get("parents", []) if p in by_hash)
        return sorted(out, key=lambda r: r["seq"])

    @web.authenticated
    def get(self, ref):
        rec = self.ledger.find(ref)
        if rec is None or not self.visible(rec):
            raise APIError(404, f"No provenance record {ref!r} of yours")
        fmt = self.get_argument("format", "json")
        if fmt == "prov":
            self.set_header("Content-Type", "application/ld+json")
            self.finish(json.dumps(to_prov_jsonld(self.lineage(rec))))
        elif fmt == "json":
            self.write_json(rec)
        else:
            raise APIError(400, f"format: expected 'json' or 'prov', got {fmt!r}")


class SessionRecorder:
    """Appends a `session` record for each session the hub reports running.

    The hub's federation publishes sessions in the inventory snapshot; watching it here
    keeps the spawner free of the ledger (it may import only pure catalogue models)."""

    def __init__(self, store, ledger: Ledger, log=None):
        self.store, self.ledger, self.log = store, ledger, log
        self._seen: set[str] | None = None

    @staticmethod
    def subject(session: dict) -> str:
        return f"{session['user']}/{session.get('server_name', '')}@{session.get('since', 0):.3f}"

    def poll(self) -> int:
        """Record sessions not recorded yet; returns how many were appended."""
        if self._seen is None:  # lazily, once: the (kind, subject) index answers it
            self._seen = self.ledger.subjects("session")
        added = 0
        for s in self.store.read().get("sessions", []):
            if s.get("status") != "running" or "user" not in s:
                continue
            subject = self.subject(s)
            if subject in self._seen:
                continue
            body = {k: s.get(k) for k in ("site", "node", "cpus", "memory", "gpu_type", "gpu_ids",
                                          "session_type", "reason", "since")}
            try:
                self.ledger.append("session", subject, s["user"], body)
            except (LedgerError, OSError) as e:
                if self.log:
                    self.log.warning("provenance: could not record session %s: %s", subject, e)
                continue
            self._seen.add(subject)
            added += 1
        return added
