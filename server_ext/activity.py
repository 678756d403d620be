"""GET /fedhub/api/activity: what is running in this session, for the hub's idle culler.

The hub's last_activity does not see a training loop nobody watches or a build in a
terminal; this route reports busy kernels and the processes running under each terminal's
shell (the shell itself waiting at a prompt does not count): JupyterLab's terminals, and the
integrated terminals of code-server (VS Code sessions), whose shells live under its pty host.
"""

from __future__ import annotations

import json
import os

import psutil
from jupyter_server.base.handlers import APIHandler
from tornado import web

#: VS Code's terminal host process (code-server runs one); its terminal shells are its children
PTY_HOST_FLAG = "--type=ptyHost"


def processes_under(pid: int) -> int:
    """Descendants of a terminal's shell: 0 when it sits at a prompt."""
    try:
        return len(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return 0


def code_server_terminals(root_pid: int | None = None) -> list[dict]:
    """code-server's integrated terminals under this server (jupyter-server-proxy starts
    code-server as our child): each shell the pty host runs, with the processes under it.
    Only children with a controlling terminal are shells: the pty host's own helpers (its
    cpuUsage.sh poller) and code-server's other processes (extension host, file watcher,
    agent host) are idle machinery, not work."""
    try:
        descendants = psutil.Process(os.getpid() if root_pid is None else root_pid).children(recursive=True)
    except psutil.Error:
        return []
    shells = []
    for host in descendants:
        try:
            if PTY_HOST_FLAG not in host.cmdline():
                continue
            for shell in host.children():
                if shell.terminal() is not None:
                    shells.append({"name": f"vscode-{shell.pid}", "pid": shell.pid,
                                   "processes": processes_under(shell.pid)})
        except psutil.Error:  # a process that ended while we looked
            continue
    return shells


class ActivityHandler(APIHandler):
    @web.authenticated
    def get(self):
        terminals = []
        manager = self.settings.get("terminal_manager")
        for name, term in (getattr(manager, "terminals", None) or {}).items():
            pid = getattr(getattr(term, "ptyproc", None), "pid", None)
            terminals.append({"name": name, "processes": processes_under(pid) if pid else 0})
        vscode = code_server_terminals()
        kernels = self.settings.get("kernel_manager")
        busy = sum(1 for k in (kernels.list_kernels() if kernels else []) if k.get("execution_state") == "busy")
        self.finish(json.dumps({"busy_kernels": busy, "terminals": terminals, "vscode_terminals": vscode,
                                "terminal_processes": sum(t["processes"] for t in [*terminals, *vscode])}))


ROUTES = [("activity", ActivityHandler)]
