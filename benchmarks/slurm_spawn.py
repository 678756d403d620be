"""Spawn-to-ready on a Slurm site — FederatedSpawner vs batchspawner's SlurmSpawner, same cluster.

Starts one real Slurm cluster (tests/slurm_cluster.py: slurmctld + slurmd, 8 CPUs, 2 fake a100
GPUs through GRES; its node is named after this host, so batchspawner's plain `squeue %B` host
resolves) and two hubs side by side:

- fedhub: `fedhub up --no-mlflow` with a one-site catalogue (kind: slurm, the cluster's
  slurm.conf and partition, default sessions of 1 CPU and 512M);
- plain: JupyterHub with batchspawner's SlurmSpawner for the same cluster (benchmarks/_hubs.py
  PlainSlurmHub: same single-user command, args, default URL, PATH, 1 CPU, the same --mem,
  --time 8:00:00, batchspawner's default batch script, start/http timeouts 600/120 s).

One warm-up spawn per hub (not counted), then N spawns alternated fedhub, plain, plain, fedhub ...
Each spawn: POST /hub/api/users/NAME/server, poll GET /hub/api/users/NAME every 50 ms until
servers[""]["ready"] (seconds from POST to ready; the job id is read from the server state);
then DELETE, wait until the server is gone and the job has left the queue. Reports medians and
the median of the pairwise ratios fedhub/plain. Goal: <= 1.05x. At the end the hubs are
stopped, every job is cancelled (scancel) and the cluster's daemons are stopped.

    .venv/bin/python benchmarks/slurm_spawn.py [--quick] [-n N] [--keep-dir] [--plain-no-get-user-env]

batchspawner's default script has `#SBATCH --get-user-env=L` (Slurm runs a login shell to
load the user's environment at job start, about 1.3 s on this machine); fedhub's has none.
--plain-no-get-user-env drops that line from the plain hub's script, to compare like with like.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _hubs import (FedhubHub, PlainSlurmHub, check_fingerprint, code_fingerprint, fedhub_job_id,  # noqa: E402
                   median, running_hubs, slurm_catalogue, slurm_cluster_class, slurm_jobs, slurm_site,
                   stop_cluster)

GOAL_RATIO = 1.05
USER = "bench-user"


def wait_job_gone(cluster, job_id: str, timeout: float = 30) -> float:
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout
    while any(j == job_id for j, _ in slurm_jobs(cluster)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return time.perf_counter() - t0


def _stamp(line: str) -> float | None:
    m = re.match(r"\[\w (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)", line)
    if not m:
        return None
    return datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()


def phases(hub, job_ids: list[str]) -> list[dict]:
    """Per spawn, from the hub's log (batchspawner logs the same lines in both hubs): seconds from
    `Job submitted` to `Notebook server job N started at` (Slurm schedules the job and
    batchspawner-singleuser reports its port) and from there to JupyterHub's `User ... took`
    (the server boots and the hub sees it answer)."""
    lines = hub.log_path.read_text(errors="replace").splitlines()
    out = []
    for job in job_ids:
        submitted = started = ready = None
        for i, ln in enumerate(lines):
            if submitted is None and ln.endswith(f"Job submitted. output: {job}"):
                submitted = _stamp(ln)
            elif started is None and f"Notebook server job {job} started at" in ln:
                started = _stamp(ln)
                ready = next((_stamp(x) for x in lines[i:] if re.search(rf"User {USER} took [\d.]+ seconds", x)), None)
                break
        if None in (submitted, started, ready):
            out.append({"job": job})
            continue
        out.append({"job": job, "submit_to_port_s": round(started - submitted, 3),
                    "port_to_ready_s": round(ready - started, 3)})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="N=2")
    ap.add_argument("-n", type=int, help="spawns per hub (default 5, --quick 2)")
    ap.add_argument("--interval", type=float, default=0.05, help="poll interval, seconds")
    ap.add_argument("--keep-dir", action="store_true", help="keep the hubs' and cluster's folders (logs)")
    ap.add_argument("--plain-no-get-user-env", action="store_true",
                    help="drop `#SBATCH --get-user-env=L` from the plain hub's (batchspawner's default) "
                         "batch script; fedhub's script has no such line")
    args = ap.parse_args(argv)
    n = args.n or (2 if args.quick else 5)

    code = code_fingerprint()
    tmp = Path(tempfile.mkdtemp(prefix="fedhub-bench-slurm-"))
    SlurmCluster = slurm_cluster_class()
    node = socket.gethostname().split(".")[0]
    cluster = SlurmCluster(tmp / "slurm", "bench", node, "a100", 2, cpus=8, memory_mb=8000)
    fed = plain = None
    results: dict[str, list[float]] = {"fedhub": [], "plain": []}
    stops: dict[str, list[float]] = {"fedhub": [], "plain": []}
    jobs: dict[str, list[str]] = {"fedhub": [], "plain": []}
    warm: dict[str, float] = {}
    refused: list[str] = []  # fedhub warm-up POSTs refused before the first poll
    left_jobs = -1
    try:
        cluster.start()
        print(f"Slurm cluster up: node {node}, 8 CPUs, 2 a100 (fake), conf {cluster.conf}", flush=True)
        fed = FedhubHub(tmp / "fedhub", slurm_catalogue(slurm_site("hpc", cluster, "a100")))
        memory_mb = 512 * 10**6 // 2**20  # fedhub's --mem for the catalogue default of 512M
        plain = PlainSlurmHub(tmp / "plain", cluster, nprocs=1, memory=f"{memory_mb}M",
                              get_user_env=not args.plain_no_get_user_env)
        hubs = {"fedhub": fed, "plain": plain}

        def job_of(label: str) -> str:
            server = hubs[label].server(USER)
            return fedhub_job_id(server) if label == "fedhub" else ((server or {}).get("state") or {}).get("job_id", "")

        def one_spawn(label: str) -> tuple[float, str, float]:
            hub = hubs[label]
            took = hub.spawn_and_wait(USER, args.interval)
            job = job_of(label)
            stop = hub.stop_server(USER)
            wait_job_gone(cluster, job)
            return took, job, stop

        with running_hubs(fed, plain):
            for hub in hubs.values():
                hub.create_user(USER)
            # the fedhub site is down until its first sinfo poll: retry a refused first spawn
            deadline = time.monotonic() + 60
            while True:
                t0 = time.perf_counter()
                r = fed.request_server(USER)
                if r.status_code in (201, 202):
                    break
                refused.append(f"{r.status_code} {r.json().get('message', r.text)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"fedhub: the Slurm site never accepted a spawn: {refused[-1]}")
                time.sleep(0.5)
            fed.wait_ready(USER, interval=args.interval)
            warm["fedhub"] = time.perf_counter() - t0  # from the accepted POST
            job = job_of("fedhub")
            fed.stop_server(USER)
            wait_job_gone(cluster, job)
            warm["plain"], _, _ = one_spawn("plain")
            for i in range(n):
                order = ("fedhub", "plain") if i % 2 == 0 else ("plain", "fedhub")
                for label in order:
                    time.sleep(1.0)  # let the previous job's exit settle
                    took, job, stop = one_spawn(label)
                    results[label].append(took)
                    jobs[label].append(job)
                    stops[label].append(stop)
                print(f"  round {i + 1}/{n}: fedhub {results['fedhub'][-1]:.2f} s (job {jobs['fedhub'][-1]}), "
                      f"plain {results['plain'][-1]:.2f} s (job {jobs['plain'][-1]})", flush=True)
        breakdown = {label: phases(hubs[label], jobs[label]) for label in hubs}
    finally:
        left_jobs = len(slurm_jobs(cluster)) if cluster.conf.exists() else 0  # after the hubs stopped
        stop_cluster(cluster)
        if not args.keep_dir:
            shutil.rmtree(tmp, ignore_errors=True)

    code = check_fingerprint(code)
    ratios = [f / p for f, p in zip(results["fedhub"], results["plain"])]
    med_ratio = median(ratios)
    ok = med_ratio <= GOAL_RATIO
    print()
    print(f"Slurm spawn-to-ready, N={n} alternated (+1 warm-up each, not counted); POST -> ready, seconds; "
          f"fedhub code {code['sha256']} (newest change {code['newest_change']})")
    script = "without" if args.plain_no_get_user_env else "with"
    print(f"plain: batchspawner's default batch script, {script} `#SBATCH --get-user-env=L`; "
          f"fedhub warm-up POSTs refused before the first inventory poll: {len(refused)}"
          + (f" ({refused[0]})" if refused else ""))
    print(f"{'spawner':<40}{'median':>8}{'min':>8}{'max':>8}{'warm-up':>9}{'stop med':>10}")
    for label, name in (("fedhub", "FederatedSpawner (fedhub up, slurm site)"),
                        ("plain", "batchspawner SlurmSpawner (plain)")):
        v = results[label]
        print(f"{name:<40}{median(v):>8.2f}{min(v):>8.2f}{max(v):>8.2f}{warm[label]:>9.2f}"
              f"{median(stops[label]):>10.2f}")
    for label in ("fedhub", "plain"):
        a = [p["submit_to_port_s"] for p in breakdown[label] if "submit_to_port_s" in p]
        b = [p["port_to_ready_s"] for p in breakdown[label] if "port_to_ready_s" in p]
        if a and b:
            print(f"  {label}: sbatch -> job running and port reported, median {median(a):.2f} s "
                  f"({', '.join(f'{x:.2f}' for x in a)}); port -> ready, median {median(b):.2f} s "
                  f"({', '.join(f'{x:.2f}' for x in b)})")
    print(f"pairwise ratios fedhub/plain: {', '.join(f'{r:.3f}' for r in ratios)}")
    print(f"median of pairwise ratios: {med_ratio:.3f}  (ratio of medians "
          f"{median(results['fedhub']) / median(results['plain']):.3f})")
    print(f"goal <= {GOAL_RATIO}x: {'MET' if ok else 'NOT MET'}; jobs left on the cluster at the end "
          f"(before the final scancel): {left_jobs}")
    print(json.dumps({
        "benchmark": "slurm_spawn", "code": code, "n": n, "poll_interval_s": args.interval,
        "fedhub_s": [round(x, 3) for x in results["fedhub"]],
        "plain_s": [round(x, 3) for x in results["plain"]],
        "fedhub_median_s": round(median(results["fedhub"]), 3),
        "plain_median_s": round(median(results["plain"]), 3),
        "jobs": jobs, "warmup_s": {k: round(v, 3) for k, v in warm.items()},
        "stop_median_s": {k: round(median(v), 3) for k, v in stops.items()},
        "ratios": [round(r, 4) for r in ratios], "median_ratio": round(med_ratio, 4),
        "goal_ratio": GOAL_RATIO, "goal_met": ok, "jobs_left_at_end": left_jobs,
        "plain_get_user_env": not args.plain_no_get_user_env, "fedhub_warmup_refused": refused,
        "phases": breakdown}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
