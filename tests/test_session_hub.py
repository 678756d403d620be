"""Inside a real session spawned by the real hub: MLflow needs no setup, and the session API
works in hub mode (the session's own token reaches the hub's services)."""

import time

import pytest
import requests

from kernel_exec import execute

pytestmark = pytest.mark.hub


@pytest.fixture(scope="module")
def hub(module_hub_factory):
    return module_hub_factory(None, args=[]).start()  # default catalogue, MLflow on


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
