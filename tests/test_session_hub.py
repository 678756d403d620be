"""Inside a real session spawned by the real hub: MLflow needs no setup, and the session API
works in hub mode (the session's own token reaches the hub's services)."""

import re
import subprocess
import sys
import time

import nbformat
import pytest
import requests

from conftest import fedhub_env
from kernel_exec import execute

pytestmark = pytest.mark.hub


@pytest.fixture(scope="module")
def hub(module_hub_factory):
    hub = module_hub_factory(None, args=["--no-inference"])  # default catalogue, MLflow on
    with open(hub.data_dir / "jupyterhub_config.py", "a") as f:
        f.write('\nc.JupyterHub.load_groups = {"lab": {"users": ["omar"]}}\n')
    return hub.start()


def test_notebook_logs_to_mlflow_with_nothing_configured_and_panels_see_it(hub):
    token = hub.create_user("nina")
    assert hub.spawn("nina", gpus=1, gpu_type="t4").status_code in (201, 202)
    hub.wait_ready("nina")
    server = f"{hub.url}/user/nina/"
    code = ("import mlflow, os\n"
            "mlflow.set_experiment('from-notebook')\n"
            "with mlflow.start_run(run_name='cell') as run:\n"
            "    mlflow.log_param('lr', 0.01)\n"
            "    for step in range(3): mlflow.log_metric('acc', 0.9 + step / 100, step=step)\n"
            "print(run.info.run_id)\n")
    deadline = time.monotonic() + 120
    while True:  # MLflow may still be starting right after the hub came up
        result = execute(server, token, code)
        if result["error"] is None or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert result["error"] is None, result["error"]
    run_id = result["stdout"].strip().splitlines()[-1]

    headers = {"Authorization": f"token {token}"}
    api = f"{server}fedhub/api"
    session = requests.get(f"{api}/session", headers=headers).json()
    assert session["mode"] == "hub" and session["site"] == "local-b" and session["gpu_type"] == "t4"
    assert session["tracking_uri"] == f"{hub.url}/services/mlflow"
    exps = requests.get(f"{api}/experiments", headers=headers).json()["experiments"]
    exp_id = next(e["experiment_id"] for e in exps if e["name"] == "from-notebook")
    runs = requests.get(f"{api}/experiments/{exp_id}/runs", headers=headers,
                        params={"order_by": "metrics.acc DESC"}).json()
    assert [r["run_id"] for r in runs["runs"]] == [run_id]
    assert runs["runs"][0]["metrics"]["acc"] == pytest.approx(0.92)
    history = requests.get(f"{api}/runs/{run_id}/metrics/acc", headers=headers).json()["history"]
    assert [h["value"] for h in history] == pytest.approx([0.9, 0.91, 0.92])
    sites = requests.get(f"{api}/sites", headers=headers).json()["sites"]
    assert {s["name"] for s in sites} == {"local-a", "local-b"}
    # another user's session API cannot see nina's run: MLflow's permissions apply
    other = hub.create_user("omar")
    assert hub.spawn("omar").status_code in (201, 202)
    hub.wait_ready("omar")
    r = requests.get(f"{hub.url}/user/omar/fedhub/api/runs/{run_id}", headers={"Authorization": f"token {other}"})
    assert r.status_code == 403, r.text
    r = requests.get(f"{hub.url}/user/nina/fedhub/api/runs/{run_id}", headers={"Authorization": f"token {other}"})
    assert r.status_code in (302, 403)  # omar cannot use nina's server at all


AUTO_CELL = ("import mlflow\n"
             "mlflow.set_experiment('auto-capture')\n"
             "with mlflow.start_run() as run:\n"
             "    mlflow.log_metric('acc', 0.75)\n"
             "print(run.info.run_id)\n")


RUN_ID = re.compile(r"\b[0-9a-f]{32}\b")


def _session(hub, name: str) -> str:
    token = hub.create_user(name)
    if hub.server(name) is None:
        assert hub.spawn(name).status_code in (201, 202)
    hub.wait_ready(name)
    return token


def _wait_for_mlflow(hub, token: str) -> None:
    deadline = time.monotonic() + 120
    while True:  # MLflow may still be starting right after the hub came up
        r = requests.get(f"{hub.url}/services/mlflow/api/2.0/mlflow/experiments/search?max_results=1",
                         headers={"Authorization": f"token {token}"})
        if r.status_code != 503 or time.monotonic() > deadline:
            return
        time.sleep(1)


def _mlflow(hub, token: str, path: str) -> dict:
    r = requests.get(f"{hub.url}/services/mlflow/api/2.0/mlflow/{path}", headers={"Authorization": f"token {token}"})
    assert r.status_code == 200, r.text
    return r.json()


def test_plain_start_run_in_a_notebook_is_captured_automatically_and_reproduces(hub):
    token = _session(hub, "nina")
    server = f"{hub.url}/user/nina/"
    headers = {"Authorization": f"token {token}"}
    _wait_for_mlflow(hub, token)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(AUTO_CELL)]
    r = requests.put(f"{server}api/contents/auto.ipynb", headers=headers,
                     json={"type": "notebook", "format": "json", "content": nb})
    assert r.status_code in (200, 201), r.text
    # the notebook's one cell, in the notebook's kernel; then (test harness, not the notebook)
    # wait for the background upload before the kernel is shut down
    result = execute(server, token, [AUTO_CELL, "from fedhub.server_ext.capture import wait_all; wait_all(120)"],
                     path="auto.ipynb")
    assert result["error"] is None, result["error"]
    run_id = RUN_ID.findall(result["stdout"])[-1]
    # switched off (FEDHUB_AUTO_CAPTURE=0, as the user or c.FedhubCapture.auto_capture=False sets it)
    off = execute(server, token, "import os; os.environ['FEDHUB_AUTO_CAPTURE'] = '0'\n" + AUTO_CELL)
    assert off["error"] is None, off["error"]

    tags = {t["key"]: t["value"] for t in _mlflow(hub, token, f"runs/get?run_id={run_id}")["run"]["data"]["tags"]}
    assert tags["fedhub.capture"] == "1" and tags["fedhub.capture.mode"] == "auto"
    assert tags["fedhub.entrypoint.kind"] == "notebook" and tags["fedhub.notebook"].endswith("/homes/nina/auto.ipynb")
    assert tags["fedhub.site"] == hub.session_env("nina")["FEDHUB_SITE"] and tags["fedhub.seed"] == "none"
    files = {f["path"] for f in _mlflow(hub, token, f"artifacts/list?run_id={run_id}&path=fedhub")["files"]}
    assert {"fedhub/notebook.ipynb", "fedhub/notebook.html", "fedhub/notebook.py", "fedhub/requirements.lock",
            "fedhub/environment.json"} <= files, files
    off_tags = _mlflow(hub, token, f"runs/get?run_id={RUN_ID.findall(off['stdout'])[-1]}")["run"]["data"]["tags"]
    assert not [t["key"] for t in off_tags if t["key"].startswith("fedhub.")]
    assert requests.get(f"{server}fedhub/api/runs/{run_id}", headers=headers).json()["reproducible"] is True
    # the capture left a signed provenance record of the run, with what it captured
    recs = hub.fedhub_api(f"/provenance?kind=run&subject={run_id}", token).json()["records"]
    assert len(recs) == 1 and recs[0]["who"] == "nina", recs
    assert recs[0]["body"]["tags"]["fedhub.capture.mode"] == "auto"
    assert len(recs[0]["body"]["captured_files_sha256"]["notebook.ipynb"]) == 64

    # `fedhub reproduce` re-executes the captured notebook and finds the same metric
    out = subprocess.run([sys.executable, "-m", "fedhub.server_ext.cli", "--hub", hub.url, "--token", token,
                          "reproduce", run_id], capture_output=True, text=True, timeout=300, env=fedhub_env())
    assert out.returncode == 0, out.stdout + out.stderr
    assert "acc" in out.stdout and "identical" in out.stdout


def test_experiments_panel_shares_through_the_session_api(hub):
    token = _session(hub, "nina")
    omar = hub.create_user("omar")
    headers = {"Authorization": f"token {token}"}
    _wait_for_mlflow(hub, token)
    r = requests.post(f"{hub.url}/services/mlflow/api/2.0/mlflow/experiments/create", headers=headers,
                      json={"name": "nina-shared"})
    assert r.status_code == 200, r.text
    exp_id = r.json()["experiment_id"]
    api = f"{hub.url}/user/nina/fedhub/api/experiments/{exp_id}/shares"
    assert requests.get(api, headers=headers).json()["shares"] == []
    r = requests.post(api, headers=headers, json={"group": "lab", "permission": "edit"})
    assert r.status_code == 200 and r.json()["permission"] == "EDIT", r.text
    assert requests.get(api, headers=headers).json()["shares"] == [{"group": "lab", "permission": "EDIT"}]
    assert _mlflow(hub, omar, f"experiments/get?experiment_id={exp_id}")["experiment"]["name"] == "nina-shared"
    r = requests.post(api, headers=headers, json={"group": "nope"})
    assert r.status_code == 404 and r.json()["message"] == "No hub group 'nope'"
    r = requests.post(api, headers=headers, json={"permission": "READ"})
    assert r.status_code == 400 and "group" in r.json()["message"]
    r = requests.post(api, headers=headers, data="{not json")
    assert r.status_code == 400 and r.headers["Content-Type"].startswith("application/json")
    r = requests.delete(f"{api}/lab", headers=headers)
    assert r.status_code == 200 and r.json()["permission"] is None
    r = requests.get(f"{hub.url}/services/mlflow/api/2.0/mlflow/experiments/get?experiment_id={exp_id}",
                     headers={"Authorization": f"token {omar}"})
    assert r.status_code == 403
    r = requests.delete(f"{api}/lab", headers=headers)
    assert r.status_code == 404 and "not shared" in r.json()["message"]


def test_experiments_widget_shares_too(hub, monkeypatch):
    import mlflow

    from fedhub.server_ext.widgets import ExperimentsWidget

    mlflow.set_tracking_uri(None)  # a URI another test set in this process would win over the env

    token = hub.create_user("wanda")
    _wait_for_mlflow(hub, token)
    r = requests.post(f"{hub.url}/services/mlflow/api/2.0/mlflow/experiments/create",
                      headers={"Authorization": f"token {token}"}, json={"name": "wanda-exp"})
    assert r.status_code == 200, r.text
    exp_id = r.json()["experiment_id"]
    # what a session's kernel has (the widget runs in this process, as in a VS Code notebook)
    for k, v in {"JUPYTERHUB_API_TOKEN": token, "FEDHUB_URL": hub.url, "MLFLOW_TRACKING_TOKEN": token,
                 "MLFLOW_TRACKING_URI": f"{hub.url}/services/mlflow"}.items():
        monkeypatch.setenv(k, v)
    widget = ExperimentsWidget(experiment="wanda-exp")
    assert widget.experiment.value == exp_id and widget.shares.value == "Shared with: no group"
    widget.share_group.value, widget.share_permission.value = "lab", "EDIT"
    widget.share_button.click()
    assert widget.shares.value == "Shared with: lab (EDIT)" and widget.status.value == ""
    widget.share_group.value = "nope"
    widget.share_button.click()
    assert "No hub group &#x27;nope&#x27;" in widget.status.value
    widget.share_group.value = "lab"
    widget.unshare_button.click()
    assert widget.shares.value == "Shared with: no group"
