"""P6 (automatic capture) — what capturing a plain `mlflow.start_run()` costs a short run.

A training script (scikit-learn SGD on the bundled digits, fixed epochs calibrated to about
--seconds) inside a git repository with an uncommitted change, logging to a local MLflow
store (SQLite). Run as a fresh `python train.py` process each time, alternating the
baseline (FEDHUB_AUTO_CAPTURE=0) and automatic capture (FEDHUB_AUTO_CAPTURE=1) so drifts in
machine load hit both alike. The script itself never mentions fedhub.

Figures, medians over --rounds, side by side with the baseline:

- start_run: time `mlflow.start_run()` takes (automatic capture's share of it is what the
  run's own thread pays);
- run:       start_run -> end of the `with` block (goal: capture adds <= 2%);
- process:   the whole process, including waiting at exit for the background upload;
- cpu:       CPU seconds of the process and its children (the capture's git calls included).

Then, in this process (less noise on a busy machine): `mlflow.start_run()` timed --calls
times with and without the plugin, alternating, each capture finished before the next call
(so the figure is what the run's thread pays, not the background work competing for CPU).

    .venv/bin/python benchmarks/p6_auto_capture.py [--rounds 5] [--seconds 5]

Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL = 0.02
TRAIN = """\
import json, time, warnings
import mlflow
from sklearn.datasets import load_digits
from sklearn.linear_model import SGDClassifier
warnings.simplefilter("ignore")
X, y = load_digits(return_X_y=True)
mlflow.set_experiment("p6-auto")
t0 = time.perf_counter()
with mlflow.start_run() as run:
    t1 = time.perf_counter()
    clf = SGDClassifier(max_iter=1, tol=None, random_state=0)
    for epoch in range(EPOCHS):
        clf.partial_fit(X, y, classes=list(range(10)))
    mlflow.log_metric("acc", clf.score(X, y))
    t2 = time.perf_counter()
print(json.dumps({"start_run": t1 - t0, "run": t2 - t0, "run_id": run.info.run_id}))
"""


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_once(workdir: Path, env: dict) -> dict:
    cpu0, t0 = children_cpu(), time.perf_counter()
    out = subprocess.run([sys.executable, "train.py"], cwd=workdir, env=env, capture_output=True,
                         text=True, timeout=600)
    wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {**result, "process": wall, "cpu": cpu}


def calibrate(workdir: Path, env: dict, seconds: float) -> int:
    probe = TRAIN.replace("EPOCHS", "20")
    (workdir / "train.py").write_text(probe)
    r = run_once(workdir, {**env, "FEDHUB_AUTO_CAPTURE": "0"})
    per_epoch = max((r["run"] - r["start_run"]) / 20, 1e-4)
    return max(1, int(seconds / per_epoch))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0, help="training time per run (about)")
    ap.add_argument("--calls", type=int, default=30, help="in-process start_run calls per variant")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="p6-auto-") as tmp:
        workdir = Path(tmp) / "project"
        workdir.mkdir()
        git = ["git", "-c", "user.name=b", "-c", "user.email=b@example.org"]
        subprocess.run([*git, "init", "-q"], cwd=workdir, check=True)
        (workdir / "README.md").write_text("benchmark\n")
        subprocess.run([*git, "add", "README.md"], cwd=workdir, check=True)
        subprocess.run([*git, "commit", "-q", "-m", "start"], cwd=workdir, check=True)
        (workdir / "README.md").write_text("benchmark, changed\n")  # an uncommitted change: a diff to capture
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db", "OMP_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1"}
        env.pop("FEDHUB_AUTO_CAPTURE", None)
        epochs = calibrate(workdir, env, args.seconds)  # also creates the store's tables
        (workdir / "train.py").write_text(TRAIN.replace("EPOCHS", str(epochs)))
        results = {"off": [], "auto": []}
        for i in range(args.rounds):
            for mode in ("off", "auto"):
                r = run_once(workdir, {**env, "FEDHUB_AUTO_CAPTURE": "1" if mode == "auto" else "0"})
                results[mode].append(r)
                print(f"round {i + 1} {mode:>4}: start_run {r['start_run'] * 1000:7.1f} ms  run {r['run']:6.2f} s"
                      f"  process {r['process']:6.2f} s  cpu {r['cpu']:6.2f} s", file=sys.stderr)
        import mlflow
        client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
        captured = [client.get_run(r["run_id"]).data.tags.get("fedhub.capture") for r in results["auto"]]
        plain = [client.get_run(r["run_id"]).data.tags.get("fedhub.capture") for r in results["off"]]
        calls = in_process(workdir, env["MLFLOW_TRACKING_URI"], args.calls)

    med = {m: {k: statistics.median(r[k] for r in rs) for k in ("start_run", "run", "process", "cpu")}
           for m, rs in results.items()}
    print(f"\n{'median':<12}{'baseline (off)':>16}{'auto capture':>16}{'ratio':>9}{'added':>12}")
    for k, unit, scale in (("start_run", "ms", 1000), ("run", "s", 1), ("process", "s", 1), ("cpu", "s", 1)):
        a, b = med["off"][k], med["auto"][k]
        print(f"{k:<12}{a * scale:>13.2f} {unit:<2}{b * scale:>13.2f} {unit:<2}{b / a:>9.3f}"
              f"{(b - a) * scale:>9.2f} {unit}")
    added_run = (med["auto"]["run"] - med["off"]["run"]) / med["off"]["run"]
    start_share = (med["auto"]["start_run"] - med["off"]["start_run"]) / med["off"]["run"]
    spread = (max(r["run"] for r in results["off"]) - min(r["run"] for r in results["off"])) / med["off"]["run"]
    print(f"\nstart_run overhead / run time: {start_share:.3%} (goal <= {GOAL:.0%})")
    print(f"run time added: {added_run:+.2%} (baseline spread {spread:.1%})")
    print(f"captured: {captured.count('1')}/{len(captured)} auto runs, {plain.count('1')}/{len(plain)} baseline runs")
    off, auto = statistics.median(calls["off"]), statistics.median(calls["auto"])
    print(f"in-process start_run (median of {args.calls}): off {off * 1000:.2f} ms, auto {auto * 1000:.2f} ms, "
          f"ratio {auto / off:.3f}, added {(auto - off) * 1000:.2f} ms = {(auto - off) / med['off']['run']:.3%} "
          f"of the baseline run")
    print(json.dumps({"benchmark": "p6_auto_capture", "rounds": args.rounds, "epochs": epochs, "medians": med,
                      "in_process_start_run": {"off": off, "auto": auto},
                      "start_run_share": start_share, "run_added": added_run, "baseline_spread": spread,
                      "captured": captured.count("1"), "baseline_captured": plain.count("1")}))


def in_process(workdir: Path, uri: str, n: int) -> dict:
    import mlflow

    from fedhub.server_ext import capture

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("p6-auto-inprocess")
    cwd = os.getcwd()
    os.chdir(workdir)
    times = {"off": [], "auto": []}
    try:
        for _ in range(n):
            for mode in ("off", "auto"):
                os.environ["FEDHUB_AUTO_CAPTURE"] = "1" if mode == "auto" else "0"
                t0 = time.perf_counter()
                mlflow.start_run()
                times[mode].append(time.perf_counter() - t0)
                mlflow.end_run()
                capture.wait_all(120)
    finally:
        os.environ.pop("FEDHUB_AUTO_CAPTURE", None)
        os.chdir(cwd)
    return times


if __name__ == "__main__":
    main()
