"""The JupyterLab extension: built by ./dev setup (labextension/ -> server_ext/labextension),
found by JupyterLab, and shipped prebuilt in the wheel so users need no Node.
No browser here; the panels' browser tests drive a real JupyterLab."""

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "labextension"
BUILT = ROOT / "server_ext" / "labextension"
NAME = "@fedhub/labextension"
BIN = Path(sys.executable).parent
PLUGINS = ("fedhub:experiments", "fedhub:sites", "fedhub:status", "fedhub:federated", "fedhub:deploy",
           "fedhub:expiry")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _listed(env=None) -> dict[str, list[str]]:
    """`jupyter labextension list`, as {labextensions folder: [its extension lines]}."""
    out = subprocess.run([str(BIN / "jupyter"), "labextension", "list"], capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    sections: dict[str, list[str]] = {}
    current = None
    for line in ANSI.sub("", out.stdout + out.stderr).splitlines():
        if line.startswith("/"):
            current = sections.setdefault(line.strip(), [])
        elif current is not None and line.startswith((" ", "\t")) and line.strip():
            current.append(line.strip())
    return sections


def test_built_extension_has_its_bundle():
    pkg = json.loads((BUILT / "package.json").read_text())
    assert pkg["name"] == NAME
    assert pkg["jupyterlab"]["extension"] is True
    load = pkg["jupyterlab"]["_build"]["load"]  # written by the builder: the build really ran
    assert re.fullmatch(r"static/remoteEntry\.[0-9a-f]+\.js", load), load
    assert (BUILT / load).is_file()
    assert list((BUILT / "static").glob("remoteEntry*.js")) == [BUILT / load], "stale bundles left over"
    assert json.loads((BUILT / "install.json").read_text())["packageName"] == "fedhub"
    bundle = "".join(p.read_text() for p in (BUILT / "static").glob("*.js"))
    for plugin in PLUGINS:
        assert f'"{plugin}"' in bundle or f"'{plugin}'" in bundle, plugin


def test_typescript_compiles_and_the_bundle_is_current():
    tsc = SRC / "node_modules" / "typescript" / "bin" / "tsc"
    assert tsc.is_file(), "run ./dev setup: it installs labextension/node_modules"
    out = subprocess.run(["node", str(tsc), "--noEmit", "-p", str(SRC)], capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    sources = [*SRC.glob("src/*.ts"), *SRC.glob("style/*"), SRC / "package.json"]
    for ts in SRC.glob("src/*.ts"):
        assert (SRC / "lib" / f"{ts.stem}.js").is_file(), ts.name
    newest = max(p.stat().st_mtime for p in sources)
    assert (BUILT / "package.json").stat().st_mtime >= newest, \
        "the built extension is older than its sources: run ./dev setup"


def test_jupyterlab_lists_it_enabled_and_ok():
    lines = [line for lines in _listed().values() for line in lines if line.startswith(NAME + " ")]
    assert lines, "jupyter labextension list does not show " + NAME
    assert re.search(r"\benabled\b", lines[0]) and re.search(r"\bOK\b", lines[0]), lines[0]
    assert "(python, fedhub)" in lines[0], lines[0]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                   check=True, timeout=300)
    return next(out.glob("fedhub-*.whl"))


def test_wheel_ships_the_prebuilt_extension(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    prefix = "fedhub-0.1.0.data/data/share/jupyter/labextensions/@fedhub/labextension/"
    assert prefix + "package.json" in names
    assert prefix + "install.json" in names
    load = json.loads((BUILT / "package.json").read_text())["jupyterlab"]["_build"]["load"]
    assert prefix + load in names


def test_installed_wheel_is_found_by_jupyterlab_without_node(wheel, tmp_path):
    """pip installs the wheel's data files under <prefix>/share/jupyter: JupyterLab lists it there."""
    prefix = tmp_path / "prefix"
    # --ignore-installed: without it, pip uninstalls the venv's own (editable) fedhub first
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q",
                    "--ignore-installed", "--prefix", str(prefix), str(wheel)], check=True, timeout=300)
    subprocess.run([sys.executable, "-c", "import fedhub.server_ext"], check=True, cwd="/", timeout=60)
    ext = prefix / "share" / "jupyter" / "labextensions" / "@fedhub" / "labextension"
    assert (ext / "package.json").is_file()
    env = {**os.environ, "JUPYTER_PATH": str(prefix / "share" / "jupyter")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if shutil.which("node", path=p) is None)
    sections = _listed(env)
    here = sections.get(str(prefix / "share" / "jupyter" / "labextensions"), [])
    lines = [line for line in here if line.startswith(NAME + " ")]
    assert lines and "enabled" in lines[0] and "OK" in lines[0], sections
