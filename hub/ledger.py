"""The provenance ledger: append-only, hash-chained, signed records.

Every session, run, federated job and deployment appends one record: who, what
(code + commit, environment, image, data checksums, site, hardware), its parent
records. Each record carries the hash of the record before it (``prev``), its own
hash over its canonical JSON, and an Ed25519 signature of that hash with the hub's
key. A signed *head* (last seq + hash) is rewritten on every append, so cutting
records off the end is caught too.

Records and the head are rows of the state database (fedhub.hub.statedb: SQLite in the
state dir, or PostgreSQL); appends from several processes are serialised by locking the
head row for the whole append, so the chain never forks. The signing key stays a file.
`verify()` is a pure function over the records, the head and the public key: anyone
holding an export can check it without the hub.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

GENESIS = "0" * 64
KINDS = ("session", "run", "job", "deployment")
# fields that the hash covers; `hash` and `sig` are computed over these
HASHED_FIELDS = ("seq", "time", "kind", "subject", "who", "body", "parents", "prev", "key_id")
# fields anyone may see of anyone's record: enough to check the chain and signatures
SKELETON_FIELDS = ("seq", "prev", "hash", "sig", "key_id", "kind")


class LedgerError(ValueError):
    """A record that cannot be appended (bad kind, body not JSON, unknown parent)."""


def canonical(data) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(record: dict) -> str:
    return hashlib.sha256(canonical({k: record.get(k) for k in HASHED_FIELDS})).hexdigest()


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def load_public_key(pem: str) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem.encode())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The hub's signing key, created on first use and kept (0600) beside the ledger."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    os.replace(tmp, path)
    return key


def sign(key: Ed25519PrivateKey, digest_hex: str) -> str:
    return base64.b64encode(key.sign(bytes.fromhex(digest_hex))).decode()


def signature_ok(public_key: Ed25519PublicKey, digest_hex: str, sig: str) -> bool:
    try:
        public_key.verify(base64.b64decode(sig), bytes.fromhex(digest_hex))
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def head_digest(seq: int, last_hash: str) -> str:
    return hashlib.sha256(canonical({"head": seq, "hash": last_hash})).hexdigest()


# ---------------------------------------------------------------- verification (pure)

@dataclass
class Problem:
    seq: int | None
    kind: str  # altered | removed | reordered | signature | head
    message: str

    def to_dict(self) -> dict:
        return {"seq": self.seq, "kind": self.kind, "message": self.message}


def verify(records: list[dict], public_key: Ed25519PublicKey, head: dict | None = None) -> list[Problem]:
    """Every way the records differ from what the hub signed. Records without a `body`
    (another user's, seen as a skeleton) are checked for chain and signature only.

    Order, gaps and links are judged separately, so one removed record reads as
    "removed" (not also as a broken link) and one swapped pair as "reordered"."""
    problems: list[Problem] = []
    numbered = [r for r in records if isinstance(r.get("seq"), int)]
    for i, rec in enumerate(records):
        if not isinstance(rec.get("seq"), int):
            problems.append(Problem(None, "altered", f"line {i + 1} is not a ledger record"))
    for a, b in zip(numbered, numbered[1:]):
        if b["seq"] <= a["seq"]:
            problems.append(Problem(b["seq"], "reordered",
                                    f"record {b['seq']} is stored after record {a['seq']}: out of order"))
    present = {r["seq"] for r in numbered}
    top = max(present, default=-1)
    missing = sorted(set(range(top + 1)) - present)
    for seq in missing:
        problems.append(Problem(seq, "removed", f"record {seq} is missing"))
    by_seq = {r["seq"]: r for r in numbered}
    for rec in sorted(numbered, key=lambda r: r["seq"]):
        seq = rec["seq"]
        before = GENESIS if seq == 0 else by_seq.get(seq - 1, {}).get("hash")
        if before is not None and rec.get("prev") != before:
            problems.append(Problem(seq, "altered", f"record {seq} does not link to record {seq - 1}"))
        if "body" in rec and record_hash(rec) != rec.get("hash"):
            problems.append(Problem(seq, "altered", f"record {seq}: content does not match its hash"))
        if not signature_ok(public_key, str(rec.get("hash", "")), str(rec.get("sig", ""))):
            problems.append(Problem(seq, "signature", f"record {seq}: signature does not verify"))
    if head is not None:
        if not signature_ok(public_key, head_digest(head.get("seq", -2), str(head.get("hash", ""))),
                            str(head.get("sig", ""))):
            problems.append(Problem(None, "head", "the signed head does not verify"))
        elif head.get("seq") != top or by_seq.get(top, {}).get("hash") != head.get("hash"):
            problems.append(Problem(head.get("seq"), "removed",
                                    f"the signed head names record {head.get('seq')}; the ledger ends at {top}"))
    return problems


# ---------------------------------------------------------------- the store

RECORD_FIELDS = (*HASHED_FIELDS, "hash", "sig")  # what a record holds: the hashed fields, hash, signature


def _as_record(row) -> dict:
    return {k: getattr(row, k) for k in RECORD_FIELDS}


class Ledger:
    """The ledger of one hub: records and signed head in the state database (rows of
    fedhub.hub.statedb), the signing key in a 0600 file in the state dir.

    SQLAlchemy is imported inside the methods: `verify()` above also runs in a session
    image (`fedhub provenance verify`), which installs no database libraries."""

    def __init__(self, state_dir: str | Path, db=None):
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._db = db
        self._key: Ed25519PrivateKey | None = None

    @property
    def db(self):
        """The state database, opened on first use (the edge bundle signer needs only the key)."""
        if self._db is None:
            from .statedb import open_state_db
            self._db = open_state_db(self.dir)
        return self._db

    @property
    def key(self) -> Ed25519PrivateKey:
        if self._key is None:
            with self._key_lock():
                self._key = load_or_create_key(self.dir / "ledger-key.pem")
        return self._key

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.key.public_key()

    @contextmanager
    def _key_lock(self):
        """Only one process creates the key file."""
        with open(self.dir / "ledger.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def records(self, kind: str | None = None, subject: str | None = None) -> list[dict]:
        """Records in the order they were appended (optionally one kind and/or subject)."""
        from sqlalchemy import select

        from .statedb.models import LedgerRecordRow as Row
        query = select(Row).order_by(Row.position)
        if kind:
            query = query.where(Row.kind == kind)
        if subject:
            query = query.where(Row.subject == subject)
        with self.db.reading() as s:
            return [_as_record(r) for r in s.scalars(query)]

    def subjects(self, kind: str) -> set[str]:
        from sqlalchemy import select

        from .statedb.models import LedgerRecordRow as Row
        with self.db.reading() as s:
            return set(s.scalars(select(Row.subject).where(Row.kind == kind)))

    def head(self) -> dict | None:
        from .statedb.models import LedgerHeadRow
        with self.db.reading() as s:
            row = s.get(LedgerHeadRow, 1)
            if row is None or not row.sig:
                return None
            return {"seq": row.seq, "hash": row.hash, "sig": row.sig}

    def append(self, kind: str, subject: str, who: str, body: dict, parents: list[str] = ()) -> dict:
        from sqlalchemy import select

        from .statedb.models import LedgerHeadRow, LedgerRecordRow as Row
        if kind not in KINDS:
            raise LedgerError(f"kind: expected one of {list(KINDS)}, got {kind!r}")
        if not subject or not isinstance(subject, str) or "\x00" in subject:
            raise LedgerError("subject: expected a non-empty string without NUL characters")
        try:
            canonical(body)
        except (TypeError, ValueError) as e:
            raise LedgerError(f"body: expected JSON data ({e})")
        from .statedb.db import json_safe
        body = json_safe(body)  # hashed as it is stored: NaN becomes "NaN"
        key = self.key
        # the head row is locked for the whole append (SELECT ... FOR UPDATE on PostgreSQL; the
        # write lock, BEGIN IMMEDIATE, on SQLite): appenders in other processes wait, the chain never forks
        with self.db.writing() as s:
            head = s.execute(select(LedgerHeadRow).where(LedgerHeadRow.id == 1).with_for_update()).scalar_one()
            parents = list(parents)
            if parents:
                known = set(s.scalars(select(Row.hash).where(Row.hash.in_(parents))))
                unknown = [p for p in parents if p not in known]
                if unknown:
                    raise LedgerError(f"parents: unknown record(s) {unknown}")
            last = s.scalars(select(Row).order_by(Row.position.desc()).limit(1)).first()
            rec = {"seq": (last.seq + 1) if last else 0, "time": time.time(), "kind": kind,
                   "subject": subject, "who": who, "body": body, "parents": parents,
                   "prev": last.hash if last else GENESIS, "key_id": key_id(key.public_key())}
            rec["hash"] = record_hash(rec)
            rec["sig"] = sign(key, rec["hash"])
            s.add(Row(**rec))
            head.seq, head.hash, head.sig = rec["seq"], rec["hash"], sign(key, head_digest(rec["seq"], rec["hash"]))
        return rec

    def find(self, ref: str) -> dict | None:
        """A record by its hash (or a unique prefix of at least 8 characters)."""
        from sqlalchemy import select

        from .statedb.models import LedgerRecordRow as Row
        if len(ref) < 8:
            return None
        with self.db.reading() as s:
            hits = s.scalars(select(Row).where(Row.hash.startswith(ref, autoescape=True)).limit(2)).all()
            return _as_record(hits[0]) if len(hits) == 1 else None

    def verify(self) -> list[Problem]:
        return verify(self.records(), self.public_key, self.head())

    def chain(self, viewer: str | None, admin: bool = False) -> dict:
        """What a viewer may download to verify the ledger: their own records whole,
        others' as skeletons (chain + signature), the signed head and the public key."""
        records = [r if admin or r.get("who") == viewer else {k: r.get(k) for k in SKELETON_FIELDS}
                   for r in self.records()]
        return {"records": records, "head": self.head(), "public_key": public_key_pem(self.public_key),
                "key_id": key_id(self.public_key)}


# ---------------------------------------------------------------- exports (pure)

def to_prov_jsonld(records: list[dict], base: str = "urn:fedhub:") -> dict:
    """W3C PROV as JSON-LD: each record is an activity that generated an entity (its
    subject), associated with its user, derived from its parents' entities."""
    graph = []
    agents = set()
    by_hash = {r["hash"]: r for r in records if "hash" in r}
    for r in records:
        if "body" not in r:
            continue
        act = f"{base}record/{r['hash']}"
        ent = f"{base}{r['kind']}/{r['subject']}"
        agent = f"{base}user/{r['who']}"
        agents.add(agent)
        graph.append({
            "@id": act, "@type": "prov:Activity", "prov:type": f"fedhub:{r['kind']}",
            "prov:endedAtTime": {"@value": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r["time"])),
                                 "@type": "xsd:dateTime"},
            "prov:wasAssociatedWith": {"@id": agent},
            "prov:used": [{"@id": f"{base}{by_hash[p]['kind']}/{by_hash[p]['subject']}"}
                          for p in r.get("parents", []) if p in by_hash],
            "fedhub:hash": r["hash"], "fedhub:signature": r["sig"], "fedhub:body": r["body"],
        })
        graph.append({
            "@id": ent, "@type": "prov:Entity", "prov:wasGeneratedBy": {"@id": act},
            "prov:wasAttributedTo": {"@id": agent},
            "prov:wasDerivedFrom": [{"@id": f"{base}{by_hash[p]['kind']}/{by_hash[p]['subject']}"}
                                    for p in r.get("parents", []) if p in by_hash],
        })
    graph.extend({"@id": a, "@type": "prov:Agent"} for a in sorted(agents))
    return {
        "@context": {"prov": "http://www.w3.org/ns/prov#", "xsd": "http://www.w3.org/2001/XMLSchema#",
                     "fedhub": "urn:fedhub:ns#"},
        "@graph": graph,
    }
