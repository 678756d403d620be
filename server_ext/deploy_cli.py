"""`fedhub deploy ...`: one-click deployment from a terminal, over the hub's fedhub API.

    fedhub deploy MODEL --name N [--target embedded|site:X|edge:G] [--follow]
    fedhub deployments [--json]
    fedhub undeploy ID
    fedhub rollback ID [--version V]
    fedhub infer ID --sample | --inputs FILE.json
    fedhub snippet ID [--grpc | --via-hub]
    fedhub edge-register NAME --group G     (prints the device token once)

HTTP only, with the session's hub token (or --hub/--token), like every fedhub command in
a session. `DeploymentsClient` is shared with the Deploy ipywidget.
"""

from __future__ import annotations

import json
import os
import sys
import time

import requests

from .cli_table import print_table

SETTLED_NOT = ("deploying", "rolling-back", "undeploying")


class DeploymentsError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class DeploymentsClient:
    """The hub's deployments API (fedhub API service), as plain method calls."""

    def __init__(self, base_url: str, headers: dict, timeout: float = 60):
        self.api = f"{base_url.rstrip('/')}/services/fedhub/api"
        self.headers, self.timeout = headers, timeout

    def _call(self, method: str, path: str, timeout: float | None = None, **kw):
        try:
            r = requests.request(method, f"{self.api}/{path}", headers=self.headers,
                                 timeout=timeout or self.timeout, **kw)
        except requests.RequestException as e:
            raise DeploymentsError(0, f"the hub is not reachable at {self.api}: {e}") from None
        if r.status_code >= 400:
            try:
                message = r.json().get("message", r.text)
            except ValueError:
                message = f"not a fedhub API answer from {r.url} ({r.status_code})"
            raise DeploymentsError(r.status_code, message)
        return r.json() if r.content else {}

    def list(self) -> list[dict]:
        return self._call("GET", "deployments")["deployments"]

    def get(self, dep_id: str) -> dict:
        return self._call("GET", f"deployments/{dep_id}")

    def deploy(self, model: str, name: str, target: str = "embedded", options: dict | None = None) -> dict:
        body = {"model": model, "name": name, "target": target}
        if options:
            body["options"] = options
        return self._call("POST", "deployments", json=body)

    def events(self, dep_id: str, after: int = 0, wait: float = 20) -> dict:
        return self._call("GET", f"deployments/{dep_id}/events", params={"after": after, "wait": wait},
                          timeout=wait + 30)

    def follow(self, dep_id: str, on_event=None, after: int = 0, timeout: float = 900) -> dict:
        """Wait until the deployment settles, calling on_event(event) for each step change."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = self.events(dep_id, after)
            for event in data["events"]:
                if on_event:
                    on_event(event)
            after = data["last"]
            if data["status"] not in SETTLED_NOT:
                return self.get(dep_id)
        raise DeploymentsError(0, f"deployment {dep_id} did not settle in {timeout:.0f}s")

    def undeploy(self, dep_id: str) -> dict:
        return self._call("DELETE", f"deployments/{dep_id}")

    def rollback(self, dep_id: str, version: int | None = None) -> dict:
        return self._call("POST", f"deployments/{dep_id}/rollback", json={"version": version} if version else {})

    def infer(self, dep_id: str, inputs: list | None = None) -> dict:
        body = {"inputs": inputs} if inputs is not None else {"sample": True}
        return self._call("POST", f"deployments/{dep_id}/infer", json=body)

    def snippet(self, dep_id: str) -> dict:
        return self._call("GET", f"deployments/{dep_id}/snippet")

    def register_device(self, name: str, group: str) -> dict:
        return self._call("POST", "edge/devices", json={"name": name, "group": group})


def format_event(event: dict) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(event.get("time", time.time())))
    mark = {"running": "..", "done": "ok", "failed": "!!"}.get(event.get("status"), "  ")
    message = f"  {event['message']}" if event.get("message") else ""
    return f"{stamp}  {mark} {event.get('step', '')}{message}"


def endpoint_lines(record: dict) -> list[str]:
    ep = record.get("endpoint") or {}
    if record.get("kind") == "embedded" and ep:
        return [f"  model    {ep['model_name']} version {ep['model_version']}",
                f"  HTTP     {ep['http']}", f"  gRPC     {ep['grpc']}", f"  via hub  {ep['http_via_hub']}"]
    return [f"  {k:<8} {v}" for k, v in ep.items()]


def add_commands(sub, hub_api, error_message) -> None:
    def client(args) -> DeploymentsClient:
        base, headers = hub_api(args)
        return DeploymentsClient(base, headers)

    def run(command: str, func):
        def wrapped(args) -> int:
            try:
                return func(client(args), args)
            except DeploymentsError as e:
                where = f"{e.status}: " if e.status else ""
                print(f"fedhub {command}: {where}{e.message}", file=sys.stderr)
                return 1
        return wrapped

    p = sub.add_parser("deploy", help="deploy an MLflow model (runs:/..., models:/...) to the embedded "
                                      "server, a Kubernetes site or an edge device group")
    p.add_argument("model", help="runs:/RUN_ID/PATH, models:/NAME/VERSION, or an .onnx file in your workspace")
    p.add_argument("--name", required=True, help="deployment name (deploying the same name again adds a version)")
    p.add_argument("--target", default="embedded", help="embedded (default), site:<kubernetes site> or edge:<group>")
    p.add_argument("--follow", action="store_true", help="print each step until the deployment is ready or failed")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run("deploy", cmd_deploy))

    p = sub.add_parser("deployments", help="your deployments and their status")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run("deployments", cmd_deployments))

    p = sub.add_parser("undeploy", help="unload and remove a deployment")
    p.add_argument("id")
    p.set_defaults(func=run("undeploy", cmd_undeploy))

    p = sub.add_parser("rollback", help="serve the previous (or --version) version of a deployment again")
    p.add_argument("id")
    p.add_argument("--version", type=int)
    p.set_defaults(func=run("rollback", cmd_rollback))

    p = sub.add_parser("infer", help="test inference on a deployment (embedded server)")
    p.add_argument("id")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--sample", action="store_true", help="send a sample input made from the model's metadata")
    group.add_argument("--inputs", help="a JSON file with KServe v2 input tensors [{name, shape, datatype, data}]")
    p.set_defaults(func=run("infer", cmd_infer))

    p = sub.add_parser("snippet", help="tritonclient code for a deployment's endpoint")
    p.add_argument("id")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--grpc", action="store_true")
    kind.add_argument("--via-hub", action="store_true", help="HTTP through the hub's proxy with your token")
    p.set_defaults(func=run("snippet", cmd_snippet))

    p = sub.add_parser("edge-register", help="register an edge device; prints its token (shown once)")
    p.add_argument("name")
    p.add_argument("--group", required=True)
    p.set_defaults(func=run("edge-register", cmd_edge_register))


def cmd_deploy(client: DeploymentsClient, args) -> int:
    model = args.model
    if model.endswith(".onnx") and os.path.isfile(model):
        model = os.path.abspath(model)  # the hub reads it from your workspace
    record = client.deploy(model, args.name, args.target)
    version = record.get("pending_version")
    print(f"deployment {record['id']}: {record['name']} version {version} -> {record['target']}", flush=True)
    if not args.follow:
        print("follow it with: fedhub deployments   (or --follow)")
        return 0
    record = client.follow(record["id"], on_event=lambda e: print(format_event(e), flush=True))
    if args.json:
        print(json.dumps(record, indent=1))
    if record["status"] == "failed" or (record.get("error") and record.get("current_version") != version):
        print(f"fedhub deploy: {record.get('error') or 'failed'}", file=sys.stderr)
        return 1
    print(f"{record['name']} is {record['status']} (version {record['current_version']})")
    for line in endpoint_lines(record):
        print(line)
    return 0


def cmd_deployments(client: DeploymentsClient, args) -> int:
    rows = client.list()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print("no deployments", file=sys.stderr)
        return 0
    table = [["ID", "NAME", "TARGET", "STATUS", "VERSION", "MODEL", "ERROR"]]
    for r in rows:
        current = next((v for v in r["versions"] if v["version"] == r.get("current_version")), r["versions"][-1])
        table.append([r["id"], r["name"], r["target"], r["status"], str(r.get("current_version") or "-"),
                      current["model"], (r.get("error") or "")[:60]])
    print_table(table)
    return 0


def cmd_undeploy(client: DeploymentsClient, args) -> int:
    record = client.undeploy(args.id)
    print(f"{record['name']} ({record['id']}) undeployed")
    return 0


def cmd_rollback(client: DeploymentsClient, args) -> int:
    record = client.rollback(args.id, args.version)
    if record.get("error"):
        print(f"fedhub rollback: {record['error']}", file=sys.stderr)
        return 1
    print(f"{record['name']} now serves version {record['current_version']}")
    return 0


def cmd_infer(client: DeploymentsClient, args) -> int:
    inputs = None
    if args.inputs:
        try:
            with open(args.inputs) as f:
                inputs = json.load(f)
        except (OSError, ValueError) as e:
            print(f"fedhub infer: --inputs {args.inputs}: {e}", file=sys.stderr)
            return 2
    result = client.infer(args.id, inputs)
    print(json.dumps({"model_name": result["model_name"], "model_version": result["model_version"],
                      "outputs": result["outputs"], "ms": result["ms"]}, indent=1))
    return 0


def cmd_snippet(client: DeploymentsClient, args) -> int:
    snip = client.snippet(args.id)
    code = snip["grpc"] if args.grpc else snip["http_via_hub"] if args.via_hub else snip["http"]
    print(code or snip.get("note", ""))
    return 0


def cmd_edge_register(client: DeploymentsClient, args) -> int:
    device = client.register_device(args.name, args.group)
    print(f"device {device['name']} registered in group {device['group']}")
    print(f"its token (shown once; it can only act as this device):\n{device['token']}")
    print(f"run on the device: FEDHUB_EDGE_TOKEN=<token> fedhub-edge --hub <hub URL> "
          f"--name {device['name']} --group {device['group']}")
    return 0
