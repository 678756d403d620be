"""Session-API routes of the Federated and Deploy panels, through a real jupyter server
(pytest-jupyter): the workspace's Flower apps and deployable models (a real MLflow
store), forwarding to a real hub's fedhub API, and the errors of each mode."""

import json
import shutil
import socket
import textwrap
from pathlib import Path

import pytest
from tornado.httpclient import HTTPClientError

pytest_plugins = ["pytest_jupyter.jupyter_server"]

EXAMPLE_APP = Path(__file__).resolve().parents[1] / "hub" / "federation" / "examples" / "digits"

FLOWER_PYPROJECT = textwrap.dedent("""\
    [project]
    name = "{name}"
    version = "1.0.0"
    [tool.flwr.app]
    publisher = "lab"
    [tool.flwr.app.components]
    serverapp = "{name}.server_app:app"
    clientapp = "{name}.client_app:app"
    [tool.flwr.app.config]
    num-server-rounds = 3
""")


def write_workspace(root):
    """Two Flower apps, a plain Python project, a broken app, hidden and deep folders."""
    for rel, name in (("apps/digits", "digits"), ("mnist", "mnist")):
        (root / rel).mkdir(parents=True)
        (root / rel / "pyproject.toml").write_text(FLOWER_PYPROJECT.format(name=name))
    (root / "plain").mkdir()
    (root / "plain" / "pyproject.toml").write_text('[project]\nname = "plain"\n')
    (root / "broken").mkdir()
    (root / "broken" / "pyproject.toml").write_text("[tool.flwr.app\npublisher = 'x'\n")
    (root / ".hidden" / "app").mkdir(parents=True)
    (root / ".hidden" / "app" / "pyproject.toml").write_text(FLOWER_PYPROJECT.format(name="hidden"))
    (root / "a" / "b" / "c" / "d").mkdir(parents=True)
    (root / "a" / "b" / "c" / "d" / "pyproject.toml").write_text(FLOWER_PYPROJECT.format(name="deep"))
    (root / "models").mkdir()
    (root / "models" / "net.onnx").write_bytes(b"\x08\x07onnx-bytes")
    (root / "notes.txt").write_text("not a model")


class API:
    """Sync calls on pytest-jupyter's own loop (the server runs there)."""

    def __init__(self, fetch, loop):
        self.fetch, self.loop = fetch, loop

    def call(self, method, *path, body=None, **params):
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        if method in ("POST", "PUT") and body is None:
            body = b"{}"
        r = self.loop.run_until_complete(self.fetch("fedhub", "api", *path, method=method, body=body,
                                                    params=params or None))
        return r.code, json.loads(r.body)

    def get(self, *path, **params):
        return self.call("GET", *path, **params)[1]

    def error(self, method, *path, body=None, **params):
        with pytest.raises(HTTPClientError) as e:
            self.call(method, *path, body=body, **params)
        data = json.loads(e.value.response.body)
        assert data["status"] == e.value.code and data["message"], data
        assert "Traceback" not in data["message"]
        return e.value.code, data["message"]


@pytest.fixture
def api(jp_fetch, jp_asyncio_loop):
    return API(jp_fetch, jp_asyncio_loop)


# ---------------------------------------------------------------- standalone


@pytest.fixture
def standalone(tmp_path, monkeypatch, jp_root_dir):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for var in ("JUPYTERHUB_API_TOKEN", "FEDHUB_URL", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    write_workspace(jp_root_dir)
    return uri


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"fedhub.server_ext": True},
                          "allow_unauthenticated_access": False}}


def test_flower_apps_in_the_workspace(standalone, api, jp_root_dir):
    listed = api.get("fl", "apps")
    assert listed["root"] == str(jp_root_dir.resolve())
    apps = {a["path"]: a for a in listed["apps"]}
    # hidden folders and folders deeper than 3 levels are not searched; plain projects are no apps
    assert sorted(apps) == ["apps/digits", "broken", "mnist"]
    digits = apps["apps/digits"]
    assert digits["name"] == "digits" and digits["publisher"] == "lab"
    assert digits["serverapp"] == "digits.server_app:app" and digits["config"] == {"num-server-rounds": 3}
    assert digits["abs_path"] == str(jp_root_dir / "apps" / "digits")
    assert "does not parse" in apps["broken"]["error"]


def test_model_picker_lists_logged_registered_and_onnx_models(standalone, api):
    import mlflow
    from sklearn.linear_model import LogisticRegression

    mlflow.set_tracking_uri(standalone)
    mlflow.set_experiment("deploy-me")
    model = LogisticRegression(max_iter=50).fit([[0.0, 1.0], [1.0, 0.0], [0.9, 0.1], [0.1, 0.8]], [0, 1, 1, 0])
    with mlflow.start_run(run_name="trained") as run:
        mlflow.sklearn.log_model(model, name="clf", registered_model_name="digits-clf",
                                 pip_requirements=["scikit-learn"])  # no slow inference of requirements
    with mlflow.start_run(run_name="no-model"):
        mlflow.log_metric("acc", 0.5)
    choices = api.get("deploy", "models")
    assert [(m["uri"], m["run_name"], m["experiment"]) for m in choices["logged_models"]] == [
        (f"runs:/{run.info.run_id}/clf", "trained", "deploy-me")]
    assert choices["logged_models"][0]["model_uri"].startswith("models:/")
    assert [(m["uri"], m["name"], m["version"]) for m in choices["registered_models"]] == [
        ("models:/digits-clf/1", "digits-clf", "1")]
    assert [f["path"] for f in choices["onnx_files"]] == ["models/net.onnx"]


def test_hub_routes_say_they_need_a_hub(standalone, api):
    cases = [("GET", ("jobs",)), ("POST", ("jobs",)), ("GET", ("jobs", "j1")),
             ("POST", ("jobs", "j1", "cancel")), ("GET", ("jobs", "j1", "events")),
             ("GET", ("fl", "sites")), ("GET", ("deployments",)), ("POST", ("deployments",)),
             ("GET", ("deployments", "d1")), ("DELETE", ("deployments", "d1")),
             ("POST", ("deployments", "d1", "rollback")), ("POST", ("deployments", "d1", "infer")),
             ("GET", ("deployments", "d1", "snippet")), ("GET", ("deployments", "d1", "events"))]
    for method, path in cases:
        code, message = api.error(method, *path)
        assert code == 409 and "needs a fedhub hub" in message and "standalone" in message, (path, message)


def test_bad_input_is_a_json_400_before_anything_runs(standalone, api):
    assert api.error("POST", "jobs", body=b"{not json")[0] == 400
    code, message = api.error("POST", "deployments", body=b"[1, 2]")
    assert code == 400 and "JSON object" in message
    for params in ({"after": "x"}, {"wait": "600"}, {"after": "-1"}):
        code, message = api.error("GET", "jobs", "j1", "events", **params)
        assert code == 400, (params, message)


def test_every_route_needs_the_servers_login(standalone, jp_base_url, http_server_client, jp_asyncio_loop):
    for path in ("fl/apps", "fl/sites", "jobs", "jobs/x/events", "deploy/models", "deployments",
                 "deployments/x/snippet"):
        with pytest.raises(HTTPClientError) as e:
            jp_asyncio_loop.run_until_complete(http_server_client.fetch(
                f"{jp_base_url}fedhub/api/{path}", headers={"Authorization": "token wrong"}))
        assert e.value.code == 403, path


# ---------------------------------------------------------------- hub unreachable


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the with ends: nothing listens


@pytest.fixture
def unreachable_hub(tmp_path, monkeypatch, jp_root_dir):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "unused")
    monkeypatch.setenv("FEDHUB_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "session-token")
    write_workspace(jp_root_dir)


def test_hub_unreachable_is_a_json_502(unreachable_hub, api):
    for method, path, body in (("GET", ("jobs",), None), ("GET", ("deployments", "d1"), None),
                               ("POST", ("jobs",), {"app": "apps/digits", "rounds": 2})):
        code, message = api.error(method, *path, body=body)
        assert code == 502 and "not reachable" in message, (path, message)


def test_paths_are_checked_in_the_session_before_the_hub(unreachable_hub, api):
    """App and ONNX paths are the session's workspace: checked here, so the hub is not asked."""
    cases = [
        ("jobs", {"app": "../../etc"}, "outside your workspace"),
        ("jobs", {"app": "plain"}, "no [tool.flwr.app] table"),
        ("jobs", {"app": "nowhere"}, "has no pyproject.toml"),
        ("jobs", {"app": "broken"}, "does not parse"),
        ("jobs", {"app": ""}, "expected the path"),
        ("deployments", {"model": "notes.txt"}, "not an .onnx file"),
        ("deployments", {"model": "missing.onnx"}, "no file"),
        ("deployments", {"model": "/etc/passwd"}, "outside your workspace"),
        ("deployments", {"model": 7}, "expected runs:/"),
    ]
    for route, body, needle in cases:
        code, message = api.error("POST", route, body=body)
        assert code == 400 and needle in message, (body, message)


# ---------------------------------------------------------------- through a real hub


@pytest.fixture(scope="module")
def real_hub(module_hub_factory):
    hub = module_hub_factory(None, args=["--no-mlflow"]).start()
    hub.user_token = hub.create_user("pat")
    return hub


class TestThroughARealHub:
    """The session forwards to a real `fedhub up`: its answers and 4xx come back unchanged."""

    @pytest.fixture
    def jp_root_dir(self, real_hub):
        home = real_hub.data_dir / "homes" / "pat"  # the session's root is the user's home, as under the hub
        home.mkdir(parents=True, exist_ok=True)
        return home

    @pytest.fixture(autouse=True)
    def session_env(self, real_hub, jp_root_dir, tmp_path, monkeypatch):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", real_hub.user_token)
        monkeypatch.setenv("FEDHUB_URL", real_hub.url)
        monkeypatch.setenv("JUPYTERHUB_API_TOKEN", real_hub.user_token)
        if not (jp_root_dir / "digits").exists():
            shutil.copytree(EXAMPLE_APP, jp_root_dir / "digits")
            (jp_root_dir / "models").mkdir()
            (jp_root_dir / "models" / "net.onnx").write_bytes(b"\x08\x07onnx-bytes")

    def test_sites_and_lists_come_from_the_hub(self, api, real_hub):
        offered = api.get("fl", "sites")
        direct = real_hub.fedhub_api("/federation/sites", real_hub.user_token).json()
        assert offered == direct and {s["name"] for s in offered["sites"]} >= {"local-a", "local-b"}
        assert api.get("jobs") == {"jobs": []}
        assert api.get("deployments") == {"deployments": []}

    def test_the_hubs_4xx_pass_through(self, api):
        cases = [
            ("POST", ("jobs",), {"app": "digits", "sites": ["atlantis"], "rounds": 2}, 400, "unknown site"),
            ("POST", ("jobs",), {"app": "digits", "sites": ["local-a"], "rounds": 0}, 400, "rounds"),
            ("POST", ("jobs",), {"app": "digits", "sites": ["local-a"], "rounds": 2, "colour": 1}, 400,
             "unknown field"),
            ("GET", ("jobs", "no-such-job"), None, 404, ""),
            ("GET", ("jobs", "no-such-job", "events"), None, 404, ""),
            ("POST", ("jobs", "no-such-job", "cancel"), None, 404, ""),
            ("POST", ("deployments",), {"model": "runs:/abc/model", "name": "Bad Name!"}, 400, "name"),
            ("POST", ("deployments",), {"model": "models/net.onnx", "name": "net", "target": "moon"}, 400,
             "target"),
            ("GET", ("deployments", "nope"), None, 404, "No deployment"),
            ("DELETE", ("deployments", "nope"), None, 404, "No deployment"),
            ("POST", ("deployments", "nope", "infer"), {"sample": True}, 404, "No deployment"),
            ("GET", ("deployments", "nope", "snippet"), None, 404, "No deployment"),
        ]
        for method, path, body, status, needle in cases:
            code, message = api.error(method, *path, body=body)
            assert code == status and needle in message, (path, body, code, message)
