"""The session API (server extension) through a real jupyter server (pytest-jupyter),
standalone mode against a real MLflow store. Contract: docs/session-api.md."""

import json

import pytest
from tornado.httpclient import HTTPClientError

pytest_plugins = ["pytest_jupyter.jupyter_server"]


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for var in ("JUPYTERHUB_API_TOKEN", "FEDHUB_URL", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FEDHUB_SITE", "local-a")
    monkeypatch.setenv("FEDHUB_GPU_TYPE", "a100")
    monkeypatch.setenv("FEDHUB_GPUS", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    # the runs logged here stand for uncaptured ones; the server extension, which runs in this
    # test process, would otherwise switch automatic capture on for the whole process
    monkeypatch.setenv("FEDHUB_AUTO_CAPTURE", "0")
    return uri


@pytest.fixture
def jp_server_config(tracking_uri):
    return {"ServerApp": {"jpserver_extensions": {"fedhub.server_ext": True},
                          "allow_unauthenticated_access": False}}


@pytest.fixture
def runs(tracking_uri):
    import mlflow
    mlflow.set_tracking_uri(tracking_uri)
    exp = mlflow.set_experiment("digits")
    ids = []
    for i in range(7):
        with mlflow.start_run(run_name=f"r{i}") as run:
            mlflow.log_param("lr", 0.1 * (i + 1))
            for step in range(3):
                mlflow.log_metric("acc", 0.5 + 0.05 * i + 0.01 * step, step=step)
            ids.append(run.info.run_id)
    yield exp.experiment_id, ids
    mlflow.set_tracking_uri(None)  # back to $MLFLOW_TRACKING_URI for the next test in this process


class API:
    """Sync calls on pytest-jupyter's own loop (the server runs there, not on pytest-asyncio's)."""

    def __init__(self, fetch, loop):
        self.fetch, self.loop = fetch, loop

    def get(self, *path, **params):
        r = self.loop.run_until_complete(self.fetch("fedhub", "api", *path, params=params or None))
        return json.loads(r.body)

    def error(self, *path, method="GET", **params):
        with pytest.raises(HTTPClientError) as e:
            self.loop.run_until_complete(self.fetch(
                "fedhub", "api", *path, method=method, params=params or None,
                body=b"{}" if method == "POST" else None))
        body = json.loads(e.value.response.body)
        assert body["status"] == e.value.code and body["message"]
        return e.value.code, body["message"]


@pytest.fixture
def api(jp_fetch, jp_asyncio_loop):
    return API(jp_fetch, jp_asyncio_loop)


def test_session_and_sites_standalone(api):
    s = api.get("session")
    assert s["mode"] == "standalone" and s["site"] == "local-a" and s["gpu_type"] == "a100"
    assert s["gpus"] == 1 and s["cuda_visible_devices"] == "0"
    assert api.get("sites") == {"sites": [], "updated": None}


def test_experiments_runs_sorted_and_paginated(api, runs):
    exp_id, ids = runs
    exps = api.get("experiments")
    assert "digits" in [e["name"] for e in exps["experiments"]]
    page1 = api.get("experiments", exp_id, "runs", max_results="3", order_by="metrics.acc DESC")
    assert [r["run_name"] for r in page1["runs"]] == ["r6", "r5", "r4"]
    assert page1["metric_keys"] == ["acc"] and page1["param_keys"] == ["lr"]
    assert page1["runs"][0]["metrics"]["acc"] == pytest.approx(0.82)
    page2 = api.get("experiments", exp_id, "runs", max_results="3", order_by="metrics.acc DESC",
                      page_token=page1["next_page_token"])
    assert [r["run_name"] for r in page2["runs"]] == ["r3", "r2", "r1"]
    asc = api.get("experiments", exp_id, "runs", max_results="2", order_by="metrics.acc ASC")
    assert [r["run_name"] for r in asc["runs"]] == ["r0", "r1"]
    filtered = api.get("experiments", exp_id, "runs", filter="params.lr = '0.1'")
    assert [r["run_name"] for r in filtered["runs"]] == ["r0"]


def test_run_metric_history_and_compare(api, runs):
    _, ids = runs
    run = api.get("runs", ids[2])
    assert run["run_name"] == "r2" and run["params"] == {"lr": "0.30000000000000004"} and not run["reproducible"]
    hist = api.get("runs", ids[2], "metrics", "acc")
    assert [h["step"] for h in hist["history"]] == [0, 1, 2]
    assert hist["history"][-1]["value"] == pytest.approx(0.62)
    cmp_ = api.get("compare", run_ids=",".join(ids[:3]))
    assert [r["run_name"] for r in cmp_["runs"]] == ["r0", "r1", "r2"] and cmp_["metric_keys"] == ["acc"]


def test_bad_input_is_a_json_4xx(api, runs):
    exp_id, ids = runs
    cases = [
        (("runs", "0" * 32), {}, 404),
        (("experiments", "987654", "runs"), {}, 404),
        (("experiments", exp_id, "runs"), {"max_results": "100000"}, 400),
        (("experiments", exp_id, "runs"), {"max_results": "many"}, 400),
        (("experiments", exp_id, "runs"), {"order_by": "acc; DROP TABLE runs"}, 400),
        (("experiments", exp_id, "runs"), {"filter": "metrics.acc >>> 1"}, 400),
        (("runs", ids[0], "metrics", "nope"), {}, 404),
        (("compare",), {"run_ids": ids[0]}, 400),
        (("reproductions", "nope"), {}, 404),
        (("no", "such", "route"), {}, 404),
    ]
    for path, params, status in cases:
        code, message = api.error(*path, **params)
        assert code == status, (path, params, code, message)
    code, message = api.error("runs", ids[0], "reproduce", method="POST")
    assert code == 400 and "not captured" in message


def test_every_route_needs_the_servers_login(jp_base_url, http_server_client, jp_asyncio_loop, runs):
    for path in ("session", "sites", "experiments", f"runs/{runs[1][0]}", f"runs/{runs[1][0]}/reproduce"):
        url = f"{jp_base_url}fedhub/api/{path}"
        with pytest.raises(HTTPClientError) as e:
            jp_asyncio_loop.run_until_complete(http_server_client.fetch(url, headers={"Authorization": "token wrong"}))
        assert e.value.code == 403, path


def test_rest_shape_and_client_shape_of_a_run_agree(runs, tracking_uri):
    """The session API reads runs from MLflow's REST JSON when MLflow is a server:
    both readings of the same run must give the same answer."""
    from mlflow.tracking import MlflowClient
    from mlflow.utils.proto_json_utils import message_to_json

    from fedhub.server_ext.tracking import rest_run_to_dict, run_to_dict
    import mlflow
    with mlflow.start_run(experiment_id=runs[0]) as r:
        mlflow.set_tag("fedhub.capture", "1")
        mlflow.log_metric("acc", 0.5)
    run = MlflowClient(tracking_uri).get_run(r.info.run_id)
    rest = json.loads(message_to_json(run.to_proto()))  # what /api/2.0/mlflow/runs/* returns
    assert rest_run_to_dict(rest) == run_to_dict(run)
    assert rest_run_to_dict(rest)["reproducible"] is True
