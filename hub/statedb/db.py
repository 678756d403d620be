"""The state database: its URL, the engine, transactions, and opening it once per process.

`open_state_db(state_dir)` is what the stores call: it resolves the URL (an explicit one,
else $FEDHUB_STATE_DB_URL, which `fedhub up --state-db-url` passes to the API service,
else SQLite in the state dir), migrates the schema to the newest revision, imports state
files an earlier fedhub version left in the state dir, and returns a `StateDB` shared by
every store of this process.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

URL_ENV = "FEDHUB_STATE_DB_URL"
SQLITE_NAME = "fedhub-state.sqlite"
log = logging.getLogger("fedhub.statedb")


class StateDBError(RuntimeError):
    """The state database cannot be used (bad URL, unreachable server, failed migration)."""


def sqlalchemy_url(url: str) -> str:
    """postgresql:// means psycopg (v3) to SQLAlchemy 2.1; fedhub ships psycopg2 ([hub] extra)."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg2://" + url[len(scheme):]
    return url


URL_SCHEMES = ("sqlite:", "postgresql", "postgres:")  # what a state database URL may start with


def sqlite_url(state_dir: str | Path) -> str:
    """The embedded default: SQLite in the state dir."""
    return f"sqlite:///{Path(state_dir).resolve() / SQLITE_NAME}"


def state_db_url(state_dir: str | Path, url: str | None = None) -> str:
    """The URL to use: `url`, else $FEDHUB_STATE_DB_URL, else SQLite in the state dir."""
    url = url or os.environ.get(URL_ENV, "")
    if not url:
        return sqlite_url(state_dir)
    if urlsplit(url).password:
        raise StateDBError("state database URL: holds a password; give it without one and set "
                           "$PGPASSWORD (or ~/.pgpass) in the environment instead")
    if not url.startswith(URL_SCHEMES):
        raise StateDBError(f"state database URL: expected sqlite:///<file> or postgresql://user@host:port/db, "
                           f"got {url.split(':', 1)[0]}:...")
    return sqlalchemy_url(url)


def json_safe(data):
    """NaN and infinities (a diverged loss in a job's metrics) as the strings "NaN", "Infinity",
    "-Infinity": they are not JSON, and PostgreSQL's json type refuses them."""
    if isinstance(data, float) and not math.isfinite(data):
        return "NaN" if math.isnan(data) else ("Infinity" if data > 0 else "-Infinity")
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(v) for v in data]
    return data


def _json_serializer(data) -> str:
    return json.dumps(json_safe(data))


def make_engine(url: str) -> Engine:
    """An engine for fedhub's state. On SQLite: WAL (readers never wait for the writer), a
    30 s busy wait, and transactions that write take the write lock when they begin
    (BEGIN IMMEDIATE) so two processes never both read-then-write the same version."""
    url = sqlalchemy_url(url)
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, json_serializer=_json_serializer)
    path = url.split("///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                           json_serializer=_json_serializer)

    @event.listens_for(engine, "connect")
    def _sqlite_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # pysqlite's own BEGIN off: we emit ours
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("fedhub_write") else "BEGIN")

    return engine


class StateDB:
    """An engine and the two kinds of transaction the stores use."""

    def __init__(self, url: str, engine: Engine | None = None):
        self.url = sqlalchemy_url(url)
        self.engine = engine or make_engine(self.url)
        self.dialect = self.engine.dialect.name
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(self.engine.execution_options(fedhub_write=True), expire_on_commit=False)

    @contextmanager
    def reading(self):
        with self._read() as session, session.begin():
            yield session

    @contextmanager
    def writing(self):
        """A transaction that writes; on SQLite it holds the database's write lock from the start."""
        with self._write() as session, session.begin():
            yield session

    def session(self) -> Session:
        return self._read()

    def __repr__(self):
        return f"StateDB({self.engine.url.render_as_string(hide_password=True)})"


def failure_reason(exc: BaseException) -> str:
    """Why the database could not be used, on one line: the driver's own words (SQLAlchemy's
    wrapper adds links and the statement), at most 500 characters."""
    cause = getattr(exc, "orig", None) or exc
    reason = " ".join(line.strip() for line in str(cause).splitlines() if line.strip())[:500]
    return f"{type(cause).__name__}: {reason}"


_lock = threading.Lock()
_dbs: dict[str, StateDB] = {}
_prepared: set[tuple[str, str]] = set()


def _after_fork_in_child() -> None:
    # a forked child must not use its parent's pooled connections (SQLAlchemy's pooling docs)
    for db in _dbs.values():
        db.engine.dispose(close=False)


os.register_at_fork(after_in_child=_after_fork_in_child)


def open_state_db(state_dir: str | Path, url: str | None = None) -> StateDB:
    """The state database of `state_dir`, migrated to the newest schema, with any state
    files of an earlier fedhub version imported (both once per process)."""
    from .legacy import import_legacy_files
    from .migrate import upgrade_to_head
    resolved = state_db_url(state_dir, url)
    key = (resolved, str(Path(state_dir).resolve()))
    with _lock:
        db = _dbs.get(resolved)
        if db is None:
            db = _dbs[resolved] = StateDB(resolved)
        if key not in _prepared:
            try:
                upgrade_to_head(db)
                import_legacy_files(db, state_dir)
            except StateDBError:
                raise
            except Exception as e:  # an unreachable server, a refused login, a broken file
                raise StateDBError(f"state database {db.engine.url.render_as_string(hide_password=True)}: "
                                   f"{failure_reason(e)}") from e
            _prepared.add(key)
    return db
