"""P5 — experiments at scale (BENCHMARKS.md P5).

One experiment with N runs (default 10,000) x 5 metrics x 10 params in an MLflow SQLite
store, served by a real `mlflow server` (one worker, as hub/tracking.py runs it). A jupyter
server with the fedhub server extension points at it (MLFLOW_TRACKING_URI). Alternated
(A, B, A, B, ...):

- A: the session API's first page of the Experiments panel:
     GET /fedhub/api/experiments/{id}/runs?max_results=50&order_by=metrics.m0 DESC
     (token auth; the extension calls MlflowClient.get_experiment + search_runs)
- B: the same query straight to MLflow's REST API:
     POST /api/2.0/mlflow/runs/search {experiment_ids, max_results: 50,
     order_by: ["metrics.m0 DESC"]}

One un-timed warm-up of each first. Both use one keep-alive HTTP session. Reported:
median, max, and the median of the pairwise ratios A_i/B_i. Goals: A <= 1 s, A/B <= 1.2x.

The store is populated directly with bulk SQL inserts (after SqlAlchemyStore created the
schema and the experiment), which is much faster than log_batch per run (~25 ms/run).

    .venv/bin/python benchmarks/p5_experiments.py [--runs 10000] [--rounds 7] [--keep DIR]

Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

PY = sys.executable
N_METRICS, N_PARAMS = 5, 10
PAGE = 50
ORDER = "metrics.m0 DESC"
TOKEN = "p5-bench-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def populate(db: Path, art: Path, n_runs: int) -> tuple[str, float]:
    """Schema + experiment through MLflow's store, then runs/tags/params/metrics by bulk SQL."""
    t0 = time.perf_counter()
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    store = SqlAlchemyStore(f"sqlite:///{db}", str(art))
    exp_id = store.create_experiment("p5-scale")
    store.engine.dispose()
    del store
    rng = random.Random(5)
    now = int(time.time() * 1000) - n_runs * 1000
    runs, tags, params, metrics, latest = [], [], [], [], []
    for i in range(n_runs):
        rid = uuid.uuid4().hex
        start = now + i * 1000
        name = f"run-{i:05d}"
        runs.append((rid, name, "LOCAL", "train.py", "", "bench", "FINISHED", start, start + 900, "",
                     "active", f"{art}/{exp_id}/{rid}/artifacts", int(exp_id)))
        tags += [("mlflow.runName", name, rid), ("mlflow.user", "bench", rid),
                 ("mlflow.source.name", "train.py", rid), ("mlflow.source.type", "LOCAL", rid)]
        params += [(f"p{k}", str(rng.choice([0.1, 0.01, 0.001, 32, 64, 128, "adam", "sgd"])), rid)
                   for k in range(N_PARAMS)]
        for k in range(N_METRICS):
            v = rng.random()
            metrics.append((f"m{k}", v, start + 500, rid, 9, 0))
            latest.append((f"m{k}", v, start + 500, 9, 0, rid))
    con = sqlite3.connect(db)
    with con:
        con.executemany("INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id,"
                        " status, start_time, end_time, source_version, lifecycle_stage, artifact_uri,"
                        " experiment_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", runs)
        con.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?,?,?)", tags)
        con.executemany("INSERT INTO params (key, value, run_uuid) VALUES (?,?,?)", params)
        con.executemany("INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan)"
                        " VALUES (?,?,?,?,?,?)", metrics)
        con.executemany("INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid)"
                        " VALUES (?,?,?,?,?,?)", latest)
    con.execute("ANALYZE")
    con.close()
    return exp_id, time.perf_counter() - t0


def wait_http(url: str, timeout: float, proc: subprocess.Popen, **kw) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process for {url} exited with {proc.returncode}")
        try:
            if requests.get(url, timeout=2, **kw).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} not up after {timeout} s")


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # the group this script started (uvicorn forks workers)
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--keep", help="work directory to use and keep (default: a temporary one, removed)")
    args = ap.parse_args()

    tmp_ctx = None
    if args.keep:
        work = Path(args.keep)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp_ctx = tempfile.TemporaryDirectory(prefix="fedhub-p5-")
        work = Path(tmp_ctx.name)
    db, art = work / "mlflow.db", work / "art"
    if db.exists():
        db.unlink()
    art.mkdir(exist_ok=True)

    exp_id, pop_s = populate(db, art, args.runs)
    print(f"populated {args.runs} runs x {N_METRICS} metrics x {N_PARAMS} params in {pop_s:.1f} s "
          f"(experiment {exp_id}, {db.stat().st_size / 1e6:.0f} MB)", flush=True)

    mlflow_port, jup_port = free_port(), free_port()
    mlflow_bin = Path(PY).with_name("mlflow")
    mlflow_cmd = [str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{db}",
                  "--artifacts-destination", str(art), "--host", "127.0.0.1", "--port", str(mlflow_port),
                  "--workers", "1"]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JUPYTERHUB_", "FEDHUB_", "MLFLOW_"))}
    mlflow_env = {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    jup_cmd = [PY, "-m", "jupyter_server", "--no-browser", "--allow-root", f"--ServerApp.token={TOKEN}",
               f"--port={jup_port}", "--ServerApp.ip=127.0.0.1", "--ServerApp.port_retries=0",
               f"--ServerApp.root_dir={work}",
               "--ServerApp.jpserver_extensions=fedhub.server_ext=True"]
    jup_env = {**env, "MLFLOW_TRACKING_URI": mlflow_url, "JUPYTER_RUNTIME_DIR": str(work / "runtime")}
    jup_url = f"http://127.0.0.1:{jup_port}"

    procs: list[subprocess.Popen] = []
    try:
        t0 = time.perf_counter()
        with open(work / "mlflow.log", "wb") as mlog:
            procs.append(subprocess.Popen(mlflow_cmd, env=mlflow_env, stdout=mlog, stderr=subprocess.STDOUT,
                                          start_new_session=True, cwd=work))
        wait_http(f"{mlflow_url}/health", 120, procs[0])
        print(f"mlflow server up in {time.perf_counter() - t0:.1f} s", flush=True)
        with open(work / "jupyter.log", "wb") as jlog:
            procs.append(subprocess.Popen(jup_cmd, env=jup_env, stdout=jlog, stderr=subprocess.STDOUT,
                                          start_new_session=True, cwd=work))
        auth = {"Authorization": f"token {TOKEN}"}
        wait_http(f"{jup_url}/fedhub/api/session", 120, procs[1], headers=auth)

        s = requests.Session()
        a_url = f"{jup_url}/fedhub/api/experiments/{exp_id}/runs"
        a_params = {"max_results": PAGE, "order_by": ORDER}
        b_url = f"{mlflow_url}/api/2.0/mlflow/runs/search"
        b_body = {"experiment_ids": [exp_id], "max_results": PAGE, "order_by": [ORDER]}

        def call_a():
            t = time.perf_counter()
            r = s.get(a_url, params=a_params, headers=auth, timeout=120)
            dt = time.perf_counter() - t
            r.raise_for_status()
            return dt, [x["run_id"] for x in r.json()["runs"]], len(r.content)

        def call_b():
            t = time.perf_counter()
            r = s.post(b_url, json=b_body, timeout=120)
            dt = time.perf_counter() - t
            r.raise_for_status()
            return dt, [x["info"]["run_id"] for x in r.json()["runs"]], len(r.content)

        wa, ids_a, size_a = call_a()  # warm-up: first MlflowClient import/creation in the server
        wb, ids_b, size_b = call_b()
        if ids_a != ids_b or len(ids_a) != PAGE:
            raise SystemExit(f"A and B disagree: {len(ids_a)} vs {len(ids_b)} runs, same order: {ids_a == ids_b}")
        # Check the order is right: m0 of the page, from the database.
        con = sqlite3.connect(db)
        top = [r[0] for r in con.execute("SELECT run_uuid FROM latest_metrics WHERE key='m0'"
                                         " ORDER BY value DESC LIMIT ?", (PAGE,))]
        con.close()
        print(f"warm-up: A {wa * 1000:.0f} ms, B {wb * 1000:.0f} ms; pages agree "
              f"({PAGE} runs, top-{PAGE} by m0 {'correct' if top == ids_a else 'DIFFERENT'}); "
              f"bodies A {size_a / 1e3:.0f} kB, B {size_b / 1e3:.0f} kB", flush=True)

        a_t, b_t = [], []
        for i in range(args.rounds):
            a_t.append(call_a()[0])
            b_t.append(call_b()[0])
            print(f"round {i + 1}: A {a_t[-1] * 1000:7.1f} ms   B {b_t[-1] * 1000:7.1f} ms   "
                  f"A/B {a_t[-1] / b_t[-1]:.2f}", flush=True)
    finally:
        for p in reversed(procs):
            stop(p)
        if tmp_ctx is not None:
            tmp_ctx.cleanup()

    ratios = [a / b for a, b in zip(a_t, b_t)]
    res = {
        "runs": args.runs, "rounds": args.rounds, "populate_s": round(pop_s, 1),
        "a_median_ms": round(statistics.median(a_t) * 1000, 1), "a_max_ms": round(max(a_t) * 1000, 1),
        "b_median_ms": round(statistics.median(b_t) * 1000, 1), "b_max_ms": round(max(b_t) * 1000, 1),
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3),
        "warmup_a_ms": round(wa * 1000, 1), "warmup_b_ms": round(wb * 1000, 1),
        "load": os.getloadavg()[0],
    }
    res["goal_a_le_1s"] = res["a_median_ms"] <= 1000
    res["goal_ratio_le_1_2"] = res["ratio_median"] <= 1.2
    print()
    print("| | median | max |")
    print("|---|---|---|")
    print(f"| A session API | {res['a_median_ms']} ms | {res['a_max_ms']} ms |")
    print(f"| B MLflow REST | {res['b_median_ms']} ms | {res['b_max_ms']} ms |")
    print(f"| A/B (pairwise) | {res['ratio_median']}x | {res['ratio_max']}x (min {res['ratio_min']}x) |")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
