"""Granted datasets reach the session, and nothing else does: ~/datasets links made by the
local start command and the Slurm batch script (run here for real), read-only volumes in
Kubernetes pods (validated against the 1.37 schemas), a real hub whose session links only
the granted dataset and drops it once the grant is revoked; group GPU quotas that still
hold after a hub restart."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import jinja2
import kubernetes_validate
import pytest
import yaml

from fedhub.hub.datasets import DatasetLocation
from fedhub.spawner.backends.dataset_links import link_script, session_command
from fedhub.spawner.backends.k8s_manifests import dataset_volumes, pod_manifest
from fedhub.spawner.backends.slurm import BATCH_SCRIPT, batch_prologue


def make_home(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A home with a stale link (a dataset no longer granted), a user's own folder and file in
    ~/datasets, and two datasets on disk."""
    home, data = tmp_path / "home", tmp_path / "data"
    for name in ("granted", "revoked"):
        (data / name).mkdir(parents=True)
        (data / name / "README").write_text(f"{name} data\n")
    links = home / "datasets"
    links.mkdir(parents=True)
    (links / "revoked").symlink_to(data / "revoked")
    (links / ".hidden-old").symlink_to(data / "revoked")
    (links / "my-notes").mkdir()
    (links / "my-file.txt").write_text("mine")
    return home, {"granted": str(data / "granted"), "revoked": str(data / "revoked")}


def test_start_command_links_exactly_the_granted_datasets(tmp_path):
    home, paths = make_home(tmp_path)
    cmd = session_command(["cat", "datasets/granted/README"], {"granted": paths["granted"]})
    out = subprocess.run(cmd, cwd=home, env={"HOME": str(home), "PATH": os.environ["PATH"]},
                         capture_output=True, text=True, check=True)
    assert out.stdout == "granted data\n"  # the command runs after the links, with its arguments
    links = home / "datasets"
    assert os.readlink(links / "granted") == paths["granted"]
    assert not (links / "revoked").exists() and not (links / "revoked").is_symlink()
    assert not (links / ".hidden-old").is_symlink()
    assert (links / "my-notes").is_dir() and (links / "my-file.txt").read_text() == "mine"
    # a path that moved is re-linked; nothing granted: every link goes
    subprocess.run(session_command(["true"], {"granted": paths["revoked"]}), env={"HOME": str(home)}, check=True)
    assert os.readlink(links / "granted") == paths["revoked"]
    subprocess.run(session_command(["true"], {}), env={"HOME": str(home)}, check=True)
    assert sorted(p.name for p in links.iterdir()) == ["my-file.txt", "my-notes"]


def test_a_real_folder_in_the_way_is_left_alone_and_named(tmp_path):
    home, paths = make_home(tmp_path)
    (home / "datasets" / "granted").mkdir()
    out = subprocess.run(["/bin/sh", "-c", link_script({"granted": paths["granted"]}, '"$HOME"/datasets')],
                         env={"HOME": str(home)}, capture_output=True, text=True, check=True)
    assert "datasets/granted exists and is not a link" in out.stderr
    assert (home / "datasets" / "granted").is_dir() and not (home / "datasets" / "granted").is_symlink()


def test_a_file_named_datasets_does_not_stop_the_session(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "datasets").write_text("not a folder")
    script = "set -euo pipefail\n" + link_script({"granted": "/data/granted"}, '"$HOME"/datasets') + "echo started"
    out = subprocess.run(["bash", "-c", script], env={"HOME": str(home), "PATH": os.environ["PATH"]},
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == "started\n", out.stderr
    assert "datasets not linked" in out.stderr and (home / "datasets").read_text() == "not a folder"


def test_the_slurm_batch_script_links_the_datasets_before_the_server(tmp_path):
    home, paths = make_home(tmp_path)
    odd = tmp_path / "it's a path"  # quoting: a path with a quote and a space
    odd.mkdir()
    prologue = batch_prologue({"granted": paths["granted"], "odd": str(odd)}, str(home), "echo site-prologue")
    script = jinja2.Template(BATCH_SCRIPT).render(
        homedir=str(home), username="ann", keepvars="PATH", prologue=prologue, epilogue="",
        cmd="ls -1 " + str(home / "datasets"), srun="")
    assert script.index("ln -sfn") < script.index("echo site-prologue") < script.index("ls -1")
    # the script as sbatch would run it (bash, set -euo pipefail), here without a cluster
    out = subprocess.run(["bash", "-c", script], env={"PATH": os.environ["PATH"]}, capture_output=True,
                         text=True, check=True)
    assert out.stdout.split("\n")[:4] == ["site-prologue", "granted", "my-file.txt", "my-notes"]
    assert os.readlink(home / "datasets" / "odd") == str(odd)
    assert not (home / "datasets" / "revoked").is_symlink()


def validate(manifest: dict) -> None:
    assert kubernetes_validate.validate(manifest, "1.37.0", strict=True) == "1.37"


def test_kubernetes_pods_mount_granted_datasets_read_only():
    granted = {"digits": DatasetLocation("k8s", "/srv/data/digits"),
               "scans": DatasetLocation("k8s", "/studies/2026", pvc="imaging-claim"),
               "whole": DatasetLocation("k8s", "/", pvc="whole-claim"),
               "x" * 63: DatasetLocation("k8s", "/srv/long")}
    pod = pod_manifest(name="jupyter-ann", cpus=1, memory=2 * 10**9, storage="10Gi", pvc_name="claim-ann",
                       datasets=granted)
    validate(pod)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["name"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert volumes["home"]["persistentVolumeClaim"] == {"claimName": "claim-ann"}  # the home stays
    assert volumes["dataset-digits"]["hostPath"] == {"path": "/srv/data/digits", "type": "Directory"}
    assert mounts["dataset-digits"] == {"name": "dataset-digits", "mountPath": "/home/jovyan/datasets/digits",
                                        "readOnly": True}
    assert volumes["dataset-scans"]["persistentVolumeClaim"] == {"claimName": "imaging-claim", "readOnly": True}
    assert mounts["dataset-scans"]["subPath"] == "studies/2026" and mounts["dataset-scans"]["readOnly"]
    assert "subPath" not in mounts["dataset-whole"]
    assert all(len(name) <= 63 for name in volumes) and len(volumes) == 5
    assert all(m["readOnly"] for name, m in mounts.items() if name != "home")
    # nothing granted: no dataset volume at all
    assert dataset_volumes({}) == ([], [])


# ---------------------------------------------------------------- a real hub

def policy(data: Path, team_datasets: list[str]) -> str:
    return yaml.safe_dump({
        "groups": {"team": {"max_gpus": 1, "datasets": team_datasets}},
        "default": {"sites": "*", "gpu_types": "*"},
        "datasets": [
            {"name": "granted", "locations": [{"site": s, "path": str(data / "granted")} for s in ("local-a", "local-b")],
             "policy": {"allowed_groups": [], "purposes": ["interactive"]}},
            {"name": "other", "locations": [{"site": s, "path": str(data / "other")} for s in ("local-a", "local-b")],
             "policy": {"allowed_groups": ["someone-else"], "purposes": ["interactive"]}}]})


@pytest.mark.hub
def test_a_session_links_only_granted_datasets_and_group_quotas_survive_a_hub_restart(hub_factory):
    hub = hub_factory(args=["--no-mlflow", "--no-inference", "--keep-servers"])
    data = hub.data_dir / "site-data"
    for name in ("granted", "other"):
        (data / name).mkdir(parents=True)
        (data / name / "README").write_text(f"{name} data\n")
    (hub.data_dir / "policy.yaml").write_text(policy(data, ["granted"]))
    with open(hub.data_dir / "jupyterhub_config.py", "a") as f:
        f.write('\nc.JupyterHub.load_groups = {"team": {"users": ["ann", "ben"]}}\n')
    links = hub.data_dir / "homes" / "ann" / "datasets"
    links.mkdir(parents=True)
    (links / "other").symlink_to(data / "other")  # left by an earlier session: must go
    hub.start()
    ann, _ = hub.create_user("ann"), hub.create_user("ben")

    assert hub.spawn("ann", gpus=1).status_code in (201, 202)
    hub.wait_ready("ann")
    assert (links / "granted" / "README").read_text() == "granted data\n"
    assert not (links / "other").is_symlink()
    assert json.loads(hub.session_env("ann")["FEDHUB_DATASETS"]) == {"granted": str(data / "granted")}

    def ben_refused():
        r = hub.spawn("ben", gpus=1)
        assert r.status_code == 403, r.text
        assert "GPU quota of group team: at most 1 GPUs at once for the whole group; 1 in use" in r.json()["message"]
        assert hub.server("ben") is None

    ben_refused()
    hub.stop()  # ann's session keeps running; its group charge must come back with it
    hub.start()
    hub.wait_ready("ann", timeout=30)
    ben_refused()

    # the grant is revoked: the next session of ann no longer reaches the dataset
    (hub.data_dir / "policy.yaml").write_text(policy(data, []))
    hub.stop_server("ann")
    assert hub.spawn("ann").status_code in (201, 202)
    hub.wait_ready("ann")
    assert not (links / "granted").is_symlink() and list(links.iterdir()) == []
    assert json.loads(hub.session_env("ann")["FEDHUB_DATASETS"]) == {}
    hub.stop_server("ann")
