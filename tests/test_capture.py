"""fedhub.server_ext.track(): what a run records, from notebooks executed for real (nbclient,
fresh kernels) into a local MLflow store (SQLite). No hub needed."""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import subprocess
import sys

import mlflow
import pytest

import capture_lab
from fedhub.server_ext import capture

CONTRACT_TAGS = ("fedhub.capture", "fedhub.site", "fedhub.gpu_type", "fedhub.gpus", "fedhub.host",
                 "fedhub.python", "fedhub.git.commit", "fedhub.git.dirty", "fedhub.seed",
                 "fedhub.notebook", "fedhub.entrypoint")
CONTRACT_ARTIFACTS = ("notebook.ipynb", "notebook.html", "notebook.py", "git.diff", "requirements.lock",
                      "conda.yaml", "inputs.json")


# the capture project (git repo, notebooks, MLflow store) is built once for both modules
pytestmark = pytest.mark.usefixtures("capture_tracking")


@pytest.fixture(scope="session")
def lab(capture_project):
    return capture_project


@pytest.fixture(scope="session")
def det_files(lab, tmp_path_factory):
    dest = tmp_path_factory.mktemp("det-artifacts")
    mlflow.artifacts.download_artifacts(run_id=lab.det_run, artifact_path="fedhub", dst_path=str(dest),
                                        tracking_uri=lab.tracking_uri)
    return dest / "fedhub"


def test_every_capture_tag_is_recorded(lab):
    tags = mlflow.MlflowClient().get_run(lab.det_run).data.tags
    missing = [t for t in CONTRACT_TAGS if t not in tags]
    assert not missing, missing
    nb = lab.project / "nb" / "digits.ipynb"
    head = capture_lab.git(lab.project, "rev-parse", "HEAD").strip()
    assert tags["fedhub.capture"] == "1"
    # found through JPY_SESSION_NAME (relative to the server root), as under jupyter-server
    assert tags["fedhub.notebook"] == tags["fedhub.entrypoint"] == str(nb)
    assert tags["fedhub.entrypoint.kind"] == "notebook"
    assert tags["fedhub.git.commit"] == head and tags["fedhub.git.dirty"] == "true"
    assert tags["fedhub.git.branch"] == "main" and tags["fedhub.git.remote"].endswith("digits.git")
    assert tags["fedhub.seed"] == "7"
    assert (tags["fedhub.site"], tags["fedhub.gpu_type"], tags["fedhub.gpus"]) == ("test-site", "a100", "2")
    assert tags["fedhub.python"] == ".".join(map(str, sys.version_info[:3]))
    assert tags["fedhub.inputs"] == "1" and int(tags["fedhub.cpus"]) >= 1


def test_every_capture_artifact_is_recorded(lab, det_files):
    missing = [a for a in CONTRACT_ARTIFACTS if not (det_files / a).is_file()]
    assert not missing, missing
    nb = lab.project / "nb" / "digits.ipynb"
    assert (det_files / "notebook.ipynb").read_bytes() == nb.read_bytes()
    html = (det_files / "notebook.html").read_text()
    assert "<html" in html and "load_digits" in html
    assert "track(seed=7, inputs=['data/params.json'])" in (det_files / "notebook.py").read_text()
    diff = (det_files / "git.diff").read_text()
    assert "-FACTOR = 1.0" in diff and "+FACTOR = 2.0" in diff
    lock = (det_files / "requirements.lock").read_text().splitlines()
    assert f"mlflow=={md.version('mlflow')}" in lock
    assert f"scikit_learn=={md.version('scikit-learn')}" in lock or f"scikit-learn=={md.version('scikit-learn')}" in lock
    conda = (det_files / "conda.yaml").read_text()
    assert "  - numpy=2.4.6=py311h64a7726_0" in conda and f"prefix: {lab.conda_prefix}" in conda
    inputs = json.loads((det_files / "inputs.json").read_text())["inputs"]
    params = lab.project / "nb" / "data" / "params.json"
    assert inputs == [{"path": "data/params.json", "abspath": str(params), "size": params.stat().st_size,
                       "sha256": hashlib.sha256(params.read_bytes()).hexdigest(), "stored": False}]
    env = json.loads((det_files / "environment.json").read_text())
    assert env["seed"] == 7 and env["seeded"][:2] == ["random", "numpy"]
    assert env["hardware"]["cuda_visible_devices"] == "0,1"
    assert env["env"] == {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}  # as before seeding
    git = json.loads((det_files / "git.json").read_text())
    assert git["entrypoint"] == "nb/digits.ipynb" and git["cwd"] == "nb" and git["untracked"] == []


def test_capture_is_cheap_in_the_kernel(lab):
    # the notebook prints cap.seconds_sync: the time track() held the kernel
    (cell,) = [c for c in lab.executed["digits"].cells if c.source == "print(cap.seconds_sync)"]
    out = cell.outputs[0]["text"]
    assert float(out) < 1.0, out


def test_notebook_named_by_env_and_no_seed(lab):
    tags = mlflow.MlflowClient().get_run(lab.nondet_run).data.tags
    assert tags["fedhub.notebook"] == str(lab.project / "nb" / "noisy.ipynb")
    assert tags["fedhub.seed"] == "none" and tags["fedhub.site"] == "unknown"
    assert "fedhub.git.commit" in tags


def test_track_as_context_manager_for_a_script(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("print('training')\n")
    data = tmp_path / "data.csv"
    data.write_text("x,y\n1,2\n")
    mlflow.set_experiment("in-process")
    with capture.track(notebook=script, inputs=[str(data)], seed=5, store_inputs=True, background=False) as cap:
        assert mlflow.active_run().info.run_id == cap.run_id  # track started the run
        mlflow.log_metric("m", 1.0)
    assert mlflow.active_run() is None and cap.done and not cap.errors
    run = mlflow.MlflowClient().get_run(cap.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["fedhub.entrypoint.kind"] == "script" and "fedhub.notebook" not in run.data.tags
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(cap.run_id, "fedhub")}
    assert {"fedhub/script.py", "fedhub/inputs.json", "fedhub/requirements.lock"} <= names
    assert "fedhub/notebook.html" not in names
    # absolute inputs are never copied into the run (stored only for relative paths under the run's cwd)
    rec = json.loads(mlflow.artifacts.load_text(f"runs:/{cap.run_id}/fedhub/inputs.json"))["inputs"][0]
    assert rec["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest() and rec["stored"] is False


def test_track_on_an_explicit_run_and_missing_notebook(tmp_path):
    client = mlflow.MlflowClient()
    exp = mlflow.set_experiment("in-process")
    run = client.create_run(exp.experiment_id)
    with pytest.raises(FileNotFoundError, match="no-such.ipynb"):
        capture.track(run.info.run_id, notebook=tmp_path / "no-such.ipynb")
    assert mlflow.active_run() is None  # nothing was started
    cap = capture.track(run.info.run_id, background=False)  # pytest is no script of ours: tags only
    assert cap.tags["fedhub.capture"] == "1" and "fedhub.entrypoint" not in cap.tags
    assert mlflow.active_run() is None  # an explicit run is not made active
    assert "no notebook or script found" in repr(cap)


def test_freeze_agrees_with_importlib_metadata():
    mine = {}
    for line in capture.freeze():
        if "==" in line and not line.startswith(("#", "-")):
            name, _, version = line.partition("==")
            mine[capture._normalize(name)] = version
    ref = {capture._normalize(d.metadata["Name"]): d.version for d in md.distributions()}
    editable = {capture._normalize(line.split("(")[1].split("==")[0])
                for line in capture.freeze() if line.startswith("# Editable")}
    assert {k: v for k, v in ref.items() if k not in editable} == mine


def test_conda_environment_from_conda_meta(lab):
    text = capture.conda_environment(str(lab.conda_prefix))
    assert text.splitlines()[:2] == ["name: conda-env", "dependencies:"]
    assert "  - ca-certificates=2024.2.2=hbcca054_0" in text
    assert capture.conda_environment(str(lab.root)) is None  # not a conda env


def test_nbconvert_worker_runs_standalone(lab, tmp_path):
    subprocess.run([sys.executable, "-m", "fedhub.server_ext.capture", "convert",
                    str(lab.project / "nb" / "noisy.ipynb"), str(tmp_path)], check=True, timeout=120)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notebook.html", "notebook.py"]


# ---------------------------------------------------------------- automatic capture
def _fedhub_tags(run_id: str) -> dict:
    return {k: v for k, v in mlflow.MlflowClient().get_run(run_id).data.tags.items() if k.startswith("fedhub.")}


def test_plain_start_run_is_captured_and_an_explicit_track_takes_over(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDHUB_AUTO_CAPTURE", "1")
    mlflow.set_experiment("auto")
    with mlflow.start_run() as plain:  # nothing of fedhub's called
        mlflow.log_metric("acc", 0.5)
    capture.wait_all(120)
    tags = _fedhub_tags(plain.info.run_id)
    assert tags["fedhub.capture"] == "1" and tags["fedhub.capture.mode"] == "auto" and tags["fedhub.seed"] == "none"
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(plain.info.run_id, "fedhub")}
    assert {"fedhub/requirements.lock", "fedhub/environment.json", "fedhub/inputs.json"} <= names
    (auto,) = [c for c in capture._pending if c.run_id == plain.info.run_id] or [None]
    assert auto is None or auto.seconds_sync < 0.5  # the run's own thread only named what runs

    data = tmp_path / "x.csv"
    data.write_text("1\n")
    with mlflow.start_run() as explicit:
        cap = capture.track(seed=3, inputs=[str(data)])
        mlflow.log_metric("acc", 0.6)
    capture.wait_all(120)
    assert cap.done and not cap.errors
    tags = _fedhub_tags(explicit.info.run_id)
    assert (tags["fedhub.capture.mode"], tags["fedhub.seed"], tags["fedhub.inputs"]) == ("track", "3", "1")
    env = json.loads(mlflow.artifacts.load_text(f"runs:/{explicit.info.run_id}/fedhub/environment.json"))
    assert env["seed"] == 3  # the automatic capture's upload did not overwrite track()'s

    monkeypatch.setenv("FEDHUB_AUTO_CAPTURE", "0")
    with mlflow.start_run() as off:
        mlflow.log_metric("acc", 0.7)
    assert _fedhub_tags(off.info.run_id) == {}


def test_a_failing_capture_never_breaks_the_run(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("FEDHUB_AUTO_CAPTURE", "1")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # artifacts cannot be stored under a regular file: the capture's upload fails for real
    exp = mlflow.MlflowClient().create_experiment("no-artifacts", artifact_location=(blocker / "art").as_uri())
    with caplog.at_level("WARNING", logger="fedhub.capture"):
        with mlflow.start_run(experiment_id=exp) as run:
            mlflow.log_metric("acc", 0.9)
        capture.wait_all(120)
    got = mlflow.MlflowClient().get_run(run.info.run_id)
    assert got.info.status == "FINISHED" and got.data.metrics == {"acc": 0.9}
    assert any("automatic capture" in r.getMessage() and "upload" in r.getMessage() for r in caplog.records)


def test_auto_capture_setting_of_the_server_extension():
    from traitlets.config import Config, Configurable

    from fedhub.server_ext.capture_settings import configure_auto_capture

    def server(**settings):
        return Configurable(config=Config({"FedhubCapture": settings}))

    env = {}
    assert configure_auto_capture(server(), env) is True and env == {"FEDHUB_AUTO_CAPTURE": "1"}
    env = {"FEDHUB_AUTO_CAPTURE": "0"}  # the user's own choice wins over the default
    assert configure_auto_capture(server(), env) is False and env["FEDHUB_AUTO_CAPTURE"] == "0"
    env = {"FEDHUB_AUTO_CAPTURE": "1"}
    assert configure_auto_capture(server(auto_capture=False), env) is False and env["FEDHUB_AUTO_CAPTURE"] == "0"
