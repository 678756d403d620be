"""The Federated ipywidget: against a real hub (real SuperLink and SuperNodes on the local
sites, the example digits app), and without one."""

import shutil
from pathlib import Path

import pytest

from fedhub.server_ext.fl_widget import FederatedWidget, round_figures

EXAMPLE_APP = Path(__file__).resolve().parents[1] / "hub" / "federation" / "examples" / "digits"


def test_without_a_hub_it_says_so(tmp_path, monkeypatch):
    for var in ("JUPYTERHUB_API_TOKEN", "FEDHUB_URL"):
        monkeypatch.delenv(var, raising=False)
    shutil.copytree(EXAMPLE_APP, tmp_path / "digits")
    widget = FederatedWidget(workspace=str(tmp_path))
    assert widget.app.options == ("digits",)  # found in the workspace, like the panel
    assert widget.launch_button.disabled and "need a fedhub hub" in widget.status.value
    assert widget.launch() is None


def test_round_figures_flatten_a_round_record():
    record = {"round": 2, "time": 1.7e9, "metrics": {"train_loss": 0.5, "eval_accuracy": 0.9},
              "nodes": {"local-a": {"train_loss": 0.4}}, "bytes_round": 1000, "bytes_total": 3000}
    assert round_figures(record) == {"train_loss": 0.5, "eval_accuracy": 0.9, "bytes_round": 1000,
                                     "bytes_total": 3000}


@pytest.fixture(scope="module")
def hub_home(module_hub_factory):
    hub = module_hub_factory(None, args=["--no-mlflow", "--no-inference"]).start()
    token = hub.create_user("wid")
    home = hub.data_dir / "homes" / "wid"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copytree(EXAMPLE_APP, home / "digits")
    return hub, token, home


@pytest.mark.hub
def test_a_real_job_and_a_failing_one_side_by_side(hub_home):
    """Each job has its own SuperLink and SuperNodes: both run at once, and each widget follows its own."""
    hub, token, home = hub_home
    broken = home / "broken-digits"
    shutil.copytree(EXAMPLE_APP, broken)
    server_app = broken / "digits_app" / "server_app.py"
    server_app.write_text(server_app.read_text().replace(
        '    cfg = context.run_config\n',
        '    raise RuntimeError("the data went missing on purpose")\n'))
    widget = FederatedWidget(app="digits", rounds=1, workspace=str(home), hub_url=hub.url, token=token)
    failing = FederatedWidget(app="broken-digits", rounds=1, workspace=str(home), hub_url=hub.url, token=token,
                              sites=["local-a"])
    assert {"local-a", "local-b"} <= set(widget.site_boxes)
    assert widget.selected_sites() == sorted(widget.site_boxes)  # every offered site, unless told
    assert failing.selected_sites() == ["local-a"]
    job = widget.launch()
    assert job is not None and job["state"] in ("queued", "starting"), widget.status.value
    assert not widget.cancel_button.disabled
    assert failing.launch() is not None

    final = widget.wait(300)
    assert final["state"] == "succeeded", (final.get("error"), final.get("log_tail"), hub.log_tail())
    assert widget.progress.max == 1 and widget.progress.value == 1
    assert widget.progress.bar_style == "success" and widget.cancel_button.disabled
    assert "succeeded" in widget.status.value and "round 1 of 1" in widget.status.value
    assert "local-a" in widget.site_table.value and "local-b" in widget.site_table.value
    figures = round_figures(final["round_metrics"][0])
    assert figures and all(f"<th>{k}</th>" in widget.rounds_table.value for k in figures)
    assert widget.failure.value == ""

    failed = failing.wait(300)
    assert failed["state"] == "failed", failed
    assert failing.progress.bar_style == "danger" and "failed" in failing.status.value
    assert "Failed:" in failing.failure.value
    assert "the data went missing on purpose" in failing.failure.value  # from the ServerApp's log tail


@pytest.mark.hub
def test_cancel_and_bad_input(hub_home, tmp_path):
    hub, token, home = hub_home
    widget = FederatedWidget(app="digits", rounds=50, workspace=str(home), hub_url=hub.url, token=token,
                             sites=["local-a"])
    assert widget.selected_sites() == ["local-a"]
    assert widget.launch() is not None
    widget.cancel()
    final = widget.wait(120)
    assert final["state"] == "cancelled" and widget.cancel_button.disabled
    assert "cancelled" in widget.status.value

    outside = tmp_path / "elsewhere"
    shutil.copytree(EXAMPLE_APP, outside / "digits")
    stray = FederatedWidget(app="digits", workspace=str(outside), hub_url=hub.url, token=token)
    assert stray.launch() is None
    assert "Cannot launch (400)" in stray.status.value and "outside your home" in stray.status.value
