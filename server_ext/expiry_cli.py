"""`fedhub expiry [--extend HOURS]`: this session's end, and extending it within the group's
limit, from the hub's /api/expiry (the terminal twin of JupyterLab's expiry notification,
for VS Code sessions). The session is $JUPYTERHUB_SERVER_NAME ("" for the default server)."""

from __future__ import annotations

import json
import os
import sys
import time

import requests


def _line(rec: dict, now: float) -> str:
    left = max(0.0, rec["end"] - now) / 60
    most = rec["limits"]["max_hours"]
    room = max(0.0, (rec["started"] + most * 3600 - rec["end"]) / 3600)
    return (f"ends at {time.strftime('%Y-%m-%d %H:%M', time.localtime(rec['end']))} (in {left:.0f} min); "
            f"at most {most:g} h in all, {room:.2f} h left to extend")


def cmd_expiry(args) -> int:
    base, headers = args.hub_api(args)
    server = os.environ.get("JUPYTERHUB_SERVER_NAME", "") if args.server is None else args.server
    if args.extend is not None:
        r = requests.post(f"{base}/services/fedhub/api/expiry/extend", headers=headers, timeout=60,
                          json={"hours": args.extend, "server_name": server})
        if r.status_code != 200:
            print(f"fedhub expiry: {r.status_code}: {args.error_message(r)}", file=sys.stderr)
            return 1
        rec = r.json()
        print(json.dumps(rec, indent=1) if args.json else f"extended by {args.extend:g} h: {_line(rec, time.time())}")
        return 0
    r = requests.get(f"{base}/services/fedhub/api/expiry", headers=headers, timeout=60)
    if r.status_code != 200:
        print(f"fedhub expiry: {r.status_code}: {args.error_message(r)}", file=sys.stderr)
        return 1
    data = r.json()
    mine = [s for s in data["sessions"] if s.get("server_name", "") == server]
    if args.json:
        print(json.dumps(mine[0] if mine else None, indent=1))
    elif not mine:
        print("no time limit known for this session (not running, or not seen by the hub yet)")
    else:
        print(_line(mine[0], data.get("now") or time.time()))
    return 0


def add_commands(sub, hub_api, error_message) -> None:
    p = sub.add_parser("expiry", help="when this session ends; --extend HOURS extends it within your limit")
    p.add_argument("--extend", type=float, metavar="HOURS", help="extend this session by HOURS")
    p.add_argument("--server", default=None, help="a named server (default: this session's, $JUPYTERHUB_SERVER_NAME)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_expiry, hub_api=hub_api, error_message=error_message)
