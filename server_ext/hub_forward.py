"""Forwarding session-API calls to the hub's fedhub API, with the session's own token.

The panels call the session API only; routes whose work happens on the hub (federated
jobs, deployments) pass through here. The hub's 4xx answers come back with their status
and message; a hub that cannot be reached or fails is a 502, and a session without a hub
(standalone) is a 409 saying so. Never a 500 with a traceback.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

from tornado import httpclient

from .handlers import FedhubHandler, SessionAPIError

#: how long a forwarded call may take, beyond a long-poll's own wait (seconds)
FORWARD_TIMEOUT = 60
#: concurrent calls to the hub per session (long-polls hold one each)
MAX_HUB_CONNECTIONS = 64


class HubForwardHandler(FedhubHandler):
    #: what needs the hub, for the standalone message ("Federated jobs", "Deployments")
    feature = "This feature"

    def hub_client(self) -> httpclient.AsyncHTTPClient:
        # our own client: tornado's shared one allows 10 connections, and long-polls would queue
        client = self.settings.get("fedhub_hub_client")
        if client is None:
            client = httpclient.AsyncHTTPClient(force_instance=True, max_clients=MAX_HUB_CONNECTIONS)
            self.settings["fedhub_hub_client"] = client
        return client

    def require_hub(self) -> None:
        if self.ctx.mode != "hub":
            raise SessionAPIError(
                409, f"{self.feature} needs a fedhub hub: this session runs standalone "
                     "(no JUPYTERHUB_API_TOKEN and FEDHUB_URL), so there is no hub to run it.")

    def json_body(self) -> dict:
        """The request's JSON object; 400 naming the problem otherwise."""
        raw = self.request.body or b"{}"
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise SessionAPIError(400, f"request body: expected a JSON object, got invalid JSON ({e})") from None
        if not isinstance(body, dict):
            raise SessionAPIError(400, f"request body: expected a JSON object, got {type(body).__name__}")
        return body

    async def hub_call(self, method: str, path: str, body: dict | None = None,
                       query: dict | None = None, timeout: float = FORWARD_TIMEOUT) -> tuple[int, dict]:
        """Call `$FEDHUB_URL/services/fedhub/api/<path>`; return (status, JSON) for 2xx."""
        self.require_hub()
        url = f"{self.ctx.fedhub_api}/{path}"
        if query:
            url += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        payload = json.dumps(body).encode() if body is not None else (b"" if method in ("POST", "PUT") else None)
        try:
            r = await self.hub_client().fetch(
                url, method=method, body=payload, raise_error=False, request_timeout=timeout,
                headers={"Authorization": f"token {self.ctx.token}", "Content-Type": "application/json",
                         "Accept": "application/json"})
        except (OSError, httpclient.HTTPClientError) as e:
            raise SessionAPIError(502, f"The hub's fedhub API is not reachable: {e}") from None
        if r.code == 599:  # tornado's code for timeouts and connection failures
            raise SessionAPIError(502, f"The hub's fedhub API is not reachable: {r.error}")
        try:
            data = json.loads(r.body) if r.body else {}
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {"items": data}
        if 400 <= r.code < 500:
            message = data.get("message") or f"the hub answered {r.code}"
            raise SessionAPIError(r.code, message)
        if r.code >= 300:
            self.log.warning("fedhub API %s %s answered %s: %s", method, path, r.code, r.body[:500])
            raise SessionAPIError(502, f"The hub's fedhub API failed ({r.code}): "
                                       f"{data.get('message') or 'see the hub log'}")
        return r.code, data

    async def forward(self, method: str, path: str, body: dict | None = None,
                      query: dict | None = None, timeout: float = FORWARD_TIMEOUT) -> None:
        """Forward and answer with the hub's status and JSON."""
        status, data = await self.hub_call(method, path, body=body, query=query, timeout=timeout)
        self.write_json(data, status=status)

    def events_query(self) -> tuple[dict, float]:
        """`after` and `wait` of an events long-poll, checked; and the timeout it needs."""
        after = self.int_arg("after", 0, 0, 10**9)
        wait = self.int_arg("wait", 0, 0, 60)
        return {"after": after, "wait": wait}, wait + FORWARD_TIMEOUT
