"""One base handler for the fedhub API: hub login, scope checks, JSON errors.

Every error leaves as JSON ``{"status": N, "message": "..."}``; an unexpected
exception is logged here and answered with a generic 500 message, never a traceback.
"""

from __future__ import annotations

import json

from jupyterhub.services.auth import HubOAuthenticated
from tornado import web


class APIError(web.HTTPError):
    """A domain error with a status code meant for the caller."""

    def __init__(self, status: int, message: str):
        super().__init__(status, message)
        self.message = message


class FedhubAPIHandler(HubOAuthenticated, web.RequestHandler):
    #: the JupyterHub custom scope a caller's token needs for this route
    required_scope: str = ""
    #: per-verb scopes where a verb needs another scope than required_scope
    #: (e.g. {"post": "custom:fedhub:federate"} on a route whose GET only reads)
    verb_scopes: dict[str, str] = {}

    @classmethod
    def scope_for(cls, verb: str) -> str:
        return cls.verb_scopes.get(verb.lower(), cls.required_scope)

    @property
    def route_scope(self) -> str:
        return self.scope_for(self.request.method)

    @property
    def hub_scopes(self):
        return {self.route_scope} if self.route_scope else super().hub_scopes

    @property
    def store(self):
        return self.settings["fedhub_store"]

    _denied: dict | None = None

    def check_hub_user(self, model):
        try:
            return super().check_hub_user(model)
        except Exception:
            self._denied = model  # authenticated, but the token lacks this route's scope
            raise

    def get_login_url(self):
        if self._denied is not None:
            raise APIError(403, f"Forbidden: this route needs the scope {self.route_scope or 'access:services'}")
        # browsers go through the hub's OAuth login; API clients get a 401 they can act on
        if "text/html" not in self.request.headers.get("Accept", ""):
            raise APIError(401, "Authentication required: send 'Authorization: token <hub API token>'")
        return super().get_login_url()

    def set_default_headers(self):
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")

    def write_json(self, data, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data))

    def write_error(self, status_code: int, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, web.HTTPError):
            message = getattr(exc, "message", None) or exc.log_message or self._reason
            if status_code == 403 and not exc.log_message:
                message = f"Forbidden: this route needs the scope {self.route_scope or 'access:services'}"
                if self._denied is None:
                    # tornado's @authenticated answers 403 to a POST/DELETE with no (or a bad,
                    # expired) token: that is a missing login, not a missing scope
                    status_code, message = 401, "Authentication required: send 'Authorization: token <hub API token>'"
                    self.set_status(401)
        elif _is_database_down(exc):
            # the state database (e.g. PostgreSQL) is unreachable: a retryable 503, not a bug
            status_code, message = 503, "fedhub's state database is not answering; try again shortly"
            self.set_status(503)
        else:
            message = "Internal error; the hub log has the details"
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status_code, "message": message}))


def _is_database_down(exc) -> bool:
    """A lost or refused database connection (SQLAlchemy's OperationalError / DisconnectionError)."""
    try:
        from sqlalchemy.exc import DisconnectionError, OperationalError
    except ImportError:  # pragma: no cover - the service always has SQLAlchemy
        return False
    return isinstance(exc, (OperationalError, DisconnectionError))
