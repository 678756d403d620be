"""Panel routes: what the session API's forwarding to the hub costs.

A real `fedhub up --no-mlflow` and a jupyter server with the fedhub server extension in
hub mode (FEDHUB_URL and a user's hub token, as a spawned session has them). Alternated
(A, B, A, B, ...), one keep-alive HTTP session each, after one un-timed warm-up:

- A: the Federated/Deploy panels' call through the session API
     (GET /fedhub/api/jobs, /fedhub/api/fl/sites, /fedhub/api/deployments)
- B: the same route straight to the hub's fedhub API
     (GET /services/fedhub/api/jobs, /federation/sites, /deployments)

Reported per route: median and p99 of A and B (ms) and the median of the pairwise ratios
A_i/B_i. Goal: the forwarding adds at most a few milliseconds (A - B median <= 5 ms).

    .venv/bin/python benchmarks/panel_routes.py [--calls 200]

Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _hubs import FedhubHub, free_port, median, percentile  # noqa: E402

PY = sys.executable
SESSION_TOKEN = "panel-bench-session-token"
ROUTES = [("jobs", "jobs"), ("fl/sites", "federation/sites"), ("deployments", "deployments")]


def wait_http(url: str, headers: dict, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited {proc.returncode}")
        try:
            if requests.get(url, headers=headers, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer in {timeout}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200, help="timed calls per route and side")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fedhub-panel-bench-"))
    hub = FedhubHub(work / "hub")
    jupyter = None
    try:
        hub.start()
        hub.create_user("bench")
        r = hub.api("POST", "/users/bench/tokens", json={"note": "panel bench"})
        r.raise_for_status()
        user_token = r.json()["token"]
        home = work / "hub" / "homes" / "bench"
        home.mkdir(parents=True, exist_ok=True)
        port = free_port()
        env = {**os.environ, "FEDHUB_URL": hub.url, "JUPYTERHUB_API_TOKEN": user_token,
               "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
        with open(work / "jupyter.log", "wb") as log:
            jupyter = subprocess.Popen(
                [PY, "-m", "jupyter_server", "--no-browser", "--allow-root", f"--port={port}",
                 "--ip=127.0.0.1", f"--ServerApp.token={SESSION_TOKEN}", f"--ServerApp.root_dir={home}"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        session_url = f"http://127.0.0.1:{port}/fedhub/api"
        hub_url = f"{hub.url}/services/fedhub/api"
        a_headers = {"Authorization": f"token {SESSION_TOKEN}"}
        b_headers = {"Authorization": f"token {user_token}"}
        wait_http(f"{session_url}/session", a_headers, 120, jupyter)
        a, b = requests.Session(), requests.Session()
        a.headers.update(a_headers)
        b.headers.update(b_headers)

        def timed(s: requests.Session, url: str) -> float:
            t = time.perf_counter()
            r = s.get(url, timeout=60)
            elapsed = (time.perf_counter() - t) * 1000
            if r.status_code != 200:
                raise RuntimeError(f"{url}: {r.status_code} {r.text[:200]}")
            return elapsed

        results = {}
        print(f"{'route':<14}{'A session p50':>14}{'A p99':>9}{'B hub p50':>11}{'B p99':>9}"
              f"{'A/B (med)':>11}{'A-B ms':>9}")
        for session_route, hub_route in ROUTES:
            timed(a, f"{session_url}/{session_route}")
            timed(b, f"{hub_url}/{hub_route}")
            ta, tb = [], []
            for _ in range(args.calls):
                ta.append(timed(a, f"{session_url}/{session_route}"))
                tb.append(timed(b, f"{hub_url}/{hub_route}"))
            ratio = median(x / y for x, y in zip(ta, tb))
            sa, sb = sorted(ta), sorted(tb)
            row = {"a_p50_ms": median(ta), "a_p99_ms": percentile(sa, 99), "b_p50_ms": median(tb),
                   "b_p99_ms": percentile(sb, 99), "ratio_median": ratio,
                   "added_ms": median(ta) - median(tb)}
            results[session_route] = row
            print(f"{session_route:<14}{row['a_p50_ms']:>14.2f}{row['a_p99_ms']:>9.2f}{row['b_p50_ms']:>11.2f}"
                  f"{row['b_p99_ms']:>9.2f}{ratio:>10.2f}x{row['added_ms']:>9.2f}")
        print(json.dumps({"benchmark": "panel_routes", "calls": args.calls,
                          "load_1min": os.getloadavg()[0], "routes": results}))
    finally:
        if jupyter is not None and jupyter.poll() is None:
            jupyter.terminate()
            try:
                jupyter.wait(20)
            except subprocess.TimeoutExpired:
                jupyter.kill()
        hub.stop()


if __name__ == "__main__":
    main()
