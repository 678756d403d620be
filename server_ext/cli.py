"""The `fedhub` command.

`fedhub up` runs the hub (needs the [hub] extra); the other commands run anywhere,
inside a session or on a laptop, and talk to the hub over HTTP.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

import requests


def _hub_api(args) -> tuple[str, dict]:
    base = args.hub or os.environ.get("FEDHUB_URL") or os.environ.get("JUPYTERHUB_PUBLIC_HUB_URL", "")
    if not base:
        api = os.environ.get("JUPYTERHUB_API_URL", "")  # inside a session: .../hub/api
        base = api.rsplit("/hub/api", 1)[0] if api else "http://127.0.0.1:8000"
    base = base.rstrip("/").removesuffix("/hub")
    token = args.token or os.environ.get("FEDHUB_TOKEN") or os.environ.get("JUPYTERHUB_API_TOKEN", "")
    return base, ({"Authorization": f"token {token}"} if token else {})


def _error_message(r: requests.Response) -> str:
    try:
        return r.json().get("message", r.text)
    except ValueError:
        return f"not a fedhub API answer from {r.url}"


def cmd_sites(args) -> int:
    base, headers = _hub_api(args)
    r = requests.get(f"{base}/services/fedhub/api/sites", headers=headers, timeout=30)
    if r.status_code != 200:
        print(f"fedhub sites: {r.status_code}: {_error_message(r)}", file=sys.stderr)
        return 1
    sites = r.json()["sites"]
    if args.json:
        print(json.dumps(sites, indent=1))
        return 0
    print(f"{'SITE':<14}{'KIND':<12}{'STATE':<7}{'CPUS FREE':>10}  GPUS FREE")
    for s in sites:
        gpus = ", ".join(f"{g['free']}/{g['capacity']} {g['type']}" for g in s["gpus"]) or "-"
        state = "up" if s["up"] else "down"
        print(f"{s['name']:<14}{s['kind']:<12}{state:<7}{s['cpus']['free']:>10g}  {gpus}")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "up":
        try:
            app = importlib.import_module("fedhub.hub.app")
        except ImportError as e:
            print(f"fedhub up needs the hub extra: pip install 'fedhub[hub]' ({e})", file=sys.stderr)
            return 2
        app.main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(prog="fedhub", description="fedhub: a federated JupyterHub")
    parser.add_argument("--hub", help="hub URL (default: this session's hub, or $FEDHUB_URL)")
    parser.add_argument("--token", help="hub API token (default: $FEDHUB_TOKEN or this session's token)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="run fedhub on this machine (see `fedhub up --help`)")
    p = sub.add_parser("sites", help="the federation's sites and free capacity")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sites)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
