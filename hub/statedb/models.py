"""fedhub's own state as SQL tables (the schema at the newest migration).

Records that are documents (a federated job, a deployment, an edge device, a job's
progress event) are stored whole in a JSON column; what is queried or ordered by (id,
owner, status, created) is also a column of its own, indexed. Ledger records are columns
one by one, exactly the fields the hub hashed and signed, so `verify()` recomputes them.

The migrations in `migrations/versions/` build these tables; they never import this
module (a migration is frozen at the schema it was written for).
"""

from __future__ import annotations

from sqlalchemy import JSON, Double, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


def _number(value) -> float:
    """A document's `created` as a column value (0 when it is missing or not a number)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


class JobRow(Base):
    """One federated job (fedhub.hub.federation.jobs.Job.to_dict() in `document`)."""

    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    state: Mapped[str] = mapped_column(String(32), index=True)      # 0002
    created: Mapped[float] = mapped_column(Double, index=True)      # 0002
    document: Mapped[dict] = mapped_column(JSON)

    @classmethod
    def of(cls, doc: dict) -> "JobRow":
        """The row of a job document, its queried fields copied into their columns."""
        return cls(id=doc["id"], owner=str(doc.get("owner", "")), state=str(doc.get("state", "")),
                   created=_number(doc.get("created")), document=doc)


class JobEventRow(Base):
    """One progress event of a job; `seq` (1, 2, ...) is the readers' cursor."""

    __tablename__ = "job_events"
    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    document: Mapped[dict] = mapped_column(JSON)


class DeploymentRow(Base):
    """One deployment record (fedhub.hub.deploy.manager), versions and steps included."""

    __tablename__ = "deployments"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    status: Mapped[str] = mapped_column(String(32), index=True)     # 0002
    created: Mapped[float] = mapped_column(Double, index=True)      # 0002
    document: Mapped[dict] = mapped_column(JSON)

    @classmethod
    def of(cls, doc: dict) -> "DeploymentRow":
        """The row of a deployment record, its queried fields copied into their columns."""
        return cls(id=doc["id"], owner=str(doc.get("owner", "")), status=str(doc.get("status", "")),
                   created=_number(doc.get("created")), document=doc)


class EdgeDeviceRow(Base):
    """One registered edge device and what it last reported."""

    __tablename__ = "edge_devices"
    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    document: Mapped[dict] = mapped_column(JSON)

    @classmethod
    def of(cls, device_id: str, doc: dict) -> "EdgeDeviceRow":
        return cls(id=device_id, owner=str(doc.get("owner", "")), document=doc)


class LedgerRecordRow(Base):
    """One provenance record. `position` is the append order (what a reader sees as the
    order of the ledger); `seq` is the signed sequence number inside the record."""

    __tablename__ = "ledger_records"
    position: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(Integer, unique=True)
    time: Mapped[float] = mapped_column(Double)
    kind: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(Text)
    who: Mapped[str] = mapped_column(String(255), index=True)
    body: Mapped[dict] = mapped_column(JSON)
    parents: Mapped[list] = mapped_column(JSON)
    prev: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    sig: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_ledger_records_kind_subject", "kind", "subject"),)  # 0002


class LedgerHeadRow(Base):
    """The signed head: one row (id 1), locked by every append so writers never fork the
    chain. seq -1 and an empty signature: nothing appended yet."""

    __tablename__ = "ledger_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))
    sig: Mapped[str] = mapped_column(Text)
