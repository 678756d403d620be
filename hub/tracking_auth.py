"""MLflow's authorization_function for fedhub: trust the hub's gate, nobody else.

MLflow's auth app (`mlflow server --app-name basic-auth`) calls this for every request.
fedhub's gate (fedhub.hub.tracking) has already checked the caller's hub login and
forwards the user name with a secret only the gate and this process know. We return
that user (creating it in MLflow's user store on first sight), and MLflow's own
per-experiment permissions do the isolation (default_permission = NO_PERMISSIONS).
"""

from __future__ import annotations

import hmac
import os
import secrets

from flask import Response, request
from werkzeug.datastructures import Authorization

USER_HEADER = "X-Fedhub-User"
ADMIN_HEADER = "X-Fedhub-Admin"
SECRET_HEADER = "X-Fedhub-Gate"
SECRET_ENV = "FEDHUB_MLFLOW_GATE_SECRET"


def authenticate_hub_user() -> Authorization | Response:
    expected = os.environ.get(SECRET_ENV, "")
    given = request.headers.get(SECRET_HEADER, "")
    username = request.headers.get(USER_HEADER, "")
    if not expected or not username or not hmac.compare_digest(given, expected):
        return Response('{"error_code": "UNAUTHENTICATED", "message": "Log in through the hub"}',
                        status=401, mimetype="application/json")
    from mlflow.server.auth import store  # the auth app's own user store

    if not store.has_user(username):
        # the password is never used: only the gate can authenticate this user
        store.create_user(username, secrets.token_urlsafe(24),
                          is_admin=request.headers.get(ADMIN_HEADER) == "1")
    return Authorization("basic", {"username": username, "password": ""})
