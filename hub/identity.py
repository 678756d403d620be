"""Identity: the login `fedhub up` runs, and OIDC claims -> hub groups.

- ``shared-password`` (default; workshops and one researcher's machine), ``tmp`` (a fresh
  temporary account per visitor, jupyterhub-tmpauthenticator), ``dummy`` (tests), and
- ``oidc``: `FedhubOIDCAuthenticator`, oauthenticator's GenericOAuthenticator plus
  `claim_group_rules`: rules {claim, pattern (regex), group} that turn entitlement claims
  (e.g. eduPerson entitlements) into hub groups. Groups are kept by oauthenticator's own
  group management (``manage_groups`` + a callable ``auth_state_groups_key``): the hub
  adds and removes the user's group memberships at every login.

The provider settings live in the data dir's ``identity.yaml`` (docs/identity.md);
`load_identity()` validates them with errors naming file, key and what was expected.
This module imports oauthenticator only when the OIDC authenticator class is used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from .catalogue import CatalogueError, _Reader, read_yaml

IdentityError = CatalogueError
OIDC_CLASS = "fedhub.hub.identity.FedhubOIDCAuthenticator"
AUTHENTICATORS = {  # `fedhub up --authenticator NAME` -> JupyterHub authenticator_class
    "shared-password": "shared-password",
    "dummy": "dummy",
    "tmp": "tmp",
    "oidc": OIDC_CLASS,
}
DEFAULT_SCOPES = ["openid", "profile", "email"]
_GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


@dataclass(frozen=True)
class GroupRule:
    claim: str            # claim name in the userinfo (dotted path for nested claims)
    pattern: re.Pattern   # matched (re.search) against each value of the claim
    group: str            # hub group; may use the pattern's groups (\\1, \\g<vo>)


def parse_group_rules(raw: Any, source: str = "identity.yaml", path: str = "oidc.group_rules") -> tuple[GroupRule, ...]:
    r = _Reader(source)
    if raw is None:
        return ()
    if not isinstance(raw, list):
        r.fail(path, "a list of {claim, pattern, group}", raw)
    rules = []
    for i, rule in enumerate(raw):
        p = f"{path}[{i}]"
        r.mapping(rule, p, {"claim", "pattern", "group"}, {"claim", "pattern", "group"})
        claim = r.string(rule["claim"], f"{p}.claim")
        if not claim:
            r.fail(f"{p}.claim", "a claim name such as eduperson_entitlement", claim)
        try:
            pattern = re.compile(r.string(rule["pattern"], f"{p}.pattern"))
        except re.error as e:
            r.fail(f"{p}.pattern", f"a regular expression ({e})", rule["pattern"])
        group = r.string(rule["group"], f"{p}.group")
        if not group:
            r.fail(f"{p}.group", "a hub group name", group)
        rules.append(GroupRule(claim, pattern, group))
    return tuple(rules)


def _claim_values(claims: Mapping, name: str) -> list[str]:
    value: Any = claims
    for part in name.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def groups_from_claims(rules: Iterable[GroupRule], claims: Mapping) -> set[str]:
    """Hub groups for a user with these userinfo claims (pure)."""
    groups = set()
    for rule in rules:
        for value in _claim_values(claims, rule.claim):
            m = rule.pattern.search(value)
            if m:
                group = m.expand(rule.group)
                if _GROUP_NAME.match(group):  # a value that expands to junk never becomes a group
                    groups.add(group)
    return groups


# ---------------------------------------------------------------- identity.yaml

_OIDC_KEYS = {"issuer", "authorize_url", "token_url", "userinfo_url", "client_id", "client_secret",
              "client_secret_file", "scopes", "username_claim", "callback_url", "login_service",
              "group_rules", "allowed_groups", "admin_groups", "validate_server_cert"}


def load_identity(path: str | Path) -> dict:
    """Read and validate identity.yaml; returns the `oidc` settings as a plain dict."""
    path = Path(path)
    source = path.name
    r = _Reader(source)
    if not path.exists():
        r.fail("oidc", f"an identity file with the OIDC provider's settings (not found: {path})", show_got=False)
    doc = read_yaml(path)
    r.mapping(doc, "", {"oidc"}, {"oidc"})
    o = r.mapping(doc["oidc"], "oidc", _OIDC_KEYS, {"client_id"})
    out: dict = {}
    for key in ("issuer", "authorize_url", "token_url", "userinfo_url", "callback_url"):
        if key in o:
            value = r.string(o[key], f"oidc.{key}")
            if not re.match(r"^https?://", value):
                r.fail(f"oidc.{key}", "an http(s) URL", value)
            out[key] = value.rstrip("/") if key == "issuer" else value
    if "issuer" not in out and not all(k in out for k in ("authorize_url", "token_url", "userinfo_url")):
        r.fail("oidc.issuer", "the provider's issuer URL (or all of authorize_url, token_url, userinfo_url)",
               show_got=False)
    out["client_id"] = r.string(o["client_id"], "oidc.client_id")
    if "client_secret_file" in o:
        secret_path = Path(r.string(o["client_secret_file"], "oidc.client_secret_file"))
        try:
            out["client_secret"] = secret_path.read_text().strip()
        except OSError as e:
            r.fail("oidc.client_secret_file", f"a readable file ({e.strerror})", str(secret_path))
    else:
        out["client_secret"] = r.string(o.get("client_secret", ""), "oidc.client_secret")
    scopes = o.get("scopes", DEFAULT_SCOPES)
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes) or "openid" not in scopes:
        r.fail("oidc.scopes", "a list of scopes including openid", scopes)
    out["scopes"] = scopes
    out["username_claim"] = r.string(o.get("username_claim", "preferred_username"), "oidc.username_claim")
    out["login_service"] = r.string(o.get("login_service", "your institution"), "oidc.login_service")
    parse_group_rules(o.get("group_rules"), source)  # validate here; the authenticator parses again
    out["group_rules"] = o.get("group_rules") or []
    for key in ("allowed_groups", "admin_groups"):
        value = o.get(key, [])
        if not isinstance(value, list) or not all(isinstance(g, str) for g in value):
            r.fail(f"oidc.{key}", "a list of hub group names", value)
        out[key] = value
    verify = o.get("validate_server_cert", True)
    if not isinstance(verify, bool):
        r.fail("oidc.validate_server_cert", "true or false", verify)
    out["validate_server_cert"] = verify
    return out


def discover(settings: dict, source: str = "identity.yaml", timeout: float = 10) -> dict:
    """Fill authorize/token/userinfo URLs from the issuer's OpenID discovery document."""
    if all(k in settings for k in ("authorize_url", "token_url", "userinfo_url")):
        return settings
    import requests
    url = settings["issuer"] + "/.well-known/openid-configuration"
    try:
        resp = requests.get(url, timeout=timeout, verify=settings.get("validate_server_cert", True))
        resp.raise_for_status()
        doc = resp.json()
        found = {"authorize_url": doc["authorization_endpoint"], "token_url": doc["token_endpoint"],
                 "userinfo_url": doc["userinfo_endpoint"]}
    except (requests.RequestException, ValueError, KeyError) as e:
        raise IdentityError(source, "oidc.issuer",
                            f"an OpenID provider answering {url} with its endpoints ({e})", show_got=False)
    return {**found, **settings}


def configure_authenticator(c, s: dict) -> None:
    """Set JupyterHub's authenticator from `fedhub up` settings (s['authenticator'], s['oidc'])."""
    name = s.get("authenticator", "shared-password")
    c.JupyterHub.authenticator_class = AUTHENTICATORS.get(name, name)
    if name in ("shared-password", "dummy", "tmp"):
        # whoever knows the password (or visits, for tmp) gets in; other authenticators keep their rules
        c.Authenticator.allow_all = True
    if name == "shared-password":
        c.SharedPasswordAuthenticator.user_password = s["shared_password"]
        if s.get("admin_users") and s.get("admin_password"):
            c.SharedPasswordAuthenticator.admin_password = s["admin_password"]
    if name == "oidc":
        o = s["oidc"]
        a = c.FedhubOIDCAuthenticator
        a.client_id, a.client_secret = o["client_id"], o["client_secret"]
        a.authorize_url, a.token_url, a.userdata_url = o["authorize_url"], o["token_url"], o["userinfo_url"]
        a.oauth_callback_url = o.get("callback_url") or f"{s['public_url_resolved']}/hub/oauth_callback"
        a.scope = o["scopes"]
        a.username_claim = o["username_claim"]
        a.login_service = o["login_service"]
        a.validate_server_cert = o["validate_server_cert"]
        a.claim_group_rules = o["group_rules"]
        if o["allowed_groups"]:
            a.allowed_groups = set(o["allowed_groups"])
        else:
            a.allow_all = True
        if o["admin_groups"]:
            a.admin_groups = set(o["admin_groups"])
    if s.get("admin_users"):
        c.Authenticator.admin_users = set(s["admin_users"])


def _oidc_class():
    from oauthenticator.generic import GenericOAuthenticator
    from traitlets import Bool, Dict, List, TraitError, default, validate

    class FedhubOIDCAuthenticator(GenericOAuthenticator):
        """GenericOAuthenticator whose hub groups come from entitlement claims."""

        claim_group_rules = List(
            Dict(), config=True,
            help="Rules turning userinfo claims into hub groups: a list of {claim, pattern, group}. "
                 "`claim` names a claim (dotted for nested ones), `pattern` is a regular expression "
                 "searched in each of its values, `group` the hub group (may use \\1 or \\g<name> of "
                 "the pattern). Example: {claim: eduperson_entitlement, pattern: "
                 "'^urn:mace:egi.eu:group:vo\\.example\\.org:role=member#aai\\.egi\\.eu$', group: vo-example}.")
        manage_groups = Bool(
            True, config=True,
            help="Let the authenticator own hub group memberships (set from claim_group_rules at every login).")

        @validate("claim_group_rules")
        def _validate_rules(self, proposal):
            try:
                parse_group_rules(proposal.value, "FedhubOIDCAuthenticator", "claim_group_rules")
            except IdentityError as e:
                raise TraitError(str(e))
            return proposal.value

        @default("auth_state_groups_key")
        def _groups_from_rules(self):
            def groups(auth_state):
                rules = parse_group_rules(self.claim_group_rules, "FedhubOIDCAuthenticator", "claim_group_rules")
                return sorted(groups_from_claims(rules, auth_state.get(self.user_auth_state_key) or {}))
            return groups

    return FedhubOIDCAuthenticator


def __getattr__(name):  # the class is built on first use, so importing this module stays light
    if name == "FedhubOIDCAuthenticator":
        cls = _oidc_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
