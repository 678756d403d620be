"""The provenance ledger: hash chain, signatures, signed head, and every kind of tampering (R6),
on the state database's rows, with SQLite (the embedded default) and a real PostgreSQL
server (tests/pg_server.py). Tampering is done the way an intruder with database access
would: UPDATE, DELETE and reordering of the ledger's rows."""

import json
import multiprocessing
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update

from fedhub.hub.ledger import (Ledger, LedgerError, load_public_key, record_hash, sign, to_prov_jsonld,
                               verify)
from fedhub.hub.statedb import open_state_db
from fedhub.hub.statedb.models import LedgerHeadRow, LedgerRecordRow as Row

TAMPER_RESULTS: dict[str, bool] = {}


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request, monkeypatch):
    """None: SQLite in the state dir; else a fresh PostgreSQL database (password from $PGPASSWORD)."""
    if request.param == "sqlite":
        return None
    pg = request.getfixturevalue("pg")
    monkeypatch.setenv("PGPASSWORD", pg.password)
    return pg.create_database(f"ledger_{uuid.uuid4().hex[:12]}")


def make_ledger(state_dir, url=None) -> Ledger:
    return Ledger(state_dir, db=open_state_db(state_dir, url))


@pytest.fixture
def ledger(tmp_path, state_url):
    led = make_ledger(tmp_path / "state", state_url)
    run = led.append("run", "run-1", "ada", {"code": {"commit": "abc123"}, "metrics": {"acc": 0.9}})
    led.append("job", "job-1", "ada", {"app": "digits", "rounds": 3}, parents=[run["hash"]])
    led.append("deployment", "dep-1", "bob", {"model": "models:/m/1"})
    led.append("session", "bob/", "bob", {"site": "local-a", "gpus": 1})
    led.append("run", "run-2", "ada", {"seed": 7})
    return led


def tamper(led: Ledger, *statements) -> None:
    """Run SQL on the ledger's rows directly, as someone with access to the database could."""
    with led.db.engine.begin() as conn:
        for statement in statements:
            conn.execute(statement)


def row(led: Ledger, seq: int) -> dict:
    return next(r for r in led.records() if r["seq"] == seq)


def backend(led: Ledger) -> str:
    return led.db.dialect


def kinds(problems) -> set[str]:
    return {p.kind for p in problems}


def test_untouched_ledger_verifies_and_records_chain(ledger):
    assert ledger.verify() == []
    recs = ledger.records()
    assert [r["seq"] for r in recs] == [0, 1, 2, 3, 4]
    assert all(r["prev"] == p["hash"] for p, r in zip(recs, recs[1:]))
    assert ledger.head()["seq"] == 4


def test_one_altered_byte_is_detected(ledger):
    body = row(ledger, 1)["body"]
    tamper(ledger, update(Row).where(Row.seq == 1).values(body={**body, "rounds": 4}))
    assert row(ledger, 1)["body"]["rounds"] == 4
    problems = ledger.verify()
    TAMPER_RESULTS[f"{backend(ledger)}: altered byte"] = bool(problems)
    assert {"altered"} <= kinds(problems) and any(p.seq == 1 for p in problems)


def test_altered_record_with_recomputed_hash_fails_signature_and_link(ledger):
    rec = row(ledger, 2)
    rec["body"]["model"] = "models:/evil/1"
    rec["hash"] = record_hash(rec)  # a forger can hash, but cannot sign
    tamper(ledger, update(Row).where(Row.seq == 2).values(body=rec["body"], hash=rec["hash"]))
    problems = ledger.verify()
    TAMPER_RESULTS[f"{backend(ledger)}: rehashed record"] = bool(problems)
    assert "signature" in kinds(problems)
    assert any(p.kind == "altered" and p.seq == 3 for p in problems)  # record 3 no longer links


def test_one_removed_record_is_detected(ledger):
    tamper(ledger, delete(Row).where(Row.seq == 2))
    problems = ledger.verify()
    TAMPER_RESULTS[f"{backend(ledger)}: removed record"] = bool(problems)
    assert [(p.kind, p.seq) for p in problems] == [("removed", 2)]


def test_removed_last_record_is_caught_by_the_signed_head(ledger):
    tamper(ledger, delete(Row).where(Row.seq == 4))
    problems = ledger.verify()
    TAMPER_RESULTS[f"{backend(ledger)}: truncated"] = bool(problems)
    assert [p.kind for p in problems] == ["removed"]
    assert "head" in problems[0].message


def test_one_reordered_pair_is_detected(ledger):
    with ledger.db.reading() as s:
        pos = dict(s.execute(select(Row.seq, Row.position)).all())
    # swap the two rows' places in the append order (through a free position: it is the key)
    tamper(ledger, update(Row).where(Row.seq == 1).values(position=-1),
           update(Row).where(Row.seq == 2).values(position=pos[1]),
           update(Row).where(Row.seq == 1).values(position=pos[2]))
    assert [r["seq"] for r in ledger.records()][:3] == [0, 2, 1]
    problems = ledger.verify()
    TAMPER_RESULTS[f"{backend(ledger)}: reordered pair"] = bool(problems)
    assert kinds(problems) == {"reordered"}


def test_forged_head_and_foreign_key_are_detected(ledger, tmp_path):
    tamper(ledger, update(LedgerHeadRow).where(LedgerHeadRow.id == 1).values(seq=3))
    assert kinds(ledger.verify()) == {"head"}
    TAMPER_RESULTS[f"{backend(ledger)}: forged head"] = True
    other = Ledger(tmp_path / "other")
    other.append("run", "x", "eve", {})
    problems = verify(ledger.records(), other.public_key)
    TAMPER_RESULTS[f"{backend(ledger)}: other key"] = bool(problems)
    assert {p.kind for p in problems} == {"signature"}


def test_skeletons_of_others_still_verify(ledger):
    view = ledger.chain("ada")
    by_who = [r.get("body") is not None for r in view["records"]]
    assert by_who == [True, True, False, False, True]  # bob's records are skeletons for ada
    assert verify(view["records"], load_public_key(view["public_key"]), view["head"]) == []
    # a skeleton whose hash was changed no longer verifies
    view["records"][2]["hash"] = "0" * 64
    assert "signature" in kinds(verify(view["records"], load_public_key(view["public_key"]), view["head"]))


def test_bad_appends_are_refused(ledger):
    with pytest.raises(LedgerError, match="kind: expected one of"):
        ledger.append("nonsense", "x", "ada", {})
    with pytest.raises(LedgerError, match="parents: unknown"):
        ledger.append("run", "x", "ada", {}, parents=["f" * 64])
    with pytest.raises(LedgerError, match="subject: expected a non-empty string without NUL"):
        ledger.append("run", "x\x00y", "ada", {})  # PostgreSQL's text refuses NUL: a 400, not a 500
    with pytest.raises(LedgerError, match="body: expected JSON"):
        ledger.append("run", "x", "ada", {"f": object()})
    assert ledger.verify() == []


def _append_many(state_dir: str, url, who: str, n: int) -> None:
    led = make_ledger(state_dir, url)
    for i in range(n):
        led.append("run", f"{who}-{i}", who, {"i": i})


def test_concurrent_appends_from_processes_keep_one_chain(tmp_path, state_url):
    """Three processes append at once: the locked head row keeps one chain (no fork, no gap)."""
    state = tmp_path / "state"
    make_ledger(state, state_url).append("session", "s0", "hub", {})  # the key exists before the race
    procs = [multiprocessing.get_context("fork").Process(target=_append_many, args=(str(state), state_url, w, 25))
             for w in ("ada", "bob", "cy")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    led = make_ledger(state, state_url)
    assert [r["seq"] for r in led.records()] == list(range(76))
    assert led.verify() == []


def test_prov_jsonld_export(ledger):
    doc = to_prov_jsonld(ledger.records())
    assert doc["@context"]["prov"] == "http://www.w3.org/ns/prov#"
    graph = {n["@id"]: n for n in doc["@graph"]}
    job = graph["urn:fedhub:job/job-1"]
    assert job["@type"] == "prov:Entity"
    assert job["prov:wasDerivedFrom"] == [{"@id": "urn:fedhub:run/run-1"}]
    assert graph["urn:fedhub:user/bob"]["@type"] == "prov:Agent"
    act = graph[job["prov:wasGeneratedBy"]["@id"]]
    assert act["prov:wasAssociatedWith"] == {"@id": "urn:fedhub:user/ada"}


def test_tampering_figure_r6():
    """R6: every tampering case above was detected (printed for the benchmarks page)."""
    print(f"\nR6 tampering cases detected: {sum(TAMPER_RESULTS.values())}/{len(TAMPER_RESULTS)}: {TAMPER_RESULTS}")
    assert len(TAMPER_RESULTS) == 14 and all(TAMPER_RESULTS.values())  # 7 cases x SQLite, PostgreSQL


def test_signature_helper_roundtrip(ledger):
    digest = "ab" * 32
    from fedhub.hub.ledger import signature_ok
    assert signature_ok(ledger.public_key, digest, sign(ledger.key, digest))
    assert not signature_ok(ledger.public_key, "cd" * 32, sign(ledger.key, digest))
    assert Path(ledger.dir / "ledger-key.pem").stat().st_mode & 0o777 == 0o600


def test_a_forged_row_inserted_into_the_table_is_detected(ledger):
    """An intruder appends a row of their own: it links and hashes, but is not signed by the hub."""
    last = ledger.records()[-1]
    rec = {"seq": last["seq"] + 1, "time": last["time"] + 1, "kind": "run", "subject": "evil", "who": "ada",
           "body": {}, "parents": [], "prev": last["hash"], "key_id": last["key_id"]}
    rec["hash"] = record_hash(rec)
    rec["sig"] = last["sig"]
    tamper(ledger, Row.__table__.insert().values(**rec))
    problems = ledger.verify()
    assert ("signature", last["seq"] + 1) in {(p.kind, p.seq) for p in problems}
    assert any(p.kind == "removed" and "signed head" in p.message for p in problems)


def test_an_exported_chain_verifies_offline_without_database_libraries(ledger, tmp_path):
    """What `GET /api/provenance/chain` serves, saved to a file and checked by the pure verifier
    in a process that never imports SQLAlchemy (a session image has none)."""
    export = tmp_path / "chain.json"
    export.write_text(json.dumps(ledger.chain(None, admin=True)))
    code = ("import json, sys; from fedhub.hub.ledger import load_public_key, verify; "
            f"c = json.load(open({str(export)!r})); "
            "p = verify(c['records'], load_public_key(c['public_key']), c['head']); "
            "assert 'sqlalchemy' not in sys.modules; print(len(c['records']), [x.kind for x in p])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["5", "[]"]
    tamper(ledger, delete(Row).where(Row.seq == 3))
    export.write_text(json.dumps(ledger.chain(None, admin=True)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["4", "['removed']"], out.stderr


def test_non_finite_numbers_are_recorded_as_strings_on_every_backend(ledger):
    """A diverged loss (NaN, inf) is not JSON and PostgreSQL's json type refuses it: stored as its name."""
    rec = ledger.append("job", "job-nan", "ada", {"loss": float("nan"), "range": [float("inf"), -float("inf"), 1.5]})
    assert rec["body"] == {"loss": "NaN", "range": ["Infinity", "-Infinity", 1.5]}
    assert row(ledger, rec["seq"])["body"] == rec["body"] and ledger.verify() == []


def test_nul_characters_inside_a_body_are_kept_on_every_backend(ledger):
    rec = ledger.append("run", "run-nul", "ada", {"note": "a\x00b"})
    assert row(ledger, rec["seq"])["body"] == {"note": "a\x00b"} and ledger.verify() == []
