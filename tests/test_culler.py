"""Idle culling decisions: spare busy kernels, terminal processes and busy GPUs; cull the idle.

The GPU path goes through ``FakeGpuProbe`` (named fake: this machine has no GPUs), and
nvidia-smi's CSV is parsed by the real ``NvidiaSmiProbe.parse``."""

import pytest

from fedhub.hub.culler import Activity, GpuProbe, NvidiaSmiProbe, decide

NOW, LIMIT = 10_000.0, 600.0


@pytest.mark.parametrize("activity, cull, why", [
    (Activity(NOW - 3600), True, "idle for 3600 s"),
    (Activity(NOW - 60), False, "active 60 s ago"),
    (Activity(None), True, "never active"),
    (Activity(NOW - 3600, busy_kernels=1), False, "1 kernel(s) busy"),
    (Activity(NOW - 3600, terminal_processes=2), False, "2 process(es) running in terminals"),
    (Activity(NOW - 3600, gpu_utilisation=[0.0, 87.0]), False, "1 GPU(s) in use (87 %)"),
    (Activity(NOW - 3600, gpu_utilisation=[0.0, 1.0]), True, "idle for 3600 s"),
])
def test_decide(activity, cull, why):
    d = decide(activity, NOW, LIMIT)
    assert d.cull is cull and why in d.reason


class FakeGpuProbe(GpuProbe):
    """Named fake: utilisation per GPU index, as nvidia-smi would report it."""

    def __init__(self, table):
        self.table = table

    def utilisation(self, gpu_ids):
        return [self.table[i] for i in gpu_ids if i in self.table]


def test_gpu_in_use_spares_only_the_session_on_that_gpu():
    probe = FakeGpuProbe({0: 95.0, 1: 0.0})
    on_busy = Activity(NOW - 3600, gpu_utilisation=probe.utilisation([0]))
    on_idle = Activity(NOW - 3600, gpu_utilisation=probe.utilisation([1]))
    assert not decide(on_busy, NOW, LIMIT).cull and decide(on_idle, NOW, LIMIT).cull


def test_nvidia_smi_csv_and_absence():
    assert NvidiaSmiProbe.parse("0, 12\n1, [N/A]\n2, 0\n") == {0: 12.0, 2: 0.0}
    assert NvidiaSmiProbe(command="no-such-nvidia-smi").utilisation([0]) == []


@pytest.mark.hub
def test_culler_spares_busy_kernel_and_terminal_and_culls_the_idle(hub_factory):
    """Real hub, three real sessions: one runs a kernel cell, one a terminal command, one does
    nothing. With an idle limit of 0 s only the idle one is stopped, and its home keeps its files."""
    import asyncio
    import json
    import time
    from pathlib import Path

    import requests
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    from conftest import ADMIN_TOKEN
    from fedhub.hub.culler import cull_once

    hub = hub_factory().start()
    users = ("cull-kern", "cull-term", "cull-idle")
    toks = {u: hub.create_user(u) for u in users}
    for u in users:
        assert hub.spawn(u).status_code in (201, 202)
    for u in users:
        hub.wait_ready(u)
    home = Path(hub.session_env("cull-idle")["HOME"])
    (home / "keep.txt").write_text("mine")

    async def drive():
        kws = await busy_kernel(hub, "cull-kern", toks["cull-kern"])
        h2 = {"Authorization": f"token {toks['cull-term']}"}
        base2 = f"{hub.url}/user/cull-term/"
        name = requests.post(f"{base2}api/terminals", headers=h2, timeout=60).json()["name"]
        tws = await websocket_connect(HTTPRequest(
            base2.replace("http", "ws", 1) + f"terminals/websocket/{name}", headers=h2))
        tws.write_message(json.dumps(["stdin", "sleep 120\r"]))
        return kws, tws

    loop = asyncio.new_event_loop()
    kws, tws = loop.run_until_complete(drive())
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            loop.run_until_complete(asyncio.sleep(0.5))  # keep the websockets served
            a = requests.get(f"{hub.url}/user/cull-kern/fedhub/api/activity", timeout=10,
                             headers={"Authorization": f"token {toks['cull-kern']}"}).json()
            b = requests.get(f"{hub.url}/user/cull-term/fedhub/api/activity", timeout=10,
                             headers={"Authorization": f"token {toks['cull-term']}"}).json()
            if a["busy_kernels"] and b["terminal_processes"]:
                break
        assert a["busy_kernels"] == 1 and b["terminal_processes"] >= 1, (a, b)
        decisions = cull_once(hub.url, ADMIN_TOKEN, idle_timeout=0, now=time.time() + 3600)
    finally:
        close_in(loop, kws, tws)
    assert decisions["cull-kern/"].cull is False and "kernel(s) busy" in decisions["cull-kern/"].reason
    assert decisions["cull-term/"].cull is False and "terminals" in decisions["cull-term/"].reason
    assert decisions["cull-idle/"].cull is True
    deadline = time.monotonic() + 60
    while hub.server("cull-idle") is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert hub.server("cull-idle") is None
    assert hub.server("cull-kern")["ready"] and hub.server("cull-term")["ready"]
    assert (home / "keep.txt").read_text() == "mine"  # culling loses no files


def close_in(loop, *sockets) -> None:
    """Close websockets on the loop they run on, then the loop. Closed outside a running loop,
    tornado's write future would attach to whatever loop is current (an earlier test's, closed)."""
    async def close():
        for ws in sockets:
            ws.close()
    loop.run_until_complete(close())
    loop.close()


async def busy_kernel(hub, user: str, token: str):
    """Start a kernel in the user's session running a 2-minute cell; returns its websocket."""
    import json

    import requests
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    h = {"Authorization": f"token {token}"}
    base = f"{hub.url}/user/{user}/"
    kid = requests.post(f"{base}api/kernels", headers=h, json={}, timeout=60).json()["id"]
    kws = await websocket_connect(HTTPRequest(base.replace("http", "ws", 1) + f"api/kernels/{kid}/channels",
                                              headers=h))
    kws.write_message(json.dumps({
        "header": {"msg_id": "x1", "username": "", "session": "s", "msg_type": "execute_request",
                   "version": "5.3"}, "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": "import time; time.sleep(120)", "silent": False}}))
    return kws


def test_fedhub_up_cull_idle_runs_the_culler_in_the_api_service(hub_factory):
    """`fedhub up --cull-idle 8`: the API service culls on its own, with its own token: the
    idle session is stopped within a few passes, the one with a busy kernel keeps running."""
    import asyncio
    import time

    hub = hub_factory(args=("--no-mlflow", "--no-inference", "--cull-idle", "8")).start()
    toks = {u: hub.create_user(u) for u in ("svc-busy", "svc-idle")}
    for u in toks:
        assert hub.spawn(u).status_code in (201, 202)
    for u in toks:
        hub.wait_ready(u)
    loop = asyncio.new_event_loop()
    kws = loop.run_until_complete(busy_kernel(hub, "svc-busy", toks["svc-busy"]))
    try:
        deadline = time.monotonic() + 90
        while hub.server("svc-idle") is not None and time.monotonic() < deadline:
            loop.run_until_complete(asyncio.sleep(0.5))  # keep the kernel's websocket served
        assert hub.server("svc-idle") is None, hub.log_tail()
        assert hub.server("svc-busy")["ready"]
    finally:
        close_in(loop, kws)


def test_fedhub_up_refuses_a_negative_cull_idle(tmp_path):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "fedhub.server_ext.cli", "up", "--dry-run", "--cull-idle", "-5",
                          "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "--cull-idle: expected seconds >= 0" in out.stderr + out.stdout


PTY_HOST_STAND_IN = r"""
import os, pty, subprocess, sys, time
# named like VS Code's pty host (argv carries --type=ptyHost); its own helper has no terminal
helper = subprocess.Popen(["sleep", "60"])
pid, fd = pty.fork()
if pid == 0:
    if sys.argv[1] == "busy":
        os.execvp("bash", ["bash", "--norc", "--noprofile", "-c", "sleep 60; true"])
    os.execvp("bash", ["bash", "--norc", "--noprofile", "-i"])
time.sleep(60)
"""


def test_code_server_terminals_count_work_under_each_shell_not_the_machinery():
    """A stand-in for code-server's pty host (real processes: a Python process carrying VS Code's
    --type=ptyHost flag, a shell on a real pty, and a helper without a terminal as VS Code's
    cpuUsage.sh poller): a shell running a command counts its processes, a shell at its prompt
    counts 0, the helper is not a terminal. The real code-server: test_vscode.py's browser test."""
    import os
    import subprocess
    import sys
    import time

    from fedhub.server_ext.activity import code_server_terminals

    hosts = {mode: subprocess.Popen([sys.executable, "-c", PTY_HOST_STAND_IN, mode, "--type=ptyHost"],
                                    start_new_session=True)  # no controlling terminal, as under a hub
             for mode in ("busy", "idle")}
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            found = code_server_terminals()
            by_host = {mode: [t for t in found if psutil_parent(t["pid"]) == p.pid] for mode, p in hosts.items()}
            if len(by_host["busy"]) == 1 and by_host["busy"][0]["processes"] == 1 and len(by_host["idle"]) == 1:
                break
            time.sleep(0.2)
        assert [t["processes"] for t in by_host["busy"]] == [1], found  # `sleep 60` under the shell
        assert [t["processes"] for t in by_host["idle"]] == [0], found  # a prompt is not work
    finally:
        for p in hosts.values():
            os.killpg(p.pid, 9)
            p.wait()


def psutil_parent(pid: int) -> int | None:
    import psutil
    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:
        return None
