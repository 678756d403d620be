"""P3 — communication compression for federated rounds (BENCHMARKS.md P3).

The example app (hub/federation/examples/digits: numpy MLP on scikit-learn's digits, two
sites) under a real Flower deployment on loopback (SuperLink + 2 SuperNodes + flwr run),
the same rounds and seeds for every variant:

- fp32:      the unmodified app (FedAvg, float32 weights both ways): the baseline
- fp32+shim: (--shim-baseline) the app behind fedhub's shim, no compression
- int8:      8-bit affine quantisation of the weights, both directions
- topk+EF:   top-k of the model *updates* (deltas) both directions, kept values 8-bit,
             error feedback (client residual in Context.state; server tracks what each
             node holds)

Measured per variant:
- wire bytes: Flower's own count for the run (`flwr ls --format json` network-traffic:
  every Fleet API message and object of the run; the FAB download is not counted);
- payload bytes: the ArrayRecord bytes the shim's events report, compressed vs raw;
- final accuracy: the ServerApp's centralized evaluation on the 20 % holdout, mean over
  --seeds runs (seed changes the initial model and the local shuffles; training noise
  is about +-1 pp per seed, so one seed cannot resolve 0.5 pp);
- seconds per round (running -> finished / rounds; with --parallel the runs share the
  machine, so only the default sequential mode gives comparable wall times).

Flower's per-message framing (~2.5 KB per message here) does not shrink with the
payload, so the wire ratio depends on the model size: --hidden-units 256 (19,210
parameters, 77 KB) is the default; 64 (4,874 parameters, 19.5 KB) shows the small-model end.

Goal: >= 4x fewer bytes at <= 0.5 pp accuracy loss.

    .venv/bin/python benchmarks/p3_compression.py [--rounds 3] [--hidden-units 256]
        [--fraction 0.2] [--seeds 1] [--parallel] [--shim-baseline] [--keep DIR]

Prints a table (ratios vs fp32) and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
from fedhub.hub.federation.apps import prepare_app  # noqa: E402


def variants(fraction: float, shim_baseline: bool) -> dict[str, dict | None]:
    out = {"fp32": None, "fp32+shim": {"compression": "none"}, "int8": {"compression": "int8"},
           "topk+EF": {"compression": "topk", "downlink": "topk", "topk_fraction": fraction,
                       "topk_value_bits": 8}}
    if not shim_baseline:
        del out["fp32+shim"]
    return out


def final_accuracy(logs: str) -> float | None:
    found = re.findall(r"Global evaluation\s*\n.*?MetricRecord: \{[^}]*'accuracy': ([0-9.]+)", logs)
    return float(found[-1]) if found else None


def seconds_per_round(details: dict, rounds: int) -> float:
    fmt = "%Y-%m-%d %H:%M:%SZ"
    start = datetime.strptime(details["running-at"], fmt)
    end = datetime.strptime(details["finished-at"], fmt)
    return (end - start).total_seconds() / rounds


def payload(events: list[dict]) -> tuple[int, int]:
    phases = [e for e in events if e.get("phase") in ("train", "evaluate")]
    sent = sum(e["bytes_sent"] + e["bytes_received"] for e in phases)
    raw = sum(e["raw_bytes_sent"] + e["raw_bytes_received"] for e in phases)
    return sent, raw


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hidden-units", type=int, default=256, help="MLP width (256: 19,210 parameters)")
    ap.add_argument("--fraction", type=float, default=0.2, help="top-k share of entries kept")
    ap.add_argument("--seeds", type=int, default=1, help="runs per variant (seeds 0..N-1)")
    ap.add_argument("--parallel", action="store_true", help="run all runs side by side")
    ap.add_argument("--shim-baseline", action="store_true", help="also run the shim without compression")
    ap.add_argument("--keep", help="work directory to keep (default: a temporary one)")
    args = ap.parse_args()

    work = Path(args.keep or tempfile.mkdtemp(prefix="p3-"))
    work.mkdir(parents=True, exist_ok=True)
    apps, events_paths = {}, {}
    for name, spec in variants(args.fraction, args.shim_baseline).items():
        if spec is None:
            apps[name] = example_app("digits")
            continue
        slug = re.sub(r"\W+", "-", name)
        events_paths[name] = work / f"events-{slug}.jsonl"
        events_paths[name].unlink(missing_ok=True)
        target = work / f"app-{slug}"
        shutil.rmtree(target, ignore_errors=True)
        apps[name] = prepare_app(example_app("digits"), target,
                                 {**spec, "events_path": str(events_paths[name])})
    jobs = {(name, seed): (app, {"num-server-rounds": args.rounds, "hidden-units": args.hidden_units,
                                 "seed": seed})
            for seed in range(args.seeds) for name, app in apps.items()}

    with FlowerDeployment(work / "flower", node_configs=partitions(2)) as flower:
        if args.parallel:
            ids = flower.submit_many(jobs)
            done = flower.wait_all(list(ids.values()), timeout=7200)
            finished = {job: done[ids[job]] for job in jobs}
        else:
            finished = {}
            for job, (app, config) in jobs.items():
                finished[job] = flower.run(app, config, timeout=3600)
                print(f"  {job[0]} seed {job[1]}: {finished[job].status} in "
                      f"{finished[job].wall_seconds:.0f} s", flush=True)

    results = {}
    for name in apps:
        runs = [finished[(name, seed)] for seed in range(args.seeds)]
        run_ids = {str(run.run_id) for run in runs}
        events = []
        if name in events_paths and events_paths[name].exists():
            events = [e for e in map(json.loads, events_paths[name].read_text().splitlines())
                      if e.get("run_id") in run_ids]
        sent, raw = payload(events) if events else (None, None)
        accuracies = [final_accuracy(run.logs) for run in runs]
        results[name] = {
            "status": sorted({run.status for run in runs}),
            "wire_bytes": statistics.mean(run.details["network-traffic"]["total-bytes"] for run in runs),
            "payload_bytes": sent / len(runs) if sent is not None else None,
            "raw_payload_bytes": raw / len(runs) if raw is not None else None,
            "accuracy": statistics.mean(accuracies) if None not in accuracies else None,
            "accuracies": accuracies,
            "s_per_round": statistics.median(seconds_per_round(run.details, args.rounds) for run in runs),
        }

    base = results["fp32"]
    raw_payload = results["int8"]["raw_payload_bytes"]  # the same weights, uncompressed
    print()
    print(f"P3: digits MLP ({args.hidden_units} hidden units), 2 sites, {args.rounds} rounds, "
          f"{args.seeds} seed(s), {'parallel' if args.parallel else 'sequential'} runs; "
          f"top-k fraction {args.fraction}, 8-bit values")
    print(f"{'variant':<11}{'wire B':>11}{'x fewer':>9}{'payload B':>11}{'x fewer':>9}"
          f"{'accuracy':>10}{'d pp':>7}{'s/round':>9}  per-seed accuracy")
    for name, r in results.items():
        pay = r["payload_bytes"] if r["payload_bytes"] is not None else raw_payload
        acc = r["accuracy"]
        d_pp = (acc - base["accuracy"]) * 100 if acc is not None and base["accuracy"] is not None else None
        print(f"{name:<11}{r['wire_bytes']:>11,.0f}{base['wire_bytes'] / r['wire_bytes']:>8.2f}x"
              f"{pay or 0:>11,.0f}{(raw_payload / pay) if pay else float('nan'):>8.2f}x"
              f"{acc if acc is not None else float('nan'):>10.4f}"
              f"{d_pp if d_pp is not None else float('nan'):>+7.2f}{r['s_per_round']:>9.1f}  "
              f"{[round(a, 4) for a in r['accuracies'] if a is not None]} {','.join(r['status'])}")
    best = results["topk+EF"]
    ratio = base["wire_bytes"] / best["wire_bytes"]
    loss_pp = (base["accuracy"] - best["accuracy"]) * 100 if best["accuracy"] is not None else float("nan")
    met = ratio >= 4 and loss_pp <= 0.5
    print(f"\ngoal (>= 4x fewer wire bytes at <= 0.5 pp accuracy loss), topk+EF: "
          f"{ratio:.2f}x, {loss_pp:+.2f} pp loss -> {'met' if met else 'NOT met'}")
    print(json.dumps({"benchmark": "p3_compression", "rounds": args.rounds, "hidden_units": args.hidden_units,
                      "fraction": args.fraction, "seeds": args.seeds, "parallel": args.parallel,
                      "results": results, "goal_met": met,
                      "load_avg": os.getloadavg(), "cpus": os.cpu_count(), "time": time.time()}))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
