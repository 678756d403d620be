"""MLflow reads the session API needs, as plain dicts (the unmodified mlflow client)."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

CAPTURE_TAG = "fedhub.capture"


def run_to_dict(run) -> dict:
    info, data = run.info, run.data
    tags = {k: v for k, v in data.tags.items() if not k.startswith("mlflow.") or k in (
        "mlflow.runName", "mlflow.parentRunId", "mlflow.user", "mlflow.source.name")}
    return {
        "run_id": info.run_id, "run_name": info.run_name, "experiment_id": info.experiment_id,
        "status": info.status, "start_time": info.start_time, "end_time": info.end_time,
        "metrics": dict(data.metrics), "params": dict(data.params), "tags": tags,
        "reproducible": data.tags.get(CAPTURE_TAG) == "1",
    }


def rest_run_to_dict(run: dict) -> dict:
    """The same shape as run_to_dict, from MLflow's REST JSON."""
    info, data = run.get("info", {}), run.get("data", {})
    all_tags = {t["key"]: t.get("value", "") for t in data.get("tags", [])}
    tags = {k: v for k, v in all_tags.items() if not k.startswith("mlflow.") or k in (
        "mlflow.runName", "mlflow.parentRunId", "mlflow.user", "mlflow.source.name")}
    return {
        "run_id": info.get("run_id"), "run_name": info.get("run_name", ""),
        "experiment_id": info.get("experiment_id"), "status": info.get("status"),
        "start_time": int(info["start_time"]) if info.get("start_time") else None,
        "end_time": int(info["end_time"]) if info.get("end_time") else None,
        "metrics": {m["key"]: m["value"] for m in data.get("metrics", [])},
        "params": {p["key"]: p.get("value", "") for p in data.get("params", [])},
        "tags": tags, "reproducible": all_tags.get(CAPTURE_TAG) == "1",
    }


def _token(token) -> str | None:
    """MLflow's page tokens may be bytes; the API speaks JSON strings."""
    return token.decode() if isinstance(token, bytes) else token


def _keys(runs: list[dict]) -> tuple[list[str], list[str]]:
    metrics, params = set(), set()
    for r in runs:
        metrics.update(r["metrics"])
        params.update(r["params"])
    return sorted(metrics), sorted(params)


class Tracking:
    def __init__(self, executor: Executor):
        self.executor = executor
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient  # imported on first use: keeps start-up fast
            self._client = MlflowClient()
        return self._client

    async def run(self, fn, *args, **kwargs):
        if self.executor is None:
            return fn(*args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    def experiments(self, max_results: int, page_token: str | None) -> dict:
        page = self.client.search_experiments(max_results=max_results, page_token=page_token)
        return {"experiments": [
            {"experiment_id": e.experiment_id, "name": e.name, "lifecycle_stage": e.lifecycle_stage,
             "last_update_time": e.last_update_time} for e in page],
            "next_page_token": _token(page.token)}

    def _rest_search(self, experiment_id, max_results, page_token, order_by, filter_string) -> dict | None:
        """MLflow's REST search answered as our JSON directly, skipping the client's run
        objects (a fifth of a page's time). Only for tracking servers over HTTP."""
        from mlflow.tracking._tracking_service.utils import get_default_host_creds
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        uri = self.client.tracking_uri
        if not uri.startswith(("http://", "https://")):
            return None
        body = {"experiment_ids": [experiment_id], "max_results": max_results,
                "filter": filter_string or "", "order_by": order_by or []}
        if page_token:
            body["page_token"] = page_token
        resp = http_request(get_default_host_creds(uri), "/api/2.0/mlflow/runs/search", "POST",
                            json=body, max_retries=0, raise_on_status=False)
        data = verify_rest_response(resp, "/api/2.0/mlflow/runs/search").json()
        return {"runs": [rest_run_to_dict(r) for r in data.get("runs", [])],
                "next_page_token": data.get("next_page_token")}

    def runs(self, experiment_id: str, *, max_results: int, page_token, order_by, filter_string: str) -> dict:
        fast = self._rest_search(experiment_id, max_results, page_token, order_by, filter_string)
        if fast is not None:
            if not fast["runs"]:
                self.client.get_experiment(experiment_id)  # empty: 404 if the experiment does not exist
            metric_keys, param_keys = _keys(fast["runs"])
            return {**fast, "metric_keys": metric_keys, "param_keys": param_keys}
        page = self.client.search_runs([experiment_id], filter_string=filter_string or "",
                                       max_results=max_results, order_by=order_by, page_token=page_token)
        runs = [run_to_dict(r) for r in page]
        if not runs:
            self.client.get_experiment(experiment_id)  # empty: 404 if the experiment does not exist
        metric_keys, param_keys = _keys(runs)
        return {"runs": runs, "next_page_token": _token(page.token), "metric_keys": metric_keys,
                "param_keys": param_keys}

    def run_dict(self, run_id: str) -> dict:
        return run_to_dict(self.client.get_run(run_id))

    def metric_history(self, run_id: str, key: str) -> dict:
        history = self.client.get_metric_history(run_id, key)
        if not history:
            self.client.get_run(run_id)  # unknown run -> 404
            from mlflow.exceptions import MlflowException
            from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
            raise MlflowException(f"Run {run_id} has no metric {key!r}", error_code=RESOURCE_DOES_NOT_EXIST)
        return {"key": key, "history": [{"step": m.step, "timestamp": m.timestamp, "value": m.value}
                                        for m in sorted(history, key=lambda m: (m.step, m.timestamp))]}

    def compare(self, run_ids: list[str]) -> dict:
        runs = [self.run_dict(r) for r in run_ids]
        metric_keys, param_keys = _keys(runs)
        return {"runs": runs, "metric_keys": metric_keys, "param_keys": param_keys}
