"""R1/R2 — Slurm site failure during spawns, and hub restart with sessions on two clusters.

Two real Slurm clusters (tests/slurm_cluster.py; A: 8 CPUs, 2 fake a100; B: 8 CPUs, 1 fake h100;
each its own slurmctld + slurmd) and one `fedhub up --no-mlflow --keep-servers` hub with a
site per cluster (hpc-a, hpc-b; poll_interval 1 s, start_timeout 90 s, default sessions of
1 CPU and 512M). Both clusters can hold every session of the run on their own.

R1 (site dies while spawns start): K users (default 6) POST their servers at once with auto
placement. As soon as a job shows up in A's queue, A's slurmctld is killed (SIGKILL; its slurmd
and running jobs stay). Every spawn is then followed to ready or failure: a spawn is *lost* if its
POST is refused or its server never becomes ready (goal 0 lost). A's controller is then restarted;
after --orphan-wait seconds (default 60) every job left in either cluster's queue that is not a
ready session's job (per the hub's server state) is counted as *orphaned* (goal 0). Also shown:
which jobs A's controller recovered and how long until fedhub cancelled them, whether every ready
session answers through the proxy, and progress messages the abandoned hpc-a attempt still sent
after the spawn had moved on (batchspawner's run_command swallows task cancellation). The R1
servers are then stopped.

R2 (hub restart): M users (default 4, half on each site by name) get sessions; once all are ready,
the hub is stopped (SIGINT; --keep-servers leaves the jobs running) and started again. A session
is *reconnected* if, after the restart, its server is ready with the same Slurm job id (goal: all);
it is also checked that it answers through the proxy and that no extra job appeared. Finally the
servers are stopped and both queues must empty.

    .venv/bin/python benchmarks/resilience.py [--quick] [-k K] [-m M] [--orphan-wait S]
                                              [--poll-interval S] [--only r1|r2] [--keep-dir]

Prints the figures and, last, one JSON line. Stops the hub, cancels every job (scancel) and stops
both clusters at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _hubs import (FedhubHub, check_fingerprint, code_fingerprint, fedhub_job_id, fedhub_site,  # noqa: E402
                   slurm_catalogue, slurm_cluster_class, slurm_jobs, slurm_site, stop_cluster)


def wait_for(predicate, timeout: float, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


def follow(hub: FedhubHub, name: str, timeout: float) -> dict:
    """Wait for a spawn to settle: {'ready': bool, 'site', 'job', 'error'}."""
    try:
        server = hub.wait_ready(name, timeout=timeout, interval=0.5)
        return {"ready": True, "site": fedhub_site(server), "job": fedhub_job_id(server), "error": ""}
    except Exception as e:  # gone or timed out: lost
        return {"ready": False, "site": "", "job": "", "error": str(e).splitlines()[0][:300]}


def log_lines(hub: FedhubHub, pattern: str, since: int = 0) -> list[str]:
    try:
        lines = hub.log_path.read_text(errors="replace").splitlines()[since:]
    except FileNotFoundError:
        return []
    return [ln for ln in lines if re.search(pattern, ln)]


def log_length(hub: FedhubHub) -> int:
    try:
        return len(hub.log_path.read_text(errors="replace").splitlines())
    except FileNotFoundError:
        return 0


def controller_log_since_restart(cluster) -> dict:
    """From slurmctld's log since its last start: jobs it recovered from its state files, and
    when (seconds after that start) each job started running and was cancelled."""
    text = (cluster.root / "log" / "slurmctld.log").read_text(errors="replace").splitlines()
    starts = [i for i, ln in enumerate(text) if re.search(r"slurmctld version \S+ started", ln)]
    lines = text[starts[-1]:] if starts else text

    def when(ln: str) -> float:
        m = re.match(r"\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)\]", ln)
        return time.mktime(time.strptime(m.group(1)[:19], "%Y-%m-%dT%H:%M:%S")) + float("0" + m.group(1)[19:]) if m else 0.0

    t0 = when(lines[0]) if lines else 0.0
    out = {"recovered": [], "started": {}, "killed": {}}
    for ln in lines:
        if m := re.search(r"Recovered JobId=(\d+)", ln):
            out["recovered"].append(m.group(1))
        elif m := re.search(r"(?:_start_job: Started|sched: Allocate) JobId=(\d+)", ln):
            out["started"].setdefault(m.group(1), when(ln) - t0)
        elif m := re.search(r"REQUEST_KILL_JOB JobId=(\d+)", ln):
            out["killed"].setdefault(m.group(1), when(ln) - t0)
    return out


def run_r1(hub, a, b, k: int, orphan_wait: float) -> dict:
    """Spawns while hpc-a's controller dies; see the module docstring."""
    users = [f"r1-{i}" for i in range(k)]
    for u in users:
        hub.create_user(u)
    log0 = log_length(hub)
    posts: dict[str, str] = {}
    barrier = threading.Barrier(k + 1)

    def post(u):
        barrier.wait()
        r = hub.request_server(u)
        posts[u] = f"{r.status_code}" + ("" if r.status_code in (201, 202) else f" {r.text[:200]}")

    threads = [threading.Thread(target=post, args=(u,)) for u in users]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    jobs_a = wait_for(lambda: slurm_jobs(a), timeout=60, interval=0.1) or []
    a.kill_controller()
    killed_at = time.perf_counter() - t0
    ready_at_kill = sum(1 for u in users if (hub.server(u) or {}).get("ready"))
    print(f"R1: killed hpc-a's slurmctld {killed_at:.1f} s after the POSTs; A's queue then: "
          f"{' '.join(f'{j}:{s}' for j, s in jobs_a) or '-'}; ready at that moment: {ready_at_kill}/{k}",
          flush=True)
    for t in threads:
        t.join()
    outcome = {u: follow(hub, u, timeout=300) if posts[u].startswith("20") else
               {"ready": False, "site": "", "job": "", "error": f"POST {posts[u]}"} for u in users}
    settled_s = time.perf_counter() - t0
    for u in users:
        o = outcome[u]
        print(f"  {u}: POST {posts[u][:3]}, " + (f"ready on {o['site']} (job {o['job']})" if o["ready"]
                                                  else f"LOST: {o['error']}"), flush=True)
    fallbacks = log_lines(hub, r"r1-\d+: hpc-a could not start the session", log0)
    fell = sorted({re.search(r"(r1-\d+):", ln).group(1) for ln in fallbacks})
    down = hub.sites().get("hpc-a", {})
    print(f"R1: all spawns settled {settled_s:.1f} s after the POSTs; fell through from hpc-a: {len(fallbacks)} "
          f"({', '.join(fell) or '-'}); hpc-a shown down: {down.get('up') is False} "
          f"({down.get('down_reason', '')[:80]})", flush=True)

    # restart A's controller; the site comes back by itself and jobs of failed starts are cancelled
    a.start_controller()
    t1 = time.perf_counter()
    sessions = {(o["site"], o["job"]) for o in outcome.values() if o["ready"]}

    def orphans_on(cluster, site):
        return [f"{j}:{st}" for j, st in slurm_jobs(cluster) if (site, j) not in sessions]

    back_s = clean_s = None
    while time.perf_counter() - t1 < orphan_wait:
        if back_s is None and hub.sites().get("hpc-a", {}).get("up"):
            back_s = time.perf_counter() - t1
        if clean_s is None and not orphans_on(a, "hpc-a"):
            clean_s = time.perf_counter() - t1
        time.sleep(0.5)
    orphans = {"hpc-a": orphans_on(a, "hpc-a"), "hpc-b": orphans_on(b, "hpc-b")}
    ctld = controller_log_since_restart(a)
    owned = {j for site, j in sessions if site == "hpc-a"}
    recovered = [j for j in ctld["recovered"] if j not in owned]
    # the abandoned attempt on hpc-a must not leak into the session that replaced it
    stale = {}
    lines = hub.log_path.read_text(errors="replace").splitlines()[log0:]
    for u in fell:
        i = next(n for n, ln in enumerate(lines) if f"{u}: hpc-a could not start" in ln)
        stale[u] = [ln.split("] ", 1)[-1] for ln in lines[i + 1:]
                    if re.search(rf"{u}: (Job \S* (pending|running) (in|on) hpc-a|Submitting the session job to hpc-a)", ln)]
    never_retrieved = len(log_lines(hub, r"Task exception was never retrieved", log0))
    answering = 0
    for u, o in outcome.items():
        if o["ready"]:
            with contextlib.suppress(requests.RequestException):
                answering += requests.get(f"{hub.url}/user/{u}/api/status", timeout=30,
                                          headers={"Authorization": f"token {hub.token}"}).status_code == 200
    fates = "; ".join(
        f"job {j}: " + (f"started running {ctld['started'][j]:.1f} s after the restart, " if j in ctld["started"]
                        else "never started, ")
        + (f"cancelled {ctld['killed'][j]:.1f} s after the restart" if j in ctld["killed"] else "not cancelled")
        for j in recovered)
    print(f"R1: hpc-a's controller restarted; jobs it recovered that no session owns: {len(recovered)}"
          + (f" ({fates})" if fates else "") + f"; hpc-a back up after "
          f"{back_s if back_s is None else round(back_s, 1)} s; no orphan in hpc-a's queue after "
          f"{clean_s if clean_s is None else round(clean_s, 1)} s", flush=True)
    print(f"R1: jobs orphaned {orphan_wait:g} s after the restart: hpc-a {orphans['hpc-a'] or 0}, "
          f"hpc-b {orphans['hpc-b'] or 0}; ready sessions answering through the proxy: {answering}/"
          f"{sum(o['ready'] for o in outcome.values())}", flush=True)
    n_stale = sum(len(v) for v in stale.values())
    print(f"R1: progress messages of abandoned hpc-a attempts logged after the fall-through: {n_stale}"
          + "".join(f"\n    {m}" for v in stale.values() for m in v)
          + f"\nR1: 'Task exception was never retrieved' in the hub log: {never_retrieved}", flush=True)

    for u in users:
        if hub.server(u):
            hub.stop_server(u)
    emptied = wait_for(lambda: not slurm_jobs(a) and not slurm_jobs(b), timeout=60)
    return {
        "spawns": k, "ready": sum(o["ready"] for o in outcome.values()),
        "lost": sum(not o["ready"] for o in outcome.values()),
        "by_site": {s: sum(1 for o in outcome.values() if o["ready"] and o["site"] == s) for s in ("hpc-a", "hpc-b")},
        "killed_after_s": round(killed_at, 2), "queue_a_at_kill": [f"{j}:{s}" for j, s in jobs_a],
        "ready_at_kill": ready_at_kill, "settled_after_s": round(settled_s, 1),
        "fell_through_from_hpc_a": len(fallbacks), "fell_through_users": fell,
        "site_a_back_up_after_s": round(back_s, 1) if back_s is not None else None,
        "recovered_unowned_jobs_on_a": recovered,
        "recovered_started_after_restart_s": {j: round(ctld["started"][j], 2) for j in recovered if j in ctld["started"]},
        "recovered_cancelled_after_restart_s": {j: round(ctld["killed"][j], 2) for j in recovered if j in ctld["killed"]},
        "no_orphan_on_a_after_s": round(clean_s, 1) if clean_s is not None else None,
        "orphan_wait_s": orphan_wait, "orphaned_jobs": orphans,
        "orphaned": len(orphans["hpc-a"]) + len(orphans["hpc-b"]),
        "answering_through_proxy": answering, "stale_progress_messages": stale,
        "tasks_never_retrieved": never_retrieved, "queues_empty_after_stop": bool(emptied),
        "outcomes": outcome, "posts": posts}


def run_r2(hub, a, b, m: int) -> dict:
    users = {f"r2-{i}": ("hpc-a" if i % 2 == 0 else "hpc-b") for i in range(m)}
    for u in users:
        hub.create_user(u)
    for u, site in users.items():
        r = hub.request_server(u, {"site": site})
        if r.status_code not in (201, 202):
            raise RuntimeError(f"R2: POST {u} on {site}: {r.status_code} {r.text}")
    before = {}
    for u in users:
        server = hub.wait_ready(u, timeout=180, interval=0.5)
        before[u] = (fedhub_site(server), fedhub_job_id(server))
    jobs_before = sorted(j for j, _ in slurm_jobs(a)) + sorted(j for j, _ in slurm_jobs(b))
    print(f"R2: {m} sessions ready: " + ", ".join(f"{u} {s} job {j}" for u, (s, j) in before.items()), flush=True)

    restart_s = hub.restart()
    t0 = time.perf_counter()
    after = {}
    for u in users:
        o = follow(hub, u, timeout=120)
        answers = None
        if o["ready"]:
            try:
                answers = requests.get(f"{hub.url}/user/{u}/api/status", timeout=30,
                                       headers={"Authorization": f"token {hub.token}"}).status_code
            except requests.RequestException as e:
                answers = str(e)[:100]
        after[u] = {**o, "answers": answers}
    settle_s = time.perf_counter() - t0
    reconnected = [u for u in users if after[u]["ready"] and (after[u]["site"], after[u]["job"]) == before[u]]
    answering = [u for u in users if after[u]["answers"] == 200]
    jobs_after = sorted(j for j, _ in slurm_jobs(a)) + sorted(j for j, _ in slurm_jobs(b))
    for u in users:
        o = after[u]
        same = "same job" if u in reconnected else f"NOT reconnected ({o['site']} job {o['job']} {o['error']})"
        print(f"  {u}: {same}; through the proxy: {o['answers']}", flush=True)
    print(f"R2: hub restarted in {restart_s:.1f} s (SIGINT -> API answering); sessions checked "
          f"{settle_s:.1f} s later; reconnected {len(reconnected)}/{m}; answering {len(answering)}/{m}; "
          f"jobs before {jobs_before}, after {jobs_after}", flush=True)

    for u in users:
        if hub.server(u):
            hub.stop_server(u)
    emptied = wait_for(lambda: not slurm_jobs(a) and not slurm_jobs(b), timeout=60)
    left = [f"a:{j}" for j, _ in slurm_jobs(a)] + [f"b:{j}" for j, _ in slurm_jobs(b)]
    print(f"R2: after stopping the sessions, jobs left on the clusters: {left or 0}", flush=True)
    return {"sessions": m, "reconnected": len(reconnected), "answering_through_proxy": len(answering),
            "restart_s": round(restart_s, 2), "checked_after_s": round(settle_s, 2),
            "jobs_before": jobs_before, "jobs_after": jobs_after, "same_jobs": jobs_before == jobs_after,
            "jobs_left_after_stop": left, "queues_empty_after_stop": bool(emptied),
            "before": {u: list(v) for u, v in before.items()}, "after": after}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="K=4 spawns in R1, M=2 sessions in R2")
    ap.add_argument("-k", type=int, help="R1: spawns started when the site dies (default 6)")
    ap.add_argument("-m", type=int, help="R2: sessions across the hub restart (default 4)")
    ap.add_argument("--orphan-wait", type=float, default=60,
                    help="R1: seconds after the controller restart before orphans are counted")
    ap.add_argument("--only", choices=("r1", "r2"))
    ap.add_argument("--poll-interval", type=float, default=1,
                    help="the sites' inventory poll_interval option (default 1 s, as in the tests; "
                         "fedhub's own default is 5 s)")
    ap.add_argument("--keep-dir", action="store_true", help="keep the hub's and clusters' folders (logs)")
    args = ap.parse_args(argv)
    k = args.k or (4 if args.quick else 6)
    m = args.m or (2 if args.quick else 4)

    code = code_fingerprint()
    tmp = Path(tempfile.mkdtemp(prefix="fedhub-bench-resilience-"))
    SlurmCluster = slurm_cluster_class()
    a = SlurmCluster(tmp / "a", "bench-a", "rnodea", "a100", 2, cpus=8, memory_mb=8000)
    b = SlurmCluster(tmp / "b", "bench-b", "rnodeb", "h100", 1, cpus=8, memory_mb=8000, partition="batch")
    hub = None
    r1 = r2 = None
    left = {}
    try:
        a.start()
        b.start()
        opts = {"poll_interval": args.poll_interval, "start_timeout": 90}
        catalogue = slurm_catalogue(slurm_site("hpc-a", a, "a100", hosts={a.node: "127.0.0.1"}, **opts),
                                    slurm_site("hpc-b", b, "h100", hosts={b.node: "127.0.0.1"}, **opts))
        hub = FedhubHub(tmp / "fedhub", catalogue, extra_args=["--keep-servers"])
        hub.start()
        if not wait_for(lambda: all(s.get("up") for s in hub.sites().values()) and len(hub.sites()) == 2, 60):
            raise RuntimeError(f"both Slurm sites not up: {hub.sites()}")
        print(f"two Slurm clusters and a fedhub hub (--keep-servers) up; poll_interval {args.poll_interval:g} s; "
              f"fedhub code {code['sha256']}", flush=True)
        if args.only in (None, "r1"):
            r1 = run_r1(hub, a, b, k, args.orphan_wait)
        if args.only in (None, "r2"):
            if not wait_for(lambda: all(s.get("up") for s in hub.sites().values()), 60):
                raise RuntimeError(f"a Slurm site is still down before R2: {hub.sites()}")
            r2 = run_r2(hub, a, b, m)
    finally:
        if hub is not None:
            hub.stop()
        for c in (a, b):
            left[c.name] = len(slurm_jobs(c)) if c.conf.exists() else 0
            stop_cluster(c)
        if not args.keep_dir:
            shutil.rmtree(tmp, ignore_errors=True)

    code = check_fingerprint(code)
    print()
    print(f"resilience, fedhub code {code['sha256']} (newest change {code['newest_change']})")
    if r1:
        print(f"R1: {r1['spawns']} spawns, hpc-a's slurmctld killed {r1['killed_after_s']} s in: "
              f"{r1['ready']} ready ({r1['by_site']['hpc-a']} on hpc-a, {r1['by_site']['hpc-b']} on hpc-b), "
              f"**{r1['lost']} lost** (goal 0: {'MET' if r1['lost'] == 0 else 'NOT MET'}); "
              f"{r1['fell_through_from_hpc_a']} fell through to hpc-b")
        print(f"R1: orphaned jobs {r1['orphan_wait_s']:g} s after the controller restart: **{r1['orphaned']}** "
              f"(goal 0: {'MET' if r1['orphaned'] == 0 else 'NOT MET'})")
    if r2:
        print(f"R2: sessions reconnected after a hub restart: **{r2['reconnected']}/{r2['sessions']}** "
              f"(goal all: {'MET' if r2['reconnected'] == r2['sessions'] else 'NOT MET'}); "
              f"answering through the proxy {r2['answering_through_proxy']}/{r2['sessions']}; "
              f"jobs left after stop: {len(r2['jobs_left_after_stop'])}")
    print(f"jobs left on the clusters after the hub stopped (before the final scancel): {left}")
    print(json.dumps({"benchmark": "resilience", "code": code, "poll_interval_s": args.poll_interval,
                      "r1": r1, "r2": r2,
                      "jobs_left_at_end": left}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
