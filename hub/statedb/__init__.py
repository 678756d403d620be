"""fedhub's own state in SQL: federated jobs and their events, deployments, edge devices
and the provenance ledger (SQLAlchemy models, alembic migrations shipped in the package).

SQLite in the state dir is the embedded default; PostgreSQL for production
(`fedhub up --state-db-url postgresql://user@host/db`, the password from $PGPASSWORD).
"""

from .db import URL_ENV, StateDB, StateDBError, make_engine, open_state_db, state_db_url
from .migrate import current_revision, head_revision, upgrade_to_head

__all__ = ["URL_ENV", "StateDB", "StateDBError", "current_revision", "head_revision", "make_engine",
           "open_state_db", "state_db_url", "upgrade_to_head"]
