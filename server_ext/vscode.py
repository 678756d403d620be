"""VS Code sessions: code-server behind jupyter-server-proxy at /user/NAME/vscode/.

Registered as the ``vscode`` entry of ``jupyter_serverproxy_servers`` (pyproject.toml);
jupyter-server-proxy calls ``setup_vscode`` in the single-user server, starts code-server
on a free port when /vscode/ is first opened, and proxies it with the server's own auth,
so code-server itself runs with ``--auth none`` on loopback. User data and extensions live
in the home, so settings and installed extensions survive a restart; the session's
environment (fedhub CLI on PATH) is inherited by code-server's terminals.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

# ./dev installs code-server into <repository>/vscode and its Node 24 into vscode/node24
VSCODE_DIR = Path(__file__).resolve().parents[1] / "vscode"
BUNDLED_BIN = VSCODE_DIR / "node_modules" / ".bin"
NODE24_BIN = VSCODE_DIR / "node24" / "node_modules" / ".bin"
DATA_DIR = ".local/share/fedhub-vscode"  # under the home: survives restarts and culling


def find_code_server(env: dict[str, str] | None = None) -> str | None:
    env = os.environ if env is None else env
    explicit = env.get("FEDHUB_CODE_SERVER")
    if explicit:
        return explicit
    bundled = BUNDLED_BIN / "code-server"
    if bundled.exists():
        return str(bundled)
    return shutil.which("code-server", path=env.get("PATH"))


def vscode_command(code_server: str, home: str | Path) -> list[str]:
    """code-server's command line; ``{port}`` is filled in by jupyter-server-proxy."""
    data = Path(home) / DATA_DIR
    return [code_server, "--auth", "none", "--bind-addr", "127.0.0.1:{port}",
            "--user-data-dir", str(data / "user-data"), "--extensions-dir", str(data / "extensions"),
            "--disable-telemetry", "--disable-update-check", "--disable-workspace-trust", str(home)]


def vscode_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """Node 24 first on PATH (code-server's launcher runs ``env node``), then the session's Python
    environment (the ``fedhub`` CLI lives beside its interpreter), then the session's PATH."""
    env = os.environ if env is None else env
    return {"PATH": f"{NODE24_BIN}:{Path(sys.executable).parent}:{env.get('PATH', '')}"}


def write_machine_settings(home: str | Path) -> Path:
    """Terminals: a plain (non-login) bash with the session's Python environment first on PATH.
    A login shell would re-read /etc/profile, which resets PATH and hides the fedhub CLI.
    Machine settings sit under the user's own settings, which still win."""
    import json
    path = Path(home) / DATA_DIR / "user-data" / "Machine" / "settings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        settings = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        settings = {}
    settings["terminal.integrated.profiles.linux"] = {
        "fedhub": {"path": "bash", "args": [], "env": {"PATH": f"{Path(sys.executable).parent}:${{env:PATH}}"}}}
    settings["terminal.integrated.defaultProfile.linux"] = "fedhub"
    path.write_text(json.dumps(settings, indent=1))
    return path


def setup_vscode() -> dict:
    """The jupyter-server-proxy entry for VS Code (code-server) in this session."""
    home = os.environ.get("HOME") or str(Path.home())
    code_server = find_code_server()
    if code_server is None:
        raise RuntimeError("VS Code sessions need code-server: run ./dev setup (installs vscode/), "
                           "or set FEDHUB_CODE_SERVER to a code-server executable")
    write_machine_settings(home)
    return {
        "command": vscode_command(code_server, home),
        "environment": vscode_environment(),
        "timeout": 60,  # first start unpacks the workbench; 0.7 s warm on these machines
        "absolute_url": False,
        "new_browser_tab": False,
        "launcher_entry": {"enabled": True, "title": "VS Code"},
    }
