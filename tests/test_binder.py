"""Binder (repo2docker) files: present, valid, and doing what standalone mode needs.
repo2docker itself needs Docker, which cannot run here; the standalone server extension
they install is tested in test_server_ext.py."""

import subprocess
from pathlib import Path

import yaml

BINDER = Path(__file__).resolve().parents[1] / "binder"


def test_environment_brings_python_and_node():
    env = yaml.safe_load((BINDER / "environment.yml").read_text())
    deps = [d for d in env["dependencies"] if isinstance(d, str)]
    assert "python=3.11" in deps and any(d.startswith("nodejs=") for d in deps)


def test_scripts_are_executable_valid_bash_and_build_then_install():
    for name in ("postBuild", "start"):
        script = BINDER / name
        assert script.stat().st_mode & 0o111, f"{name} is not executable"
        subprocess.run(["bash", "-n", str(script)], check=True)
    post = (BINDER / "postBuild").read_text()
    assert post.index("npm run build:prod") < post.index("pip install")
    assert "'.[lab]'" in post
    assert "MLFLOW_TRACKING_URI" in (BINDER / "start").read_text()
