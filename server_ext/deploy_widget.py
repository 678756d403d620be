"""The Deploy view as an ipywidget, for VS Code and notebook users without the panels.

    from fedhub.server_ext.deploy_widget import DeployWidget
    DeployWidget()

Pick a model (a run's logged model or a registered model, as an MLflow URI), a target, a
name; Deploy shows each step on a progress bar, then the endpoint, a copyable tritonclient
snippet and a Test inference button. Talks to the hub's fedhub API over HTTP with the
session's token (DeploymentsClient), like the `fedhub deploy` command.
"""

from __future__ import annotations

import html
import json
import threading

import ipywidgets as w

from .client import session_context
from .deploy_cli import DeploymentsClient, DeploymentsError

STEPS = {"embedded": ("resolve", "package", "write", "load", "ready"),
         "site": ("resolve", "package", "manifests"), "edge": ("resolve", "package", "bundle", "assign")}


def _logged_models(limit: int = 50) -> list[str]:
    """Recent logged and registered models the user can read (best effort: none without MLflow)."""
    try:
        from mlflow.tracking import MlflowClient
        client = MlflowClient()
        uris = [f"models:/{m.name}/{v.version}" for m in client.search_registered_models(max_results=limit)
                for v in (m.latest_versions or [])]
        experiments = [e.experiment_id for e in client.search_experiments(max_results=100)]
        if experiments:
            uris += [f"models:/{m.model_id}" for m in client.search_logged_models(experiments, max_results=limit)]
        return uris
    except Exception:
        return []


class DeployWidget(w.VBox):
    def __init__(self, client: DeploymentsClient | None = None, models: list[str] | None = None, **kwargs):
        if client is None:
            ctx = session_context()
            client = DeploymentsClient(ctx.hub_url, {"Authorization": f"token {ctx.token}"} if ctx.token else {})
        self.client = client
        self.model = w.Combobox(description="Model", placeholder="runs:/RUN_ID/model or models:/NAME/1",
                                options=models if models is not None else _logged_models(),
                                ensure_option=False, layout=w.Layout(width="60%"))
        self.name = w.Text(description="Name", placeholder="digits")
        self.target = w.Combobox(description="Target", value="embedded", options=["embedded"],
                                 ensure_option=False)
        self.deploy_button = w.Button(description="Deploy", button_style="primary", icon="rocket")
        self.progress = w.IntProgress(value=0, min=0, max=5, description="Progress")
        self.status = w.HTML()
        self.endpoint = w.HTML()
        self.snippet = w.Textarea(layout=w.Layout(width="95%", height="12em"), disabled=False)
        self.test_button = w.Button(description="Test inference", icon="play", disabled=True)
        self.output = w.HTML()
        super().__init__([self.model, w.HBox([self.name, self.target, self.deploy_button]), self.progress,
                          self.status, self.endpoint, self.snippet, self.test_button, self.output], **kwargs)
        self.deploy_button.on_click(lambda _: self.deploy())
        self.test_button.on_click(lambda _: self.test_inference())
        self.record: dict | None = None
        self.thread: threading.Thread | None = None

    # ------------------------------------------------------------------ actions
    def deploy(self) -> None:
        """POST the deployment, then follow its events in a thread (the notebook stays usable)."""
        self.test_button.disabled = True
        self.endpoint.value = self.output.value = ""
        self.snippet.value = ""
        target = self.target.value.strip() or "embedded"
        try:
            record = self.client.deploy(self.model.value.strip(), self.name.value.strip(), target)
        except DeploymentsError as e:
            self.status.value = f"<b>Error:</b> {html.escape(e.message)}"
            return
        self.record = record
        self.progress.max = len(STEPS.get(record.get("kind", "embedded"), STEPS["embedded"]))
        self.progress.value = 0
        self.progress.bar_style = "info"
        self.status.value = f"Deploying {html.escape(record['name'])} version {record.get('pending_version')}…"
        self.thread = threading.Thread(target=self._follow, args=(record["id"],), daemon=True)
        self.thread.start()

    def _follow(self, dep_id: str) -> None:
        try:
            record = self.client.follow(dep_id, on_event=self._on_event)
        except DeploymentsError as e:
            self.status.value = f"<b>Error:</b> {html.escape(e.message)}"
            self.progress.bar_style = "danger"
            return
        self.record = record
        if record["status"] == "failed" or record.get("error"):
            self.progress.bar_style = "danger"
            self.status.value = f"<b>Failed:</b> {html.escape(record.get('error') or record['status'])}"
            if record["status"] == "failed":
                return
        else:
            self.progress.value = self.progress.max
            self.progress.bar_style = "success"
            self.status.value = (f"<b>{html.escape(record['name'])}</b> is {record['status']} "
                                 f"(version {record['current_version']})")
        ep = record.get("endpoint") or {}
        self.endpoint.value = "<br>".join(f"<b>{html.escape(k)}</b>: <code>{html.escape(str(v))}</code>"
                                          for k, v in ep.items())
        try:
            snip = self.client.snippet(dep_id)
            self.snippet.value = snip.get("http") or snip.get("note", "")
        except DeploymentsError as e:
            self.snippet.value = e.message
        self.test_button.disabled = record.get("kind") != "embedded"

    def _on_event(self, event: dict) -> None:
        if event.get("status") == "done" and event.get("step") not in ("deploy",):
            self.progress.value = min(self.progress.max, self.progress.value + 1)
        line = f"{event.get('step')}: {event.get('status')}"
        if event.get("message"):
            line += f" — {event['message']}"
        self.status.value = html.escape(line)

    def test_inference(self) -> None:
        if not self.record:
            return
        try:
            result = self.client.infer(self.record["id"])
        except DeploymentsError as e:
            self.output.value = f"<b>Error:</b> {html.escape(e.message)}"
            return
        rows = "".join(f"<tr><td>{html.escape(o['name'])}</td><td>{html.escape(str(o.get('shape')))}</td>"
                       f"<td><code>{html.escape(json.dumps(o.get('data'))[:500])}</code></td></tr>"
                       for o in result["outputs"])
        self.output.value = (f"<table><tr><th>output</th><th>shape</th><th>data</th></tr>{rows}</table>"
                             f"<i>{result['ms']} ms</i>")
