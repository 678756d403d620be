"""Run code in a real kernel of a real Jupyter server, as JupyterLab does: REST + websocket."""

from __future__ import annotations

import asyncio
import json
import uuid

import requests
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect


async def _execute(server_url: str, token: str, code, timeout: float, path: str | None = None) -> dict:
    headers = {"Authorization": f"token {token}"}
    if path is None:
        kernel = requests.post(f"{server_url}api/kernels", headers=headers, json={}, timeout=60)
        kernel.raise_for_status()
        kid = kernel.json()["id"]
    else:  # a notebook's kernel, as JupyterLab starts it (the kernel gets JPY_SESSION_NAME)
        session = requests.post(f"{server_url}api/sessions", headers=headers, timeout=60, json={
            "path": path, "name": path, "type": "notebook", "kernel": {"name": "python3"}})
        session.raise_for_status()
        kid = session.json()["kernel"]["id"]
    ws_url = server_url.replace("http", "ws", 1) + f"api/kernels/{kid}/channels"
    conn = await websocket_connect(HTTPRequest(ws_url, headers=headers, connect_timeout=30))
    out = {"stdout": "", "error": None}
    try:
        for cell in ([code] if isinstance(code, str) else code):  # cells in order, in the same kernel
            msg_id = uuid.uuid4().hex
            conn.write_message(json.dumps({
                "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex,
                           "msg_type": "execute_request", "version": "5.3"},
                "parent_header": {}, "metadata": {}, "channel": "shell",
                "content": {"code": cell, "silent": False, "store_history": False,
                            "user_expressions": {}, "allow_stdin": False}}))
            while True:
                raw = await asyncio.wait_for(conn.read_message(), timeout)
                if raw is None:
                    raise RuntimeError("kernel websocket closed")
                msg = json.loads(raw)
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind = msg["header"]["msg_type"]
                if kind == "stream":
                    out["stdout"] += msg["content"]["text"]
                elif kind == "error":
                    out["error"] = f"{msg['content']['ename']}: {msg['content']['evalue']}"
                elif kind == "status" and msg["content"]["execution_state"] == "idle":
                    break
            if out["error"] is not None:
                break
        return out
    finally:
        conn.close()
        requests.delete(f"{server_url}api/kernels/{kid}", headers=headers, timeout=30)


def execute(server_url: str, token: str, code: str | list[str], timeout: float = 120,
            path: str | None = None) -> dict:
    """server_url like http://127.0.0.1:8000/user/alice/ ; returns {'stdout', 'error'}.
    code: one cell, or cells run in order in the same kernel (stops at the first error).
    path: run in a kernel started for that notebook (sessions API), not a bare kernel."""
    return asyncio.run(_execute(server_url, token, code, timeout, path))
