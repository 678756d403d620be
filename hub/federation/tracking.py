"""One MLflow run per federated job, logged on behalf of its owner.

The API service logs through the hub's MLflow service (the gate at /services/mlflow) with
the hub token the owner launched the job with, so MLflow's own permissions see the owner
as the author: the run lands in the owner's experiment and nobody else can read it. We use
MLflow's REST API rather than the mlflow client because the client reads the token from
one process-wide variable, and this process logs for many users at once.
"""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError


class TrackingError(RuntimeError):
    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status

    @property
    def transient(self) -> bool:
        """MLflow is starting or briefly away (worth retrying), not a refusal."""
        return self.status in (0, 502, 503, 504, 599)


class JobTracking:
    def __init__(self, mlflow_url: str, token: str):
        self.base = mlflow_url.rstrip("/") + "/api/2.0/mlflow"
        self.token = token
        self.run_id = ""
        self.experiment_id = ""

    async def _call(self, method: str, path: str, body: dict | None = None, query: dict | None = None) -> dict:
        url = f"{self.base}/{path}" + (f"?{urlencode(query)}" if query else "")
        try:
            resp = await AsyncHTTPClient().fetch(
                url, method=method, body=json.dumps(body) if body is not None else None,
                headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
                raise_error=False, request_timeout=60)
        except (OSError, HTTPClientError) as e:
            raise TrackingError(f"MLflow is not reachable at {self.base}: {e}", 0)
        try:
            data = json.loads(resp.body or b"{}")
        except ValueError:
            data = {}
        if resp.code >= 400 or resp.code == 599:
            if resp.code == 404 and data.get("error_code") == "RESOURCE_DOES_NOT_EXIST":
                raise LookupError(data.get("message", ""))
            raise TrackingError(f"MLflow {path}: {resp.code} {data.get('message') or resp.reason}", resp.code)
        return data

    async def start(self, experiment: str, run_name: str, params: dict, tags: dict,
                    wait_ready: float = 90) -> str:
        """Create the run (and the experiment if need be); waits up to wait_ready seconds for an
        MLflow that is still starting (the hub starts it alongside this service)."""
        deadline = time.monotonic() + wait_ready
        while True:
            try:
                return await self._start(experiment, run_name, params, tags)
            except TrackingError as e:
                if not e.transient or time.monotonic() > deadline or self.run_id:
                    raise
                await asyncio.sleep(2)

    async def _start(self, experiment: str, run_name: str, params: dict, tags: dict) -> str:
        try:
            exp = await self._call("GET", "experiments/get-by-name", query={"experiment_name": experiment})
            self.experiment_id = exp["experiment"]["experiment_id"]
        except LookupError:
            self.experiment_id = (await self._call("POST", "experiments/create", {"name": experiment}))["experiment_id"]
        run = await self._call("POST", "runs/create", {
            "experiment_id": self.experiment_id, "run_name": run_name,
            "start_time": int(time.time() * 1000),
            "tags": [{"key": k, "value": str(v)} for k, v in tags.items()]})
        self.run_id = run["run"]["info"]["run_id"]
        await self._call("POST", "runs/log-batch", {
            "run_id": self.run_id, "params": [{"key": k, "value": str(v)[:6000]} for k, v in params.items()]})
        return self.run_id

    async def log_round(self, step: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        batch = [{"key": k, "value": float(v), "timestamp": now, "step": int(step)}
                 for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for i in range(0, len(batch), 1000):  # MLflow's batch limit
            await self._call("POST", "runs/log-batch", {"run_id": self.run_id, "metrics": batch[i:i + 1000]})

    async def finish(self, status: str, tags: dict | None = None) -> None:
        """status: FINISHED, FAILED or KILLED."""
        if not self.run_id:
            return
        if tags:
            await self._call("POST", "runs/log-batch", {
                "run_id": self.run_id, "tags": [{"key": k, "value": str(v)[:5000]} for k, v in tags.items()]})
        await self._call("POST", "runs/update", {"run_id": self.run_id, "status": status,
                                                 "end_time": int(time.time() * 1000)})
