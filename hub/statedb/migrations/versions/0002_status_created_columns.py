"""Status and creation time as indexed columns; ledger lookups by kind and subject.

Jobs and deployments were found only by id and owner; listing the unfinished ones (a
restart settles them) and the newest first now reads two indexed columns instead of
every document. The columns are filled from the documents already stored. Ledger
records get an index on (kind, subject): `GET /api/provenance?kind=&subject=` and the
session recorder look records up that way.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _backfill(table: str, status_column: str, status_key: str) -> None:
    """Copy the status and `created` out of each row's JSON document (in Python: the
    JSON functions of SQLite and PostgreSQL differ)."""
    conn = op.get_bind()
    rows = sa.table(table, sa.column("id", sa.String), sa.column("document", sa.JSON),
                    sa.column(status_column, sa.String), sa.column("created", sa.Double))
    for row_id, doc in conn.execute(sa.select(rows.c.id, rows.c.document)).all():
        doc = doc if isinstance(doc, dict) else {}
        try:
            created = float(doc.get("created") or 0)
        except (TypeError, ValueError):
            created = 0.0
        conn.execute(rows.update().where(rows.c.id == row_id).values(
            {status_column: str(doc.get(status_key) or ""), "created": created}))


def upgrade():
    for table, status in (("jobs", "state"), ("deployments", "status")):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column(status, sa.String(32), nullable=False, server_default=""))
            batch.add_column(sa.Column("created", sa.Double, nullable=False, server_default="0"))
        _backfill(table, status, status)
        op.create_index(f"ix_{table}_{status}", table, [status])
        op.create_index(f"ix_{table}_created", table, ["created"])
    op.create_index("ix_ledger_records_kind_subject", "ledger_records", ["kind", "subject"])


def downgrade():
    op.drop_index("ix_ledger_records_kind_subject", "ledger_records")
    for table, status in (("jobs", "state"), ("deployments", "status")):
        op.drop_index(f"ix_{table}_created", table)
        op.drop_index(f"ix_{table}_{status}", table)
        with op.batch_alter_table(table) as batch:
            batch.drop_column("created")
            batch.drop_column(status)
