"""`fedhub usage`: CPU-hours and GPU-hours per user and site, from the hub's /api/usage."""

from __future__ import annotations

import json
import sys

import requests


def cmd_usage(args) -> int:
    base, headers = args.hub_api(args)
    params = {"user": args.user} if args.user else {}
    r = requests.get(f"{base}/services/fedhub/api/usage", headers=headers, params=params, timeout=60)
    if r.status_code != 200:
        print(f"fedhub usage: {r.status_code}: {args.error_message(r)}", file=sys.stderr)
        return 1
    data = r.json()
    if args.json:
        print(json.dumps(data, indent=1))
        return 0
    print(f"{'USER':<16}{'SITE':<16}{'SESSIONS':>9}{'CPU-HOURS':>12}{'GPU-HOURS':>12}")
    for user, u in sorted(data["users"].items()):
        for site, s in sorted(u["sites"].items()):
            print(f"{user:<16}{site:<16}{s['sessions']:>9}{s['cpu_hours']:>12.4f}{s['gpu_hours']:>12.4f}")
        print(f"{user:<16}{'(all sites)':<16}{u['sessions']:>9}{u['cpu_hours']:>12.4f}{u['gpu_hours']:>12.4f}")
    return 0


def add_commands(sub, hub_api, error_message) -> None:
    p = sub.add_parser("usage", help="CPU-hours and GPU-hours of your sessions (admins: everyone's)")
    p.add_argument("--user", help="one user's usage (admins only, for another user)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_usage, hub_api=hub_api, error_message=error_message)
