"""The Federated panel as an ipywidget, for VS Code and notebook users without the panels.

    from fedhub.server_ext.fl_widget import FederatedWidget
    FederatedWidget(app="digits", rounds=3)

It talks to the hub's fedhub API over HTTP with the session's token ($FEDHUB_URL,
$JUPYTERHUB_API_TOKEN, which kernels inherit from the session), like the `fedhub` CLI.
A background thread follows the job's events (long-poll) and updates the progress bar,
the per-round table and each site's status; Cancel stops the job on the hub.
"""

from __future__ import annotations

import html
import os
import threading
from pathlib import Path

import ipywidgets as w
import requests

from .client import session_context

#: seconds one events long-poll waits on the hub
EVENTS_WAIT = 10
FINAL_STATES = ("succeeded", "failed", "cancelled")
NOT_FIGURES = ("round", "time", "nodes")
COMPRESSIONS = [("None (fp32)", "none"), ("8-bit quantisation", "int8"), ("Top-k + error feedback", "topk")]
STRATEGIES = [("FedAvg", "fedavg"), ("FedProx", "fedprox"), ("FedAdam", "fedadam")]


class HubError(Exception):
    """An answer from the hub that is not a success: its status and message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class JobsClient:
    """The fedhub API's federated-job routes, with the session's token."""

    def __init__(self, hub_url: str, token: str, timeout: float = 30):
        self.base = f"{hub_url.rstrip('/')}/services/fedhub/api"
        self.headers = {"Authorization": f"token {token}"}
        self.timeout = timeout

    def _call(self, method: str, path: str, timeout: float | None = None, **kw) -> dict:
        try:
            r = requests.request(method, f"{self.base}/{path}", headers=self.headers,
                                 timeout=timeout or self.timeout, **kw)
        except requests.RequestException as e:
            raise HubError(502, f"the hub's fedhub API is not reachable: {e}") from None
        try:
            data = r.json()
        except ValueError:
            data = {}
        if r.status_code >= 400:
            raise HubError(r.status_code, data.get("message") if isinstance(data, dict) else r.text[:300])
        return data

    def sites(self) -> list[dict]:
        return self._call("GET", "federation/sites")["sites"]

    def launch(self, body: dict) -> dict:
        return self._call("POST", "jobs", json=body)

    def job(self, job_id: str) -> dict:
        return self._call("GET", f"jobs/{job_id}")

    def events(self, job_id: str, after: int, wait: float) -> dict:
        return self._call("GET", f"jobs/{job_id}/events", params={"after": after, "wait": wait},
                          timeout=wait + self.timeout)

    def cancel(self, job_id: str) -> dict:
        return self._call("POST", f"jobs/{job_id}/cancel", timeout=120)


def round_figures(record: dict) -> dict[str, float]:
    """A round record's numbers, flat: `metrics.train_loss` -> `train_loss`, per-site details left out."""
    out: dict[str, float] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[prefix] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)

    for key, value in record.items():
        if key not in NOT_FIGURES:
            walk("" if key == "metrics" else key, value)
    return out


def rounds_table_html(rounds: list[dict]) -> str:
    e = html.escape
    flat = [round_figures(r) for r in rounds]
    keys = sorted({k for f in flat for k in f})
    head = "".join(f"<th>{e(k)}</th>" for k in ["round", *keys])
    rows = "".join(
        "<tr>" + f"<td>{r['round']}</td>" + "".join(
            f"<td>{f[k]:.4g}</td>" if k in f else "<td></td>" for k in keys) + "</tr>"
        for r, f in zip(rounds, flat))
    return f"<table aria-label='Rounds'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def sites_table_html(site_status: dict) -> str:
    e = html.escape
    rows = "".join(f"<tr><td>{e(site)}</td><td>{e(str(s.get('state', '')))}</td>"
                   f"<td>{e(str(s.get('detail', '')))}</td></tr>" for site, s in site_status.items())
    return ("<table aria-label='Site status'><thead><tr><th>site</th><th>state</th><th>detail</th></tr>"
            f"</thead><tbody>{rows}</tbody></table>")


def find_apps(workspace: Path) -> list[str]:
    from .fl_handlers import find_flower_apps  # the same search as the panel's
    return [a["path"] for a in find_flower_apps(workspace) if "error" not in a]


class FederatedWidget(w.VBox):
    def __init__(self, app: str | None = None, sites: list[str] | None = None, rounds: int = 3,
                 strategy: str = "fedavg", compression: str = "none", workspace: str | None = None,
                 hub_url: str | None = None, token: str | None = None, **kwargs):
        ctx = session_context()
        hub_url = hub_url or (ctx.hub_url if ctx.mode == "hub" else "")
        token = token or ctx.token
        self.client = JobsClient(hub_url, token) if hub_url and token else None
        self.workspace = Path(workspace or os.getcwd()).resolve()
        self.job: dict | None = None
        self._follower: threading.Thread | None = None
        self._stop = threading.Event()

        apps = find_apps(self.workspace)
        if app and app not in apps:
            apps.insert(0, app)
        self.app = w.Dropdown(options=apps, value=app or (apps[0] if apps else None), description="App")
        self.site_boxes: dict[str, w.Checkbox] = {}
        self.sites_box = w.VBox()
        self.rounds = w.BoundedIntText(value=rounds, min=1, max=1000, description="Rounds")
        self.strategy = w.Dropdown(options=STRATEGIES, value=strategy, description="Strategy")
        self.compression = w.Dropdown(options=COMPRESSIONS, value=compression, description="Compression")
        self.launch_button = w.Button(description="Launch", button_style="primary", icon="play")
        self.cancel_button = w.Button(description="Cancel", icon="stop", disabled=True)
        self.progress = w.IntProgress(value=0, min=0, max=rounds, description="Rounds")
        self.status = w.HTML()
        self.site_table = w.HTML()
        self.rounds_table = w.HTML()
        self.failure = w.HTML()
        super().__init__([self.app, self.sites_box, self.rounds, self.strategy, self.compression,
                          w.HBox([self.launch_button, self.cancel_button]), self.progress, self.status,
                          self.site_table, self.rounds_table, self.failure], **kwargs)
        self.launch_button.on_click(lambda _: self.launch())
        self.cancel_button.on_click(lambda _: self.cancel())
        self.load_sites(selected=sites)

    # ---------------------------------------------------------------- form
    def load_sites(self, selected: list[str] | None = None) -> None:
        if self.client is None:
            self._no_hub()
            return
        try:
            offers = self.client.sites()
        except HubError as e:
            self.status.value = f"<b>Cannot list sites:</b> {html.escape(e.message)}"
            self.launch_button.disabled = True
            return
        self.site_boxes = {}
        rows = []
        for s in offers:
            box = w.Checkbox(value=bool(s["allowed"] and (selected is None or s["name"] in selected)),
                             description=f"{s['name']} ({s['kind']})", disabled=not s["allowed"], indent=False)
            self.site_boxes[s["name"]] = box
            why = html.escape(s.get("reason") or "")
            rows.append(w.HBox([box, w.HTML(why if s["allowed"] else f"<i>not offered: {why}</i>")]))
        self.sites_box.children = rows

    def _no_hub(self) -> None:
        self.launch_button.disabled = True
        self.status.value = ("<b>Federated jobs need a fedhub hub:</b> this kernel has no "
                             "FEDHUB_URL and JUPYTERHUB_API_TOKEN (a standalone session).")

    def selected_sites(self) -> list[str]:
        return [name for name, box in self.site_boxes.items() if box.value and not box.disabled]

    # ---------------------------------------------------------------- actions
    def launch(self) -> dict | None:
        if self.client is None:
            self._no_hub()
            return None
        app = self.app.value or ""
        body = {"app": str((self.workspace / app).resolve()) if app else "", "sites": self.selected_sites(),
                "rounds": int(self.rounds.value), "strategy": self.strategy.value,
                "compression": self.compression.value}
        try:
            job = self.client.launch(body)
        except HubError as e:
            self.status.value = f"<b>Cannot launch ({e.status}):</b> {html.escape(e.message)}"
            return None
        self.follow(job)
        return job

    def follow(self, job: dict) -> None:
        """Show `job` and follow it in a background thread until it ends."""
        self._stop.set()
        if self._follower is not None:
            self._follower.join(5)
        self._stop = threading.Event()
        self.show(job)
        self._follower = threading.Thread(target=self._follow, args=(job["id"], self._stop), daemon=True)
        self._follower.start()

    def _follow(self, job_id: str, stop: threading.Event) -> None:
        after, errors = 0, 0
        while not stop.is_set():
            try:
                job = self.client.job(job_id)
                if stop.is_set():
                    return
                self.show(job)
                if job["state"] in FINAL_STATES:
                    return
                after = self.client.events(job_id, after, EVENTS_WAIT).get("next", after)
                errors = 0
            except HubError as e:
                errors += 1
                if e.status < 500 or errors > 5:
                    self.status.value = f"<b>Lost the job ({e.status}):</b> {html.escape(e.message)}"
                    return
                stop.wait(2)

    def cancel(self) -> None:
        if self.client is None or self.job is None:
            return
        try:
            self.show(self.client.cancel(self.job["id"]))
        except HubError as e:
            self.status.value = f"<b>Cannot cancel ({e.status}):</b> {html.escape(e.message)}"

    def wait(self, timeout: float | None = None) -> dict | None:
        """Block until the followed job ends (scripts and tests); the job's last state."""
        if self._follower is not None:
            self._follower.join(timeout)
        return self.job

    # ---------------------------------------------------------------- view
    def show(self, job: dict) -> None:
        self.job = job
        done = len(job.get("round_metrics") or [])
        final = job["state"] in FINAL_STATES
        self.progress.max = max(1, int(job.get("rounds") or 1))
        self.progress.value = min(done, self.progress.max)
        self.progress.bar_style = {"succeeded": "success", "failed": "danger", "cancelled": "warning"}.get(
            job["state"], "info")
        self.cancel_button.disabled = final
        self.status.value = (f"Job <code>{html.escape(job['id'])}</code>: <b>{html.escape(job['state'])}</b>"
                             f" · round {done} of {job.get('rounds')}"
                             + (f" · MLflow run <code>{html.escape(job['mlflow_run_id'])}</code>"
                                if job.get("mlflow_run_id") else ""))
        self.site_table.value = sites_table_html(job.get("site_status") or {})
        self.rounds_table.value = rounds_table_html(job.get("round_metrics") or [])
        if job.get("error"):
            self.failure.value = (f"<b>Failed:</b> {html.escape(job['error'])}"
                              + (f"<pre>{html.escape(job['log_tail'])}</pre>" if job.get("log_tail") else ""))
        else:
            self.failure.value = ""
