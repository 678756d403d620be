"""fedhub's state database: SQLite (the embedded default) vs PostgreSQL, side by side.
Not run in CI.

    .venv/bin/python benchmarks/statedb.py [--records 1000] [--jobs 500] [--writers 3]

Times, on each backend: one ledger append (signed, hash-chained, head row locked), a
verification of the whole ledger, a federated job's save + progress event (what a running
job does per event), reading every job back (a service restart), and --writers processes
appending to the ledger at once (appends/s, and that the chain stayed one). PostgreSQL is a
real server (tests/pg_server.py) on loopback; SQLite a file in a temporary folder.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from pg_server import PostgresServer  # noqa: E402

from fedhub.hub.federation import example_app  # noqa: E402
from fedhub.hub.federation.jobs import Job, SiteOffer, validate_request  # noqa: E402
from fedhub.hub.federation.store import JobStore  # noqa: E402
from fedhub.hub.ledger import Ledger  # noqa: E402
from fedhub.hub.statedb import open_state_db  # noqa: E402


def ms(samples: list[float]) -> str:
    s = sorted(samples)
    return f"p50 {statistics.median(s) * 1000:7.2f} ms  p99 {s[int(0.99 * (len(s) - 1))] * 1000:7.2f} ms"


def _writer(state: str, url, who: str, n: int) -> None:
    led = Ledger(state, db=open_state_db(state, url))
    for i in range(n):
        led.append("run", f"{who}-{i}", who, {"i": i})


def measure(label: str, state: Path, url: str | None, args) -> dict:
    db = open_state_db(state, url)
    ledger = Ledger(state, db=db)
    appends = []
    for i in range(args.records):
        t = time.perf_counter()
        ledger.append("run", f"run-{i}", "ann", {"i": i, "metrics": {"acc": 0.9}})
        appends.append(time.perf_counter() - t)
    t = time.perf_counter()
    problems = ledger.verify()
    verify_s = time.perf_counter() - t
    assert problems == []

    offers = {"a": SiteOffer("a", "local", True, "", {})}
    spec = validate_request({"app": str(example_app("digits")), "sites": ["a"], "rounds": 3},
                            example_app("digits").parent, offers)
    store = JobStore(state / "jobs", db)
    saves = []
    for _ in range(args.jobs):
        job = Job.from_spec(spec, "ann")
        t = time.perf_counter()
        store.save(job)
        store.append_event(job.id, {"type": "state", "message": "queued"})
        saves.append(time.perf_counter() - t)
    t = time.perf_counter()
    n_jobs = len(store.load_all())
    load_s = time.perf_counter() - t

    before = len(ledger.records())
    per_writer = max(1, args.records // args.writers)
    procs = [multiprocessing.get_context("fork").Process(target=_writer, args=(str(state), url, f"w{w}", per_writer))
             for w in range(args.writers)]
    t = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    concurrent_s = time.perf_counter() - t
    recs = ledger.records()
    assert [r["seq"] for r in recs] == list(range(before + per_writer * args.writers)) and ledger.verify() == []
    return {"label": label, "append": ms(appends), "verify": f"{verify_s:.3f} s for {before} records",
            "job save+event": ms(saves), "load jobs": f"{load_s:.3f} s for {n_jobs} jobs",
            "concurrent appends": f"{per_writer * args.writers / concurrent_s:7.1f} appends/s "
                                  f"({args.writers} processes, one chain)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--writers", type=int, default=3)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        results.append(measure("SQLite", Path(tmp) / "sqlite", None, args))
        with PostgresServer() as pg:
            import os
            os.environ["PGPASSWORD"] = pg.password
            url = pg.create_database(f"bench_{uuid.uuid4().hex[:8]}")
            results.append(measure("PostgreSQL", Path(tmp) / "pg", url, args))
    width = max(len(k) for k in results[0] if k != "label")
    print(f"\n{'':<{width}}  " + "  ".join(f"{r['label']:<44}" for r in results))
    for key in results[0]:
        if key != "label":
            print(f"{key:<{width}}  " + "  ".join(f"{r[key]:<44}" for r in results))


if __name__ == "__main__":
    main()
