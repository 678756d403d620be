"""R4: every fedhub API route fuzzed from its OpenAPI spec (schemathesis 4.32.5) against a real
hub, as a user holding every fedhub scope. Prints per operation the requests, status classes
and median latency, and the count of 5xx beside the goal (0).

    .venv/bin/python benchmarks/r4_fuzz.py [--examples N] [--random]

Not run in CI; tests/test_fuzz_api.py runs the same driver with a few examples per route.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import Hub, free_port  # noqa: E402
from test_fuzz_api import fuzz_api  # noqa: E402

POLICY = """
groups:
  fuzzers: {sites: '*', gpu_types: '*', datasets: [digits-a]}
datasets:
  - name: digits-a
    locations: [{site: local-a, path: /srv/digits}]
    policy: {allowed_groups: [fuzzers], purposes: [interactive, federated-training]}
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=100, help="examples per operation (default 100)")
    parser.add_argument("--random", action="store_true", help="random (not derandomized) generation")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        hub = Hub(Path(tmp) / "hub", free_port(), ["--no-mlflow", "--no-inference"], None)
        (hub.data_dir / "policy.yaml").write_text(POLICY)
        with open(hub.data_dir / "jupyterhub_config.py", "a") as f:
            f.write('\nc.JupyterHub.load_groups = {"fuzzers": {"users": ["fuzzer"]}}\n')
        hub.start(timeout=120)
        try:
            token = hub.create_user("fuzzer")
            (hub.data_dir / "homes" / "fuzzer").mkdir(parents=True, exist_ok=True)
            report = fuzz_api(f"{hub.url}/services/fedhub", token, args.examples, derandomize=not args.random)
        finally:
            hub.stop()
    print(f"\nR4: fedhub API fuzzed from hub/service/openapi.yaml, {args.examples} examples per operation\n")
    print(f"{'operation':58} {'requests':>8} {'2xx':>5} {'4xx':>5} {'5xx':>5} {'median ms':>10}")
    for label, st in sorted(report["per_operation"].items()):
        codes = st["statuses"]
        klass = {k: sum(n for c, n in codes.items() if c // 100 == k) for k in (2, 4, 5)}
        print(f"{label:58} {sum(codes.values()):8d} {klass[2]:5d} {klass[4]:5d} {klass[5]:5d} "
              f"{statistics.median(st['latencies']) * 1000:10.1f}")
    fives = len(report["server_errors"])
    print(f"\n{'':58} {'measured':>10} {'goal':>8}")
    print(f"{'requests':58} {report['requests']:10d}")
    print(f"{'responses with status 5xx':58} {fives:10d} {0:8d}")
    print(f"{'statuses':58} {report['by_status']}")
    print(f"{'wall time (s)':58} {report['seconds']:10.1f}")
    for op, status, body in report["server_errors"][:20]:
        print(f"  5xx: {op} -> {status} {body}")
    return 1 if fives else 0


if __name__ == "__main__":
    raise SystemExit(main())
