"""P2 — a class logging in at once: N users request servers at the same moment.

On the fedhub hub (`fedhub up --no-mlflow`, FederatedSpawner) and then on plain JupyterHub
with SimpleLocalProcessSpawner (start and http timeouts raised to 120 s, as the anchor in
BENCHMARKS.md; --plain-default-timeouts keeps JupyterHub's 60 s / 30 s instead), one hub at
a time. N threads POST /hub/api/users/NAME/server together (released by a barrier); the main
thread polls GET /hub/api/users every 0.25 s and records when each server is ready or gone.

Measures: all ready?, failures, total time until all ready, per-user median and max (POST to
ready), the hub process's CPU-seconds and peak RSS, CPU of its helpers (proxy, fedhub API
service) and of the single-user servers, and the CPU floor N x 3.45 / 2 s on 2 cores.
Goal (fedhub): every user gets a server, total <= 1.1x the CPU floor and <= the plain hub's.

    .venv/bin/python benchmarks/burst.py [--quick] [--users N] [--plain-default-timeouts]
        [--sized-catalogue] [--only fedhub|plain] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _hubs import FedhubHub, Hub, Monitor, PlainHub, check_fingerprint, code_fingerprint, median  # noqa: E402

CPU_PER_START = 3.45  # CPU-seconds per single-user server start, measured (BENCHMARKS.md P2)
FLOOR_FACTOR_GOAL = 1.1


def sized_catalogue(n: int) -> str:
    """The default catalogue's two local sites, with room for n default sessions each."""
    return f"""\
sites:
  - name: local-a
    kind: local
    description: This machine, partition A
    cpus: {n}
    memory: {n * 2}G
    gpus:
      - {{type: a100, count: 2}}
  - name: local-b
    kind: local
    description: This machine, partition B
    cpus: {n}
    memory: {n * 2}G
    gpus:
      - {{type: t4, count: 4}}
defaults:
  cpus: 1
  memory: 1G
"""


def run_burst(hub: Hub, n: int, deadline_s: float, poll: float = 0.25) -> dict:
    users = [f"burst-{i:02d}" for i in range(n)]
    for u in users:
        hub.create_user(u)
    post: dict[str, dict] = {}
    barrier = threading.Barrier(n + 1)

    def request(user: str) -> None:
        barrier.wait()
        t = time.perf_counter()
        try:
            r = hub.request_server(user)
            post[user] = {"t": t, "done": time.perf_counter(), "status": r.status_code,
                          "message": "" if r.status_code in (201, 202) else r.text[:300]}
        except Exception as e:  # noqa: BLE001 - a failed request is a result
            post[user] = {"t": t, "done": time.perf_counter(), "status": None, "message": repr(e)[:300]}

    threads = [threading.Thread(target=request, args=(u,), daemon=True) for u in users]
    for th in threads:
        th.start()
    monitor = Monitor(hub, interval=0.5).start()
    barrier.wait()
    t0 = time.perf_counter()
    ready: dict[str, float] = {}
    failed: dict[str, str] = {}
    while len(ready) + len(failed) < n and time.perf_counter() - t0 < deadline_s:
        time.sleep(poll)
        asked = time.perf_counter()
        try:
            models = {m["name"]: m for m in hub.users()}
        except Exception:  # noqa: BLE001 - a hub too busy to answer is retried
            continue
        now = time.perf_counter()
        for u in users:
            if u in ready or u in failed:
                continue
            p = post.get(u)
            if p is not None and p["status"] not in (201, 202):
                failed[u] = f"POST {p['status']}: {p['message']}"
                continue
            server = models.get(u, {}).get("servers", {}).get("")
            if server and server.get("ready"):
                ready[u] = now
            elif p is not None and p["done"] < asked and (server is None or not server.get("pending")):
                failed[u] = "server gone before it was ready (spawn failed)"
    end = time.perf_counter()
    stats = monitor.stop()
    for th in threads:
        th.join(timeout=5)
    timed_out = [u for u in users if u not in ready and u not in failed]
    per_user = sorted(ready[u] - post[u]["t"] for u in ready)
    total = (max(ready.values()) - t0) if ready else float("nan")
    return {
        "hub": hub.label, "users": n, "ready": len(ready), "failed": len(failed),
        "timed_out": len(timed_out), "all_ready": len(ready) == n,
        "total_s": round(total, 2) if len(ready) == n else None,
        "last_ready_s": round(total, 2), "observed_s": round(end - t0, 2),
        "per_user_median_s": round(median(per_user), 2) if per_user else None,
        "per_user_max_s": round(per_user[-1], 2) if per_user else None,
        "post_statuses": sorted({str(p["status"]) for p in post.values()}),
        "failures": dict(sorted(failed.items())), **stats,
    }


def stop_all_servers(hub: Hub, n: int) -> None:
    users = [f"burst-{i:02d}" for i in range(n)]
    for u in users:
        try:
            hub.api("DELETE", f"/users/{u}/server", timeout=60)
        except Exception:  # noqa: BLE001 - the hub's own shutdown stops the rest
            pass
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if not any(m.get("servers") for m in hub.users() if m["name"] in users):
                return
        except Exception:  # noqa: BLE001
            pass
        time.sleep(0.5)


def one(hub: Hub, n: int, deadline_s: float) -> dict:
    try:
        hub.start()
        return run_burst(hub, n, deadline_s)
    finally:
        try:
            stop_all_servers(hub, n)
        finally:
            hub.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="6 users")
    ap.add_argument("--users", type=int, help="users in the burst (default 20, --quick 6)")
    ap.add_argument("--plain-default-timeouts", action="store_true",
                    help="plain hub keeps JupyterHub's default start/http timeouts (60 s / 30 s)")
    ap.add_argument("--sized-catalogue", action="store_true",
                    help="fedhub: two local sites with room for N sessions each, instead of the "
                         "default catalogue (8 CPUs per site, so 16 default sessions in all)")
    ap.add_argument("--only", choices=("fedhub", "plain"))
    ap.add_argument("--rounds", type=int, default=1, help="bursts per hub, alternating which goes first")
    ap.add_argument("--deadline", type=float, default=900, help="give up waiting after this many seconds")
    ap.add_argument("--keep-dir", action="store_true", help="keep the hubs' folders (logs)")
    args = ap.parse_args(argv)
    n = args.users or (6 if args.quick else 20)
    cores = os.cpu_count() or 2
    floor = n * CPU_PER_START / cores

    code = code_fingerprint()
    tmp = Path(tempfile.mkdtemp(prefix="fedhub-bench-burst-"))
    plain_timeouts = (None, None) if args.plain_default_timeouts else (120, 120)
    runs: list[dict] = []
    try:
        for r in range(args.rounds):
            order = ["fedhub", "plain"] if r % 2 == 0 else ["plain", "fedhub"]
            for label in order:
                if args.only and label != args.only:
                    continue
                folder = tmp / f"{label}-{r}"
                if label == "fedhub":
                    hub: Hub = FedhubHub(folder, sized_catalogue(n) if args.sized_catalogue else None)
                else:
                    hub = PlainHub(folder, *plain_timeouts)
                print(f"burst of {n} on {label} (round {r + 1}) ...", flush=True)
                res = one(hub, n, args.deadline)
                res["round"] = r + 1
                runs.append(res)
                print(f"  {res['ready']}/{n} ready, {res['failed']} failed, last ready at "
                      f"{res['last_ready_s']} s", flush=True)
                time.sleep(3)  # let the machine settle between bursts
    finally:
        if not args.keep_dir:
            shutil.rmtree(tmp, ignore_errors=True)

    code = check_fingerprint(code)
    print()
    plain_desc = ("JupyterHub defaults 60/30 s" if args.plain_default_timeouts
                  else "start/http timeouts 120/120 s")
    fed_desc = "sized catalogue" if args.sized_catalogue else "default catalogue"
    print(f"burst of {n} users, {cores} cores, CPU floor {n} x {CPU_PER_START} / {cores} = {floor:.1f} s; "
          f"fedhub: {fed_desc}; plain: {plain_desc}; fedhub code {code['sha256']}")
    print(f"{'hub':<8}{'rnd':>4}{'ready':>7}{'fail':>6}{'total s':>9}{'/floor':>8}{'med s':>8}"
          f"{'max s':>8}{'hub cpu':>9}{'helpers':>9}{'servers':>9}{'hub rss':>9}")
    for x in runs:
        total = x["total_s"]
        tot = f"{total:.1f}" if total is not None else "-"
        fl = f"{total / floor:.2f}" if total is not None else "-"
        print(f"{x['hub']:<8}{x['round']:>4}{x['ready']:>7}{x['failed']:>6}{tot:>9}{fl:>8}"
              f"{x['per_user_median_s'] or float('nan'):>8.1f}{x['per_user_max_s'] or float('nan'):>8.1f}"
              f"{x['hub_cpu_s']:>9.1f}{x['helpers_cpu_s']:>9.1f}{x['servers_cpu_s']:>9.1f}"
              f"{x['hub_peak_rss_mb']:>8.0f}M")
    for x in runs:
        if x["failures"]:
            reasons: dict[str, int] = {}
            for why in x["failures"].values():
                reasons[why] = reasons.get(why, 0) + 1
            print(f"{x['hub']} round {x['round']} failures: "
                  + "; ".join(f"{k} (x{v})" for k, v in reasons.items()))
    summary: dict = {"benchmark": "burst", "code": code, "users": n, "cores": cores, "cpu_floor_s": round(floor, 2),
                     "plain_timeouts": plain_desc, "fedhub_catalogue": fed_desc, "runs": runs}
    fed = [x for x in runs if x["hub"] == "fedhub"]
    plain = [x for x in runs if x["hub"] == "plain"]
    if fed and plain:
        pairs = [(f["total_s"], p["total_s"]) for f, p in zip(fed, plain)]
        ratios = [f / p for f, p in pairs if f is not None and p is not None]
        summary["ratios_total_fedhub_over_plain"] = [round(r, 3) for r in ratios]
        summary["median_ratio_total"] = round(median(ratios), 3) if ratios else None
        if ratios:
            print(f"total time fedhub/plain: {', '.join(f'{r:.3f}' for r in ratios)} "
                  f"(median {median(ratios):.3f})")
        else:
            print("total time fedhub/plain: n/a (a hub did not bring every server up)")
    if fed:
        all_ready = all(x["all_ready"] for x in fed)
        totals = [x["total_s"] for x in fed if x["total_s"] is not None]
        within_floor = bool(totals) and median(totals) <= FLOOR_FACTOR_GOAL * floor
        no_worse = (summary.get("median_ratio_total") or float("inf")) <= 1.0 if plain else None
        summary["goal"] = {"all_ready": all_ready, "within_1.1x_floor": within_floor,
                           "no_worse_than_plain": no_worse}
        print(f"goal: every user served {'MET' if all_ready else 'NOT MET'}; total <= 1.1 x floor "
              f"({FLOOR_FACTOR_GOAL * floor:.1f} s) {'MET' if within_floor else 'NOT MET'}"
              + ("" if no_worse is None else f"; no worse than plain {'MET' if no_worse else 'NOT MET'}"))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
