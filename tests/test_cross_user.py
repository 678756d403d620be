"""R5: another user's sessions, MLflow runs, federated jobs, deployments, edge devices,
provenance records and datasets are out of reach through every route: each attempt is
counted and printed (attempts / succeeded; goal 0 succeeded). Also: every fedhub route has
a custom scope granted through roles; expired and forged tokens are refused everywhere;
`fedhub token` mints least-scope, expiring tokens."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import requests
import yaml

from conftest import fedhub_env
from fedhub.hub.federation import example_app
from fedhub.hub.hubconfig import FEDHUB_SCOPES, configure
from fedhub.hub.ledger import SKELETON_FIELDS
from fedhub.hub.service.app import ROUTES, TOKEN_CACHE_SECONDS

pytestmark = pytest.mark.hub
DENIED = (401, 403, 404)


def tiny_onnx(path):
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    X, y = load_digits(return_X_y=True)
    X = X[:200].astype(np.float32)
    model = LogisticRegression(max_iter=200).fit(X, y[:200])
    path.write_bytes(to_onnx(model, X[:1], options={"zipmap": False}).SerializeToString())


def wait_up(url, token, timeout=150):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if requests.get(url, headers={"Authorization": f"token {token}"}, timeout=10).status_code == 200:
            return
        time.sleep(0.5)
    raise AssertionError(f"{url} not up")


@pytest.fixture(scope="module")
def world(module_hub_factory):
    """A hub where alice owns one of everything: a session, an MLflow run, a federated job,
    a deployment, an edge device, a provenance record and a dataset only her group may use."""
    hub = module_hub_factory(args=())
    (hub.data_dir / "policy.yaml").write_text(yaml.safe_dump({
        "groups": {"team-a": {"datasets": ["alice-data"]}},
        "default": {"sites": "*", "gpu_types": "*"},
        "datasets": [{"name": "alice-data", "locations": [{"site": "local-a", "path": "/srv/alice-data"}],
                      "policy": {"allowed_groups": ["team-a"], "purposes": ["interactive"]}}]}))
    with open(hub.data_dir / "jupyterhub_config.py", "a") as f:  # alice is in team-a, bob is not
        f.write('\nc.JupyterHub.load_groups = {"team-a": {"users": ["alice"]}}\n')
    hub.start(timeout=120)
    alice, bob = hub.create_user("alice"), hub.create_user("bob")
    w = {"hub": hub, "alice": alice, "bob": bob}
    # session (it starts while the rest is set up; MLflow starts meanwhile too)
    assert hub.spawn("alice").status_code in (201, 202)
    # federated job (its app in her home, as a session's workspace would hold it)
    home = hub.data_dir / "homes" / "alice"
    shutil.copytree(example_app("digits"), home / "digits", dirs_exist_ok=True)
    r = hub.fedhub_api("/jobs", alice, method="POST", json={"app": "digits", "sites": ["local-b"], "rounds": 1})
    assert r.status_code == 201, r.text
    w["job"] = r.json()["id"]
    # cancelled at once: the record stays (what bob aims at) and no Flower processes eat the CPU
    assert hub.fedhub_api(f"/jobs/{w['job']}", alice, method="DELETE").status_code == 200
    # deployment of an ONNX file from her workspace to the embedded server
    tiny_onnx(home / "digits.onnx")
    r = hub.fedhub_api("/deployments", alice, method="POST", json={"model": str(home / "digits.onnx"),
                                                                  "name": "alice-digits"})
    assert r.status_code == 202, r.text
    w["deployment"] = r.json()["id"]
    # edge device, provenance record
    r = hub.fedhub_api("/edge/devices", alice, method="POST", json={"name": "pi-a", "group": "lab"})
    assert r.status_code == 201, r.text
    r = hub.fedhub_api("/provenance", alice, method="POST", json={"subject": "alice-run", "body": {"x": 1}})
    assert r.status_code == 201, r.text
    w["record"] = r.json()["hash"]
    hub.wait_ready("alice")
    # MLflow run
    wait_up(f"{hub.url}/services/mlflow/api/2.0/mlflow/experiments/search?max_results=1", alice)
    ml = f"{hub.url}/services/mlflow/api/2.0/mlflow"
    auth = {"Authorization": f"Bearer {alice}"}
    exp = requests.post(f"{ml}/experiments/create", json={"name": "alice-private"}, headers=auth, timeout=30)
    assert exp.status_code == 200, exp.text
    w["experiment"] = exp.json()["experiment_id"]
    run = requests.post(f"{ml}/runs/create", json={"experiment_id": w["experiment"]}, headers=auth, timeout=30)
    w["run"] = run.json()["run"]["info"]["run_id"]
    return w


def attempts_against_alice(w) -> list[tuple[str, bool, str]]:
    """(what bob tried, whether it succeeded, what came back)."""
    hub, bob = w["hub"], w["bob"]
    out = []

    def refused(label, r, ok_if=None):
        leaked = (r.status_code not in DENIED) if ok_if is None else not ok_if(r)
        out.append((label, leaked, f"{r.status_code} {r.text[:120]}"))

    def api(method, path, **kw):
        return hub.fedhub_api(path, bob, method=method, **kw)

    # sessions: fedhub's list, the hub's user API, her server itself
    refused("GET /api/sessions lists no session of alice's", api("GET", "/sessions"),
            lambda r: r.status_code == 200 and all(s["user"] == "bob" for s in r.json()["sessions"]))
    refused("GET /hub/api/users/alice", hub.api("GET", "/users/alice", token=bob))
    refused("POST /hub/api/users/alice/server", hub.api("POST", "/users/alice/server", token=bob))
    refused("DELETE /hub/api/users/alice/server", hub.api("DELETE", "/users/alice/server", token=bob))
    refused("POST /hub/api/users/alice/tokens", hub.api("POST", "/users/alice/tokens", token=bob, json={}))
    refused("GET /hub/api/users/alice/tokens", hub.api("GET", "/users/alice/tokens", token=bob))
    refused("GET /user/alice/api/contents", requests.get(f"{hub.url}/user/alice/api/contents", timeout=30,
                                                         headers={"Authorization": f"token {bob}"},
                                                         allow_redirects=False),
            lambda r: r.status_code in DENIED or (r.status_code == 302 and "/user/alice" not in r.headers["Location"]))
    # MLflow runs through the hub's MLflow (its own permissions decide)
    ml = f"{hub.url}/services/mlflow/api/2.0/mlflow"
    h = {"Authorization": f"Bearer {bob}"}
    run, exp = w["run"], w["experiment"]
    for label, method, path, kw in [
        ("GET runs/get", "GET", f"/runs/get?run_id={run}", {}),
        ("POST runs/log-metric", "POST", "/runs/log-metric", {"json": {"run_id": run, "key": "x", "value": 1,
                                                                       "timestamp": 0}}),
        ("POST runs/set-tag", "POST", "/runs/set-tag", {"json": {"run_id": run, "key": "k", "value": "v"}}),
        ("POST runs/update", "POST", "/runs/update", {"json": {"run_id": run, "status": "FAILED"}}),
        ("POST runs/delete", "POST", "/runs/delete", {"json": {"run_id": run}}),
        ("GET experiments/get", "GET", f"/experiments/get?experiment_id={exp}", {}),
        ("POST experiments/update", "POST", "/experiments/update", {"json": {"experiment_id": exp, "new_name": "mine"}}),
        ("POST experiments/delete", "POST", "/experiments/delete", {"json": {"experiment_id": exp}}),
        ("POST runs/create in her experiment", "POST", "/runs/create", {"json": {"experiment_id": exp}}),
        ("GET artifacts/list", "GET", f"/artifacts/list?run_id={run}", {}),
    ]:
        refused(f"MLflow {label}", requests.request(method, ml + path, headers=h, timeout=30, **kw))
    refused("MLflow runs/search in her experiment", requests.post(f"{ml}/runs/search", headers=h, timeout=30,
                                                                  json={"experiment_ids": [exp]}),
            lambda r: r.status_code in DENIED or (r.status_code == 200 and not r.json().get("runs")))
    # federated jobs
    job = w["job"]
    for method, path in (("GET", f"/jobs/{job}"), ("GET", f"/jobs/{job}/events"),
                         ("DELETE", f"/jobs/{job}"), ("POST", f"/jobs/{job}/cancel")):
        refused(f"{method} /api{path}", api(method, path))
    refused("GET /api/jobs lists no job of alice's", api("GET", "/jobs"),
            lambda r: r.status_code == 200 and all(j["owner"] == "bob" for j in r.json()["jobs"]))
    # deployments
    dep = w["deployment"]
    for method, path, kw in (("GET", "", {}), ("GET", "/events", {}), ("POST", "/rollback", {}),
                             ("POST", "/infer", {"json": {"sample": True}}), ("GET", "/snippet", {}),
                             ("GET", "/manifests", {}), ("DELETE", "", {})):
        refused(f"{method} /api/deployments/{{alice's}}{path}", api(method, f"/deployments/{dep}{path}", **kw))
    refused("GET /api/deployments lists none of alice's", api("GET", "/deployments"),
            lambda r: r.status_code == 200 and dep not in r.text)
    home = w["hub"].data_dir / "homes" / "alice"
    refused("POST /api/deployments of alice's workspace file",
            api("POST", "/deployments", json={"model": str(home / "digits.onnx"), "name": "stolen"}))
    # edge: devices and their status reports
    refused("GET /api/edge/devices lists none of alice's", api("GET", "/edge/devices"),
            lambda r: r.status_code == 200 and "pi-a" not in r.text)
    bob_device = api("POST", "/edge/devices", json={"name": "pi-b", "group": "lab"}).json()["token"]
    refused("POST /api/edge/devices/pi-a/status with bob's device",
            hub.fedhub_api("/edge/devices/pi-a/status", bob_device, method="POST", json={"state": "serving"}))
    # provenance
    rec = w["record"]
    refused("GET /api/provenance/{alice's}", api("GET", f"/provenance/{rec}"))
    refused("GET /api/provenance/{alice's}?format=prov", api("GET", f"/provenance/{rec}?format=prov"))
    refused("GET /api/provenance lists none of alice's", api("GET", "/provenance"),
            lambda r: r.status_code == 200 and all(x["who"] == "bob" for x in r.json()["records"]))
    # the chain is public as skeletons (hashes and signatures, to verify it): nothing of alice's content
    refused("GET /api/provenance/chain shows alice's record only as a skeleton", api("GET", "/provenance/chain"),
            lambda r: r.status_code == 200 and all(set(x) <= set(SKELETON_FIELDS) for x in r.json()["records"]
                                                   if x["hash"] == rec) and "alice-run" not in r.text)
    # datasets
    refused("GET /api/datasets/alice-data", api("GET", "/datasets/alice-data"))
    refused("GET /api/datasets lists no dataset of team-a", api("GET", "/datasets"),
            lambda r: r.status_code == 200 and "alice-data" not in r.text)
    refused("spawn with alice-data", hub.spawn("bob", datasets=["alice-data"]))
    return out


def test_cross_user_attempts_all_refused(world):
    results = attempts_against_alice(world)
    succeeded = [(label, detail) for label, leaked, detail in results if leaked]
    print(f"\nR5: cross-user attempts {len(results)}, succeeded {len(succeeded)}")
    for label, leaked, detail in results:
        print(f"  {'LEAK' if leaked else 'refused'}  {label}  -> {detail}")
    assert len(results) >= 40
    assert succeeded == []
    # alice herself still reaches all of it
    hub, alice = world["hub"], world["alice"]
    assert hub.fedhub_api(f"/jobs/{world['job']}", alice).status_code == 200
    assert hub.fedhub_api(f"/deployments/{world['deployment']}", alice).status_code == 200
    assert hub.fedhub_api(f"/provenance/{world['record']}", alice).status_code == 200
    assert hub.fedhub_api("/datasets/alice-data", alice).status_code == 200


def concrete(path: str) -> str:
    return "/" + re.sub(r"\(\?P<(\w+)>[^)]*\)", "0123456789abcdef", path)


def test_expired_and_forged_tokens_are_refused_on_every_route(world):
    hub, alice = world["hub"], world["alice"]
    r = hub.api("POST", "/users/alice/tokens", json={"expires_in": 1, "note": "short"})
    expired = r.json()["token"]
    assert hub.fedhub_api("/sites", expired).status_code == 200  # valid while it lasts
    time.sleep(1 + TOKEN_CACHE_SECONDS + 0.5)  # expired; the service's token cache has let go of it
    forged = "f" * 32
    tampered = alice[:-2] + ("00" if alice[-2:] != "00" else "11")
    checked = 0
    for path, handler in ROUTES:
        for verb in ("get", "post", "delete"):
            if verb not in {v for cls in handler.__mro__ for v in cls.__dict__ if v in ("get", "post", "delete")
                            and cls.__module__.startswith("fedhub")}:
                continue
            for token in (expired, forged, tampered, ""):
                r = requests.request(verb.upper(), f"{hub.url}/services/fedhub{concrete(path)}",
                                     headers={"Authorization": f"token {token}"} if token else {}, timeout=30)
                assert r.status_code == 401, (verb, path, token[:4], r.status_code, r.text)
                checked += 1
    print(f"\nexpired/forged/tampered/missing tokens refused with 401 on {checked} route x verb x token cases")
    assert hub.api("GET", "/user", token=expired).status_code == 403
    assert requests.get(f"{hub.url}/services/mlflow/api/2.0/mlflow/experiments/search?max_results=1",
                        headers={"Authorization": f"Bearer {forged}"}, timeout=30).status_code in (401, 403)


def test_every_fedhub_route_has_a_custom_scope_granted_through_roles():
    for path, handler in ROUTES:
        verbs = {v for cls in handler.__mro__ for v in cls.__dict__ if v in ("get", "post", "delete")
                 and cls.__module__.startswith("fedhub")}
        for verb in verbs:
            scope = handler.scope_for(verb)
            if path == "api":  # the service root only says who you are: access to the service is enough
                assert scope == ""
                continue
            assert scope in FEDHUB_SCOPES, (path, verb, scope)
    from traitlets.config import Config
    c = Config()
    configure(c, {"data_dir": "/tmp/x", "ports": {k: 1 for k in ("hub", "proxy_api", "fedhub_api", "mlflow",
                                                                 "mlflow_internal", "inference", "inference_http",
                                                                 "inference_grpc")},
                  "ip": "127.0.0.1", "port": 8000, "proxy_command": "chp", "catalogue_file": "/tmp/x/sites.yaml",
                  "shared_password": "pw"})
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert set(FEDHUB_SCOPES) <= set(roles["user"]["scopes"])
    assert set(FEDHUB_SCOPES) <= set(roles["server"]["scopes"])
    assert set(c.JupyterHub.custom_scopes) == set(FEDHUB_SCOPES)


def fedhub_cli(hub, token, *args):
    return subprocess.run([sys.executable, "-m", "fedhub.server_ext.cli", "--hub", hub.url, "--token", token, *args],
                          capture_output=True, text=True, env=fedhub_env(), timeout=120)


def test_fedhub_token_mints_least_scope_expiring_tokens(world):
    hub, alice = world["hub"], world["alice"]
    p = fedhub_cli(hub, alice, "token", "--scopes", "sites:read,datasets:read", "--expires-in", "3", "--json")
    assert p.returncode == 0, p.stderr
    model = json.loads(p.stdout)
    # what was asked for (the hub adds the implied read:users:name/groups of the owner), and no other fedhub scope
    assert {s for s in model["scopes"] if s.startswith(("custom:", "access:"))} == {
        "custom:fedhub:sites:read", "custom:fedhub:datasets:read", "access:services!service=fedhub"}
    assert model["expires_at"]
    token = model["token"]
    assert hub.fedhub_api("/sites", token).status_code == 200
    assert hub.fedhub_api("/datasets/alice-data", token).status_code == 200
    for path in ("/jobs", "/deployments", "/provenance", "/sessions"):
        r = hub.fedhub_api(path, token)
        assert r.status_code == 403 and "needs the scope" in r.json()["message"], (path, r.text)
    assert hub.fedhub_api("/jobs", token, method="POST", json={}).status_code == 403
    time.sleep(3 + TOKEN_CACHE_SECONDS + 0.5)
    assert hub.fedhub_api("/sites", token).status_code == 401
    # no token to ask with; a scope its owner lacks
    p = fedhub_cli(hub, "", "token", "--scopes", "sites:read")
    assert p.returncode == 2 and "no hub token" in p.stderr
    p = fedhub_cli(hub, alice, "token", "--scopes", "admin:users")
    assert p.returncode == 1 and "the hub refused (400)" in p.stderr and "not held by User alice" in p.stderr, p.stderr
