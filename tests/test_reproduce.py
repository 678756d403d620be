"""`fedhub reproduce` and RO-Crate export, for real: captured notebooks re-executed with
nbclient in fresh kernels against a local MLflow store (see capture_lab.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile

import mlflow
import pytest

import capture_lab
from fedhub.server_ext import cli
from fedhub.server_ext.reproduce import ReproduceError, _Restore, compare_metrics, reproduce_run


# the capture project (git repo, notebooks, MLflow store) is built once for both modules
pytestmark = pytest.mark.usefixtures("capture_tracking")


@pytest.fixture(scope="session")
def lab(capture_project):
    return capture_project


def test_deterministic_notebook_reproduces_identically(lab):
    client = mlflow.MlflowClient()
    progress = []
    rep = reproduce_run(lab.det_run, progress=progress.append, timeout=120)
    assert rep.status == "done", (rep.message, rep.log_tail)
    original = client.get_run(lab.det_run).data.metrics
    assert rep.identical is True and rep.warnings == [], rep.to_dict()
    assert [c["metric"] for c in rep.comparison] == sorted(original) == ["accuracy", "loss", "py_random"]
    assert all(c["match"] and c["original"] == c["reproduced"] == original[c["metric"]] for c in rep.comparison)
    # the working tree moved on after the run (FACTOR = 50.0): what ran again is commit + captured diff
    assert "code: uncommitted changes applied" in progress
    assert "input data/params.json: restored, sha256 matches" in progress
    assert "environment variables as captured: OMP_NUM_THREADS=1, OPENBLAS_NUM_THREADS=1" in progress
    assert "executing notebook cell 1/5" in progress and "executing notebook cell 5/5" in progress

    child = client.get_run(rep.child_run_id)
    assert child.info.run_name == "digits-lr (reproduction)"
    assert child.data.tags["mlflow.parentRunId"] == lab.det_run
    assert child.data.tags["fedhub.reproduces"] == lab.det_run
    assert child.data.tags["fedhub.reproduction.identical"] == "true"
    assert child.data.tags["fedhub.capture"] == "1"  # the notebook's own track() ran in the child
    assert child.info.status == "FINISHED" and child.info.experiment_id == client.get_run(lab.det_run).info.experiment_id
    assert child.data.metrics == original and child.data.params == client.get_run(lab.det_run).data.params
    names = {a.path for a in client.list_artifacts(rep.child_run_id, "fedhub/reproduction")}
    assert names == {"fedhub/reproduction/executed.ipynb", "fedhub/reproduction/comparison.json"}

    d = rep.to_dict()
    assert set(d) >= {"id", "run_id", "status", "child_run_id", "identical", "comparison", "message", "log_tail"}
    assert set(d["comparison"][0]) >= {"metric", "original", "reproduced", "match"}
    json.dumps(d)


def test_nondeterministic_notebook_differs(lab):
    rep = reproduce_run(lab.nondet_run, timeout=120)
    assert rep.status == "done" and rep.identical is False, rep.to_dict()
    rows = {c["metric"]: c for c in rep.comparison}
    assert rows["constant"]["match"] and rows["constant"]["reproduced"] == 1.0
    assert not rows["score"]["match"] and not rows["score"]["close"]
    assert rows["score"]["original"] != rows["score"]["reproduced"]
    assert "1 of 2 metrics differ" in rep.message
    tags = mlflow.MlflowClient().get_run(rep.child_run_id).data.tags
    assert tags["fedhub.reproduction.identical"] == "false"


def test_unknown_run_is_a_clear_error():
    with pytest.raises(ReproduceError, match="no run 'f00d'") as e:
        reproduce_run("f00d")
    assert e.value.status == 404
    with pytest.raises(ReproduceError, match="not a run id") as e:
        reproduce_run("../../etc/passwd")
    assert e.value.status == 404


def synthetic_capture(tmp_path, files: dict) -> str:
    """A run carrying the capture tag and the given fedhub/ artifacts (no track() involved)."""
    client = mlflow.MlflowClient()
    run = client.create_run(client.get_experiment_by_name("plain").experiment_id, run_name="synthetic")
    folder = tmp_path / "fedhub"
    folder.mkdir()
    for name, content in files.items():
        if name.endswith(".ipynb"):
            capture_lab.nbformat.write(capture_lab.notebook([("code", content)]), folder / name)
        else:
            (folder / name).write_text(content)
    if files:
        client.log_artifacts(run.info.run_id, str(folder), "fedhub")
    client.set_tag(run.info.run_id, "fedhub.capture", "1")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def test_run_without_capture_is_a_clear_error(lab, tmp_path):
    with pytest.raises(ReproduceError, match="was not captured by fedhub") as e:
        reproduce_run(lab.plain_run)
    assert e.value.status == 400
    with pytest.raises(ReproduceError, match="no captured notebook or script") as e:
        reproduce_run(synthetic_capture(tmp_path, {"requirements.lock": ""}))
    assert e.value.status == 400


def test_failing_notebook_is_a_failed_reproduction(lab, tmp_path):
    run_id = synthetic_capture(tmp_path, {"notebook.ipynb": "raise ValueError('boom')"})
    rep = reproduce_run(run_id, timeout=60)
    assert rep.status == "failed" and rep.identical is None and rep.comparison == []
    assert rep.message == "re-execution failed: cell 1 failed: ValueError: boom"
    assert "ValueError: boom" in rep.log_tail
    child = mlflow.MlflowClient().get_run(rep.child_run_id)
    assert child.info.status == "FAILED" and child.data.tags["mlflow.parentRunId"] == run_id


def test_timeout_is_a_failed_reproduction(lab, tmp_path, capsys):
    run_id = synthetic_capture(tmp_path, {"script.py": "import time\nprint('sleeping')\ntime.sleep(120)\n"})
    started = time.monotonic()
    assert cli.main(["reproduce", run_id, "--timeout", "2", "--quiet"]) == 1
    assert time.monotonic() - started < 30
    captured = capsys.readouterr()
    assert "re-execution failed: timed out after 2 s" in captured.out and "sleeping" in captured.err


def test_script_run_reproduces_through_the_cli(lab, tmp_path, capsys):
    script = tmp_path / "train.py"
    script.write_text(
        "import random, sys\nimport mlflow\nfrom fedhub.server_ext import track\n"
        "mlflow.set_experiment('digits')\n"
        "with track(seed=11):\n"
        "    mlflow.log_param('alpha', sys.argv[1])\n"
        "    mlflow.log_metric('value', random.random() * float(sys.argv[1]))\n")
    subprocess.run([sys.executable, str(script), "0.5"], cwd=tmp_path, check=True, timeout=120,
                   env={**os.environ, "MLFLOW_TRACKING_URI": lab.tracking_uri})
    (run,) = mlflow.MlflowClient().search_runs(
        [mlflow.get_experiment_by_name("digits").experiment_id], filter_string="params.alpha = '0.5'")
    assert run.data.tags["fedhub.entrypoint.kind"] == "script" and run.info.status == "FINISHED"
    code = cli.main(["reproduce", run.info.run_id, "--json", "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    assert out["identical"] and out["comparison"] == [
        {"metric": "value", "original": run.data.metrics["value"], "reproduced": run.data.metrics["value"],
         "match": True, "close": True}]


def test_cli_reproduce_exit_codes(lab, capsys):
    assert cli.main(["reproduce", lab.nondet_run]) == 3
    captured = capsys.readouterr()
    assert "executing notebook cell 2/2" in captured.err  # progress
    table = captured.out.splitlines()
    assert table[1].split() == ["METRIC", "ORIGINAL", "REPRODUCED", "MATCH"]
    assert table[2].split()[::3] == ["constant", "identical"] and table[3].split()[-1] == "DIFFERS"
    assert cli.main(["reproduce", "0123456789abcdef0123456789abcdef"]) == 1
    assert "no run '0123456789abcdef0123456789abcdef'" in capsys.readouterr().err
    assert cli.main(["reproduce", lab.plain_run]) == 1
    assert "not captured" in capsys.readouterr().err


def test_cli_runs(lab, capsys):
    assert cli.main(["runs", "--json", "--experiment", "digits", "--max", "50"]) == 0
    runs = {r["run_id"]: r for r in json.loads(capsys.readouterr().out)}
    det = runs[lab.det_run]
    assert det["reproducible"] is True and det["metrics"]["accuracy"] > 0.5 and det["params"]["split"] == "3"
    assert cli.main(["runs", "--json", "--experiment", "plain"]) == 0
    plain = {r["run_id"]: r for r in json.loads(capsys.readouterr().out)}[lab.plain_run]
    assert plain["reproducible"] is False and plain["metrics"] == {"acc": 0.5}

    assert cli.main(["runs", "--order-by", "metrics.accuracy DESC", "--max", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:6] == ["RUN", "ID", "EXPERIMENT", "NAME", "STATUS", "STARTED"]
    best = [line for line in out[1:3] if lab.det_run in line]  # best accuracy first (tied with its reproduction)
    assert len(out) == 4 and best and " yes " in best[0]
    assert cli.main(["runs", "--experiment", "no-such-experiment"]) == 1
    assert "no experiment named or numbered 'no-such-experiment'" in capsys.readouterr().err
    assert cli.main(["runs", "--order-by", "metrics.accuracy SIDEWAYS"]) == 1
    assert cli.main(["runs", "--max", "0"]) == 2


def test_rocrate_export(lab, tmp_path, capsys):
    run = mlflow.MlflowClient().get_run(lab.det_run)
    assert cli.main(["export", lab.det_run, "--out", str(tmp_path / "crate.zip")]) == 0
    assert "crate.zip" in capsys.readouterr().out
    with zipfile.ZipFile(tmp_path / "crate.zip") as z:
        names = set(z.namelist())
        meta = json.loads(z.read("ro-crate-metadata.json"))
    assert {"fedhub/notebook.ipynb", "fedhub/notebook.html", "fedhub/requirements.lock", "fedhub/inputs.json",
            "fedhub/git.diff"} <= names
    graph = {e["@id"]: e for e in meta["@graph"]}
    assert graph["ro-crate-metadata.json"]["about"] == {"@id": "./"}
    root = graph["./"]
    assert {"@id": "fedhub/notebook.ipynb"} in root["hasPart"] and root["mainEntity"] == {"@id": "fedhub/notebook.ipynb"}
    action = graph[f"#run-{lab.det_run}"]
    assert action["@type"] == "CreateAction" and action["identifier"] == lab.det_run
    assert root["mentions"] == {"@id": action["@id"]}
    metrics = {graph[r["@id"]]["name"]: graph[r["@id"]]["value"] for r in action["result"]}
    assert metrics == run.data.metrics
    objects = [graph[o["@id"]] for o in action["object"]]
    params = {o["name"]: o["value"] for o in objects if o["@type"] == "PropertyValue"}
    assert params == run.data.params
    (data,) = [o for o in objects if o["@type"] == "File"]
    assert data["@id"] == (lab.project / "nb" / "data" / "params.json").as_uri() and len(data["sha256"]) == 64
    instrument = [graph[i["@id"]] for i in action["instrument"]]
    assert "SoftwareSourceCode" in instrument[0]["@type"] and instrument[1]["name"] == "Python"
    packages = {graph[p["@id"]]["name"] for p in instrument[1]["softwareRequirements"]}
    assert "mlflow" in packages
    assert graph[action["location"]["@id"]]["name"] == "test-site"

    # a directory crate reads back with the rocrate package
    from rocrate.rocrate import ROCrate
    from fedhub.server_ext.rocrate_export import export_run
    crate = ROCrate(export_run(lab.det_run, tmp_path / "crate"))
    action = crate.dereference(f"#run-{lab.det_run}")
    assert action.type == "CreateAction" and action["actionStatus"] == "http://schema.org/CompletedActionStatus"
    assert {e.id for e in crate.data_entities} >= {"fedhub/notebook.ipynb", "fedhub/requirements.lock"}
    assert (tmp_path / "crate" / "fedhub" / "notebook.ipynb").is_file()


def test_restore_warns_about_changed_and_missing_inputs(tmp_path):
    src = tmp_path / "orig"
    src.mkdir()
    (src / "same.csv").write_text("a\n")
    (src / "changed.csv").write_text("new\n")
    capture_dir, work = tmp_path / "capture", tmp_path / "work"
    capture_dir.mkdir()
    work.mkdir()
    from fedhub.server_ext.capture import sha256_file
    same = sha256_file(src / "same.csv")
    (capture_dir / "inputs.json").write_text(json.dumps({"inputs": [
        {"path": "same.csv", "abspath": str(src / "same.csv"), "sha256": same},
        {"path": "sub/changed.csv", "abspath": str(src / "changed.csv"), "sha256": "0" * 64},
        {"path": "gone.csv", "abspath": str(src / "gone.csv"), "sha256": "1" * 64},
        {"path": str(src / "gone-too.csv"), "abspath": str(src / "gone-too.csv"), "sha256": "2" * 64},
    ]}))
    said = []
    restore = _Restore(capture_dir, work, said.append)
    restore.inputs(work)
    assert (work / "same.csv").read_text() == "a\n" and (work / "sub" / "changed.csv").read_text() == "new\n"
    assert len(restore.warnings) == 3
    assert "sub/changed.csv: sha256 differs" in restore.warnings[0]
    assert "gone.csv: missing" in restore.warnings[1] and "gone-too.csv: missing" in restore.warnings[2]


def test_compare_metrics_exact_and_tolerant():
    rows = compare_metrics({"a": 1.0, "b": 0.1 + 0.2, "n": float("nan"), "only": 1.0},
                           {"a": 1.0, "b": 0.3, "n": float("nan"), "new": 2.0})
    by = {r["metric"]: r for r in rows}
    assert by["a"]["match"] and by["n"]["match"]
    assert not by["b"]["match"] and by["b"]["close"]
    assert by["only"]["reproduced"] is None and not by["only"]["match"]
    assert by["new"]["original"] is None and not by["new"]["match"]
