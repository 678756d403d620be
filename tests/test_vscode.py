"""VS Code sessions: the jupyter-server-proxy entry (registered entry point, command line with
user data and extensions in the home, Node 24 first on PATH) and code-server really started
from it, answering /healthz with the home as its workspace."""

import os
import subprocess
import time
from importlib.metadata import entry_points
from pathlib import Path

import requests

from conftest import free_port
from fedhub.server_ext import vscode


def test_entry_point_is_registered_for_jupyter_server_proxy():
    eps = {ep.name: ep for ep in entry_points(group="jupyter_serverproxy_servers")}
    assert eps["vscode"].load() is vscode.setup_vscode


def test_command_keeps_settings_and_extensions_in_the_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("FEDHUB_CODE_SERVER", "/opt/cs/bin/code-server")
    entry = vscode.setup_vscode()
    cmd = entry["command"]
    assert cmd[0] == "/opt/cs/bin/code-server" and cmd[-1] == str(tmp_path)
    assert cmd[cmd.index("--user-data-dir") + 1].startswith(str(tmp_path))
    assert cmd[cmd.index("--extensions-dir") + 1].startswith(str(tmp_path))
    assert cmd[cmd.index("--bind-addr") + 1] == "127.0.0.1:{port}" and "none" == cmd[cmd.index("--auth") + 1]
    assert entry["environment"]["PATH"].startswith(str(vscode.NODE24_BIN))
    assert entry["launcher_entry"]["title"] == "VS Code"


def test_missing_code_server_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("FEDHUB_CODE_SERVER", raising=False)
    monkeypatch.setattr(vscode, "BUNDLED_BIN", Path("/nonexistent"))
    monkeypatch.setenv("PATH", "/nonexistent")
    try:
        vscode.setup_vscode()
    except RuntimeError as e:
        assert "./dev setup" in str(e) and "FEDHUB_CODE_SERVER" in str(e)
    else:
        raise AssertionError("setup_vscode() without code-server did not fail")


def test_code_server_starts_from_the_entry(tmp_path):
    """The real code-server, launched exactly as jupyter-server-proxy would."""
    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop("FEDHUB_CODE_SERVER", None)
    port = free_port()
    entry_env = {**env, "HOME": str(tmp_path)}
    cmd = [c.replace("{port}", str(port)) for c in vscode.vscode_command(vscode.find_code_server(env), tmp_path)]
    proc = subprocess.Popen(cmd, env={**entry_env, **vscode.vscode_environment(env)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.3)
        else:
            raise AssertionError("code-server did not answer /healthz in 60 s")
        r = requests.get(f"http://127.0.0.1:{port}/", timeout=10, allow_redirects=False)
        assert r.status_code == 302 and str(tmp_path).replace("/", "%2F") in r.headers["Location"].replace("/", "%2F")
        assert (tmp_path / vscode.DATA_DIR / "user-data").is_dir()  # settings live in the home
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=20)


def test_vscode_session_through_the_hub(hub_factory, tmp_path):
    """A real hub offers VS Code; the session opens at /vscode/ and code-server answers through
    the hub's proxy with the user's home as workspace; files written in the home persist."""
    hub = hub_factory()
    cfg = hub.data_dir / "jupyterhub_config.py"
    cfg.write_text(cfg.read_text() + '\nc.FederatedSpawner.session_types = ["jupyterlab", "vscode"]\n')
    hub.start()
    token = hub.create_user("vs-ann")
    r = hub.spawn("vs-ann", session_type="vscode")
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("vs-ann")
    env = hub.session_env("vs-ann")
    assert env["FEDHUB_SESSION_TYPE"] == "vscode"
    base = f"{hub.url}/user/vs-ann"
    headers = {"Authorization": f"token {token}"}
    home = env["HOME"]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # the first request starts code-server
        r = requests.get(f"{base}/vscode/healthz", headers=headers, timeout=30)
        if r.status_code == 200:
            break
        time.sleep(0.5)
    assert r.status_code == 200, r.text[:300]
    r = requests.get(f"{base}/vscode/", headers=headers, timeout=30, allow_redirects=False)
    assert r.status_code == 302 and "folder=" in r.headers["Location"], (r.status_code, r.headers)
    assert Path(home, ".local/share/fedhub-vscode/user-data").is_dir()
    r = requests.get(f"{base}/api/spec.yaml", headers=headers, timeout=30)  # the JupyterLab side is there too
    assert r.status_code == 200
    hub.stop_server("vs-ann")


def wait_for_activity(hub, token: str, done, timeout: float = 30) -> dict:
    """The session's /fedhub/api/activity (what the culler asks) once ``done(answer)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        answer = requests.get(f"{hub.url}/user/vs-bea/fedhub/api/activity", timeout=10,
                              headers={"Authorization": f"token {token}"}).json()
        if done(answer) or time.monotonic() > deadline:
            return answer
        time.sleep(0.3)


def test_browser_opens_vscode_with_editor_and_terminal(hub_factory):
    """Chromium logs in, picks VS Code in the spawn form, and lands in code-server through the
    hub: the workbench and the Explorer of the home show, and a terminal opens. A command running
    in that terminal keeps the culler away; code-server idling at a prompt does not."""
    from browser_helpers import SHOTS, launch_chromium, log_in
    from playwright.sync_api import expect, sync_playwright

    from conftest import ADMIN_TOKEN
    from fedhub.hub.culler import cull_once

    hub = hub_factory()
    cfg = hub.data_dir / "jupyterhub_config.py"
    cfg.write_text(cfg.read_text() + '\nc.FederatedSpawner.session_types = ["jupyterlab", "vscode"]\n')
    hub.start()
    token = hub.create_user("vs-bea")
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            log_in(page, hub, "vs-bea")
            page.select_option("#fedhub-session-type", "vscode")
            page.locator("form input[type=submit], form button[type=submit]").first.click()
            page.wait_for_url("**/user/vs-bea/vscode/**", timeout=120_000)
            expect(page.locator(".monaco-workbench")).to_be_visible(timeout=90_000)
            expect(page.locator(".explorer-folders-view, .explorer-viewlet").first).to_be_visible(timeout=60_000)
            page.locator(".monaco-workbench").click()
            page.keyboard.press("Control+Backquote")
            expect(page.locator(".terminal-wrapper .xterm, .xterm").first).to_be_visible(timeout=60_000)
            # the terminal runs in the session, with the fedhub CLI on PATH
            home = Path(hub.session_env("vs-bea")["HOME"])
            # Typed again only if the shell was not ready for the first keystrokes; the Python
            # start of `fedhub` takes seconds on a loaded machine, so retyping sooner would queue
            # copies behind the first one that are still running when the test types `sleep`.
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and not (home / "cli.txt").exists():
                page.locator(".xterm").first.click()
                page.keyboard.type("fedhub --help > ~/cli.tmp 2>&1; mv ~/cli.tmp ~/cli.txt\n")
                retype_at = time.monotonic() + 20
                while time.monotonic() < min(retype_at, deadline) and not (home / "cli.txt").exists():
                    time.sleep(0.5)
            assert "usage: fedhub" in (home / "cli.txt").read_text()
            page.screenshot(path=str(SHOTS / "vscode-session.png"))
            # every typed command has finished: the shell is back at its prompt
            activity = wait_for_activity(hub, token, lambda a: a["terminal_processes"] == 0, timeout=90)
            assert activity["terminal_processes"] == 0, activity

            # a long command in code-server's terminal makes the session busy: the culler spares it
            page.keyboard.type("sleep 600\n")
            activity = wait_for_activity(hub, token, lambda a: a["terminal_processes"] >= 1)
            assert [t["processes"] for t in activity["vscode_terminals"]] == [1], activity
            decisions = cull_once(hub.url, ADMIN_TOKEN, idle_timeout=0, now=time.time() + 3600)
            assert decisions["vs-bea/"].cull is False and "terminals" in decisions["vs-bea/"].reason
            # back at the prompt, code-server's own processes (extension host, file watcher, pty
            # host, the idle shell) are not work: the idle session is culled
            page.keyboard.press("Control+c")
            activity = wait_for_activity(hub, token, lambda a: a["terminal_processes"] == 0)
            assert len(activity["vscode_terminals"]) == 1, activity  # the shell is still there
            decisions = cull_once(hub.url, ADMIN_TOKEN, idle_timeout=0, now=time.time() + 3600)
            assert decisions["vs-bea/"].cull is True, decisions
        finally:
            browser.close()
