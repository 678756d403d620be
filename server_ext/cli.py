"""The `fedhub` command.

`fedhub up` runs the hub (needs the [hub] extra); the other commands run anywhere,
inside a session or on a laptop, and talk to the hub over HTTP. `fedhub runs`,
`reproduce` and `export` use the mlflow client (the [lab] extra) against
$MLFLOW_TRACKING_URI, which a hub session points at the hub's MLflow service.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

import requests

from .cli_table import print_table


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


# ------------------------------------------------------------------ MLflow commands
def _tracking(args) -> None:
    """Point the mlflow client at the right server: --tracking-uri, $MLFLOW_TRACKING_URI,
    else the hub's MLflow service when there is a hub (--hub, $FEDHUB_URL, a session's env)."""
    if getattr(args, "tracking_uri", None):
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return
    if args.hub or os.environ.get("FEDHUB_URL") or os.environ.get("JUPYTERHUB_API_URL"):
        base, _ = _hub_api(args)
        os.environ["MLFLOW_TRACKING_URI"] = f"{base}/services/mlflow"
        token = args.token or os.environ.get("FEDHUB_TOKEN") or os.environ.get("JUPYTERHUB_API_TOKEN", "")
        if token:
            os.environ.setdefault("MLFLOW_TRACKING_TOKEN", token)


def _mlflow_error(command: str, e: Exception) -> int:
    msg = getattr(e, "message", None) or str(e)
    print(f"fedhub {command}: {msg.splitlines()[0] if msg else type(e).__name__}", file=sys.stderr)
    return 1


def _experiment_ids(client, wanted: str | None) -> list[str]:
    if wanted is None:
        ids, token = [], None
        while True:
            page = client.search_experiments(max_results=1000, page_token=token)
            ids += [e.experiment_id for e in page]
            token = page.token
            if not token:
                return ids
    exp = client.get_experiment_by_name(wanted)
    if exp is None and wanted.isdigit():
        from mlflow.exceptions import MlflowException
        try:
            exp = client.get_experiment(wanted)
        except MlflowException:
            exp = None
    if exp is None:
        raise LookupError(f"no experiment named or numbered {wanted!r}")
    return [exp.experiment_id]


def _fmt(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def cmd_runs(args) -> int:
    if not 1 <= args.max <= 1000:
        print("fedhub runs: --max must be 1..1000", file=sys.stderr)
        return 2
    _tracking(args)
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from .tracking import run_to_dict
    client = MlflowClient()
    try:
        ids = _experiment_ids(client, args.experiment)
        order_by = [args.order_by] if args.order_by else ["attributes.start_time DESC"]
        runs = client.search_runs(ids, filter_string=args.filter or "", max_results=args.max,
                                  order_by=order_by) if ids else []
        names = {i: client.get_experiment(i).name for i in {r.info.experiment_id for r in runs}}
    except (MlflowException, LookupError) as e:
        return _mlflow_error("runs", e)
    rows = [run_to_dict(r) for r in runs]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print("no runs", file=sys.stderr)
        return 0
    import time as _time
    metric_keys = sorted({k for r in rows for k in r["metrics"]})[:4]
    header = ["RUN ID", "EXPERIMENT", "NAME", "STATUS", "STARTED", "REPRO", *metric_keys]
    table = [header]
    for r in rows:
        started = _time.strftime("%Y-%m-%d %H:%M", _time.localtime(r["start_time"] / 1000)) if r["start_time"] else "-"
        table.append([r["run_id"], names.get(r["experiment_id"], r["experiment_id"]), r["run_name"] or "-",
                      r["status"], started, "yes" if r["reproducible"] else "-",
                      *(_fmt(r["metrics"][k]) if k in r["metrics"] else "-" for k in metric_keys)])
    print_table(table)
    return 0


def print_comparison(rep: dict, out=None) -> None:
    out = out or sys.stdout
    rows = [["METRIC", "ORIGINAL", "REPRODUCED", "MATCH"]]
    for c in rep["comparison"]:
        match = "identical" if c["match"] else ("close" if c.get("close") else "DIFFERS")
        rows.append([c["metric"], "-" if c["original"] is None else _fmt(c["original"]),
                     "-" if c["reproduced"] is None else _fmt(c["reproduced"]), match])
    print_table(rows, out)


def cmd_reproduce(args) -> int:
    _tracking(args)
    from .reproduce import ReproduceError, reproduce_run

    progress = None if args.quiet else (lambda msg: print(f"  {msg}", file=sys.stderr, flush=True))
    try:
        rep = reproduce_run(args.run_id, timeout=args.timeout, workdir=args.workdir, progress=progress)
    except ReproduceError as e:
        print(f"fedhub reproduce: {e.message}", file=sys.stderr)
        return 1
    except Exception as e:  # the tracking server is unreachable, ...
        return _mlflow_error("reproduce", e)
    d = rep.to_dict()
    if args.json:
        print(json.dumps(d, indent=1))
    else:
        print(f"run {d['run_id']} -> reproduction {d['child_run_id'] or '-'}: {d['message']}")
        for w in d["warnings"]:
            print(f"  warning: {w}")
        if d["status"] == "done":
            print_comparison(d)
        elif d["log_tail"]:
            print("\n".join(d["log_tail"].splitlines()[-20:]), file=sys.stderr)
    if d["status"] != "done":
        return 1
    return 0 if d["identical"] else 3


def cmd_export(args) -> int:
    _tracking(args)
    from .reproduce import ReproduceError
    from .rocrate_export import export_run
    try:
        path = export_run(args.run_id, args.out, all_artifacts=args.all_artifacts)
    except ReproduceError as e:
        print(f"fedhub export: {e.message}", file=sys.stderr)
        return 1
    except Exception as e:
        return _mlflow_error("export", e)
    print(f"RO-Crate of run {args.run_id}: {path}")
    return 0


def _experiment_id(args) -> str:
    """An experiment's id from its id or name (names are looked up with the mlflow client)."""
    if args.experiment.isdigit():
        return args.experiment
    _tracking(args)
    from mlflow.tracking import MlflowClient
    return _experiment_ids(MlflowClient(), args.experiment)[0]


def cmd_share(args, unshare: bool = False) -> int:
    """Share an experiment with a hub group (or list its shares): the hub's MLflow gate does it."""
    command = "unshare" if unshare else "share"
    try:
        exp_id = _experiment_id(args)
    except Exception as e:
        return _mlflow_error(command, e)
    base, headers = _hub_api(args)
    url = f"{base}/services/mlflow/fedhub/api/experiments/{exp_id}/shares"
    if command == "unshare":
        r = requests.delete(f"{url}/{args.group}", headers=headers, timeout=60)
    elif args.group:
        r = requests.post(url, headers=headers, json={"group": args.group, "permission": args.permission}, timeout=60)
    else:
        r = requests.get(url, headers=headers, timeout=60)
    if r.status_code != 200:
        print(f"fedhub {command}: {r.status_code}: {_error_message(r)}", file=sys.stderr)
        return 1
    data = r.json()
    if args.json:
        print(json.dumps(data, indent=1))
    elif command == "unshare":
        print(f"experiment {data['experiment_name']!r} is no longer shared with group {data['group']!r}")
    elif args.group:
        print(f"experiment {data['experiment_name']!r} shared with group {data['group']!r} ({data['permission']})")
    else:
        shares = data["shares"]
        print(f"experiment {data['experiment_name']!r} ({exp_id}): " + (
            ", ".join(f"{s['group']} ({s['permission']})" for s in shares) if shares else "not shared"))
    return 0


def cmd_unshare(args) -> int:
    return cmd_share(args, unshare=True)


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
    if argv[:2] == ["db", "upgrade"]:  # fedhub's state database schema (fedhub.hub.statedb, hub extra)
        return importlib.import_module("fedhub.hub.statedb.cli").main(argv[2:])
    if argv[:2] == ["k8s", "render"]:  # z2jh values + manifests (fedhub.hub.k8s_render, needs pyyaml only)
        return importlib.import_module("fedhub.hub.k8s_render").main(argv[2:])
    parser = argparse.ArgumentParser(prog="fedhub", description="fedhub: a federated JupyterHub")
    parser.add_argument("--hub", help="hub URL (default: this session's hub, or $FEDHUB_URL)")
    parser.add_argument("--token", help="hub API token (default: $FEDHUB_TOKEN or this session's token)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="run fedhub on this machine (see `fedhub up --help`)")
    sub.add_parser("db", help="`fedhub db upgrade`: migrate the hub's state database (see --help)")
    sub.add_parser("k8s", help="`fedhub k8s render`: zero-to-jupyterhub values and manifests (see --help)")
    p = sub.add_parser("sites", help="the federation's sites and free capacity")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sites)

    p = sub.add_parser("runs", help="MLflow runs (this session's tracking server)")
    p.add_argument("--experiment", help="experiment name or id (default: every experiment)")
    p.add_argument("--max", type=int, default=20, help="at most this many runs (1..1000, default 20)")
    p.add_argument("--order-by", help='e.g. "metrics.acc DESC" (default: newest first)')
    p.add_argument("--filter", help="MLflow search filter, e.g. \"params.lr = '0.1'\"")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or the hub's)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("reproduce", help="re-execute a captured run in a fresh kernel and compare metrics "
                       "(exit 0 identical, 3 metrics differ, 1 error)")
    p.add_argument("run_id")
    p.add_argument("--timeout", type=float, default=600, help="seconds for the whole execution (default 600)")
    p.add_argument("--workdir", help="restore and run here and keep it (default: a temporary directory)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or the hub's)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("export", help="a run as an RO-Crate (directory, or .zip)")
    p.add_argument("run_id")
    p.add_argument("--out", required=True, help="crate.zip, or a directory")
    p.add_argument("--all-artifacts", action="store_true", help="every artifact of the run, not only the capture")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or the hub's)")
    p.set_defaults(func=cmd_export)

    from . import provenance_cli
    provenance_cli.add_commands(sub, _hub_api, _error_message)

    from . import fl_cli
    fl_cli.add_commands(sub, _hub_api, _error_message)

    from . import token_cli
    token_cli.add_commands(sub, _hub_api, _error_message)

    from . import deploy_cli
    deploy_cli.add_commands(sub, _hub_api, _error_message)

    from . import usage_cli
    usage_cli.add_commands(sub, _hub_api, _error_message)

    from . import expiry_cli  # a session's end, and extending it (VS Code users' Extend button)
    expiry_cli.add_commands(sub, _hub_api, _error_message)

    p = sub.add_parser("share", help="share an experiment with a hub group, or list its shares (no --group)")
    p.add_argument("experiment", help="experiment name or id")
    p.add_argument("--group", help="hub group whose members get access")
    p.add_argument("--permission", default="READ", type=str.upper, choices=["READ", "USE", "EDIT", "MANAGE"],
                   help="what the group's members may do (default READ)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI, to find the experiment by name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_share)
    p = sub.add_parser("unshare", help="stop sharing an experiment with a hub group")
    p.add_argument("experiment", help="experiment name or id")
    p.add_argument("--group", required=True, help="hub group to take access from")
    p.add_argument("--tracking-uri", help="MLflow tracking URI, to find the experiment by name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_unshare)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
