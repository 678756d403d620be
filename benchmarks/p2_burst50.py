"""P2 at class size — 50 users log in and spawn at once, fedhub vs plain JupyterHub.

A thin front for benchmarks/burst.py (which measures one burst per hub in the same run:
all ready, failures, total time, per-user median/max, hub CPU-seconds and peak RSS) with
the P2 settings: 50 users, and the embedded default catalogue's two local sites sized so
that 50 default sessions fit (the shipped catalogue has room for 16 default sessions; a
51st seat is refused with a clear message, which is not what this benchmark measures).
Goal: every user served, total time fedhub / plain <= 1.1.

    .venv/bin/python benchmarks/p2_burst50.py [--rounds R] [--users N] [extra burst.py flags]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import burst  # noqa: E402

RATIO_GOAL = 1.1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--users" not in argv:
        argv += ["--users", "50"]
    if "--sized-catalogue" not in argv:
        argv.append("--sized-catalogue")
    print(f"P2 burst: burst.py {' '.join(argv)} (goal: fedhub/plain total <= {RATIO_GOAL})", flush=True)
    return burst.main(argv)


if __name__ == "__main__":
    sys.exit(main())
