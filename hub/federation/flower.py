"""Talking to a job's SuperLink with Flower's own tooling.

Submission is `flwr run` (it builds the FAB from the app folder and starts the run), with
a per-job FLWR_HOME whose config.toml names only this job's SuperLink. Status and traffic
come from the Control API through Flower's own `ControlHttpClient` (what `flwr ls` and
`flwr stop` call), in-process: one `flwr ls` subprocess costs a second of CPU, a Control
API call 70 ms. flwr is imported on first use, so fedhub.hub stays light to import.
"""

from __future__ import annotations

import asyncio
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

CONNECTION = "fedhub"


def cli_config_toml(address: str) -> str:
    """$FLWR_HOME/config.toml of the `flwr` CLI: one connection, to this job's SuperLink."""
    return (f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "{address}"\ninsecure = true\n')


def app_config_keys(app_dir: Path) -> dict:
    """The app's [tool.flwr.app.config] (run config keys and defaults)."""
    try:
        doc = tomllib.loads((Path(app_dir) / "pyproject.toml").read_text())
    except (OSError, ValueError):
        return {}
    config = doc.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {})
    return config if isinstance(config, dict) else {}


def run_config_arg(config: dict) -> str:
    """--run-config text: TOML values (json.dumps writes TOML-compatible scalars)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        return json.dumps(v)
    return " ".join(f"{k}={value(v)}" for k, v in config.items())


@dataclass
class RunStatus:
    status: str          # pending | starting | running | finished
    sub_status: str      # completed | failed | stopped | ''
    details: str
    bytes_in: int
    bytes_out: int
    running_at: str = ""   # Flower's own timestamps (ISO 8601) of the run
    finished_at: str = ""

    @property
    def text(self) -> str:
        return f"{self.status}:{self.sub_status}" if self.sub_status else self.status

    @property
    def total_bytes(self) -> int:
        return self.bytes_in + self.bytes_out


class ControlClient:
    """Flower's Control API client for one SuperLink, called from a worker thread."""

    def __init__(self, address: str):
        self.address = address
        self._client = None

    def _get(self):
        if self._client is None:
            from flwr.cli.cli_client_interceptor import CliClientHttpInterceptor
            from flwr.supercore.control import ControlHttpClient
            self._client = ControlHttpClient.from_server_address(
                self.address, insecure=True, root_certificates=None,
                interceptors=[CliClientHttpInterceptor()])
        return self._client

    def _status(self, run_id: int) -> RunStatus | None:
        from flwr.common.serde import run_from_proto
        from flwr.proto.control_pb2 import ListRunsRequest
        res = self._get().ListRuns(ListRunsRequest(run_id=int(run_id)))
        for proto in res.run_dict.values():
            run = run_from_proto(proto)
            return RunStatus(run.status.status, run.status.sub_status, run.status.details,
                             int(run.bytes_recv), int(run.bytes_sent), run.running_at or "", run.finished_at or "")
        return None

    def _stop(self, run_id: int) -> None:
        from flwr.proto.control_pb2 import StopRunRequest
        self._get().StopRun(StopRunRequest(run_id=int(run_id)))

    async def status(self, run_id: int) -> RunStatus | None:
        return await asyncio.get_running_loop().run_in_executor(None, self._status, run_id)

    async def stop(self, run_id: int) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._stop, run_id)
