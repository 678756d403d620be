"""`fedhub db upgrade`: migrate fedhub's state database by hand (`fedhub up` does it on start).

For operators who upgrade fedhub on a production hub: run it once with the new version
installed, before starting the hub (or to check with --status what would change).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _settings_url(data_dir: Path) -> str:
    """The --state-db-url the last `fedhub up` in this data dir used ("" for SQLite)."""
    try:
        return json.loads((data_dir / "fedhub-up.json").read_text()).get("state_db_url", "")
    except (OSError, ValueError):
        return ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fedhub db upgrade", description=__doc__)
    parser.add_argument("--data-dir", default=os.environ.get("FEDHUB_DATA_DIR", ".fedhub"),
                        help="the data dir of `fedhub up` (default: $FEDHUB_DATA_DIR, else ./.fedhub)")
    parser.add_argument("--state-db-url", default="",
                        help="the state database (default: what the last `fedhub up` there used, else "
                             "SQLite in <data dir>/state); the password from $PGPASSWORD, never the URL")
    parser.add_argument("--status", action="store_true", help="print the current and newest revision only")
    args = parser.parse_args(argv)

    from . import StateDB, StateDBError, current_revision, head_revision, state_db_url
    from .db import failure_reason, sqlite_url
    from .legacy import import_legacy_files
    from .migrate import upgrade_to_head
    state = Path(args.data_dir).resolve() / "state"
    try:
        url = state_db_url(state, args.state_db_url or _settings_url(Path(args.data_dir).resolve())
                           or sqlite_url(state))
        db = StateDB(url)
        shown = db.engine.url.render_as_string(hide_password=True)
        before = current_revision(db)
        print(f"state database {shown}: schema {before or 'none'}, newest {head_revision()}", flush=True)
        if args.status:
            return 0
        after = upgrade_to_head(db)
        print(f"migrated: {before or 'none'} -> {after}" if before != after else "already at the newest schema",
              flush=True)
        counts = import_legacy_files(db, state)
        if any(counts.values()):
            print("imported the state files of an earlier fedhub version: "
                  + ", ".join(f"{n} {what}" for what, n in counts.items() if n), flush=True)
    except StateDBError as e:
        print(f"fedhub db upgrade: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # an unreachable server, a refused login
        print(f"fedhub db upgrade: {failure_reason(e)}", file=sys.stderr)
        return 2
    return 0
