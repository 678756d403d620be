"""Per-round wall time of a federated job through fedhub vs the same app under bare Flower.

Baseline ("bare"): the unmodified digits app on a SuperLink + N SuperNodes started by hand
(tests/flower_harness.py), submitted with `flwr run`.
fedhub: the same app, sites and rounds as a fedhub job (FederatedJobs, the API service's
job manager, in this process: SuperLink per job, SuperNodes through the local backend,
the app copied behind fedhub's shim, progress read every second, no MLflow).

Per-round time = (finished_at - running_at) / rounds, both from Flower's own run record
(Control API), so both sides are measured by the same clock and the same definition.
fedhub's set-up (job accepted -> run submitted) and tear-down are printed separately.
Runs alternate (bare, fedhub, bare, ...) so machine load hits both alike.

    .venv/bin/python benchmarks/fl_overhead.py [--rounds 3] [--repeats 3] [--nodes 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from flower_harness import FlowerDeployment, partitions  # noqa: E402

from fedhub.hub.federation import example_app  # noqa: E402
from fedhub.hub.federation.flower import ControlClient  # noqa: E402
from fedhub.hub.federation.manager import FederatedJobs  # noqa: E402


def seconds(times: dict) -> float:
    start = datetime.fromisoformat(times["running_at"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(times["finished_at"].replace("Z", "+00:00"))
    return (end - start).total_seconds()


def bare_run(root: Path, nodes: int, rounds: int) -> float:
    with FlowerDeployment(root, node_configs=partitions(nodes)) as flower:
        run_id = flower.submit(example_app("digits"), {"num-server-rounds": rounds, "min-nodes": nodes})
        run = flower.wait_all([run_id], timeout=900)[run_id]
        assert run.status == "finished:completed", run.logs[-2000:]
        status = asyncio.run(ControlClient(flower.address).status(run_id))
        return seconds({"running_at": status.running_at, "finished_at": status.finished_at}) / rounds


async def fedhub_run(root: Path, nodes: int, rounds: int) -> tuple[float, float, float]:
    sites = [{"name": f"site-{i}", "kind": "local", "cpus": 4, "memory": "4G"} for i in range(nodes)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "sites.yaml").write_text(json.dumps({"sites": sites}))
    home = root / "homes" / "bench"
    shutil.copytree(example_app("digits"), home / "digits")
    jobs = FederatedJobs(root / "state", catalogue_file=str(root / "sites.yaml"), homes_dir=str(root / "homes"))
    t0 = time.monotonic()
    job = await jobs.create("bench", "", {"app": "digits", "sites": [s["name"] for s in sites], "rounds": rounds,
                                    "run_config": {"min-nodes": nodes}})
    task = jobs.runners[job.id].task
    await task
    total = time.monotonic() - t0
    assert job.state == "succeeded", (job.error, job.log_tail)
    events = jobs.store.events(job.id)
    submitted = next(e["time"] for e in events if e["type"] == "state" and e["state"] == "running")
    last_round = max(e["time"] for e in events if e["type"] == "round")
    setup = submitted - events[0]["time"]
    teardown = events[-1]["time"] - last_round
    return seconds(job.flower_times) / rounds, setup, teardown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=2)
    args = parser.parse_args()
    bare, fed, setups, teardowns = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="fl-overhead-") as tmp:
        for i in range(args.repeats):
            b = bare_run(Path(tmp) / f"bare{i}", args.nodes, args.rounds)
            f, setup, teardown = asyncio.run(fedhub_run(Path(tmp) / f"fedhub{i}", args.nodes, args.rounds))
            bare.append(b)
            fed.append(f)
            setups.append(setup)
            teardowns.append(teardown)
            print(f"repeat {i + 1}: bare {b:6.2f} s/round   fedhub {f:6.2f} s/round   ratio {f / b:5.2f}"
                  f"   (fedhub set-up {setup:5.1f} s, tear-down {teardown:4.1f} s)", flush=True)
    mb, mf = statistics.median(bare), statistics.median(fed)
    print()
    print(f"{'':24}{'bare Flower':>14}{'through fedhub':>16}{'ratio':>8}")
    print(f"{'median s/round':24}{mb:14.2f}{mf:16.2f}{mf / mb:8.2f}   (goal <= 1.10)")
    print(f"{'min s/round':24}{min(bare):14.2f}{min(fed):16.2f}{min(fed) / min(bare):8.2f}")
    ratios = [f / b for f, b in zip(fed, bare)]
    print(f"{'median per-repeat ratio':24}{'':30}{statistics.median(ratios):8.2f}   (pairs run back to back)")
    print(f"{'fedhub set-up (median)':24}{'':14}{statistics.median(setups):15.1f}s")
    print(f"{'fedhub tear-down (med.)':24}{'':14}{statistics.median(teardowns):15.1f}s")
    print(f"rounds {args.rounds}, nodes {args.nodes}, repeats {args.repeats}")


if __name__ == "__main__":
    main()
