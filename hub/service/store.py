"""Read side of the hub's live inventory snapshot (written by fedhub.spawner.federation).

The API service runs in its own process; the hub writes the snapshot atomically on
every change, and we re-read it only when its modification time moves.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SNAPSHOT_NAME = "inventory.json"  # same name the spawner writes


class SnapshotStore:
    def __init__(self, state_dir: str | Path):
        self.path = Path(state_dir) / SNAPSHOT_NAME
        self._mtime: int | None = None
        self._data: dict = {"sites": [], "sessions": [], "updated": None}

    def read(self) -> dict:
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            return self._data
        if mtime != self._mtime:
            try:
                self._data = json.loads(self.path.read_text())
                self._mtime = mtime
            except (OSError, ValueError):
                pass  # mid-replace on an odd filesystem: serve the previous snapshot
        return self._data

    def sites(self) -> list[dict]:
        return self.read().get("sites", [])

    def site(self, name: str) -> dict | None:
        return next((s for s in self.sites() if s.get("name") == name), None)

    def sessions_of(self, user: str) -> list[dict]:
        return [s for s in self.read().get("sessions", []) if s.get("user") == user]
