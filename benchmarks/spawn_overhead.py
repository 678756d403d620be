"""P1 spawn overhead — FederatedSpawner vs JupyterHub's SimpleLocalProcessSpawner, same machine.

Starts two real hubs side by side: `fedhub up --no-mlflow` (default catalogue, local sites)
and plain JupyterHub with SimpleLocalProcessSpawner, the same single-user command, args,
default URL and an admin service token. One warm-up spawn per hub (not counted), then N
spawns alternated fedhub, plain, fedhub, plain ... Each spawn: POST /hub/api/users/NAME/server,
poll GET /hub/api/users/NAME every 50 ms until servers[""]["ready"]; then DELETE and wait until
the server is gone before the next spawn. Reports medians and the median of the pairwise
ratios fedhub/plain. Goal: <= 1.05x.

    .venv/bin/python benchmarks/spawn_overhead.py [--quick] [-n N] [--keep-dir]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _hubs import FedhubHub, PlainHub, check_fingerprint, code_fingerprint, median, running_hubs  # noqa: E402

GOAL_RATIO = 1.05


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="N=2")
    ap.add_argument("-n", type=int, help="spawns per hub (default 5, --quick 2)")
    ap.add_argument("--interval", type=float, default=0.05, help="poll interval, seconds")
    ap.add_argument("--keep-dir", action="store_true", help="keep the hubs' folders (logs)")
    args = ap.parse_args(argv)
    n = args.n or (2 if args.quick else 5)

    code = code_fingerprint()
    tmp = Path(tempfile.mkdtemp(prefix="fedhub-bench-spawn-"))
    fed = FedhubHub(tmp / "fedhub")
    plain = PlainHub(tmp / "plain", start_timeout=600, http_timeout=120)
    hubs = {"fedhub": fed, "plain": plain}
    results: dict[str, list[float]] = {"fedhub": [], "plain": []}
    stops: dict[str, list[float]] = {"fedhub": [], "plain": []}
    warm: dict[str, float] = {}
    try:
        with running_hubs(fed, plain):
            for hub in hubs.values():
                hub.create_user("bench-user")
            for label, hub in hubs.items():  # warm-up: first start on a cold hub/home dir
                warm[label] = hub.spawn_and_wait("bench-user", args.interval)
                hub.stop_server("bench-user")
            for i in range(n):
                order = ("fedhub", "plain") if i % 2 == 0 else ("plain", "fedhub")
                for label in order:
                    hub = hubs[label]
                    time.sleep(1.0)  # let the previous server's exit settle
                    results[label].append(hub.spawn_and_wait("bench-user", args.interval))
                    stops[label].append(hub.stop_server("bench-user"))
                print(f"  round {i + 1}/{n}: fedhub {results['fedhub'][-1]:.2f} s, "
                      f"plain {results['plain'][-1]:.2f} s", flush=True)
    finally:
        if not args.keep_dir:
            shutil.rmtree(tmp, ignore_errors=True)

    code = check_fingerprint(code)
    ratios = [f / p for f, p in zip(results["fedhub"], results["plain"])]
    med_ratio = median(ratios)
    ok = med_ratio <= GOAL_RATIO
    print()
    print(f"spawn overhead, N={n} alternated (+1 warm-up each, not counted); POST -> ready, seconds; "
          f"fedhub code {code['sha256']} (newest change {code['newest_change']})")
    print(f"{'spawner':<34}{'median':>8}{'min':>8}{'max':>8}{'warm-up':>9}{'stop med':>10}")
    for label, name in (("fedhub", "FederatedSpawner (fedhub up)"),
                        ("plain", "SimpleLocalProcessSpawner")):
        v = results[label]
        print(f"{name:<34}{median(v):>8.2f}{min(v):>8.2f}{max(v):>8.2f}{warm[label]:>9.2f}"
              f"{median(stops[label]):>10.2f}")
    print(f"pairwise ratios fedhub/plain: {', '.join(f'{r:.3f}' for r in ratios)}")
    print(f"median of pairwise ratios: {med_ratio:.3f}  (ratio of medians "
          f"{median(results['fedhub']) / median(results['plain']):.3f})")
    print(f"goal <= {GOAL_RATIO}x: {'MET' if ok else 'NOT MET'}")
    print(json.dumps({
        "benchmark": "spawn_overhead", "code": code, "n": n, "poll_interval_s": args.interval,
        "fedhub_s": [round(x, 3) for x in results["fedhub"]],
        "plain_s": [round(x, 3) for x in results["plain"]],
        "fedhub_median_s": round(median(results["fedhub"]), 3),
        "plain_median_s": round(median(results["plain"]), 3),
        "warmup_s": {k: round(v, 3) for k, v in warm.items()},
        "stop_median_s": {k: round(median(v), 3) for k, v in stops.items()},
        "ratios": [round(r, 4) for r in ratios], "median_ratio": round(med_ratio, 4),
        "goal_ratio": GOAL_RATIO, "goal_met": ok}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
