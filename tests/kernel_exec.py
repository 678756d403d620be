"""Run code in a real kernel of a real Jupyter server, as JupyterLab does: REST + websocket."""

from __future__ import annotations

import asyncio
import json
import uuid

import requests
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect


async def _execute(server_url: str, token: str, code: str, timeout: float) -> dict:
    headers = {"Authorization": f"token {token}"}
    kernel = requests.post(f"{server_url}api/kernels", headers=headers, json={}, timeout=60)
    kernel.raise_for_status()
    kid = kernel.json()["id"]
    ws_url = server_url.replace("http", "ws", 1) + f"api/kernels/{kid}/channels"
    conn = await websocket_connect(HTTPRequest(ws_url, headers=headers, connect_timeout=30))
    msg_id = uuid.uuid4().hex
    conn.write_message(json.dumps({
        "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex,
                   "msg_type": "execute_request", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": False,
                    "user_expressions": {}, "allow_stdin": False}}))
    out = {"stdout": "", "error": None}
    try:
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
                return out
    finally:
        conn.close()
        requests.delete(f"{server_url}api/kernels/{kid}", headers=headers, timeout=30)


def execute(server_url: str, token: str, code: str, timeout: float = 120) -> dict:
    """server_url like http://127.0.0.1:8000/user/alice/ ; returns {'stdout', 'error'}."""
    return asyncio.run(_execute(server_url, token, code, timeout))
