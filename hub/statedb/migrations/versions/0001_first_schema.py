"""The first schema: jobs and their events, deployments, edge devices, the ledger.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(255), nullable=False, index=True),
        sa.Column("document", sa.JSON, nullable=False))
    op.create_table(
        "job_events",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("document", sa.JSON, nullable=False))
    op.create_table(
        "deployments",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(255), nullable=False, index=True),
        sa.Column("document", sa.JSON, nullable=False))
    op.create_table(
        "edge_devices",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("owner", sa.String(255), nullable=False, index=True),
        sa.Column("document", sa.JSON, nullable=False))
    op.create_table(
        "ledger_records",
        sa.Column("position", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("seq", sa.Integer, nullable=False, unique=True),
        sa.Column("time", sa.Double, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("who", sa.String(255), nullable=False, index=True),
        sa.Column("body", sa.JSON, nullable=False),
        sa.Column("parents", sa.JSON, nullable=False),
        sa.Column("prev", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
        sa.Column("sig", sa.Text, nullable=False))
    head = op.create_table(
        "ledger_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("sig", sa.Text, nullable=False))
    # the head row always exists, so an append can lock it (nothing appended yet: seq -1)
    op.bulk_insert(head, [{"id": 1, "seq": -1, "hash": "0" * 64, "sig": ""}])


def downgrade():
    for table in ("ledger_head", "ledger_records", "edge_devices", "deployments", "job_events", "jobs"):
        op.drop_table(table)
