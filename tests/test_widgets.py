"""The Experiments ipywidget over a real MLflow store."""

import mlflow
import pytest

from fedhub.server_ext.widgets import ExperimentsWidget


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("widget-exp")
    for i in range(3):
        with mlflow.start_run(run_name=f"w{i}"):
            mlflow.log_param("depth", i)
            for step in range(4):
                mlflow.log_metric("loss", 1.0 / (i + step + 1), step=step)
    return uri


def test_widget_lists_sorts_and_plots(store):
    widget = ExperimentsWidget(experiment="widget-exp", order_by="metrics.loss ASC")
    assert widget.experiment.label == "widget-exp"
    table = widget.table.value
    assert table.index("w2") < table.index("w1") < table.index("w0")  # sorted by loss, ascending
    assert "<th>loss</th>" in table and "<th>depth</th>" in table
    widget.sort.value = "metrics.loss DESC"  # re-sorts on its own
    assert widget.table.value.index("w0") < widget.table.value.index("w2")
    widget.run.value = widget.run.options[0][1]
    assert widget.metric.options == ("loss",)
    widget.metric.value = "loss"
    assert len(widget.chart.outputs) >= 1  # the matplotlib figure


def test_widget_reports_bad_sort_instead_of_raising(store):
    widget = ExperimentsWidget(experiment="widget-exp")
    widget.sort.value = "metrics.loss SIDEWAYS"
    assert "Error" in widget.status.value
