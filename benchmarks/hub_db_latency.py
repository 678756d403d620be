"""Hub API latency with many users in the database: SQLite (fedhub up's default) vs PostgreSQL,
side by side. Not run in CI.

    .venv/bin/python benchmarks/hub_db_latency.py [--users 1000] [--sessions 200] [--requests 200] [--rounds 2]

Starts a real hub (fedhub up) per database, creates the users in bulk through the hub's
REST API, then times GET /services/fedhub/api/sites and /services/fedhub/api/sessions (as a
user) and GET /hub/api/users (admin), with --sessions of those users' servers running.

The running sessions are real processes placed by FederatedSpawner on the local site, but
their command is JupyterHub's own minimal single-user server (jupyterhub.tests.mocksu,
~50 MB) instead of JupyterLab (~130 MB): 200 JupyterLab servers do not fit in this
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


def stop_sessions_under(folder: str) -> None:
    """Stop every session server whose home is under `folder` (left running by a hub that died)."""
    import psutil
    for p in psutil.process_iter(["cmdline", "cwd"]):
        if "jupyterhub.tests.mocksu" in " ".join(p.info["cmdline"] or []) and \
                (p.info["cwd"] or "").startswith(str(folder)):
            p.kill()


def timed_get(session: requests.Session, url: str) -> float:
    t = time.perf_counter()
    r = session.get(url, timeout=60)
    ms = (time.perf_counter() - t) * 1000
    assert r.status_code == 200, (url, r.status_code, r.text[:200])
    return ms


def p50_p99(samples: list[float]) -> tuple[float, float]:
    out = sorted(samples)
    return statistics.median(out), out[int(0.99 * (len(out) - 1))]


def populate(label: str, hub, users: int, sessions: int) -> dict[str, requests.Session]:
    """Create the users, start the sessions; sessions to time the routes with."""
    from conftest import ADMIN_TOKEN
    names = [f"user{i:04d}" for i in range(users)]
    for i in range(0, users, 200):
        r = hub.api("POST", "/users", json={"usernames": names[i:i + 200]})
        assert r.status_code in (201, 409), r.text
    took = start_sessions(hub, names[:sessions])
    running = sum(1 for u in hub.api("GET", "/users?state=active&limit=1000").json()
                  if u["servers"].get("", {}).get("ready"))
    print(f"{label}: {users} users, {running} sessions running ({took:.0f} s to start)", flush=True)
    assert running == sessions, (running, sessions)
    user, admin = requests.Session(), requests.Session()
    # as a user with a running session: /api/sessions has a row to show
    user.headers["Authorization"] = f"token {hub.create_user(names[0] if sessions else 'bench')}"
    admin.headers["Authorization"] = f"token {ADMIN_TOKEN}"
    return {"user": user, "admin": admin}


ROUTES = [("/services/fedhub/api/sites", "user"), ("/services/fedhub/api/sessions", "user"),
          ("/hub/api/users?limit=200", "admin")]


def measure_arm(label: str, args: list[str], folder: Path, a) -> dict[str, list[float]]:
    """One hub: users and running sessions in its database, then each route timed in turn."""
    hub = Hub(folder, free_port(), ["--no-mlflow", "--no-inference", *args], CATALOGUE)
    with open(hub.data_dir / "jupyterhub_config.py", "a") as f:
        f.write(LIGHT_SERVERS)
    try:
        hub.start(120)
        who = populate(label, hub, a.users, a.sessions)
        samples: dict[str, list[float]] = {path: [] for path, _ in ROUTES}
        for _ in range(a.requests):
            for path, role in ROUTES:
                samples[path].append(timed_get(who[role], hub.url + path))
        return samples
    except Exception:
        print(f"--- {label} hub log (tail)\n{hub.log_tail()}", file=sys.stderr)
        raise
    finally:
        hub.stop()
        stop_sessions_under(str(folder))


def main() -> None:
    import os
    p = argparse.ArgumentParser()
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--sessions", type=int, default=200, help="running sessions during the measurement")
    p.add_argument("--rounds", type=int, default=2, help="hubs per database, the order alternating")
    a = p.parse_args()
    samples = {(label, path): [] for label in ("sqlite", "postgres") for path, _ in ROUTES}
    with tempfile.TemporaryDirectory() as d, PostgresServer() as pg:
        os.environ["PGPASSWORD"] = pg.password
        # one hub at a time: 2 x 200 running servers do not fit in this machine's memory
        for r in range(a.rounds):
            arms = {"sqlite": [], "postgres": ["--db-url", pg.create_database(f"jupyterhub{r}"),
                                               "--state-db-url", pg.create_database(f"fedhub_state{r}")]}
            for label in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
                got = measure_arm(label, arms[label], Path(d) / f"{label}{r}", a)
                for path, ms in got.items():
                    samples[label, path] += ms
    print(f"{a.users} users, {a.sessions} running sessions, {a.requests} requests per route per hub, "
          f"{a.rounds} round(s) alternating which database goes first; milliseconds")
    print(f"{'endpoint':32} {'sqlite p50':>10} {'p99':>7} {'postgres p50':>13} {'p99':>7} {'pg/sqlite p50':>14}")
    for path, _ in ROUTES:
        (s50, s99), (p50, p99) = p50_p99(samples["sqlite", path]), p50_p99(samples["postgres", path])
        print(f"{path:32} {s50:10.1f} {s99:7.1f} {p50:13.1f} {p99:7.1f} {p50 / s50:14.2f}")


if __name__ == "__main__":
    main()
