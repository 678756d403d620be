"""A real OpenID Connect provider (panva/oidc-provider, tests/oidc/provider.mjs) on loopback,
and a browser-like login through it (requests following redirects, posting the
devInteractions forms back with their hidden `prompt` field)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

import requests

HERE = Path(__file__).resolve().parent


class OIDCProvider:
    """Start with the accounts; the issuer is known at once, the clients' redirect URIs are
    given to `serve()` (so the hub's port can be picked after the provider's is bound)."""

    def __init__(self, accounts: dict, client_id="fedhub-hub", client_secret="s3cret-hub"):
        self.client_id, self.client_secret = client_id, client_secret
        self._config = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        json.dump({"clients": [{"client_id": client_id, "client_secret": client_secret,
                                "redirect_uris": []}], "accounts": accounts}, self._config)
        self._config.close()
        if not (HERE / "node_modules" / "oidc-provider").is_dir():
            raise RuntimeError("tests/oidc/node_modules is missing: run ./dev setup (npm ci in tests/oidc)")
        self.proc = subprocess.Popen(["node", str(HERE / "provider.mjs"), self._config.name],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"oidc-provider did not start (exit {self.proc.poll()})")
        self.issuer = json.loads(line)["issuer"]

    def serve(self, redirect_uris: list[str]) -> "OIDCProvider":
        self.proc.stdin.write(json.dumps({"redirect_uris": redirect_uris}) + "\n")
        self.proc.stdin.flush()
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}
        return self

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        Path(self._config.name).unlink(missing_ok=True)


class _Form(HTMLParser):
    def __init__(self):
        super().__init__()
        self.action, self.fields = None, {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form" and self.action is None:
            self.action = a.get("action")
        elif tag == "input" and a.get("type") == "hidden" and a.get("name"):
            self.fields[a["name"]] = a.get("value", "")


def oidc_login(hub_url: str, account: str) -> tuple[requests.Session, requests.Response]:
    """Log in to the hub as `account` at the provider; returns the session (hub cookies) and
    the last response (the hub's page after the OAuth callback)."""
    s = requests.Session()
    r = s.get(f"{hub_url}/hub/oauth_login", timeout=30)
    for _ in range(4):  # login form, then consent form
        if r.url.startswith(hub_url):
            assert r.status_code == 200, f"hub answered {r.status_code} at {r.url}"
            return s, r
        form = _Form()
        form.feed(r.text)
        if form.action is None:
            raise AssertionError(f"no form at {r.url} ({r.status_code}): {r.text[:300]}")
        data = dict(form.fields)
        if data.get("prompt") == "login":
            data.update(login=account, password="any")
        r = s.post(urljoin(r.url, form.action), data=data, timeout=30)
    raise AssertionError(f"login as {account} did not come back to the hub: {r.url}")
