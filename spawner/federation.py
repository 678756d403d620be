"""The hub process's view of the federation: catalogue, one backend per site, the book
of allocations, and a snapshot file the fedhub API service reads.

One Federation per catalogue per process, shared by every FederatedSpawner, so
inventories are watched once and capacity is accounted across all users.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from fedhub.hub.catalogue import Catalogue, CatalogueError, catalogue_from_dict, read_yaml

from .backends import BACKENDS, BackendNotAvailable, backend_class
from .backends.base import SiteBackend, SiteOptionError
from .inventory import Allocation, InventoryError, SiteInventory
from .placement import Candidate, SessionRequest

SNAPSHOT_NAME = "inventory.json"


def merge_catalogue(base: dict, override: dict) -> dict:
    """Config overrides on top of the file: sites merge by name, other keys replace."""
    merged = copy.deepcopy(base or {})
    for key, value in (override or {}).items():
        if key == "sites" and isinstance(value, list) and isinstance(merged.get("sites"), list):
            by_name = {s.get("name"): s for s in merged["sites"] if isinstance(s, dict)}
            for site in value:
                if isinstance(site, dict) and site.get("name") in by_name:
                    by_name[site["name"]].update(copy.deepcopy(site))
                else:
                    merged["sites"].append(copy.deepcopy(site))
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_catalogue_with_overrides(path: str, overrides: dict) -> Catalogue:
    doc: Any = {}
    source = "jupyterhub_config.py (FederatedSpawner.catalogue)"
    if path:
        doc = read_yaml(path)
        source = Path(path).name + (" + FederatedSpawner.catalogue" if overrides else "")
    if overrides:
        doc = merge_catalogue(doc if isinstance(doc, dict) else {}, overrides)
    return catalogue_from_dict(doc, source)


class Federation:
    _instances: dict[tuple, "Federation"] = {}
    _watching = False

    def __init__(self, catalogue: Catalogue, state_dir: str | None = None, log=None):
        self.log = log or logging.getLogger("fedhub.federation")
        self.catalogue = catalogue
        self.state_dir = Path(state_dir) if state_dir else None
        self.backends: dict[str, SiteBackend] = {}
        for i, site in enumerate(catalogue.sites):
            try:
                cls = backend_class(site.kind)
            except BackendNotAvailable:
                raise CatalogueError(catalogue.source, f"sites[{i}].kind",
                                     f"a kind this fedhub version has a backend for: {sorted(BACKENDS)}",
                                     site.kind)
            try:
                self.backends[site.name] = cls(site, log=self.log)
            except SiteOptionError as e:
                raise CatalogueError(catalogue.source, f"sites[{i}].options.{e.key}", e.expected, e.got,
                                     show_got=e.got is not None)
        # (user, server name) -> (allocation, info for the API)
        self.sessions: dict[tuple[str, str], tuple[Allocation, dict]] = {}
        # recent releases with their exact time, for usage accounting (hub/accounting.py)
        self.released: list[dict] = []
        self.write_snapshot()
        self.start_watching()

    def start_watching(self) -> None:
        """Start each backend's watcher (pollers, reflectors) on the running loop, if any."""
        if self._watching:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # not in a hub (tests, tools): inventories stay as declared
        self._watching = True
        for backend in self.backends.values():
            asyncio.ensure_future(backend.start_watching(self.write_snapshot))

    @classmethod
    def get(cls, catalogue_file: str, overrides: dict, state_dir: str | None, log=None) -> "Federation":
        key = (catalogue_file, json.dumps(overrides, sort_keys=True, default=str), state_dir)
        fed = cls._instances.get(key)
        if fed is None:
            catalogue = load_catalogue_with_overrides(catalogue_file, overrides)
            fed = cls._instances[key] = cls(catalogue, state_dir, log)
        return fed

    @property
    def inventories(self) -> list[SiteInventory]:
        return [b.inventory for b in self.backends.values()]

    def inventory(self, site: str) -> SiteInventory:
        return self.backends[site].inventory

    # ---------------------------------------------------------------- accounting

    def reserve(self, key: tuple[str, str], cand: Candidate, req: SessionRequest, info: dict) -> Allocation:
        """Reserve the candidate's resources. Synchronous: no other spawn runs in between."""
        self.release(key)
        alloc = self.inventory(cand.site).allocate(
            cand.node, req.cpus, req.memory, cand.gpu_type, req.gpus)
        self.sessions[key] = (alloc, {**info, "status": "starting"})
        self.backends[cand.site].note_starting(alloc)
        self.write_snapshot()
        return alloc

    def restore(self, key: tuple[str, str], alloc: Allocation, info: dict) -> Allocation | None:
        """Re-account a session found in spawner state after a hub restart."""
        if key in self.sessions:
            return self.sessions[key][0]
        if alloc.site not in self.backends:
            self.log.warning("Session %s/%s is on unknown site %s", *key, alloc.site)
            return None
        if self.backends[alloc.site].site_counts_sessions:
            # the site's own view (Slurm's sinfo) counts the running job, and right after a
            # restart its nodes are not polled yet: keep the session without reserving twice
            self.inventory(alloc.site).count_restored()
        else:
            try:
                alloc = self.inventory(alloc.site).allocate(
                    alloc.node, alloc.cpus, alloc.memory, alloc.gpu_type, gpu_ids=alloc.gpu_ids)
            except InventoryError as e:
                self.log.warning("Could not re-account session %s/%s: %s", *key, e)
                return None
        self.sessions[key] = (alloc, info)
        self.write_snapshot()
        return alloc

    def set_status(self, key: tuple[str, str], status: str) -> None:
        if key in self.sessions:
            alloc, info = self.sessions[key]
            info["status"] = status
            if status != "starting":
                self.backends[alloc.site].note_settled(alloc)
            self.write_snapshot()

    def release(self, key: tuple[str, str]) -> None:
        entry = self.sessions.pop(key, None)
        if entry is not None:
            alloc = entry[0]
            self.released = [*self.released[-199:], {"user": key[0], "server_name": key[1],
                                                     "since": entry[1].get("since"), "ended": time.time()}]
            if alloc.site in self.backends:
                self.backends[alloc.site].note_settled(alloc)
                self.inventory(alloc.site).release(alloc)
            self.write_snapshot()

    # ---------------------------------------------------------------- snapshot

    def snapshot(self) -> dict:
        sessions = []
        for (user, server), (alloc, info) in self.sessions.items():
            sessions.append({"user": user, "server_name": server, **alloc.to_dict(), **info})
        return {"updated": time.time(), "sites": [inv.to_dict() for inv in self.inventories],
                "sessions": sessions, "released": self.released}

    def write_snapshot(self) -> None:
        """Atomically replace the snapshot the fedhub API service serves."""
        if self.state_dir is None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.state_dir, prefix=".inventory-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(self.snapshot(), f)
        os.replace(tmp, self.state_dir / SNAPSHOT_NAME)
