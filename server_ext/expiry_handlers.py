"""This session's time limit, for the JupyterLab expiry notification (labextension/src/expiry.ts).

GET  fedhub/api/expiry         -> {"mode", "now", "session": the hub's record of *this* server or null}
POST fedhub/api/expiry/extend  {"hours": h} -> the hub's record with its new end

Both go to the hub's /api/expiry routes with the session's own token (hub_forward). The
session is named by $JUPYTERHUB_SERVER_NAME, so a user's other servers are never touched.
Standalone sessions have no time limit: GET answers ``session: null``, POST a 409.
"""

from __future__ import annotations

import os

from tornado import web

from .hub_forward import HubForwardHandler


def server_name() -> str:
    return os.environ.get("JUPYTERHUB_SERVER_NAME", "")


class ExpiryHandler(HubForwardHandler):
    feature = "A session time limit"

    @web.authenticated
    async def get(self):
        if self.ctx.mode != "hub":
            return self.write_json({"mode": self.ctx.mode, "now": None, "session": None})
        _, data = await self.hub_call("GET", "expiry")
        mine = [s for s in data.get("sessions", []) if s.get("server_name", "") == server_name()]
        self.write_json({"mode": "hub", "now": data.get("now"), "session": mine[0] if mine else None})


class ExtendHandler(HubForwardHandler):
    feature = "Extending a session"

    @web.authenticated
    async def post(self):
        body = self.json_body()
        await self.forward("POST", "expiry/extend", body={"hours": body.get("hours"), "server_name": server_name()})


ROUTES = [("expiry", ExpiryHandler), ("expiry/extend", ExtendHandler)]
