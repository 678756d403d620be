"""`fedhub fl ...`: federated (Flower) jobs from a terminal, over the hub's fedhub API.

    fedhub fl sites                              sites offered for federated jobs, and why not
    fedhub fl launch APP --sites a,b --rounds 3 [--compression int8] [--follow]
    fedhub fl ls | status ID | logs ID [--follow] | cancel ID

Talks HTTP only (the session's hub token), like every fedhub command in a session.
"""

from __future__ import annotations

import json
import os
import sys
import time

import requests

from .cli_table import print_table

FINAL = ("succeeded", "failed", "cancelled")


def _api(args, hub_api):
    base, headers = hub_api(args)
    return f"{base}/services/fedhub/api", headers


def _fail(command: str, r: requests.Response, error_message) -> int:
    print(f"fedhub fl {command}: {r.status_code}: {error_message(r)}", file=sys.stderr)
    return 1


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def format_event(ev: dict) -> str:
    """One progress line; round events carry their metrics and bytes."""
    stamp = time.strftime("%H:%M:%S", time.localtime(ev.get("time", time.time())))
    return f"{stamp}  {ev.get('message', '')}"


def follow(api: str, headers: dict, job_id: str, after: int = 0, out=None) -> dict:
    """Print events as they come until the job ends; returns the final job."""
    out = out or sys.stdout
    while True:
        r = requests.get(f"{api}/jobs/{job_id}/events", params={"after": after, "wait": 30},
                         headers=headers, timeout=60)
        r.raise_for_status()
        data = r.json()
        for ev in data["events"]:
            print(format_event(ev), file=out, flush=True)
            if ev.get("log_tail") and ev.get("type") in ("log", "error"):
                print("    " + ev["log_tail"].replace("\n", "\n    "), file=out, flush=True)
        after = data["next"]
        if data["state"] in FINAL and not data["events"]:
            job = requests.get(f"{api}/jobs/{job_id}", headers=headers, timeout=30).json()
            return job


def cmd_launch(args, hub_api, error_message) -> int:
    api, headers = _api(args, hub_api)
    body = {"app": os.path.abspath(os.path.expanduser(args.app)), "sites": args.sites.split(","),
            "rounds": args.rounds, "strategy": args.strategy, "compression": args.compression,
            "on_dropout": args.on_dropout}
    if args.run_config:
        body["run_config"] = {k: _parse_value(v) for k, _, v in (kv.partition("=") for kv in args.run_config)}
    if args.experiment:
        body["experiment"] = args.experiment
    r = requests.post(f"{api}/jobs", json=body, headers=headers, timeout=60)
    if r.status_code != 201:
        return _fail("launch", r, error_message)
    job = r.json()
    print(f"job {job['id']}: {args.app} on {', '.join(job['sites'])}, {job['rounds']} rounds", flush=True)
    if not args.follow:
        return 0
    try:
        job = follow(api, headers, job["id"])
    except KeyboardInterrupt:
        print(f"\nstopped following; the job goes on (fedhub fl cancel {job['id']} to stop it)", file=sys.stderr)
        return 130
    except requests.RequestException as e:
        print(f"fedhub fl launch: lost the hub while following: {e}", file=sys.stderr)
        return 1
    return _summary(job)


def _summary(job: dict) -> int:
    line = f"job {job['id']} {job['state']}: {len(job['round_metrics'])}/{job['rounds']} rounds"
    if job.get("bytes", {}).get("total"):
        line += f", {job['bytes']['total']:,} bytes exchanged"
    if job.get("mlflow_run_id"):
        line += f", MLflow run {job['mlflow_run_id']}"
    print(line)
    for w in job.get("warnings", []):
        print(f"  warning: {w}")
    if job["state"] != "succeeded":
        if job.get("error"):
            print(f"  error: {job['error']}", file=sys.stderr)
        return 1
    return 0


def cmd_ls(args, hub_api, error_message) -> int:
    api, headers = _api(args, hub_api)
    r = requests.get(f"{api}/jobs", headers=headers, timeout=30)
    if r.status_code != 200:
        return _fail("ls", r, error_message)
    jobs = r.json()["jobs"]
    if args.json:
        print(json.dumps(jobs, indent=1))
        return 0
    if not jobs:
        print("no federated jobs", file=sys.stderr)
        return 0
    rows = [["JOB", "STATE", "ROUNDS", "SITES", "APP", "MLFLOW RUN"]]
    for j in jobs:
        rows.append([j["id"], j["state"], f"{len(j['round_metrics'])}/{j['rounds']}", ",".join(j["sites"]),
                     j.get("app_display") or j["app"], j.get("mlflow_run_id") or "-"])
    print_table(rows)
    return 0


def cmd_status(args, hub_api, error_message) -> int:
    api, headers = _api(args, hub_api)
    r = requests.get(f"{api}/jobs/{args.job_id}", headers=headers, timeout=30)
    if r.status_code != 200:
        return _fail("status", r, error_message)
    job = r.json()
    if args.json:
        print(json.dumps(job, indent=1))
        return 0
    print(f"job {job['id']}: {job['state']} ({len(job['round_metrics'])}/{job['rounds']} rounds)")
    for site, s in job["site_status"].items():
        print(f"  {site:<16}{s['state']:<12}{s.get('detail', '')}")
    for rnd in job["round_metrics"]:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(rnd["metrics"].items()))
        b = f"  {rnd['bytes_round']:,} B" if rnd.get("bytes_round") is not None else ""
        print(f"  round {rnd['round']}: {metrics}{b}")
    if job.get("error"):
        print(f"  error: {job['error']}")
    return 0


def cmd_logs(args, hub_api, error_message) -> int:
    api, headers = _api(args, hub_api)
    if args.follow:
        try:
            return _summary(follow(api, headers, args.job_id))
        except requests.HTTPError as e:
            return _fail("logs", e.response, error_message)
    r = requests.get(f"{api}/jobs/{args.job_id}/events", headers=headers, timeout=30)
    if r.status_code != 200:
        return _fail("logs", r, error_message)
    for ev in r.json()["events"]:
        print(format_event(ev))
    job = requests.get(f"{api}/jobs/{args.job_id}", headers=headers, timeout=30).json()
    if job.get("log_tail"):
        print("--- log tail ---")
        print(job["log_tail"])
    return 0


def cmd_cancel(args, hub_api, error_message) -> int:
    api, headers = _api(args, hub_api)
    r = requests.post(f"{api}/jobs/{args.job_id}/cancel", headers=headers, timeout=120)
    if r.status_code != 200:
        return _fail("cancel", r, error_message)
    print(f"job {args.job_id}: {r.json()['state']}")
    return 0


def cmd_sites(args, hub_api, error_message) -> int:
    api, headers = _api(args, hub_api)
    r = requests.get(f"{api}/federation/sites", headers=headers, timeout=30)
    if r.status_code != 200:
        return _fail("sites", r, error_message)
    for s in r.json()["sites"]:
        print(f"{s['name']:<16}{s['kind']:<12}{'yes' if s['allowed'] else 'no':<5}{s['reason']}")
    return 0


def add_commands(sub, hub_api, error_message) -> None:
    """Add `fedhub fl ...` to the fedhub command's subparsers."""
    fl = sub.add_parser("fl", help="federated (Flower) jobs across sites").add_subparsers(dest="fl_command",
                                                                                       required=True)

    def command(name, fn, help_):
        p = fl.add_parser(name, help=help_)
        p.set_defaults(func=lambda args: fn(args, hub_api, error_message))
        return p

    command("sites", cmd_sites, "sites offered for federated jobs, and why a site is not")
    p = command("launch", cmd_launch, "launch a Flower app on sites (one SuperNode per site)")
    p.add_argument("app", help="the Flower app folder (pyproject.toml with [tool.flwr.app]) in your home")
    p.add_argument("--sites", required=True, help="comma-separated site names")
    p.add_argument("--rounds", type=int, required=True, help="federated rounds (num-server-rounds)")
    p.add_argument("--strategy", default="fedavg", choices=["fedavg", "fedprox", "fedadam"])
    p.add_argument("--compression", default="none", help="none, int8, topk or topk:FRACTION")
    p.add_argument("--on-dropout", default="continue", choices=["continue", "fail"],
                   help="a SuperNode dies mid-run: go on with the others, or fail the job")
    p.add_argument("--run-config", action="append", metavar="KEY=VALUE",
                   help="override a key of the app's [tool.flwr.app.config] (repeatable)")
    p.add_argument("--experiment", help="MLflow experiment (default <user>/federated)")
    p.add_argument("--follow", "-f", action="store_true", help="print progress until the job ends")
    command("ls", cmd_ls, "your federated jobs").add_argument("--json", action="store_true")
    p = command("status", cmd_status, "a job's state, sites and per-round metrics")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true")
    p = command("logs", cmd_logs, "a job's events and log tail")
    p.add_argument("job_id")
    p.add_argument("--follow", "-f", action="store_true")
    command("cancel", cmd_cancel, "cancel a job (stops its SuperLink, SuperNodes and Slurm jobs)").add_argument("job_id")
