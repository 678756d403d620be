"""P4 — inference serving: the embedded Triton-protocol server vs MLServer 1.7 vs in-process
onnxruntime, for the same small ONNX model and the same client, side by side in one run.

The model: scikit-learn's scaler + logistic regression on the bundled digits (64 floats in,
label + 10 probabilities out), converted with skl2onnx. Each request carries --rows rows (default 1).

- embedded: `python -m fedhub.hub.deploy.server` with dynamic batching on (config.pbtxt
  `dynamic_batching { max_queue_delay_microseconds: D }`, max_batch_size max(64, 8 x rows)).
- MLServer 1.7.1 in its own virtual environment (benchmarks/out/mlserver-venv, created on the
  first run: it cannot share the hub's, see PROBE-stack.md §5a), serving the same model.onnx
  through a small custom runtime (onnxruntime; MLServer ships no ONNX runtime), with adaptive
  batching on (the same max_batch_size, max_batch_time D or 100 µs), parallel_workers 0.
- in-process: onnxruntime.InferenceSession.run on the same rows (the limit).

Clients: the unmodified tritonclient, HTTP (binary tensors against the embedded server, its
default; JSON against MLServer, which refuses binary) and gRPC; one client per thread,
concurrency 1 and 8, a bounded number of requests per thread after a warm-up.

    .venv/bin/python benchmarks/p4_inference.py [--requests 400] [--rounds 3] [--rows 1] [--delay-us 0]
        [--skip-mlserver]

Prints throughput (requests/s), p50 and p99 latency (ms), the ratios to MLServer and to
in-process (median of per-round ratios), rows per execution (dynamic batching at work) and
the server's CPU time per request (its process and children, warm-up included), with
MLServer's CPU per request divided by the embedded server's. The CPU figures are the ones
least disturbed when other work shares the machine. The client threads share one Python
process, so at concurrency 8 over HTTP the client, not the server, often sets the pace. Goal: embedded >= 2x MLServer and >= 0.5x in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
PYTHON = str(ROOT / ".venv" / "bin" / "python")
MLSERVER_VENV = OUT / "mlserver-venv"
MLSERVER_PINS = ["mlserver==1.7.1", "onnxruntime==1.32.0"]
sys.path.insert(0, str(ROOT / "tests"))

MLSERVER_RUNTIME = '''
import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceResponse
from mlserver.utils import get_model_uri


class OnnxModel(MLModel):
    """The same model.onnx through onnxruntime, as an MLServer custom runtime."""

    async def load(self) -> bool:
        self.session = ort.InferenceSession(await get_model_uri(self._settings),
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        return True

    async def predict(self, payload):
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32)
        outputs = self.session.run(self.output_names, {self.input_name: x})
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=[
            NumpyCodec.encode_output(name, value) for name, value in zip(self.output_names, outputs)])
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


# ------------------------------------------------------------------ model + servers
def build(delay_us: int, max_batch_size: int):
    from fedhub.hub.deploy.model_config import read_config, write_config
    import inference_models

    work = OUT / "p4"
    repo = work / "repo"
    repo.mkdir(parents=True, exist_ok=True)
    inference_models.sklearn_digits_model(repo, "digits", max_batch_size=max_batch_size,
                                          dynamic_batching=True, delay_us=delay_us)
    config = read_config(repo / "digits")
    config.parameters["intra_op_thread_count"].string_value = "1"
    write_config(config, repo / "digits")
    ml = work / "mlserver" / "digits"
    ml.mkdir(parents=True, exist_ok=True)
    (ml / "model.onnx").write_bytes((repo / "digits" / "1" / "model.onnx").read_bytes())
    (ml / "onnx_runtime.py").write_text(MLSERVER_RUNTIME)
    (ml / "model-settings.json").write_text(json.dumps({
        "name": "digits", "implementation": "onnx_runtime.OnnxModel",
        "parameters": {"uri": "./model.onnx"},
        "max_batch_size": max_batch_size, "max_batch_time": max(delay_us, 100) / 1e6}))
    return repo, work / "mlserver"


def ensure_mlserver_venv() -> Path:
    mlserver = MLSERVER_VENV / "bin" / "mlserver"
    if not mlserver.exists():
        print(f"creating {MLSERVER_VENV} ({' '.join(MLSERVER_PINS)}) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(MLSERVER_VENV)], check=True)
        subprocess.run([str(MLSERVER_VENV / "bin" / "pip"), "install", "-q", *MLSERVER_PINS], check=True)
    return mlserver


def start_embedded(repo: Path):
    proc = subprocess.Popen([PYTHON, "-m", "fedhub.hub.deploy.server", "--model-repository", str(repo),
                             "--http-port", "0", "--grpc-port", "0", "--log-level", "WARN"],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    for line in proc.stdout:
        match = re.search(r"ready: HTTP (\S+):(\d+) gRPC (\S+):(\d+)", line)
        if match:
            return proc, f"{match[1]}:{match[2]}", f"{match[3]}:{match[4]}"
    raise RuntimeError("embedded server did not start")


def start_mlserver(folder: Path):
    import requests
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    (folder / "settings.json").write_text(json.dumps({
        "http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port,
        "parallel_workers": 0, "host": "127.0.0.1", "debug": False}))
    log = open(folder / "mlserver.log", "wb")
    env = dict(os.environ, PATH=f"{MLSERVER_VENV / 'bin'}:{os.environ.get('PATH', '')}")
    proc = subprocess.Popen([str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(folder)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlserver exited:\n{(folder / 'mlserver.log').read_text()[-3000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{http_port}/v2/models/digits/ready", timeout=1).ok:
                return proc, f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise RuntimeError("mlserver not ready in 120 s")


def stop(proc) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


# ------------------------------------------------------------------ workloads
def make_caller(kind: str, url: str, binary: bool):
    """A function x -> outputs for one client (one per thread)."""
    if kind == "http":
        import tritonclient.http as client_module
        client = client_module.InferenceServerClient(url)
        outputs = None if binary else [client_module.InferRequestedOutput(n, binary_data=False)
                                       for n in ("label", "probabilities")]
    else:
        import tritonclient.grpc as client_module
        client = client_module.InferenceServerClient(url)
        outputs = None

    def call(x):
        tensor = client_module.InferInput("X", list(x.shape), "FP32")
        if kind == "http":
            tensor.set_data_from_numpy(x, binary_data=binary)
        else:
            tensor.set_data_from_numpy(x)
        return client.infer("digits", [tensor], outputs=outputs).as_numpy("probabilities")
    return call


def in_process_caller(session):
    names = [o.name for o in session.get_outputs()]
    return lambda x: session.run(names, {"X": x})[1]


WARMUP = 20


def cpu_seconds(proc) -> float:
    """CPU time of a server process and its children (user + system)."""
    import psutil
    total = 0.0
    parent = psutil.Process(proc.pid)
    for process in [parent, *parent.children(recursive=True)]:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def run_load(make, rows, concurrency: int, per_thread: int, warmup: int = WARMUP):
    latencies, errors = [], []
    lock = threading.Lock()
    barrier = threading.Barrier(concurrency + 1)

    def worker(index):
        call = make()
        mine = []
        try:
            for i in range(warmup):
                call(rows[(index + i) % len(rows)])
            barrier.wait()
            for i in range(per_thread):
                start = time.perf_counter()
                call(rows[(index * 7 + i) % len(rows)])
                mine.append(time.perf_counter() - start)
        except Exception as exc:  # reported in the table
            errors.append(exc)
            barrier.abort()
        with lock:
            latencies.extend(mine)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        return {"error": repr(errors[0])[:120]}
    return {"rps": len(latencies) / wall, "p50": percentile(latencies, 50) * 1e3,
            "p99": percentile(latencies, 99) * 1e3, "n": len(latencies)}


_last_counts = {"inference_count": 0, "execution_count": 0}


def mean_batch(http_url: str) -> float:
    """Rows per execution on the embedded server since the previous call (dynamic batching)."""
    import tritonclient.http as client_module
    stats = client_module.InferenceServerClient(http_url).get_inference_statistics("digits")["model_stats"][0]
    rows = stats["inference_count"] - _last_counts["inference_count"]
    runs = stats["execution_count"] - _last_counts["execution_count"]
    _last_counts.update(inference_count=stats["inference_count"], execution_count=stats["execution_count"])
    return rows / max(1, runs)


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def median_result(runs: list[dict]) -> dict:
    good = [r for r in runs if "error" not in r]
    if not good:
        return runs[0]
    return {key: float(np.median([r[key] for r in good])) for key in good[0]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per thread at concurrency 1 "
                        "(divided by the concurrency above it, so each cell sends about the same)")
    parser.add_argument("--delay-us", type=int, default=0, help="dynamic batching queue delay")
    parser.add_argument("--rounds", type=int, default=3, help="repeat every cell; medians are shown")
    parser.add_argument("--rows", type=int, default=1, help="rows per request")
    parser.add_argument("--skip-mlserver", action="store_true")
    args = parser.parse_args()

    import onnxruntime as ort
    from inference_models import digits

    repo, ml_folder = build(args.delay_us, max_batch_size=max(64, 8 * args.rows))
    X, _ = digits()
    rows = [X[i:i + args.rows].copy() for i in range(0, 256)]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(repo / "digits" / "1" / "model.onnx"), options,
                                   providers=["CPUExecutionProvider"])

    procs, targets = [], {}
    try:
        proc, http_url, grpc_url = start_embedded(repo)
        procs.append(proc)
        targets["embedded"] = (http_url, grpc_url, True)
        server_procs = {"embedded": proc}
        if not args.skip_mlserver:
            ensure_mlserver_venv()
            proc, http_url, grpc_url = start_mlserver(ml_folder)
            procs.append(proc)
            targets["mlserver"] = (http_url, grpc_url, False)
            server_procs["mlserver"] = proc
        # same answers everywhere before timing anything
        want = session.run(None, {"X": rows[0]})[1]
        for name, (http_url, grpc_url, binary) in targets.items():
            for kind, url in (("http", http_url), ("grpc", grpc_url)):
                got = make_caller(kind, url, binary)(rows[0])
                assert np.allclose(got, want, atol=1e-5), (name, kind, got, want)

        # rounds interleave every cell, so load from elsewhere on the machine hits all alike
        samples: dict = {}
        for round_number in range(args.rounds):
            for concurrency in (1, 8):
                per_thread = max(20, args.requests // concurrency)
                cells = [(("in-process", "-", concurrency), lambda: in_process_caller(session), None)]
                calls = concurrency * (per_thread + WARMUP)
                for name, (http_url, grpc_url, binary) in targets.items():
                    for kind, url in (("http", http_url), ("grpc", grpc_url)):
                        cells.append(((name, kind, concurrency),
                                      lambda kind=kind, url=url, binary=binary: make_caller(kind, url, binary),
                                      http_url if name == "embedded" else None))
                for key, make, stats_url in cells:
                    if stats_url:
                        mean_batch(stats_url)
                    server = server_procs.get(key[0])
                    cpu_before = cpu_seconds(server) if server else 0.0
                    result = run_load(make, rows, concurrency, per_thread)
                    if server and "error" not in result:
                        result["cpu_us"] = (cpu_seconds(server) - cpu_before) / calls * 1e6
                    if stats_url and "error" not in result:
                        result["batch"] = mean_batch(stats_url)
                    samples.setdefault(key, []).append(result)
                    print(f"  round {round_number + 1} {key}: {result}", file=sys.stderr, flush=True)
        results = {key: median_result(runs) for key, runs in samples.items()}
        # per-round ratios of cells measured seconds apart: steadier than a ratio of medians
        # when other work on the machine comes and goes
        paired = {}
        for (name, kind, concurrency), runs in samples.items():
            if name != "embedded":
                continue
            for other in ("mlserver", "in-process"):
                base = samples.get((other, kind if other == "mlserver" else "-", concurrency), [])
                ratios = [r["rps"] / b["rps"] for r, b in zip(runs, base) if "rps" in r and "rps" in b]
                if ratios:
                    paired[(kind, concurrency, other)] = float(np.median(ratios))
    finally:
        for proc in procs:
            stop(proc)

    print(f"\nP4 — {args.rows}-row requests to scikit-learn digits (ONNX), dynamic batching on "
          f"(queue delay {args.delay_us} µs); {os.cpu_count()} cores, client and server on one machine; "
          f"medians of {args.rounds} rounds\n")
    print(f"{'target':<12}{'protocol':<10}{'conc':>5}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'x MLServer':>12}{'x in-proc':>11}{'rows/exec':>11}{'srv CPU us/req':>16}"
          f"{'CPU: MLServer/us':>18}")
    print("(x MLServer, x in-proc: median over rounds of the throughput ratio within a round)")
    for (name, kind, concurrency), r in results.items():
        if "error" in r:
            print(f"{name:<12}{kind:<10}{concurrency:>5}  ERROR {r['error']}")
            continue
        ml = results.get(("mlserver", kind, concurrency), {})
        cpu_vs_ml = _fmt(ml["cpu_us"] / r["cpu_us"], ".2f") if name == "embedded" and "cpu_us" in ml else ""
        inproc = results[("in-process", "-", concurrency)]
        vs_ml = _fmt(paired.get((kind, concurrency, "mlserver")), ".2f") if name == "embedded" else ""
        vs_in = f"{r['rps'] / inproc['rps']:.3f}" if name != "in-process" else ""
        if name == "embedded":
            vs_in = _fmt(paired.get((kind, concurrency, "in-process")), ".3f")
        print(f"{name:<12}{kind:<10}{concurrency:>5}{r['rps']:>10.0f}{r['p50']:>9.3f}{r['p99']:>9.3f}"
              f"{vs_ml:>12}{vs_in:>11}{_fmt(r.get('batch'), '.2f'):>11}{_fmt(r.get('cpu_us'), '.0f'):>16}{cpu_vs_ml:>18}")


if __name__ == "__main__":
    main()
