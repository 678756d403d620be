"""Identity and governance end to end: real logins through a real OIDC provider on loopback
(oidc-provider) into a real hub; entitlement claims -> hub groups -> different spawn
options; GPU quota refusals; dataset policy refusals in spawn and in federated launch;
the datasets API. (tmp logins are tested in test_fuzz_api.py, whose hub runs them.)"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from oidc.harness import OIDCProvider, oidc_login

pytestmark = pytest.mark.hub

ENT = "urn:mace:egi.eu:group:vo.{vo}.org:role=member#aai.egi.eu"
ACCOUNTS = {
    "alice": {"preferred_username": "alice", "eduperson_entitlement": [ENT.format(vo="example"),
                                                                        "urn:mace:other:ignored"]},
    "carol": {"preferred_username": "carol", "eduperson_entitlement": [ENT.format(vo="example")]},
    "bob": {"preferred_username": "bob", "eduperson_entitlement": ENT.format(vo="other")},
    "dave": {"preferred_username": "dave"},  # no entitlements: the default grant
}
CATALOGUE = """
sites:
  - {name: local-a, kind: local, cpus: 8, memory: 16G, gpus: [{type: a100, count: 2}]}
  - {name: local-b, kind: local, cpus: 8, memory: 16G, gpus: [{type: t4, count: 2}]}
defaults: {cpus: 0.5, memory: 512M}
"""


def policy_yaml(data_dir):
    return yaml.safe_dump({
        "groups": {
            "vo-example": {"sites": ["local-a", "local-b"], "gpu_types": ["a100"], "max_gpus_per_user": 1,
                           "max_gpus": 1},
            "vo-other": {"sites": ["local-b"], "gpu_types": ["t4"], "max_gpus_per_user": 2},
        },
        "default": {"sites": ["local-b"], "gpu_types": [], "max_gpus_per_user": 0},
        "datasets": [
            {"name": "digits-a", "title": "Digits at A", "license": "CC-BY-4.0",
             "locations": [{"site": "local-a", "path": f"{data_dir}/datasets/digits-a"}],
             "policy": {"allowed_groups": ["vo-example"], "purposes": ["interactive"]}},
            {"name": "digits-b", "locations": [{"site": "local-b", "path": f"{data_dir}/datasets/digits-b"}],
             "policy": {"allowed_groups": ["vo-other"], "purposes": ["interactive", "federated-training"]}},
        ],
    })


@pytest.fixture(scope="module")
def oidc_hub(module_hub_factory):
    provider = OIDCProvider(ACCOUNTS)  # bound first: the hub's free port cannot be the provider's
    try:
        hub = module_hub_factory(CATALOGUE, args=("--no-mlflow", "--no-inference", "--authenticator", "oidc"))
        provider.serve([f"{hub.url}/hub/oauth_callback"])
        (hub.data_dir / "identity.yaml").write_text(yaml.safe_dump({"oidc": {
            "issuer": provider.issuer, "client_id": provider.client_id, "client_secret": provider.client_secret,
            "scopes": ["openid", "profile", "eduperson_entitlement"], "username_claim": "preferred_username",
            "login_service": "EGI Check-in (test)",
            "group_rules": [{"claim": "eduperson_entitlement",
                             "pattern": r"^urn:mace:egi\.eu:group:vo\.(\w+)\.org:role=member#aai\.egi\.eu$",
                             "group": r"vo-\1"}]}}))
        (hub.data_dir / "policy.yaml").write_text(policy_yaml(hub.data_dir))
        hub.start()
        hub.sessions = {name: oidc_login(hub.url, name)[0] for name in ("alice", "bob", "carol", "dave")}
        yield hub
    finally:
        provider.stop()


def groups_of(hub, name):
    r = hub.api("GET", f"/users/{name}")
    assert r.status_code == 200, (r.status_code, r.text, hub.log_tail(40))
    return r.json()["groups"]


def spawn_form(hub, name) -> str:
    r = hub.sessions[name].get(f"{hub.url}/hub/spawn", timeout=30)
    assert r.status_code == 200, r.text[:300]
    return r.text


def options(html: str, select: str) -> list[str]:
    block = re.search(rf"<select[^>]*name=\"{select}\"[^>]*>(.*?)</select>", html, re.S).group(1)
    return re.findall(r"<option value='([^']*)'", block)


def test_entitlement_claims_land_users_in_groups(oidc_hub):
    assert groups_of(oidc_hub, "alice") == ["vo-example"]
    assert groups_of(oidc_hub, "carol") == ["vo-example"]
    assert groups_of(oidc_hub, "bob") == ["vo-other"]
    assert groups_of(oidc_hub, "dave") == []


def test_groups_see_different_spawn_options(oidc_hub):
    alice, bob, dave = (spawn_form(oidc_hub, n) for n in ("alice", "bob", "dave"))
    assert options(alice, "gpu_type") == ["any", "a100"] and options(alice, "site") == ["auto", "local-a", "local-b"]
    assert "value='digits-a'" in alice and "value='digits-b'" not in alice
    assert options(bob, "gpu_type") == ["any", "t4"] and options(bob, "site") == ["auto", "local-b"]
    assert "value='digits-b'" in bob and "value='digits-a'" not in bob
    assert options(dave, "gpu_type") == ["any"] and options(dave, "site") == ["auto", "local-b"]
    assert 'name="gpus" type="number" min="0" max="0"' in dave
    assert "No datasets are granted to you." in dave


def test_quota_and_dataset_refusals_name_the_policy(oidc_hub):
    hub = oidc_hub
    refusals = {
        ("alice", json.dumps({"gpus": 2, "gpu_type": "a100"})): (403, "GPU quota per user (group vo-example): at most 1"),
        ("bob", json.dumps({"datasets": ["digits-a"]})): (403, "dataset 'digits-a' policy: only groups ['vo-example']"),
        ("bob", json.dumps({"gpus": 1, "gpu_type": "a100"})): (403, "a100 GPUs are not granted to you (group vo-other)"),
        ("dave", json.dumps({"gpus": 1})): (403, "the default grant grants no GPUs"),
        ("bob", json.dumps({"site": "local-a"})): (403, "site: local-a is not granted to you (group vo-other)"),
    }
    for (name, body), (status, message) in refusals.items():
        r = hub.spawn(name, **json.loads(body))
        assert r.status_code == status and message in r.json()["message"], (name, body, r.text)
        assert hub.server(name) is None
    # alice asks for her dataset and a GPU: placed where the data is, sees only that dataset
    assert hub.spawn("alice", gpus=1, datasets=["digits-a"]).status_code in (201, 202)
    server = hub.wait_ready("alice")
    assert server["state"]["fedhub"]["allocation"]["site"] == "local-a"
    env = hub.session_env("alice")
    assert json.loads(env["FEDHUB_DATASETS"]) == {"digits-a": f"{hub.data_dir}/datasets/digits-a"}
    assert env["FEDHUB_DATASET_DIGITS_A"] == f"{hub.data_dir}/datasets/digits-a"
    assert "FEDHUB_DATASET_DIGITS_B" not in env
    # the group's quota (1 GPU for all of vo-example) is now used by alice
    r = hub.spawn("carol", gpus=1)
    assert r.status_code == 403, r.text
    assert "GPU quota of group vo-example: at most 1 GPUs at once for the whole group; 1 in use" in r.json()["message"]
    assert hub.api("GET", "/").status_code == 200


def test_datasets_api_shows_what_the_caller_may_use_and_why(oidc_hub):
    hub = oidc_hub
    alice, bob = hub.create_user("alice"), hub.create_user("bob")
    body = hub.fedhub_api("/datasets", alice).json()
    assert body["groups"] == ["vo-example"]
    assert [(d["name"], d["purposes"]) for d in body["datasets"]] == [("digits-a", ["interactive"])]
    assert "your group vo-example is an allowed group" in body["datasets"][0]["why"]
    assert [d["name"] for d in hub.fedhub_api("/datasets", bob).json()["datasets"]] == ["digits-b"]
    r = hub.fedhub_api("/datasets/digits-a", alice)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/ld+json")
    doc = r.json()
    assert doc["@id"].endswith("/services/fedhub/api/datasets/digits-a") and "gx:DataResource" in doc["@type"]
    assert doc["odrl:hasPolicy"]["odrl:permission"][0]["odrl:constraint"][0]["odrl:rightOperand"] == ["interactive"]
    r = hub.fedhub_api("/datasets/digits-a", bob)  # not bob's: as if it did not exist
    assert r.status_code == 404 and r.json()["message"] == "No dataset 'digits-a' that you may use"


def test_federated_launch_refused_by_dataset_policy(oidc_hub):
    hub = oidc_hub
    alice, bob = hub.create_user("alice"), hub.create_user("bob")
    job = {"app": "digits", "sites": ["local-a"], "rounds": 1}
    r = hub.fedhub_api("/jobs", alice, method="POST", json=job)
    assert r.status_code == 403, r.text
    assert r.json()["message"] == ("sites: local-a holds digits-a; dataset 'digits-a' policy: purpose "
                                   "federated-training is not allowed (allowed purposes: interactive)")
    r = hub.fedhub_api("/jobs", bob, method="POST", json={**job, "sites": ["local-b"], "datasets": ["digits-a"]})
    assert r.status_code == 400 and "digits-a is not held at local-b" in r.json()["message"]
    r = hub.fedhub_api("/jobs", alice, method="POST", json={**job, "sites": ["local-b"], "datasets": ["digits-b"]})
    assert r.status_code == 403 and "only groups ['vo-other'] may use it" in r.json()["message"]
    # bob's own data allows federated training: the policy lets the request through to the job checks
    r = hub.fedhub_api("/jobs", bob, method="POST", json={**job, "sites": ["local-b"], "datasets": ["digits-b"]})
    assert r.status_code == 400 and r.json()["message"].startswith("app: "), r.text


def test_bad_identity_settings_are_named(tmp_path):
    from fedhub.hub.identity import IdentityError, load_identity
    path = tmp_path / "identity.yaml"
    path.write_text("oidc: {client_id: x, group_rules: [{claim: e, pattern: '(', group: g}], issuer: 'https://i'}")
    with pytest.raises(IdentityError, match=r"identity.yaml: oidc.group_rules\[0\].pattern: expected a regular "
                                            r"expression \(missing \), unterminated subpattern"):
        load_identity(path)
    path.write_text("oidc: {client_id: x}")
    with pytest.raises(IdentityError, match="identity.yaml: oidc.issuer: expected the provider's issuer URL"):
        load_identity(path)


def test_fedhub_up_names_bad_identity_and_policy_files(tmp_path):
    import subprocess
    import sys

    from conftest import fedhub_env

    def up(*args):
        return subprocess.run([sys.executable, "-m", "fedhub.server_ext.cli", "up", "--data-dir", str(tmp_path),
                               "--dry-run", *args], capture_output=True, text=True, env=fedhub_env(), timeout=120)

    p = up("--authenticator", "oidc")
    assert p.returncode == 2 and "invalid identity settings: identity.yaml: oidc: expected an identity file" in p.stderr
    (tmp_path / "identity.yaml").write_text("oidc: {client_id: x, issuer: 'http://127.0.0.1:9'}")
    p = up("--authenticator", "oidc")
    assert p.returncode == 2 and ("identity.yaml: oidc.issuer: expected an OpenID provider answering "
                                  "http://127.0.0.1:9/.well-known/openid-configuration") in p.stderr
    (tmp_path / "policy.yaml").write_text("groups:\n  g: {sites: [mars]}\n")
    p = up()
    assert p.returncode == 2 and ("invalid policy: policy.yaml: groups.g.sites: expected site names among "
                                  "['local-a', 'local-b'], got 'mars'") in p.stderr
