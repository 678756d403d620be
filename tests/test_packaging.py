"""The wheel installs fedhub.hub / fedhub.spawner / fedhub.server_ext and no top-level hub or spawner."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_layout(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, timeout=300)
    wheel = next(tmp_path.glob("fedhub-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert "hub" not in tops and "spawner" not in tops and "server_ext" not in tops
    for must in ("fedhub/hub/app.py", "fedhub/hub/jupyterhub_config.py", "fedhub/hub/service/openapi.yaml",
                 "fedhub/spawner/federated.py", "fedhub/spawner/backends/local.py", "fedhub/server_ext/cli.py",
                 # the state database's migrations run from the installed package
                 "fedhub/hub/statedb/migrations/env.py", "fedhub/hub/statedb/migrations/versions/0001_first_schema.py",
                 "fedhub/hub/statedb/migrations/versions/0002_status_created_columns.py"):
        assert must in names, must
    meta = [n for n in names if n.endswith("entry_points.txt")][0]
    entry_points = zipfile.ZipFile(wheel).read(meta).decode()
    assert "federated = fedhub.spawner.federated:FederatedSpawner" in entry_points
    assert "fedhub = fedhub.server_ext.cli:main" in entry_points


def test_editable_install_imports_and_hub_stays_light():
    code = ("import sys, fedhub.hub, fedhub.hub.catalogue, fedhub.spawner, fedhub.server_ext;"
            "assert 'jupyterhub' not in sys.modules, 'fedhub.hub imports jupyterhub at import time';"
            "import importlib.util as u; assert u.find_spec('hub') is None and u.find_spec('spawner') is None")
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/", timeout=60)


def test_entry_point_resolves_for_jupyterhub():
    from importlib.metadata import entry_points
    (ep,) = [e for e in entry_points(group="jupyterhub.spawners") if e.name == "federated"]
    assert ep.load().__name__ == "FederatedSpawner"
