"""Reproducibility capture: what `fedhub.server_ext.track()` records on an MLflow run.

    import mlflow
    from fedhub.server_ext import track

    with mlflow.start_run():
        track(seed=42, inputs=["data/train.csv"])
        ...

or `with track(seed=42): ...` (starts a run if none is active and ends it at the end of
the block). In a fedhub session, runs started with plain `mlflow.start_run()` get the
same capture without calling track() (auto_capture.py; `fedhub.capture.mode` = auto); an
explicit track() on such a run takes over. Recorded on the run (see docs/session-api.md, "Capture"):

- tags `fedhub.capture=1`, `fedhub.site`, `fedhub.gpu_type`, `fedhub.gpus`, `fedhub.host`,
  `fedhub.python`, `fedhub.git.commit`, `fedhub.git.dirty`, `fedhub.seed`,
  `fedhub.notebook`, `fedhub.entrypoint` (+ `fedhub.entrypoint.kind`, `fedhub.cpus`,
  `fedhub.platform`, `fedhub.git.branch`, `fedhub.git.remote`, `fedhub.inputs`);
- artifacts under `fedhub/`: `notebook.ipynb`, `notebook.html`, `notebook.py` (nbconvert),
  or `script.py` for a script; `git.diff`, `git.json`; `requirements.lock` (pip freeze
  format); `conda.yaml` (conda env export format, when in a conda env);
  `inputs.json` (declared input files with sha256); `environment.json` (site, hardware,
  argv, seeds, the environment variables that change numerical results, e.g. thread counts).

Fast by design (P6: capture <= 2% of a short run). Only cheap work happens in the
caller's thread: reading the notebook, `git`, the package list (read from the
`*.dist-info` directory names, ~100x faster than `pip freeze`), conda-meta file
names, one `log_batch` of tags. Hashing inputs and uploading run in a background
thread; nbconvert (whose import alone costs seconds) runs in a separate process in its
own session at the lowest CPU priority (nice 19), off the kernel's GIL and out of reach
of kernel interrupts. `Capture.wait()`
(called by the context manager's exit and at interpreter exit) waits for it.

This module imports only the standard library at import time (mlflow on first use), so
`python -m fedhub.server_ext.capture convert NB OUTDIR` (the nbconvert worker) starts fast.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

from .capture_env import (NOTEBOOK_ENV, _normalize, _relative, conda_environment, find_entrypoint,  # noqa: F401
                          freeze, git_state, hardware, set_seeds, sha256_file)

CAPTURE_TAG = "fedhub.capture"
MODE_TAG = "fedhub.capture.mode"  # "track" (fedhub.track()) or "auto" (automatic capture)
AUTO_TAG = "fedhub.capture.auto"  # set at run creation by automatic capture: finds the run again
ARTIFACT_DIR = "fedhub"
REPRODUCING_ENV = "FEDHUB_REPRODUCING"
# Variables that change numerical results (thread counts of BLAS/OpenMP reductions, hash
# seeds, deterministic GPU kernels): recorded as they were, set again by `fedhub reproduce`.
NUMERIC_ENV = ("PYTHONHASHSEED", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "CUBLAS_WORKSPACE_CONFIG",
               "TF_DETERMINISTIC_OPS", "TF_CUDNN_DETERMINISTIC", "TORCH_DETERMINISTIC")
# A declared input at most this big is copied into the run when store_inputs=True.
STORE_INPUT_LIMIT = 64 * 1024 * 1024

_pending: list["Capture"] = []
_pending_lock = threading.Lock()
_log = logging.getLogger("fedhub.capture")


# ---------------------------------------------------------------- the capture
class Capture:
    """The capture of one run; also a context manager (see `track`)."""

    def __init__(self, run_id: str | None, started_run: bool, mode: str = "track"):
        self.run_id = run_id
        self.started_run = started_run
        self.mode = mode
        self.nonce: str | None = None  # automatic capture: the AUTO_TAG value of its run
        self._superseded = False  # an explicit track() of the same run took over
        self._lock = threading.Lock()
        self.tags: dict[str, str] = {}
        self.artifacts: list[str] = []
        self.errors: list[str] = []
        self.seconds_sync: float = 0.0  # time spent in the caller's thread
        self.seconds_total: float | None = None  # until everything was uploaded
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- lifecycle
    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = 300) -> bool:
        """Wait until every artifact is uploaded; False if still going after `timeout` s."""
        return self._done.wait(timeout)

    def __enter__(self) -> "Capture":
        return self

    def __exit__(self, exc_type, exc, tb):
        self.wait()
        if self.started_run:
            import mlflow
            active = mlflow.active_run()
            if active is not None and active.info.run_id == self.run_id:
                mlflow.end_run("FAILED" if exc_type is not None else "FINISHED")
        return False

    def __repr__(self) -> str:
        t = self.tags
        bits = [t.get("fedhub.entrypoint") or "no notebook or script found"]
        if t.get("fedhub.git.commit"):
            bits.append(f"git {t['fedhub.git.commit'][:10]}" + (" (dirty)" if t.get("fedhub.git.dirty") == "true" else ""))
        bits.append(f"seed {t.get('fedhub.seed')}")
        bits.append(f"{t.get('fedhub.inputs', '0')} input(s)")
        state = (f"uploaded in {self.seconds_total:.2f} s" if self.done and self.seconds_total is not None
                 else "uploading")
        errs = f", {len(self.errors)} problem(s)" if self.errors else ""
        return (f"<fedhub capture of run {self.run_id}: {', '.join(bits)}; "
                f"{self.seconds_sync:.3f} s in this thread, {state}{errs}>")

    def _problem(self, what: str, e: BaseException) -> None:
        msg = f"{what}: {type(e).__name__}: {e}"
        self.errors.append(msg)
        if self.mode == "auto":  # nobody asked for it: a log line, not a warning in their cell
            _log.warning("fedhub automatic capture of run %s: %s", self.run_id, msg)
        else:
            warnings.warn(f"fedhub.track: {msg}", RuntimeWarning, stacklevel=3)

    def supersede(self) -> None:
        """Stop this (automatic) capture from writing anything more: track() takes over."""
        with self._lock:  # waits for a tag write in flight, so track()'s tags land after it
            self._superseded = True


def _supersede_auto(run_id: str, run_tags: dict) -> "Capture | None":
    """The automatic capture of this run, if one is still going; it stops writing."""
    with _pending_lock:
        found = [c for c in _pending if c.mode == "auto" and not c.done and (
            c.run_id == run_id or (c.nonce is not None and c.nonce == run_tags.get(AUTO_TAG)))]
    for c in found:
        c.supersede()
    return found[0] if found else None


def register(cap: "Capture") -> None:
    """Keep the capture until it is done: the interpreter waits for it at exit."""
    with _pending_lock:
        _pending[:] = [c for c in _pending if not c.done]
        _pending.append(cap)


def _run_id_of(run) -> str:
    if isinstance(run, str):
        return run
    info = getattr(run, "info", None)
    if info is not None and getattr(info, "run_id", None):
        return info.run_id
    raise TypeError(f"fedhub.track: run must be a run id, mlflow Run or ActiveRun, not {type(run).__name__}")


def track(run=None, *, inputs=(), seed: int | None = None, notebook: str | os.PathLike | None = None,
          store_inputs: bool = False, background: bool = True) -> Capture:
    """Record what is needed to reproduce `run` (default: the active MLflow run; one is
    started if none is active, as `mlflow.start_run()` would).

    inputs: files the run reads; their sha256 is recorded (and, with store_inputs=True,
        copies of files up to 64 MiB are stored in the run: only when the data's policy
        allows it to leave the site).
    seed: recorded, and used to seed `random`, numpy, and torch/tensorflow if imported.
    notebook: the notebook (or script) path, when it cannot be found on its own.
    background: hash inputs, convert the notebook and upload in the background
        (default); False does it all before returning.

    Returns a Capture; `with track(...):` waits for the upload at the end of the block,
    and ends the run if track started it.
    """
    t0 = time.perf_counter()
    import mlflow
    from mlflow.tracking import MlflowClient

    kind, path = find_entrypoint(notebook)  # before starting a run: a wrong path raises here
    started = False
    if run is None:
        active = mlflow.active_run()
        if active is None:
            active = mlflow.start_run()
            started = True
        run_id, run_tags = active.info.run_id, active.data.tags
    else:
        run_id, run_tags = _run_id_of(run), getattr(getattr(run, "data", None), "tags", {}) or {}
    prior = _supersede_auto(run_id, run_tags)  # this call's inputs and seed win over the automatic capture
    try:
        return _capture(MlflowClient(), Capture(run_id, started), t0, kind, path, inputs, seed,
                        store_inputs, background, prior)
    except BaseException:
        if started:  # do not leave behind a run this call started
            mlflow.end_run("FAILED")
        raise


def _capture(client, cap: Capture, t0: float, kind, path, inputs, seed, store_inputs, background,
             prior: Capture | None = None) -> Capture:
    from mlflow.entities import RunTag

    run_id = cap.run_id
    staging = Path(tempfile.mkdtemp(prefix="fedhub-capture-"))
    tags: dict[str, str] = {CAPTURE_TAG: "1", MODE_TAG: cap.mode}

    # what ran
    if path is not None:
        tags["fedhub.entrypoint"] = str(path)
        tags["fedhub.entrypoint.kind"] = kind
        try:
            if kind == "notebook":
                tags["fedhub.notebook"] = str(path)
                shutil.copyfile(path, staging / "notebook.ipynb")
            else:
                shutil.copyfile(path, staging / "script.py")
        except OSError as e:
            cap._problem(f"copying {path}", e)
    workdir = path.parent if path is not None else Path.cwd()
    cwd = os.getcwd()

    # code
    git = None
    try:
        git = git_state(workdir)
    except Exception as e:
        cap._problem("git", e)
    if git is not None:
        if git["commit"]:
            tags["fedhub.git.commit"] = git["commit"]
        tags["fedhub.git.dirty"] = "true" if git["dirty"] or git["untracked"] else "false"
        if git["branch"] and git["branch"] != "HEAD":
            tags["fedhub.git.branch"] = git["branch"]
        if git["remote"]:
            tags["fedhub.git.remote"] = git["remote"]
        (staging / "git.diff").write_text(git.pop("diff"))
        top = Path(git["toplevel"])
        git["entrypoint"] = _relative(path, top) if path is not None else None
        git["cwd"] = _relative(Path.cwd(), top)
        (staging / "git.json").write_text(json.dumps(git, indent=1))

    # environment
    try:
        (staging / "requirements.lock").write_text("\n".join(freeze()) + "\n")
    except Exception as e:
        cap._problem("package list", e)
    try:
        conda = conda_environment()
        if conda:
            (staging / "conda.yaml").write_text(conda)
    except Exception as e:
        cap._problem("conda environment", e)

    numeric_env = {k: os.environ[k] for k in NUMERIC_ENV if k in os.environ}  # before set_seeds changes one
    seeded: list[str] = []
    if seed is not None:
        seeded = set_seeds(int(seed))
    tags["fedhub.seed"] = str(seed) if seed is not None else "none"

    hw = hardware()
    tags.update({
        "fedhub.site": hw["site"], "fedhub.gpu_type": hw["gpu_type"], "fedhub.gpus": hw["gpus"],
        "fedhub.host": hw["host"], "fedhub.python": hw["python"], "fedhub.cpus": str(hw["cpus_usable"]),
        "fedhub.platform": hw["platform"],
    })
    input_list = [(str(p), Path(os.path.abspath(Path(p).expanduser())))  # relative to the cwd of now
                  for p in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)]
    tags["fedhub.inputs"] = str(len(input_list))
    if os.environ.get(REPRODUCING_ENV):
        tags["fedhub.reproduces"] = os.environ[REPRODUCING_ENV]
    env_info = {"hardware": hw, "seed": seed, "seeded": seeded, "env": numeric_env,
                "argv": sys.argv[1:] if kind == "script" else [],
                "cwd": cwd, "entrypoint": str(path) if path else None, "entrypoint_kind": kind}
    (staging / "environment.json").write_text(json.dumps(env_info, indent=1))

    with cap._lock:
        if cap._superseded:
            shutil.rmtree(staging, ignore_errors=True)
            cap._done.set()
            return cap
        try:
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        except Exception:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    cap.tags = tags

    # nbconvert in its own process, started now so it overlaps with the hashing and upload
    proc = None
    if kind == "notebook" and (staging / "notebook.ipynb").exists():
        convert_dir = staging / "converted"
        convert_dir.mkdir()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fedhub.server_ext.capture", "convert",
                 str(staging / "notebook.ipynb"), str(convert_dir)],
                # cwd: an empty directory, since `python -m` puts the cwd first on sys.path and the
                # user's folder may hold a notebook.py / json.py that must not be imported
                cwd=convert_dir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        except OSError as e:
            cap._problem("starting nbconvert", e)

    def finish():
        try:
            if prior is not None:
                prior.wait()  # its uploads first: ours must be the last word on the same files
            _finish(client, cap, staging, proc, input_list, store_inputs)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # before done: exit may not wait any longer
            cap.seconds_total = time.perf_counter() - t0
            cap._done.set()

    if cap.mode != "auto":  # automatic capture does all of this in its own thread
        cap.seconds_sync = time.perf_counter() - t0
    if background:
        cap._thread = threading.Thread(target=finish, name=f"fedhub-capture-{run_id[:8]}", daemon=True)
        register(cap)
        cap._thread.start()
    else:
        finish()
        if cap.mode != "auto":
            cap.seconds_sync = time.perf_counter() - t0
    return cap


def _finish(client, cap: Capture, staging: Path, proc, inputs: list[tuple[str, Path]], store: bool) -> None:
    """The background half: input checksums, upload, nbconvert's results."""
    records = []
    for p, full in inputs:
        rec = {"path": p, "abspath": str(full.resolve()) if full.exists() else str(full), "sha256": None,
               "size": None, "stored": False}
        try:
            rec["size"] = full.stat().st_size
            rec["sha256"] = sha256_file(full)
            if store and rec["size"] <= STORE_INPUT_LIMIT and not Path(p).is_absolute() and ".." not in Path(p).parts:
                dest = staging / "inputs" / p
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(full, dest)
                rec["stored"] = True
        except OSError as e:
            rec["error"] = str(e)
            cap._problem(f"input {p}", e)
        records.append(rec)
    (staging / "inputs.json").write_text(json.dumps({"inputs": records}, indent=1))

    files = [f for f in staging.iterdir() if f.name != "converted"]
    if cap._superseded:
        if proc is not None:
            proc.kill()
        return
    try:
        for f in files:
            if f.is_dir():
                client.log_artifacts(cap.run_id, str(f), f"{ARTIFACT_DIR}/{f.name}")
            else:
                client.log_artifact(cap.run_id, str(f), ARTIFACT_DIR)
            cap.artifacts.append(f.name)
    except Exception as e:
        cap._problem("upload", e)
        return
    try:
        record_run_provenance(client, cap.run_id, staging, records)
    except Exception as e:  # the ledger never breaks a run; the capture notes what failed
        cap._problem("provenance", e)
    if proc is None:
        return
    try:
        _, err = proc.communicate(timeout=300)
        if cap._superseded:
            return
        if proc.returncode != 0:
            raise RuntimeError(err.decode(errors="replace").strip().splitlines()[-1:] or proc.returncode)
        for f in sorted((staging / "converted").iterdir()):
            client.log_artifact(cap.run_id, str(f), ARTIFACT_DIR)
            cap.artifacts.append(f.name)
    except subprocess.TimeoutExpired as e:
        proc.kill()
        cap._problem("nbconvert", e)
    except Exception as e:
        cap._problem("nbconvert", e)


def record_run_provenance(client, run_id: str, staging: Path, inputs: list[dict]) -> dict | None:
    """Under a hub, append the run's signed provenance record (code, environment, inputs,
    site, hardware: the capture's tags and the checksums of what it stored)."""
    from .client import session_context

    ctx = session_context()
    if ctx.mode != "hub":
        return None
    import requests

    tags = {k: v for k, v in client.get_run(run_id).data.tags.items() if k.startswith("fedhub.")}
    files = {f.name: sha256_file(f) for f in sorted(staging.iterdir()) if f.is_file()}
    body = {"tags": tags, "captured_files_sha256": files,
            "inputs": [{k: i.get(k) for k in ("path", "sha256", "size")} for i in inputs]}
    r = requests.post(f"{ctx.fedhub_api}/provenance", headers={"Authorization": f"token {ctx.token}"},
                      json={"subject": run_id, "body": body}, timeout=30)
    r.raise_for_status()
    return r.json()


@atexit.register
def _wait_pending(timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    with _pending_lock:
        pending = list(_pending)
        _pending.clear()
    for cap in pending:
        if cap.mode == "auto" and cap.run_id is None:
            # not found yet: a short run is looked up by its tag; if start_run failed, there is
            # no run to find, and the exit is not held longer than this
            grace = time.monotonic() + min(5.0, max(0.0, deadline - time.monotonic()))
            while cap.run_id is None and not cap.done and time.monotonic() < grace:
                time.sleep(0.01)
            if cap.run_id is None:
                continue
        cap.wait(max(0.0, deadline - time.monotonic()))


def wait_all(timeout: float = 300) -> None:
    """Wait for every capture of this process to finish uploading."""
    _wait_pending(timeout)


# ---------------------------------------------------------------- nbconvert worker
def convert(notebook: str, outdir: str) -> None:
    """notebook -> outdir/notebook.html and outdir/notebook.<ext> (nbconvert's script exporter)."""
    # jsonschema's optional IRI checker (rfc3987_syntax) builds a grammar at import: seconds
    # we do not need, since nothing here validates IRIs.
    sys.modules.setdefault("rfc3987_syntax", None)
    import nbformat
    from nbconvert import HTMLExporter, ScriptExporter

    nb = nbformat.read(notebook, as_version=4)
    out = Path(outdir)
    body, _ = HTMLExporter().from_notebook_node(nb)
    (out / "notebook.html").write_text(body, encoding="utf-8")
    body, res = ScriptExporter().from_notebook_node(nb)
    ext = res.get("output_extension") or ".txt"
    language = (nb.metadata.get("kernelspec") or {}).get("language") or nb.metadata.get("language_info", {}).get("name")
    if ext == ".txt" and (language or "python") == "python":
        ext = ".py"  # a notebook saved before it ever ran has no language_info
    (out / f"notebook{ext}").write_text(body, encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "convert":
        try:
            os.nice(19)  # idle time only: never slow down the run being captured
        except (AttributeError, OSError):
            pass
        convert(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: python -m fedhub.server_ext.capture convert NOTEBOOK OUTDIR")
