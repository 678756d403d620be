"""Where deployments and edge devices are kept: the state database (fedhub.hub.statedb).

One row per deployment (its record as a JSON document, with owner, status and creation
time as indexed columns) and one per edge device. Each save is one transaction, so a
hub restart (or a crash mid-write) leaves the previous complete record. Files a
deployment produces (manifests, edge bundles) stay on disk under `artifact_dir()`.
Pure data: no servers, no MLflow.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import delete, select

from ..statedb import StateDB, open_state_db
from ..statedb.models import DeploymentRow, EdgeDeviceRow

log = logging.getLogger("fedhub.deploy")


class DeploymentStore:
    """Deployment records by id, and the edge device registry."""

    def __init__(self, state_dir: str | Path, db: StateDB | None = None):
        self.root = Path(state_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.db = db or open_state_db(self.root)

    # ---------------------------------------------------------------- deployments
    def load_all(self) -> dict[str, dict]:
        with self.db.reading() as s:
            rows = s.execute(select(DeploymentRow.id, DeploymentRow.document).order_by(DeploymentRow.created)).all()
        records = {}
        for row_id, record in rows:
            if isinstance(record, dict) and record.get("id") == row_id:
                records[row_id] = record
            else:  # a row another version wrote never stops the service
                log.warning("deployments: skipping an unreadable row %s", row_id)
        return records

    def save(self, record: dict) -> None:
        with self.db.writing() as s:
            s.merge(DeploymentRow.of(record))

    def delete(self, deployment_id: str) -> None:
        with self.db.writing() as s:
            s.execute(delete(DeploymentRow).where(DeploymentRow.id == deployment_id))

    def artifact_dir(self, deployment_id: str) -> Path:
        """Per-deployment files that are not served (manifests, edge bundles)."""
        return self.root / "deployment-files" / deployment_id

    # ---------------------------------------------------------------- edge devices
    def load_devices(self) -> dict[str, dict]:
        with self.db.reading() as s:
            return {row_id: doc for row_id, doc in s.execute(select(EdgeDeviceRow.id, EdgeDeviceRow.document))
                    if isinstance(doc, dict)}

    def save_devices(self, devices: dict[str, dict]) -> None:
        """The whole registry, in one transaction: devices not in `devices` are removed."""
        with self.db.writing() as s:
            s.execute(delete(EdgeDeviceRow).where(EdgeDeviceRow.id.not_in(list(devices))))
            for device_id, doc in devices.items():
                s.merge(EdgeDeviceRow.of(device_id, doc))
