"""Slurm site through slurmrestd (REST mode) vs through the Slurm commands (sbatch mode), same cluster.

Starts one real Slurm cluster (tests/slurm_cluster.py: slurmctld + slurmd, 8 CPUs, 2 fake a100
GPUs, slurmrestd with JWT auth on a loopback port) and builds both fedhub backends for it from a
catalogue: `slurm_conf` (baseline, sbatch mode) and `rest_url` + `rest_user` + `jwt_file`.

Measured, N times each, alternated baseline / REST:

- poll: one inventory poll of the backend (`poll_once`: `sinfo -N -O ...` vs `GET /nodes`, parsed
  into the inventory), milliseconds;
- query: one job state query of a running job as the spawner does it (`squeue -h -j ID -o '%T %r %B'`
  vs `GET /job/ID`), milliseconds;
- submit-to-running: submit a one-CPU sleep job as the spawner does (`sbatch --parsable` with the
  script on stdin vs `POST /job/submit`), query every 50 ms until RUNNING, seconds; then cancel
  (`scancel` vs `DELETE /job/ID`) and wait until the job has left the queue.

Prints medians side by side and the median of the pairwise ratios REST/baseline.

    .venv/bin/python benchmarks/slurm_rest.py [-n N]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _hubs import median, slurm_cluster_class  # noqa: E402

from fedhub.hub.catalogue import catalogue_from_dict  # noqa: E402
from fedhub.spawner.backends.slurm_rest import SlurmRestClient, job_status_line  # noqa: E402
from fedhub.spawner.federation import Federation  # noqa: E402

SCRIPT = "#!/bin/bash\nsleep 300\n"


def sbatch_job(cluster) -> str:
    out = subprocess.run(["sbatch", "--parsable", "--cpus-per-task=1", "--mem=100M", "--output=/dev/null"],
                         input=SCRIPT, env=cluster.env, capture_output=True, text=True, check=True)
    return out.stdout.strip().split(";")[0]


def squeue_line(cluster, job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T %r %B"], env=cluster.env,
                          capture_output=True, text=True).stdout.strip()


def rest_body(tmp: str) -> dict:
    return {"script": SCRIPT, "job": {"name": "bench", "environment": {"PATH": "/usr/bin:/bin"},
                                      "current_working_directory": tmp, "standard_output": "/dev/null",
                                      "cpus_per_task": 1, "memory_per_node": 100}}


def wait_gone(cluster, job_id: str) -> None:
    deadline = time.monotonic() + 30
    while any(line.split()[0] == job_id for line in cluster.jobs()) and time.monotonic() < deadline:
        time.sleep(0.1)


async def timed(coro_fn) -> float:
    t0 = time.perf_counter()
    await coro_fn()
    return time.perf_counter() - t0


async def run(n: int) -> None:
    tmp = tempfile.mkdtemp(prefix="fedhub-bench-rest-")
    cluster = slurm_cluster_class()(Path(tmp) / "c", "bench-rest", "nodeb", "a100", 2, rest=True).start()
    try:
        jwt = Path(tmp) / "bench.jwt"
        jwt.write_text(cluster.mint_token("root", lifespan=3600))
        sites = [{"name": "by-conf", "kind": "slurm", "options": {"slurm_conf": str(cluster.conf)}},
                 {"name": "by-rest", "kind": "slurm",
                  "options": {"rest_url": cluster.rest_url, "rest_user": "root", "jwt_file": str(jwt)}}]
        fed = Federation(catalogue_from_dict({"sites": sites}, "bench.yaml"))
        base, rest = fed.backends["by-conf"], fed.backends["by-rest"]
        client = SlurmRestClient(cluster.rest_url, "root", jwt_file=str(jwt))
        figures = {k: ([], []) for k in ("poll ms", "query ms", "submit-to-running s")}

        for i in range(n + 1):  # the first round warms up and is not counted
            for which, backend in ((0, base), (1, rest)):
                t_poll = await timed(backend.poll_once)
                if which == 0:
                    t0 = time.perf_counter()
                    job = sbatch_job(cluster)
                    while not squeue_line(cluster, job).startswith("RUNNING"):
                        await asyncio.sleep(0.05)
                    t_run = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    squeue_line(cluster, job)
                    t_query = time.perf_counter() - t0
                    subprocess.run(["scancel", job], env=cluster.env, check=True)
                else:
                    t0 = time.perf_counter()
                    job = await client.submit(rest_body(tmp))
                    while not job_status_line(await client.job(job) or {}).startswith("RUNNING"):
                        await asyncio.sleep(0.05)
                    t_run = time.perf_counter() - t0
                    t_query = await timed(lambda: client.job(job))
                    await client.cancel(job)
                wait_gone(cluster, job)
                if i:
                    figures["poll ms"][which].append(t_poll * 1000)
                    figures["query ms"][which].append(t_query * 1000)
                    figures["submit-to-running s"][which].append(t_run)

        print(f"Slurm site, REST mode vs sbatch mode (baseline); n={n}, medians")
        print(f"{'':24}{'sbatch mode':>14}{'REST mode':>14}{'REST/sbatch':>14}")
        for name, (b, r) in figures.items():
            ratio = median(x / y for x, y in zip(r, b))
            print(f"{name:24}{median(b):14.3f}{median(r):14.3f}{ratio:13.2f}x")
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10, help="measured rounds (after one warm-up round)")
    asyncio.run(run(parser.parse_args().n))


if __name__ == "__main__":
    main()
