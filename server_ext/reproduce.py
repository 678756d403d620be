"""`fedhub reproduce RUN_ID`: re-execute a captured run and compare its metrics.

    from fedhub.server_ext.reproduce import reproduce_run
    r = reproduce_run(run_id)          # -> Reproduction
    r.identical, r.comparison, r.to_dict()

What it does, from the capture `fedhub.server_ext.track()` left on the run:

1. restores what it can into a fresh work directory: the code at the captured git commit
   plus the uncommitted diff (when that repository is on this machine), the captured
   notebook (or script) at its place, the declared input files from where they were
   (checked against their sha256; a missing or changed input is a warning, not a stop),
   the environment variables that change numerical results (BLAS/OpenMP thread counts,
   PYTHONHASHSEED); packages are not installed, but versions that differ from the
   captured requirements.lock are warned about;
2. creates a child run (tags `mlflow.parentRunId` and `fedhub.reproduces` = the original)
   and re-executes the notebook with nbclient in a fresh kernel whose environment has
   MLFLOW_RUN_ID = the child, so the notebook's own `mlflow.start_run()` logs into it;
3. compares the last value of every metric of both runs, exactly and within a
   tolerance, and tags the child `fedhub.reproduction.identical`.

Problems found before anything runs (unknown run, run without capture, nothing to
execute) raise ReproduceError; a failing or timed-out execution returns a Reproduction
with status "failed".

Reproducing executes the run's code (its captured notebook or script) as the caller, with
the caller's MLflow credentials: reproduce runs you trust, as you would open their notebook.
Only the first `mlflow.start_run()` of the notebook resumes the child run (MLFLOW_RUN_ID is
consumed by it); further runs the notebook starts are logged as usual, unlinked.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .capture import ARTIFACT_DIR, CAPTURE_TAG, NOTEBOOK_ENV, NUMERIC_ENV, REPRODUCING_ENV, _normalize, freeze, sha256_file

IDENTICAL_TAG = "fedhub.reproduction.identical"
REL_TOL = 1e-6
ABS_TOL = 1e-9
_COPY_LIMIT = 256 * 1024 * 1024  # bigger inputs are symlinked into the work directory
_UNTRACKED_LIMIT = 1024 * 1024  # untracked files (uncommitted code) copied up to this size
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class ReproduceError(Exception):
    """The run cannot be reproduced; `status` is the HTTP status the session API answers."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class Reproduction:
    id: str
    run_id: str
    status: str = "running"  # running | done | failed
    child_run_id: str | None = None
    identical: bool | None = None
    comparison: list[dict] = field(default_factory=list)
    message: str = ""
    log_tail: str = ""
    warnings: list[str] = field(default_factory=list)
    seconds: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["comparison"] = [{k: _json_number(v) for k, v in c.items()} for c in self.comparison]
        return d


def _json_number(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # "nan", "inf": JSON has no literal for them
    return v


# ---------------------------------------------------------------- comparison
def _same(a, b) -> bool:
    if a is None or b is None:
        return False
    return a == b or (math.isnan(a) and math.isnan(b))


def _close(a, b, rel_tol: float, abs_tol: float) -> bool:
    if a is None or b is None:
        return False
    return _same(a, b) or math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)


def compare_metrics(original: dict, reproduced: dict, *, rel_tol: float = REL_TOL,
                    abs_tol: float = ABS_TOL) -> list[dict]:
    """One row per metric of either run: last values, `match` (exactly equal) and
    `close` (within rel_tol/abs_tol). A metric only one run has matches nothing."""
    rows = []
    for key in sorted(set(original) | set(reproduced)):
        a, b = original.get(key), reproduced.get(key)
        rows.append({"metric": key, "original": a, "reproduced": b, "match": _same(a, b),
                     "close": _close(a, b, rel_tol, abs_tol)})
    return rows


# ---------------------------------------------------------------- checks
def _client():
    from mlflow.tracking import MlflowClient
    return MlflowClient()


def get_captured_run(run_id: str, client=None):
    """The run, if it exists and carries fedhub's capture; else ReproduceError (404 / 400)."""
    from mlflow.exceptions import MlflowException

    client = client or _client()
    if not run_id or not re.fullmatch(r"[0-9A-Za-z_-]{1,64}", run_id):
        raise ReproduceError(f"no run {run_id!r}: not a run id", 404)
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise ReproduceError(f"no run {run_id!r} in the tracking server", 404) from None
        if e.error_code == "PERMISSION_DENIED":
            raise ReproduceError(f"run {run_id!r}: permission denied", 403) from None
        raise
    if run.info.lifecycle_stage == "deleted":
        raise ReproduceError(f"run {run_id!r} is deleted", 404)
    if run.data.tags.get(CAPTURE_TAG) != "1":
        raise ReproduceError(
            f"run {run_id!r} was not captured by fedhub (no {CAPTURE_TAG} tag): call "
            "fedhub.server_ext.track() in the notebook after mlflow.start_run(), then run it again", 400)
    return run


def _captured_files(client, run_id: str) -> set[str]:
    return {Path(f.path).name for f in client.list_artifacts(run_id, ARTIFACT_DIR)}


def check_reproducible(run_id: str, client=None) -> str:
    """Raise ReproduceError unless run_id can be reproduced; returns "notebook" or "script"."""
    client = client or _client()
    get_captured_run(run_id, client)
    files = _captured_files(client, run_id)
    if "notebook.ipynb" in files:
        return "notebook"
    if "script.py" in files:
        return "script"
    raise ReproduceError(
        f"run {run_id!r} has fedhub's capture but no captured notebook or script "
        f"({ARTIFACT_DIR}/notebook.ipynb or {ARTIFACT_DIR}/script.py): track() could not tell what was "
        "running (pass notebook=...), or its upload has not finished yet", 400)


# ---------------------------------------------------------------- restore
class _Restore:
    def __init__(self, capture_dir: Path, workdir: Path, say: Callable[[str], None]):
        self.capture = capture_dir
        self.root = workdir
        self.say = say
        self.warnings: list[str] = []

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)
        self.say(f"warning: {msg}")

    def _json(self, name: str) -> dict:
        p = self.capture / name
        return json.loads(p.read_text()) if p.exists() else {}

    def environment(self) -> None:
        """Warn about packages that differ from the captured requirements.lock (nothing is installed)."""
        lock = self.capture / "requirements.lock"
        if not lock.exists():
            return
        def pins(lines):
            out = {}
            for line in lines:
                name, sep, version = line.strip().partition("==")
                if sep and not line.startswith(("#", "-")):
                    out[_normalize(name)] = version
            return out
        then, now = pins(lock.read_text().splitlines()), pins(freeze())
        changed = [f"{k} {then[k]} -> {now.get(k, 'missing')}" for k in sorted(then) if now.get(k) != then[k]]
        if changed:
            self.warn(f"{len(changed)} package(s) differ from the captured environment: "
                      + ", ".join(changed[:6]) + (" ..." if len(changed) > 6 else ""))
        else:
            self.say("environment: every captured package version is installed")

    def numeric_env(self) -> dict | None:
        """The captured variables that change numerical results (thread counts, hash seed), to set again."""
        info = self._json("environment.json")
        if "env" not in info:
            return None
        env = info["env"] or {}
        if env:
            self.say("environment variables as captured: " + ", ".join(f"{k}={v}" for k, v in sorted(env.items())))
        return {k: str(v) for k, v in env.items() if k in NUMERIC_ENV}

    def code(self) -> tuple[Path, str | None]:
        """Restore the repository (commit + diff) if possible; returns (cwd for the run, entry rel path)."""
        git = self._json("git.json")
        env = self._json("environment.json")
        entry = env.get("entrypoint")
        top, commit = git.get("toplevel"), git.get("commit")
        if top and commit and Path(top, ".git").exists() and shutil.which("git"):
            archive = subprocess.run(["git", "-C", top, "archive", "--format=tar", commit],
                                     capture_output=True, timeout=600)
            if archive.returncode == 0:
                with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
                    tar.extractall(self.root, filter="data")
                self.say(f"code: {top} at {commit[:12]}")
                diff = self.capture / "git.diff"
                if diff.exists() and diff.stat().st_size:
                    applied = subprocess.run(["git", "apply", "--whitespace=nowarn", str(diff)],
                                             cwd=self.root, capture_output=True, text=True, timeout=120)
                    if applied.returncode != 0:
                        self.warn(f"the uncommitted changes (git.diff) did not apply: {applied.stderr.strip()}")
                    else:
                        self.say("code: uncommitted changes applied")
                self._untracked(Path(top), git.get("untracked") or [])
                cwd = self.root / (git.get("cwd") or (git.get("entrypoint") or "").rpartition("/")[0] or ".")
                cwd.mkdir(parents=True, exist_ok=True)
                return cwd, git.get("entrypoint")
            self.warn(f"git archive {commit[:12]} in {top} failed ({archive.stderr.decode(errors='replace').strip()}); "
                      "running the captured notebook alone")
        elif commit:
            self.warn(f"the repository at {top} (commit {commit[:12]}) is not on this machine; "
                      "only the captured notebook/script is restored")
        # no repository: the run's cwd becomes the work directory
        rel = None
        if entry and env.get("cwd"):
            try:
                rel = Path(entry).relative_to(env["cwd"]).as_posix()
            except ValueError:
                rel = None
        return self.root, rel

    def _untracked(self, top: Path, names: list[str]) -> None:
        skipped = []
        for name in names:
            src, dest = top / name, self.root / name
            try:
                inside = dest.resolve().is_relative_to(self.root.resolve())
                if inside and src.is_file() and src.stat().st_size <= _UNTRACKED_LIMIT:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dest)
                else:
                    skipped.append(name)
            except OSError:
                skipped.append(name)
        if skipped:
            self.warn(f"{len(skipped)} untracked file(s) at capture time not restored: {', '.join(skipped[:5])}"
                      + (" ..." if len(skipped) > 5 else ""))

    def inputs(self, cwd: Path) -> None:
        for rec in self._json("inputs.json").get("inputs", []):
            path, want = rec["path"], rec.get("sha256")
            src = Path(rec["abspath"])
            stored = self.capture / "inputs" / path if rec.get("stored") else None
            if Path(path).is_absolute():
                target = None  # the notebook reads it where it was
            else:
                target = (cwd / path).resolve()
                if not target.is_relative_to(self.root.resolve()):
                    target = None
            if target is None:
                if not src.exists():
                    self.warn(f"input {path}: missing (was {want and want[:12]}...), not restored")
                elif want and sha256_file(src) != want:
                    self.warn(f"input {path}: sha256 differs from the captured one (the file changed since)")
                continue
            if stored is not None and stored.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(stored, target)
                self.say(f"input {path}: restored from the run's stored copy")
                continue
            if not src.exists():
                self.warn(f"input {path}: missing at {src}, not restored")
                continue
            got = sha256_file(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists() or target.is_symlink():
                target.unlink()
            if src.stat().st_size > _COPY_LIMIT:
                target.symlink_to(src)
            else:
                shutil.copyfile(src, target)
            if want and got != want:
                self.warn(f"input {path}: sha256 differs from the captured one (the file at {src} changed since)")
            else:
                self.say(f"input {path}: restored, sha256 matches")


# ---------------------------------------------------------------- execution
def _kernel_env(child_run, original_id: str, entry: Path, tracking_uri: str) -> dict:
    env = dict(os.environ)
    for k in ("JPY_SESSION_NAME", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "JPY_PARENT_PID"):
        env.pop(k, None)
    env.update({
        "MLFLOW_RUN_ID": child_run.info.run_id,
        "MLFLOW_EXPERIMENT_ID": child_run.info.experiment_id,
        "MLFLOW_TRACKING_URI": tracking_uri,
        REPRODUCING_ENV: original_id,
        NOTEBOOK_ENV: str(entry),
    })
    return env


def _outputs_text(nb) -> list[str]:
    lines = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                lines.extend(out.get("text", "").splitlines())
            elif out.get("output_type") == "error":
                lines.extend(_ANSI.sub("", "\n".join(out.get("traceback", []))).splitlines())
    return lines


def _execute_notebook(path: Path, cwd: Path, env: dict, timeout: float, say) -> tuple[bool, str, list[str], object]:
    """(ok, message, output lines, executed notebook)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    from traitlets.config import Config

    nb = nbformat.read(path, as_version=4)
    code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    number = {idx: n for n, idx in enumerate(code_cells, 1)}
    deadline = time.monotonic() + timeout

    def on_cell_execute(cell, cell_index):
        say(f"executing notebook cell {number.get(cell_index, '?')}/{len(code_cells)}")

    def remaining(cell):
        return max(1, int(deadline - time.monotonic()))

    from jupyter_client.kernelspec import KernelSpecManager
    wanted = (nb.metadata.get("kernelspec") or {}).get("name") or "python3"
    kernel_name = wanted if wanted in KernelSpecManager().find_kernel_specs() else "python3"
    if kernel_name != wanted:
        say(f"kernel {wanted!r} is not installed here; using python3")

    config = Config()
    config.KernelManager.shutdown_wait_time = 30.0  # let the kernel finish uploading its capture
    client = NotebookClient(nb, kernel_name=kernel_name, timeout_func=remaining, on_cell_execute=on_cell_execute,
                            resources={"metadata": {"path": str(cwd)}}, record_timing=True, config=config)
    say(f"starting kernel {kernel_name}")
    try:
        client.execute(env=env)
        return True, "", _outputs_text(nb), nb
    except CellTimeoutError:
        return False, f"timed out after {timeout:g} s", _outputs_text(nb), nb
    except CellExecutionError as e:
        failing = next((n for idx, n in number.items()
                        if any(o.get("output_type") == "error" for o in nb.cells[idx].get("outputs", []))), "?")
        return False, f"cell {failing} failed: {e.ename}: {e.evalue}", _outputs_text(nb), nb
    except DeadKernelError as e:
        return False, f"the kernel died: {e}", _outputs_text(nb), nb


def _execute_script(path: Path, cwd: Path, env: dict, argv: list[str], timeout: float, say):
    import threading

    say(f"running python {path.name}")
    tail: deque[str] = deque(maxlen=200)
    proc = subprocess.Popen([sys.executable, str(path), *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    timed_out = threading.Event()

    def kill():
        timed_out.set()
        proc.kill()
    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
        proc.wait()
    finally:
        timer.cancel()
    if timed_out.is_set():
        return False, f"timed out after {timeout:g} s", list(tail), None
    if proc.returncode != 0:
        return False, f"the script exited with status {proc.returncode}", list(tail), None
    return True, "", list(tail), None


# ---------------------------------------------------------------- the whole thing
def reproduce_run(run_id: str, *, workdir: str | os.PathLike | None = None, timeout: float = 600,
                  progress: Callable[[str], None] | None = None, reproduction_id: str | None = None,
                  rel_tol: float = REL_TOL, abs_tol: float = ABS_TOL,
                  keep_workdir: bool | None = None) -> Reproduction:
    """Re-execute the captured run `run_id` into a child run and compare metrics.

    workdir: where to restore and run (default: a fresh temporary directory, removed
        afterwards unless keep_workdir). timeout: seconds for the whole execution.
    progress: called with one-line progress messages ("executing notebook cell 3/10").
    Raises ReproduceError before executing anything if the run cannot be reproduced.
    """
    import mlflow

    started = time.monotonic()
    client = _client()
    rep = Reproduction(id=reproduction_id or uuid.uuid4().hex[:12], run_id=run_id)
    log: deque[str] = deque(maxlen=400)

    def say(msg: str) -> None:
        log.append(msg)
        if progress is not None:
            progress(msg)

    kind = check_reproducible(run_id, client)
    original = client.get_run(run_id)
    own_dir = workdir is None
    root = Path(tempfile.mkdtemp(prefix="fedhub-reproduce-")) if own_dir else Path(workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    keep = (not own_dir) if keep_workdir is None else keep_workdir
    capture_dir = Path(tempfile.mkdtemp(prefix="fedhub-capture-"))
    child_id = None
    try:
        say(f"downloading the capture of run {run_id}")
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=ARTIFACT_DIR, dst_path=str(capture_dir))
        capture_dir = capture_dir / ARTIFACT_DIR
        restore = _Restore(capture_dir, root, say)
        restore.environment()
        cwd, entry_rel = restore.code()
        captured = capture_dir / ("notebook.ipynb" if kind == "notebook" else "script.py")
        original_entry = Path(original.data.tags.get("fedhub.entrypoint") or captured.name)
        entry = (root / entry_rel) if entry_rel else (cwd / original_entry.name)
        entry.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(captured, entry)
        if kind == "notebook" and entry.suffix != ".ipynb":
            entry = entry.with_suffix(".ipynb")
            shutil.copyfile(captured, entry)
        restore.inputs(cwd)
        rep.warnings = restore.warnings

        name = original.info.run_name or run_id[:8]
        child_name = f"{name} (reproduction)"
        child = client.create_run(original.info.experiment_id, run_name=child_name, tags={
            "mlflow.parentRunId": run_id, "fedhub.reproduces": run_id, "fedhub.reproduction.id": rep.id,
            "mlflow.source.name": str(entry), "mlflow.source.type": "NOTEBOOK" if kind == "notebook" else "LOCAL"})
        child_id = rep.child_run_id = child.info.run_id
        say(f"child run {child_id} in experiment {original.info.experiment_id}")
        env = _kernel_env(child, run_id, entry, mlflow.get_tracking_uri())
        captured_env = restore.numeric_env()
        if captured_env is not None:  # as captured: a variable the run did not have is unset too
            for k in NUMERIC_ENV:
                env.pop(k, None)
            env.update(captured_env)

        if kind == "notebook":
            ok, err, lines, executed = _execute_notebook(entry, cwd, env, timeout, say)
        else:
            argv = json.loads((capture_dir / "environment.json").read_text()).get("argv", []) \
                if (capture_dir / "environment.json").exists() else []
            ok, err, lines, executed = _execute_script(entry, cwd, env, argv, timeout, say)
        tail = [*(f"warning: {w}" for w in rep.warnings), *lines[-60:]]
        rep.log_tail = "\n".join(tail[-80:])

        after = client.get_run(child_id)
        if after.info.status == "RUNNING":
            client.set_terminated(child_id, "FINISHED" if ok else "FAILED")
        if after.info.run_name != child_name:  # the notebook's start_run(run_name=...) renamed it
            client.update_run(child_id, name=child_name)
        if executed is not None:
            import nbformat
            out = capture_dir.parent / "executed.ipynb"
            nbformat.write(executed, out)
            client.log_artifact(child_id, str(out), f"{ARTIFACT_DIR}/reproduction")
        if not ok:
            rep.status, rep.message = "failed", f"re-execution failed: {err}"
            client.set_tag(child_id, "fedhub.reproduction.error", rep.message[:5000])
            say(rep.message)
            return rep

        rep.comparison = compare_metrics(original.data.metrics, after.data.metrics, rel_tol=rel_tol, abs_tol=abs_tol)
        rep.identical = all(c["match"] for c in rep.comparison)
        rep.status = "done"
        n = len(rep.comparison)
        differ = [c for c in rep.comparison if not c["match"]]
        if not n:
            rep.message = "reproduced; neither run logged metrics"
        elif rep.identical:
            rep.message = f"reproduced: all {n} metrics identical"
        else:
            close = all(c["close"] for c in differ)
            first = differ[0]
            rep.message = (f"reproduced: {len(differ)} of {n} metrics differ"
                           + (f" (all within rel {rel_tol:g})" if close else "")
                           + f"; e.g. {first['metric']}: {first['original']} -> {first['reproduced']}")
        if rep.warnings:
            rep.message += f"; {len(rep.warnings)} warning(s)"
        client.set_tag(child_id, IDENTICAL_TAG, "true" if rep.identical else "false")
        result = capture_dir.parent / "comparison.json"
        result.write_text(json.dumps(rep.to_dict(), indent=1))
        client.log_artifact(child_id, str(result), f"{ARTIFACT_DIR}/reproduction")
        say(rep.message)
        return rep
    except ReproduceError:
        raise
    except Exception as e:
        rep.status, rep.message = "failed", f"{type(e).__name__}: {e}"
        rep.log_tail = "\n".join([*(rep.log_tail.splitlines() if rep.log_tail else list(log)), rep.message][-80:])
        if child_id:
            try:
                client.set_terminated(child_id, "FAILED")
            except Exception:
                pass
        return rep
    finally:
        rep.seconds = round(time.monotonic() - started, 3)
        shutil.rmtree(capture_dir.parent if capture_dir.name == ARTIFACT_DIR else capture_dir, ignore_errors=True)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
