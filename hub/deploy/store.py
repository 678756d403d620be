"""Where deployments and edge devices are kept: JSON files under the API service's state dir.

One file per deployment (``deployments/<id>.json``) and one for the edge devices
(``edge/devices.json``), each replaced atomically, so a hub restart (or a crash mid-write)
leaves the previous complete record. Pure data: no servers, no MLflow.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_json_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class DeploymentStore:
    """Deployment records by id, and the edge device registry."""

    def __init__(self, state_dir: str | Path):
        self.root = Path(state_dir)
        self.deployments_dir = self.root / "deployments"
        self.edge_dir = self.root / "edge"
        self.deployments_dir.mkdir(parents=True, exist_ok=True)
        self.edge_dir.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- deployments
    def load_all(self) -> dict[str, dict]:
        records = {}
        for path in sorted(self.deployments_dir.glob("*.json")):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # a foreign or broken file never stops the service
            if isinstance(record, dict) and record.get("id") == path.stem:
                records[record["id"]] = record
        return records

    def save(self, record: dict) -> None:
        write_json_atomic(self.deployments_dir / f"{record['id']}.json", record)

    def delete(self, deployment_id: str) -> None:
        (self.deployments_dir / f"{deployment_id}.json").unlink(missing_ok=True)

    def artifact_dir(self, deployment_id: str) -> Path:
        """Per-deployment files that are not served (manifests, edge bundles)."""
        return self.root / "deployment-files" / deployment_id

    # ---------------------------------------------------------------- edge devices
    @property
    def devices_path(self) -> Path:
        return self.edge_dir / "devices.json"

    def load_devices(self) -> dict[str, dict]:
        try:
            data = json.loads(self.devices_path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def save_devices(self, devices: dict[str, dict]) -> None:
        write_json_atomic(self.devices_path, devices)
