"""fedhub's own state in SQL (fedhub.hub.statedb): the job and deployment stores on SQLite
and on a real PostgreSQL server (tests/pg_server.py), schema migrations from the previous
revision with rows in it, the import of an earlier fedhub version's state files, and
`fedhub db upgrade`."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest
from sqlalchemy import inspect, text

from conftest import fedhub_env
from fedhub.hub.deploy.store import DeploymentStore
from fedhub.hub.federation import example_app
from fedhub.hub.federation.jobs import Job, SiteOffer, validate_request
from fedhub.hub.federation.store import JobStore
from fedhub.hub.ledger import (GENESIS, HASHED_FIELDS, Ledger, head_digest, key_id, load_or_create_key,
                               record_hash, sign)
from fedhub.hub.statedb import (StateDB, StateDBError, current_revision, head_revision, open_state_db,
                                state_db_url, upgrade_to_head)
from fedhub.hub.statedb.legacy import import_legacy_files

OFFERS = {"local-a": SiteOffer("local-a", "local", True, "", {})}


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request, monkeypatch, tmp_path):
    """A fresh state database: SQLite in the test's state dir, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'fedhub-state.sqlite'}"
    pg = request.getfixturevalue("pg")
    monkeypatch.setenv("PGPASSWORD", pg.password)
    return pg.create_database(f"state_{uuid.uuid4().hex[:12]}")


def a_job(owner="ann", state="queued", created=None) -> Job:
    spec = validate_request({"app": str(example_app("digits")), "sites": ["local-a"], "rounds": 2},
                            example_app("digits").parent, OFFERS)
    job = Job.from_spec(spec, owner)
    job.state = state
    if created is not None:
        job.created = created
    return job


# ---------------------------------------------------------------- the stores

def test_job_store_keeps_jobs_and_events_in_the_database(tmp_path, state_url):
    state = tmp_path / "state"
    store = JobStore(state / "jobs", open_state_db(state, state_url))
    old, new = a_job(created=1000.0), a_job(owner="bo", created=2000.0)
    for job in (new, old):
        store.save(job)
    old.state, old.round_metrics = "succeeded", [{"round": 1, "metrics": {"server_accuracy": 0.9}}]
    store.save(old)  # replaced, not added
    assert [e["seq"] for e in (store.append_event(new.id, {"type": "state", "message": m}) for m in "abc")] == [1, 2, 3]
    store.write_secret(new.id, "tok")

    # a second process's store (a fresh engine) reads the same rows back
    again = JobStore(state / "jobs", StateDB(state_db_url(state, state_url)))
    assert again.load_all() == [old, new]  # oldest first
    assert again.unfinished_ids() == [new.id]
    assert [e["message"] for e in again.events(new.id)] == ["a", "b", "c"]
    assert again.events_after(new.id, 2) == [{"seq": 3, "type": "state", "message": "c"}]
    assert again.events_after(new.id, 3) == [] and again.events(old.id) == []
    new.round_metrics = [{"round": 1, "metrics": {"train_loss": float("nan"), "x": float("inf")}}]
    store.save(new)  # a diverged loss: not JSON, refused by PostgreSQL's json type as it is
    assert [j.round_metrics for j in again.load_all()][1] == [{"round": 1, "metrics": {"train_loss": "NaN",
                                                                                     "x": "Infinity"}}]
    assert again.read_secret(new.id) == "tok"  # the token stays a 0600 file beside the job's work files
    assert (state / "jobs" / new.id / "token").stat().st_mode & 0o777 == 0o600
    with again.db.reading() as s:
        assert s.execute(text("SELECT count(*) FROM jobs")).scalar() == 2
    assert list((state / "jobs").glob("*/job.json")) == []


def test_deployment_store_keeps_records_and_devices_in_the_database(tmp_path, state_url):
    state = tmp_path / "state"
    store = DeploymentStore(state, open_state_db(state, state_url))
    rec = {"id": "d1", "owner": "ann", "name": "digits", "status": "deploying", "created": 5.0,
           "versions": [{"version": 1, "status": "ready", "accuracy": 0.1 + 0.2}], "note": "ünï"}
    store.save(rec)
    store.save({**rec, "status": "ready"})
    store.save({"id": "d0", "owner": "bo", "status": "failed", "created": 1.0})
    store.save_devices({"pi-1": {"owner": "ann", "group": "lab"}, "pi-2": {"owner": "ann", "group": "lab"}})
    store.save_devices({"pi-2": {"owner": "ann", "group": "lab", "seen": 3}})  # pi-1 unregistered

    again = DeploymentStore(state, StateDB(state_db_url(state, state_url)))
    records = again.load_all()
    assert list(records) == ["d0", "d1"]  # by creation time
    assert records["d1"] == {**rec, "status": "ready"}  # floats and text exactly as saved
    assert again.load_devices() == {"pi-2": {"owner": "ann", "group": "lab", "seen": 3}}
    again.delete("d0")
    assert list(store.load_all()) == ["d1"]
    assert again.artifact_dir("d1") == state / "deployment-files" / "d1"  # files stay files
    with again.db.reading() as s:
        assert s.execute(text("SELECT status FROM deployments WHERE id = 'd1'")).scalar() == "ready"


def test_bad_state_database_urls_are_refused_with_the_reason(tmp_path):
    with pytest.raises(StateDBError, match="holds a password.*PGPASSWORD"):
        state_db_url(tmp_path, "postgresql://fedhub:hunter2@127.0.0.1/fedhub")
    with pytest.raises(StateDBError, match="expected sqlite:///<file> or postgresql://"):
        state_db_url(tmp_path, "mysql://fedhub@127.0.0.1/fedhub")
    with pytest.raises(StateDBError, match=r"state database .*127\.0\.0\.1:1/nowhere.*OperationalError"):
        open_state_db(tmp_path, "postgresql://fedhub@127.0.0.1:1/nowhere")
    assert state_db_url(tmp_path) == f"sqlite:///{tmp_path.resolve() / 'fedhub-state.sqlite'}"


# ---------------------------------------------------------------- migrations

def test_upgrade_from_the_first_schema_keeps_rows_and_fills_the_new_columns(tmp_path, state_url):
    """A database at revision 0001 (what the previous fedhub created), with rows in it, is
    migrated to the newest revision: nothing is lost, and 0002's indexed status and creation
    columns are filled from the stored documents and used by the stores."""
    db = StateDB(state_db_url(tmp_path, state_url))
    assert upgrade_to_head(db, "0001") == "0001"
    cols = {c["name"] for c in inspect(db.engine).get_columns("jobs")}
    assert cols == {"id", "owner", "document"}  # the previous schema: no state/created yet
    done, running = a_job(state="succeeded", created=10.0), a_job(owner="bo", state="running", created=20.0)
    dep = {"id": "d1", "owner": "ann", "name": "digits", "status": "ready", "created": 7.5}
    with db.engine.begin() as conn:  # rows written as the previous version wrote them
        for job in (running, done):
            conn.execute(text("INSERT INTO jobs (id, owner, document) VALUES (:id, :owner, :doc)"),
                         {"id": job.id, "owner": job.owner, "doc": json.dumps(job.to_dict())})
        conn.execute(text("INSERT INTO job_events (job_id, seq, document) VALUES (:j, 1, :d)"),
                     {"j": running.id, "d": json.dumps({"seq": 1, "type": "state", "message": "queued"})})
        conn.execute(text("INSERT INTO deployments (id, owner, document) VALUES ('d1', 'ann', :doc)"),
                     {"doc": json.dumps(dep)})
    ledger = Ledger(tmp_path / "keys", db=db)
    first = ledger.append("run", "run-1", "ann", {"acc": 0.5})  # the ledger is the same at 0001
    ledger.append("job", done.id, "ann", {"state": "succeeded"}, parents=[first["hash"]])

    assert upgrade_to_head(db) == head_revision() == "0002"
    assert current_revision(db) == "0002"
    store = JobStore(tmp_path / "jobs", db)
    assert store.load_all() == [done, running]  # ordered by the backfilled creation time
    assert store.unfinished_ids() == [running.id]  # the backfilled state column
    assert store.events(running.id) == [{"seq": 1, "type": "state", "message": "queued"}]
    assert DeploymentStore(tmp_path, db).load_all() == {"d1": dep}
    with db.reading() as s:
        assert s.execute(text("SELECT status, created FROM deployments")).one() == ("ready", 7.5)
    assert ledger.verify() == [] and [r["subject"] for r in ledger.records(kind="job")] == [done.id]
    assert {"ix_jobs_state", "ix_jobs_created"} <= {i["name"] for i in inspect(db.engine).get_indexes("jobs")}
    assert "ix_ledger_records_kind_subject" in {i["name"] for i in inspect(db.engine).get_indexes("ledger_records")}
    store.save(a_job(state="queued", created=30.0))  # the new columns are written from now on
    assert len(store.unfinished_ids()) == 2
    assert upgrade_to_head(db) == "0002"  # again: nothing to do


def write_previous_version_files(state) -> dict:
    """The state dir as the previous fedhub version (JSON files, no database) left it: a
    finished job with its events, a deployment, an edge device, a signed ledger and its head."""
    job = a_job(state="succeeded", created=100.0)
    jd = state / "jobs" / job.id
    jd.mkdir(parents=True)
    (jd / "job.json").write_text(json.dumps(job.to_dict(), indent=1))
    (jd / "events.jsonl").write_text("".join(json.dumps({"seq": i, "type": "state", "message": m}) + "\n"
                                             for i, m in ((1, "queued"), (2, "succeeded"))))
    (jd / "token").write_text("tok")
    dep = {"id": "abc123", "owner": "ann", "name": "digits", "status": "ready", "created": 50.0, "versions": []}
    (state / "deployments").mkdir()
    (state / "deployments" / "abc123.json").write_text(json.dumps(dep))
    (state / "edge").mkdir()
    (state / "edge" / "devices.json").write_text(json.dumps({"pi-1": {"owner": "ann", "group": "lab"}}))
    key = load_or_create_key(state / "ledger-key.pem")
    lines, prev = [], GENESIS
    for seq, (kind, subject) in enumerate([("run", "run-1"), ("job", job.id), ("deployment", "abc123")]):
        rec = {"seq": seq, "time": 1700000000.123456 + seq, "kind": kind, "subject": subject, "who": "ann",
               "body": {"n": seq, "x": 0.1 + 0.2}, "parents": [], "prev": prev, "key_id": key_id(key.public_key())}
        rec["hash"] = record_hash(rec)
        rec["sig"] = sign(key, rec["hash"])
        prev = rec["hash"]
        lines.append(json.dumps(rec, sort_keys=True))
    (state / "ledger.jsonl").write_text("\n".join(lines) + "\n")
    (state / "ledger-head.json").write_text(json.dumps({"seq": 2, "hash": prev, "sig": sign(key, head_digest(2, prev))}))
    return {"job": job, "deployment": dep, "ledger": [json.loads(x) for x in lines]}


def test_state_files_of_the_previous_version_are_imported_once_and_kept(tmp_path, state_url):
    state = tmp_path / "state"
    state.mkdir()
    before = write_previous_version_files(state)
    db = open_state_db(state, state_url)
    store = JobStore(state / "jobs", db)
    assert store.load_all() == [before["job"]]
    assert [e["message"] for e in store.events(before["job"].id)] == ["queued", "succeeded"]
    assert store.read_secret(before["job"].id) == "tok"
    deployments = DeploymentStore(state, db)
    assert deployments.load_all() == {"abc123": before["deployment"]}
    assert deployments.load_devices() == {"pi-1": {"owner": "ann", "group": "lab"}}
    ledger = Ledger(state, db=db)
    assert [{k: r[k] for k in (*HASHED_FIELDS, "hash", "sig")} for r in ledger.records()] == before["ledger"]
    assert ledger.verify() == [] and ledger.head()["seq"] == 2
    assert ledger.append("run", "after-upgrade", "ann", {})["prev"] == before["ledger"][-1]["hash"]
    assert ledger.verify() == []
    # the files are kept, renamed, so the next start does not import them again
    assert sorted(p.name for p in state.rglob("*.imported")) == sorted(
        ["job.json.imported", "events.jsonl.imported", "abc123.json.imported", "devices.json.imported",
         "ledger.jsonl.imported", "ledger-head.json.imported"])
    assert not (state / "ledger.jsonl").exists()
    # importing the same files again (a crash before the renames) adds nothing
    for p in state.rglob("*.imported"):
        p.rename(p.with_name(p.name[:-len(".imported")]))
    assert import_legacy_files(db, state) == {"jobs": 0, "events": 0, "deployments": 0, "devices": 0, "ledger": 0}
    assert len(store.load_all()) == 1 and len(store.events(before["job"].id)) == 2
    assert len(ledger.records()) == 4 and ledger.verify() == []


def test_fedhub_db_upgrade_reports_migrates_and_imports(tmp_path):
    data = tmp_path / "data"
    (data / "state").mkdir(parents=True)
    write_previous_version_files(data / "state")
    upgrade_to_head(f"sqlite:///{data / 'state' / 'fedhub-state.sqlite'}", "0001")

    def fedhub(*argv):
        return subprocess.run([sys.executable, "-m", "fedhub.server_ext.cli", "db", "upgrade", "--data-dir",
                               str(data), *argv], capture_output=True, text=True, env=fedhub_env(), timeout=60)
    status = fedhub("--status")
    assert status.returncode == 0, status.stderr
    assert "schema 0001, newest 0002" in status.stdout
    out = fedhub()
    assert out.returncode == 0, out.stderr
    assert "migrated: 0001 -> 0002" in out.stdout
    assert "imported the state files of an earlier fedhub version: 1 jobs, 2 events, 1 deployments, " \
           "1 devices, 3 ledger" in out.stdout
    assert "already at the newest schema" in fedhub().stdout
    bad = fedhub("--state-db-url", "postgresql://fedhub:hunter2@127.0.0.1/x")
    assert bad.returncode == 2 and "holds a password" in bad.stderr and "Traceback" not in bad.stderr


# ---------------------------------------------------------------- fedhub up --state-db-url

def test_fedhub_up_passes_the_state_database_to_the_api_service_without_its_password(tmp_path, monkeypatch, capsys):
    from traitlets.config import Config

    from fedhub.hub.app import FedhubUp
    from fedhub.hub.hubconfig import configure

    def prepared(*argv):
        app = FedhubUp()
        app.initialize(["--data-dir", str(tmp_path), *argv])
        return app, app.prepare()

    monkeypatch.setenv("PGPASSWORD", "s3cret-pw")
    app, s = prepared("--state-db-url", "postgresql://fedhub@127.0.0.1:1/fedhub")
    c = Config()
    configure(c, s)
    env = next(svc for svc in c.JupyterHub.services if svc["name"] == "fedhub")["environment"]
    assert env["FEDHUB_STATE_DB_URL"] == "postgresql+psycopg2://fedhub@127.0.0.1:1/fedhub"
    assert env["PGPASSWORD"] == "s3cret-pw"  # from the environment, to the service's environment
    assert "s3cret-pw" not in (tmp_path / "fedhub-up.json").read_text()
    # nothing listens on port 1: `fedhub up` stops before starting anything, naming the option
    with pytest.raises(SystemExit) as e:
        app.migrate_state_db(s)
    assert e.value.code == 2
    assert "fedhub up: --state-db-url: state database postgresql+psycopg2://fedhub@127.0.0.1:1/fedhub" \
        in capsys.readouterr().err
    # the default: SQLite in the state dir, nothing passed to the service, migrated on start,
    # and the previous version's files (here) imported before the hub starts
    (tmp_path / "state").mkdir()
    before = write_previous_version_files(tmp_path / "state")
    app, s = prepared()
    c = Config()
    configure(c, s)
    env = next(svc for svc in c.JupyterHub.services if svc["name"] == "fedhub")["environment"]
    assert "FEDHUB_STATE_DB_URL" not in env and "PGPASSWORD" not in env
    app.migrate_state_db(s)
    assert "(schema 0002)" in capsys.readouterr().out
    assert current_revision(f"sqlite:///{tmp_path / 'state' / 'fedhub-state.sqlite'}") == "0002"
    assert len(list((tmp_path / "state").rglob("*.imported"))) == 6
    fresh = StateDB(f"sqlite:///{tmp_path / 'state' / 'fedhub-state.sqlite'}")  # as the API service will
    assert JobStore(tmp_path / "state" / "jobs", fresh).load_all() == [before["job"]]
    assert Ledger(tmp_path / "state", db=fresh).verify() == []
    for bad, words in (("mysql://fedhub@db/fedhub", "--state-db-url: expected postgresql://"),
                       ("postgresql://fedhub:pw@db/fedhub", "--state-db-url: the URL holds a password")):
        with pytest.raises(ValueError, match=words):
            prepared("--state-db-url", bad)


def test_damaged_files_of_the_previous_version_never_stop_the_start(tmp_path, state_url):
    """A duplicated or damaged ledger line, a job with a strange creation time: the database
    opens, what is sound is imported, and verify() names the record that is missing."""
    state = tmp_path / "state"
    state.mkdir()
    before = write_previous_version_files(state)
    lines = (state / "ledger.jsonl").read_text().splitlines()
    damaged = json.loads(lines[1])
    damaged["sig"] = 12345
    (state / "ledger.jsonl").write_text("\n".join([lines[0], lines[0], json.dumps(damaged), lines[2]]) + "\n")
    job_json = next(state.glob("jobs/*/job.json"))
    job_json.write_text(json.dumps({**json.loads(job_json.read_text()), "created": "yesterday"}))
    db = open_state_db(state, state_url)
    ledger = Ledger(state, db=db)
    assert [r["seq"] for r in ledger.records()] == [0, 2]
    assert [(p.kind, p.seq) for p in ledger.verify()] == [("removed", 1)]
    [job] = JobStore(state / "jobs", db).load_all()
    assert job.id == before["job"].id and job.created == "yesterday"


async def test_a_state_database_that_stops_answering_is_a_503_in_json_not_a_500():
    """The fedhub API's handlers answer a lost database connection with a retryable 503."""
    import json as _json
    import socket

    from sqlalchemy import create_engine, text
    from tornado.httpclient import AsyncHTTPClient
    from tornado.web import Application

    from fedhub.hub.service.base import FedhubAPIHandler

    with socket.socket() as s:  # a port nothing listens on: the database is down
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    engine = create_engine(f"postgresql+psycopg2://nobody@127.0.0.1:{dead}/fedhub",
                           connect_args={"connect_timeout": 2})

    class Jobs(FedhubAPIHandler):
        def get(self):  # what a store call does when PostgreSQL is gone
            with engine.connect() as c:
                c.execute(text("select 1"))

        def post(self):
            raise ValueError("a bug")

    app = Application([("/api/jobs", Jobs)])
    server = app.listen(0, "127.0.0.1")
    port = next(iter(server._sockets.values())).getsockname()[1]
    try:
        client = AsyncHTTPClient()
        r = await client.fetch(f"http://127.0.0.1:{port}/api/jobs", raise_error=False)
        assert r.code == 503, r.body
        assert _json.loads(r.body) == {"status": 503, "message":
                                       "fedhub's state database is not answering; try again shortly"}
        r = await client.fetch(f"http://127.0.0.1:{port}/api/jobs", method="POST", body=b"{}",
                               raise_error=False)
        assert r.code == 500 and b"Traceback" not in r.body and b"a bug" not in r.body
    finally:
        server.stop()
