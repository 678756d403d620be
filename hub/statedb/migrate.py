"""Schema migrations of the state database, run with alembic from inside the package.

No alembic.ini: the script folder ships in the wheel next to this module and the
connection is handed to migrations/env.py. The upgrade runs in one transaction that
first takes a lock (PostgreSQL: an advisory lock; SQLite: the write lock), so processes
starting together migrate once and the others find the schema already current.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from .db import StateDB

MIGRATIONS = Path(__file__).with_name("migrations")
UPGRADE_LOCK = 0x66656468  # "fedh": the advisory lock key of schema upgrades on PostgreSQL


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(db: StateDB | str) -> str | None:
    db = db if isinstance(db, StateDB) else StateDB(db)
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade_to_head(db: StateDB | str, revision: str = "head") -> str:
    """Migrate the schema (to the newest revision by default); returns the revision now current."""
    db = db if isinstance(db, StateDB) else StateDB(db)
    cfg = alembic_config()
    with db.engine.execution_options(fedhub_write=True).begin() as conn:
        if db.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": UPGRADE_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        return MigrationContext.configure(conn).get_current_revision()
