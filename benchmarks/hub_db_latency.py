"""Hub API latency with many users in the database: SQLite (fedhub up's default) vs PostgreSQL,
side by side. Not run in CI.

    .venv/bin/python benchmarks/hub_db_latency.py [--users 1000] [--requests 200]

Starts a real hub (fedhub up) per database, creates the users in bulk through the hub's
REST API, then times GET /services/fedhub/api/sites and /services/fedhub/api/sessions (as a
user) and GET /hub/api/users (admin), with --sessions of those users' servers running.

The running sessions are real processes placed by FederatedSpawner on the local site, but
their command is JupyterHub's own minimal single-user server (jupyterhub.tests.mocksu,
~25 MB) instead of JupyterLab (~130 MB): 200 JupyterLab servers do not fit in this
machine's memory, and what is measured here is the hub's database and the fedhub API, which
hold the same rows and snapshot entries either way."""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import Hub, free_port  # noqa: E402
from pg_server import PostgresServer  # noqa: E402

CATALOGUE = "sites:\n  - {name: here, kind: local, cpus: 400, memory: 2000G}\n"
# sessions run JupyterHub's minimal single-user server (see the module docstring)
LIGHT_SERVERS = f"\nc.Spawner.cmd = [{sys.executable!r}, '-m', 'jupyterhub.tests.mocksu']\n"


def start_sessions(hub, names: list[str], batch: int = 20) -> float:
    """Start a server for each name, `batch` at a time; seconds until all are ready."""
    t0 = time.monotonic()
    for i in range(0, len(names), batch):
        group = names[i:i + batch]
        for name in group:
            r = hub.spawn(name)
            assert r.status_code in (201, 202), (name, r.status_code, r.text[:300])
        for name in group:
            hub.wait_ready(name, timeout=300)
    return time.monotonic() - t0


def timings(url: str, token: str, n: int) -> tuple[float, float]:
    s = requests.Session()
    s.headers["Authorization"] = f"token {token}"
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = s.get(url, timeout=60)
        out.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200, (url, r.status_code, r.text[:200])
    out.sort()
    return statistics.median(out), out[int(0.99 * (len(out) - 1))]


def measure(label: str, args: list[str], users: int, n: int, sessions: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        hub = Hub(Path(d) / "hub", free_port(), ["--no-mlflow", "--no-inference", *args], CATALOGUE)
        with open(hub.data_dir / "jupyterhub_config.py", "a") as f:
            f.write(LIGHT_SERVERS)
        hub.start(120)
        try:
            names = [f"user{i:04d}" for i in range(users)]
            for i in range(0, users, 200):
                r = hub.api("POST", "/users", json={"usernames": names[i:i + 200]})
                assert r.status_code in (201, 409), r.text
            took = start_sessions(hub, names[:sessions])
            running = sum(1 for u in hub.api("GET", "/users?state=active&limit=1000").json()
                          if u["servers"].get("", {}).get("ready"))
            print(f"{label}: {running} sessions running ({took:.0f} s to start)", flush=True)
            assert running == sessions, (running, sessions)
            # as a user with a running session: /api/sessions has a row to show
            token = hub.create_user(names[0] if sessions else "bench")
            res = {}
            for path in ("/sites", "/sessions"):
                res[path] = timings(f"{hub.url}/services/fedhub/api{path}", token, n)
            from conftest import ADMIN_TOKEN
            res["/hub/api/users"] = timings(f"{hub.url}/hub/api/users?limit=200", ADMIN_TOKEN, n)
            return res
        finally:
            for name in names[:sessions]:
                hub.api("DELETE", f"/users/{name}/server")
            hub.stop()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--sessions", type=int, default=200, help="running sessions during the measurement")
    a = p.parse_args()
    sqlite = measure("sqlite", [], a.users, a.requests, a.sessions)
    import os
    with PostgresServer() as pg:
        os.environ["PGPASSWORD"] = pg.password
        postgres = measure("postgres", ["--db-url", pg.create_database("jupyterhub")], a.users, a.requests,
                           a.sessions)
    print(f"{a.users} users, {a.sessions} running sessions, {a.requests} requests each; milliseconds")
    print(f"{'endpoint':32} {'sqlite p50':>10} {'p99':>7} {'postgres p50':>13} {'p99':>7} {'pg/sqlite p50':>14}")
    for path in sqlite:
        (s50, s99), (p50, p99) = sqlite[path], postgres[path]
        print(f"{path:32} {s50:10.1f} {s99:7.1f} {p50:13.1f} {p99:7.1f} {p50 / s50:14.2f}")


if __name__ == "__main__":
    main()
