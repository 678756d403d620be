"""Running and stopping the servers behind fedhub's hub-service gates (MLflow, the inference server)."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM the child's whole process group (servers fork workers), SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
            proc.wait(wait)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


async def serve_beside(app, port: int, child: subprocess.Popen, what: str, **listen_kwargs) -> None:
    """Serve a gate on loopback while the server behind it runs; stop on SIGTERM/SIGINT (the
    hub stops services with SIGTERM). If the server dies first, exit saying so: the hub
    restarts nothing by itself, and its log then shows why."""
    import asyncio

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app.listen(port, "127.0.0.1", **listen_kwargs)
    while not stop.is_set() and child.poll() is None:
        try:
            await asyncio.wait_for(stop.wait(), 1)
        except asyncio.TimeoutError:
            pass
    if child.poll() is not None and not stop.is_set():
        raise SystemExit(f"{what} exited with {child.returncode}")
