"""`fedhub token`: a least-scope, optionally expiring hub API token for CLI and CI use.

It asks the hub's own token API (POST /hub/api/users/{me}/tokens) with the caller's token,
so JupyterHub's RBAC decides: a token can carry only scopes its owner has. Short names
expand to fedhub's custom scopes (``jobs:read`` -> ``custom:fedhub:jobs:read``), and a token
with any fedhub scope also gets ``access:services!service=fedhub`` so it reaches the API.
"""

from __future__ import annotations

import json
import sys

import requests

FEDHUB_SERVICE_ACCESS = "access:services!service=fedhub"


def expand_scopes(raw: str) -> list[str]:
    """'jobs:read,federate' -> ['custom:fedhub:jobs:read', 'custom:fedhub:federate', access]."""
    out: list[str] = []
    for name in (s.strip() for s in raw.split(",")):
        if not name:
            continue
        if ":" not in name or name.split(":")[0] not in {"custom", "access", "read", "admin", "users", "servers",
                                                          "tokens", "groups", "list", "delete", "shares",
                                                          "self", "inherit"}:
            name = f"custom:fedhub:{name}"
        out.append(name)
    if any(s.startswith("custom:fedhub:") for s in out) and FEDHUB_SERVICE_ACCESS not in out:
        out.append(FEDHUB_SERVICE_ACCESS)
    return list(dict.fromkeys(out))


def cmd_token(args, hub_api, error_message) -> int:
    base, headers = hub_api(args)
    if not headers:
        print("fedhub token: no hub token to ask with; pass --token or set FEDHUB_TOKEN", file=sys.stderr)
        return 2
    scopes = expand_scopes(args.scopes)
    if not scopes:
        print("fedhub token: --scopes: expected a comma-separated list of scopes, e.g. sites:read,jobs:read",
              file=sys.stderr)
        return 2
    if args.expires_in is not None and args.expires_in <= 0:
        print(f"fedhub token: --expires-in: expected seconds > 0, got {args.expires_in}", file=sys.stderr)
        return 2
    try:
        me = requests.get(f"{base}/hub/api/user", headers=headers, timeout=30)
        if me.status_code != 200:
            print(f"fedhub token: the hub did not accept your token ({me.status_code}: {error_message(me)})",
                  file=sys.stderr)
            return 1
        body = {"scopes": scopes, "note": args.note}
        if args.expires_in:
            body["expires_in"] = args.expires_in
        r = requests.post(f"{base}/hub/api/users/{me.json()['name']}/tokens", headers=headers,
                          json=body, timeout=30)
    except requests.RequestException as e:
        print(f"fedhub token: could not reach the hub at {base}: {e}", file=sys.stderr)
        return 1
    if r.status_code != 201:
        print(f"fedhub token: the hub refused ({r.status_code}): {error_message(r)}", file=sys.stderr)
        return 1
    model = r.json()
    if args.json:
        print(json.dumps({k: model.get(k) for k in ("token", "id", "scopes", "expires_at", "note")}))
    else:
        print(model["token"])
        print(f"scopes: {', '.join(model.get('scopes') or scopes)}; expires: {model.get('expires_at') or 'never'}",
              file=sys.stderr)
    return 0


def add_commands(sub, hub_api, error_message) -> None:
    p = sub.add_parser("token", help="a least-scope hub API token for CLI/CI use (printed on stdout)")
    p.add_argument("--scopes", required=True,
                   help="comma-separated scopes; short names mean fedhub's (sites:read, jobs:read, federate, "
                        "deploy, deployments:read, provenance:read, datasets:read, ...)")
    p.add_argument("--expires-in", type=int, default=None, metavar="S", help="seconds until the token expires")
    p.add_argument("--note", default="fedhub token (CLI/CI)", help="note shown on the hub's token page")
    p.add_argument("--json", action="store_true", help="print the token model as JSON")
    p.set_defaults(func=lambda args: cmd_token(args, hub_api, error_message))
