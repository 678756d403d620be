"""The Experiments view as an ipywidget, for VS Code and notebook users without the panels.

    from fedhub.server_ext.widgets import ExperimentsWidget
    ExperimentsWidget()

Same data as the Experiments panel (the unmodified mlflow client, so the hub's MLflow
inside a session, a local store elsewhere).
"""

from __future__ import annotations

import html

import ipywidgets as w

from . import client
from .tracking import Tracking


class ExperimentsWidget(w.VBox):
    page_size = 50

    def __init__(self, experiment: str | None = None, order_by: str = "attributes.start_time DESC", **kwargs):
        self.tracking = Tracking(executor=None)
        self.order_by = order_by
        self.experiment = w.Dropdown(description="Experiment", layout=w.Layout(width="50%"))
        self.sort = w.Text(value=order_by, description="Order by", placeholder="metrics.acc DESC",
                           continuous_update=False)
        self.refresh_button = w.Button(description="Refresh", icon="refresh")
        self.table = w.HTML()
        self.run = w.Dropdown(description="Run")
        self.metric = w.Dropdown(description="Metric")
        self.chart = w.Output()
        self.status = w.HTML()
        # sharing with hub groups (hub sessions only)
        self.shares = w.HTML()
        self.share_group = w.Text(description="Hub group", placeholder="lab")
        self.share_permission = w.Dropdown(options=["READ", "USE", "EDIT", "MANAGE"], value="READ",
                                           description="Permission")
        self.share_button = w.Button(description="Share")
        self.unshare_button = w.Button(description="Unshare")
        self.share_row = w.VBox([self.shares, w.HBox([self.share_group, self.share_permission,
                                                      self.share_button, self.unshare_button])])
        self.share_row.layout.display = None if client.session_context().mode == "hub" else "none"
        super().__init__([w.HBox([self.experiment, self.refresh_button]), self.share_row, self.sort, self.table,
                          w.HBox([self.run, self.metric]), self.chart, self.status], **kwargs)
        self.share_button.on_click(lambda _: self._share(unshare=False))
        self.unshare_button.on_click(lambda _: self._share(unshare=True))
        self.experiment.observe(lambda _: self.show_runs(), "value")
        self.run.observe(lambda _: self._metrics_of_run(), "value")
        self.metric.observe(lambda _: self.plot(), "value")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.sort.observe(lambda _: self.show_runs(), "value")
        self.refresh(select=experiment)

    def refresh(self, select: str | None = None) -> None:
        try:
            exps = self.tracking.experiments(100, None)["experiments"]
        except Exception as e:
            self.status.value = f"<b>Could not reach MLflow:</b> {html.escape(str(e))}"
            return
        self.experiment.options = [(e["name"], e["experiment_id"]) for e in exps]
        wanted = [e["experiment_id"] for e in exps if select in (e["name"], e["experiment_id"])]
        if wanted:
            self.experiment.value = wanted[0]
        self.show_runs()

    def show_shares(self) -> None:
        if self.experiment.value is None or self.share_row.layout.display == "none":
            return
        try:
            shares = client.experiment_shares(self.experiment.value)["shares"]
        except client.ShareError as e:
            self.shares.value = f"<b>Sharing:</b> {html.escape(e.message)}"
            return
        listed = ", ".join(f"{s['group']} ({s['permission']})" for s in shares) or "no group"
        self.shares.value = f"Shared with: {html.escape(listed)}"

    def _share(self, unshare: bool) -> None:
        group = self.share_group.value.strip()
        if not group or self.experiment.value is None:
            self.status.value = "<b>Sharing:</b> name a hub group"
            return
        try:
            if unshare:
                client.unshare_experiment(self.experiment.value, group)
            else:
                client.share_experiment(self.experiment.value, group, self.share_permission.value)
        except client.ShareError as e:
            self.status.value = f"<b>Sharing:</b> {html.escape(e.message)}"
            return
        self.status.value = ""
        self.show_shares()

    def show_runs(self) -> None:
        self.show_shares()
        if self.experiment.value is None:
            self.table.value = "<i>No experiments yet.</i>"
            return
        try:
            page = self.tracking.runs(self.experiment.value, max_results=self.page_size, page_token=None,
                                      order_by=[self.sort.value] if self.sort.value else None, filter_string="")
        except Exception as e:
            self.status.value = f"<b>Error:</b> {html.escape(getattr(e, 'message', str(e)))}"
            return
        self.status.value = ""
        self.runs = page["runs"]
        self.table.value = runs_table_html(self.runs, page["metric_keys"], page["param_keys"])
        self.run.options = [(r["run_name"] or r["run_id"][:8], r["run_id"]) for r in self.runs]

    def _metrics_of_run(self) -> None:
        run = next((r for r in getattr(self, "runs", []) if r["run_id"] == self.run.value), None)
        self.metric.options = sorted(run["metrics"]) if run else []

    def plot(self) -> None:
        self.chart.clear_output()
        if not self.run.value or not self.metric.value:
            return
        history = self.tracking.metric_history(self.run.value, self.metric.value)["history"]
        import io

        from IPython.display import Image
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 3))  # no pyplot: no global state, works outside a kernel too
        ax = fig.subplots()
        ax.plot([h["step"] for h in history], [h["value"] for h in history], marker="o")
        ax.set_xlabel("step")
        ax.set_ylabel(self.metric.value)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
        self.chart.append_display_data(Image(data=buf.getvalue(), format="png"))


def runs_table_html(runs: list[dict], metric_keys: list[str], param_keys: list[str]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(k)}</th>" for k in ["run", "status", *metric_keys, *param_keys])
    rows = []
    for r in runs:
        cells = [r["run_name"] or r["run_id"][:8], r["status"],
                 *(f"{r['metrics'][k]:.4g}" if k in r["metrics"] else "" for k in metric_keys),
                 *(r["params"].get(k, "") for k in param_keys)]
        rows.append("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in cells) + "</tr>")
    return f"<table aria-label='Runs'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
