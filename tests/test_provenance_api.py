"""Provenance through the real hub: the API service's ledger routes, cross-user refusals, and
`fedhub provenance verify` checking the chain offline, before and after tampering."""

import json
import sqlite3
import subprocess
import time
import sys

import pytest

pytestmark = pytest.mark.hub


@pytest.fixture(scope="module")
def hub(module_hub_factory):
    return module_hub_factory().start()


@pytest.fixture(scope="module")
def tokens(hub):
    return {name: hub.create_user(name) for name in ("pria", "quin")}


def cli(hub, token, *args):
    return subprocess.run([sys.executable, "-m", "fedhub.server_ext.cli", "--hub", hub.url, "--token", token,
                           "provenance", *args], capture_output=True, text=True, timeout=120)


def test_records_are_appended_signed_and_private(hub, tokens):
    r = hub.fedhub_api("/provenance", tokens["pria"], "POST",
                       json={"subject": "run-abc", "body": {"code": {"commit": "0123abc"}, "site": "local-a"}})
    assert r.status_code == 201, r.text
    parent = r.json()
    assert parent["who"] == "pria" and parent["kind"] == "run" and parent["seq"] == 0
    r = hub.fedhub_api("/provenance", tokens["pria"], "POST",
                       json={"subject": "run-def", "body": {"seed": 1}, "parents": [parent["hash"]],
                             "who": "quin"})  # who is always the caller
    child = r.json()
    assert r.status_code == 201 and child["who"] == "pria" and child["prev"] == parent["hash"]
    hub.fedhub_api("/provenance", tokens["quin"], "POST", json={"subject": "run-q", "body": {}})

    mine = hub.fedhub_api("/provenance", tokens["pria"]).json()["records"]
    assert [r["subject"] for r in mine] == ["run-abc", "run-def"]
    assert [r["subject"] for r in hub.fedhub_api("/provenance", tokens["quin"]).json()["records"]] == ["run-q"]
    assert hub.fedhub_api(f"/provenance/{child['hash'][:12]}", tokens["pria"]).json()["hash"] == child["hash"]

    prov = hub.fedhub_api(f"/provenance/{child['hash']}?format=prov", tokens["pria"]).json()
    ids = {n["@id"] for n in prov["@graph"]}
    assert {"urn:fedhub:run/run-def", "urn:fedhub:run/run-abc", "urn:fedhub:user/pria"} <= ids


def test_cross_user_attempts_are_refused(hub, tokens):
    recs = hub.fedhub_api("/provenance", tokens["pria"]).json()["records"]
    attempts = refused = 0
    for rec in recs:
        for ref in (rec["hash"], rec["hash"][:10]):
            attempts += 1
            r = hub.fedhub_api(f"/provenance/{ref}", tokens["quin"])
            refused += r.status_code == 404 and r.json()["status"] == 404
        attempts += 1
        r = hub.fedhub_api(f"/provenance?subject={rec['subject']}", tokens["quin"])
        refused += r.status_code == 200 and r.json()["records"] == []
        attempts += 1  # the chain shows quin only a skeleton of pria's record
        chain = hub.fedhub_api("/provenance/chain", tokens["quin"]).json()
        seen = next(x for x in chain["records"] if x["hash"] == rec["hash"])
        refused += "body" not in seen and "subject" not in seen and "who" not in seen
    print(f"\nR5 provenance: {attempts} cross-user attempts, {attempts - refused} succeeded")
    assert refused == attempts


@pytest.mark.parametrize("body, status, message", [
    ({"subject": "x", "kind": "deployment"}, 400, "only 'run' records"),
    ({"subject": ""}, 400, "subject: expected a non-empty string"),
    ({"subject": "x", "parents": ["f" * 64]}, 400, "parents: unknown"),
    ({"subject": "x", "parents": "abc"}, 400, "body.parents: expected a list"),
    ({"subject": "x", "body": [1, 2]}, 400, "body.body: expected a JSON object"),
])
def test_bad_records_are_refused_with_reasons(hub, tokens, body, status, message):
    r = hub.fedhub_api("/provenance", tokens["pria"], "POST", json=body)
    assert r.status_code == status and message in r.json()["message"], r.text


def test_bad_queries_and_narrow_tokens(hub, tokens):
    assert hub.fedhub_api("/provenance?kind=weird", tokens["pria"]).status_code == 400
    assert hub.fedhub_api("/provenance/zz", tokens["pria"]).status_code == 404  # not a hash: no route
    r = hub.fedhub_api("/provenance/" + "a" * 64 + "?format=xml", tokens["pria"])
    assert r.status_code == 404  # unknown record before format
    r = hub.api("POST", "/users/pria/tokens", json={"scopes": ["custom:fedhub:provenance:read"]})
    read_only = r.json()["token"]
    assert hub.fedhub_api("/provenance", read_only).status_code == 200
    r = hub.fedhub_api("/provenance", read_only, "POST", json={"subject": "x"})
    assert r.status_code == 403 and "custom:fedhub:provenance:write" in r.json()["message"]
    r = hub.fedhub_api("/provenance", "forged-token-123")
    assert r.status_code in (401, 403) and r.headers["Content-Type"].startswith("application/json")


def test_cli_verifies_offline_and_catches_tampering(hub, tokens):
    out = cli(hub, tokens["quin"], "verify", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] and report["records"] >= 3 and report["checked_whole"] == 1
    assert cli(hub, tokens["quin"], "verify", "--key-id", report["key_id"]).returncode == 0
    assert cli(hub, tokens["quin"], "verify", "--key-id", "0" * 16).returncode == 4
    listing = cli(hub, tokens["pria"], "ls")
    assert listing.returncode == 0 and "run-abc" in listing.stdout and "run-q" not in listing.stdout

    # tamper with record 1's row in the state database (SQLite in the state dir), as an intruder could
    conn = sqlite3.connect(hub.data_dir / "state" / "fedhub-state.sqlite", timeout=30)
    (original,) = conn.execute("SELECT body FROM ledger_records WHERE seq = 1").fetchone()
    try:
        assert '"seed": 1' in original
        with conn:
            conn.execute("UPDATE ledger_records SET body = ? WHERE seq = 1", (original.replace('"seed": 1', '"seed": 2'),))
        out = cli(hub, tokens["pria"], "verify")
        assert out.returncode == 3 and "TAMPERED" in out.stdout and "record 1" in out.stdout
        server_side = hub.fedhub_api("/provenance/verify", tokens["quin"]).json()
        assert not server_side["ok"] and server_side["problems"][0]["seq"] == 1
    finally:
        with conn:
            conn.execute("UPDATE ledger_records SET body = ? WHERE seq = 1", (original,))
        conn.close()
    assert hub.fedhub_api("/provenance/verify", tokens["quin"]).json()["ok"]


def test_a_running_session_leaves_a_signed_record(hub, tokens):
    r = hub.spawn("quin")
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("quin")
    try:
        deadline = time.monotonic() + 30
        records = []
        while time.monotonic() < deadline and not records:
            records = hub.fedhub_api("/provenance?kind=session", tokens["quin"]).json()["records"]
            time.sleep(0.5)
        assert len(records) == 1, hub.log_tail()
        body = records[0]["body"]
        assert records[0]["who"] == "quin" and body["site"] and body["reason"] and body["cpus"] > 0
        assert records[0]["subject"].startswith("quin/@")
        assert hub.fedhub_api("/provenance?kind=session", tokens["pria"]).json()["records"] == []
        assert hub.fedhub_api("/provenance/verify", tokens["pria"]).json()["ok"]
    finally:
        hub.stop_server("quin")


def test_cli_exports_a_record_and_its_lineage_as_ro_crate(hub, tokens, tmp_path):
    from rocrate.rocrate import ROCrate

    child = next(r for r in hub.fedhub_api("/provenance", tokens["pria"]).json()["records"]
                 if r["subject"] == "run-def")
    out = cli(hub, tokens["pria"], "export", child["hash"][:12], "--out", str(tmp_path / "crate.zip"))
    assert out.returncode == 0, out.stderr
    crate = ROCrate(str(tmp_path / "crate.zip"))
    actions = {e.id: e for e in crate.get_entities() if e.type == "CreateAction"}
    assert {a["identifier"] for a in actions.values()} == {child["hash"], child["parents"][0]}
    assert all(a["agent"].id == "#user-pria" for a in actions.values())
    names = {e.id for e in crate.data_entities}
    assert {"records.jsonl", "prov.jsonld", "hub-public-key.pem", "ledger-head.json"} <= names
    assert cli(hub, tokens["quin"], "export", child["hash"], "--out", str(tmp_path / "x")).returncode == 1
