"""GET /fedhub/api/activity: what is running in this session, for the hub's idle culler.

The hub's last_activity does not see a training loop nobody watches or a build in a
terminal; this route reports busy kernels and the processes running under each terminal's
shell (the shell itself waiting at a prompt does not count).
"""

from __future__ import annotations

import json

import psutil
from jupyter_server.base.handlers import APIHandler
from tornado import web


def processes_under(pid: int) -> int:
    """Descendants of a terminal's shell: 0 when it sits at a prompt."""
    try:
        return len(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return 0


class ActivityHandler(APIHandler):
    @web.authenticated
    def get(self):
        terminals = []
        manager = self.settings.get("terminal_manager")
        for name, term in (getattr(manager, "terminals", None) or {}).items():
            pid = getattr(getattr(term, "ptyproc", None), "pid", None)
            terminals.append({"name": name, "processes": processes_under(pid) if pid else 0})
        kernels = self.settings.get("kernel_manager")
        busy = sum(1 for k in (kernels.list_kernels() if kernels else []) if k.get("execution_state") == "busy")
        self.finish(json.dumps({"busy_kernels": busy, "terminals": terminals,
                                "terminal_processes": sum(t["processes"] for t in terminals)}))


ROUTES = [("activity", ActivityHandler)]
