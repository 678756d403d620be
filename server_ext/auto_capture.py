"""Automatic capture: a run started with plain `mlflow.start_run()` (or by the first
`mlflow.log_*`) in a fedhub session gets the capture `fedhub.server_ext.track()` records,
without calling it.

MLflow's own plugin mechanism: this is a `mlflow.run_context_provider` entry point. MLflow
asks every provider for tags when the fluent API creates a run. Ours is in context when
$FEDHUB_AUTO_CAPTURE is on (the session's server extension sets it for its kernels and
terminals, unless `c.FedhubCapture.auto_capture = False`; a user's FEDHUB_AUTO_CAPTURE=0
wins). Its `tags()` does next to nothing: it names what is running, returns one tag
(`fedhub.capture.auto`, a nonce) and hands everything else to a background thread, which
finds the run by that tag once MLflow has created it and runs capture.py's capture on it
(git, package list, hardware, notebook + nbconvert at nice 19, upload). Nothing here can
fail the user's run: every error is logged and dropped.

An explicit `track(seed=..., inputs=...)` on the same run takes over from the automatic
capture (its seed and inputs are what the run should record).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import uuid

from .capture_settings import AUTO_CAPTURE_ENV  # noqa: E402
FIND_RUN_TIMEOUT = 60.0  # seconds for MLflow to create the run; past that it failed, we give up
_log = logging.getLogger("fedhub.capture")

if "mlflow" in sys.modules:  # mlflow is loading this plugin: subclass its provider base
    from mlflow.tracking.context.abstract_context import RunContextProvider
else:
    # imported before mlflow: importing mlflow here would make its plugin registry import
    # this half-initialised module; the registry only calls in_context() and tags()
    RunContextProvider = object


def enabled(environ=None) -> bool:
    env = os.environ if environ is None else environ
    return env.get(AUTO_CAPTURE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _start_run_frame(max_depth: int = 6):
    """The frame of the `mlflow.start_run` asking for tags, or None: MLflow also resolves
    context tags for logged models, and we capture runs only."""
    frame = sys._getframe(2)
    for _ in range(max_depth):
        if frame is None:
            return None
        if frame.f_code.co_name == "start_run" and frame.f_globals.get("__name__") == "mlflow.tracking.fluent":
            return frame
        frame = frame.f_back
    return None


class FedhubRunContext(RunContextProvider):
    """The `mlflow.run_context_provider` plugin (see the module docstring)."""

    def in_context(self) -> bool:
        return enabled()

    def tags(self) -> dict:
        try:
            return start()
        except Exception as e:  # never break the user's run
            _log.warning("fedhub automatic capture did not start: %s: %s", type(e).__name__, e)
            return {}


def start() -> dict:
    """Begin capturing the run MLflow is about to create; return the tags to create it with."""
    frame = _start_run_frame()
    if frame is None:
        return {}
    experiment_id = frame.f_locals.get("exp_id_for_run")  # where start_run creates the run
    t0 = time.perf_counter()
    import mlflow
    from mlflow.tracking import fluent

    from . import capture

    kind, path = capture.find_entrypoint()
    cap = capture.Capture(None, started_run=False, mode="auto")
    cap.nonce = uuid.uuid4().hex
    # the caller thread's stack of active runs: start_run appends the new run to this very list
    stack = fluent._active_run_stack.get()
    tracking_uri = mlflow.get_tracking_uri()
    capture.register(cap)
    threading.Thread(target=_capture_when_created, name="fedhub-auto-capture", daemon=True,
                     args=(cap, stack, experiment_id, tracking_uri, t0, kind, path)).start()
    cap.seconds_sync = time.perf_counter() - t0
    return {capture.AUTO_TAG: cap.nonce}


def _find_run(make_client, stack: list, experiment_id, nonce: str, timeout: float) -> str | None:
    """The run created with our nonce: on the caller's stack of active runs while it is
    active (no request), else by a search on the tag (a short run may already be over)."""
    from .capture import AUTO_TAG

    deadline = time.monotonic() + timeout
    delay = 0.005
    while time.monotonic() < deadline:
        for run in list(stack):
            if run.data.tags.get(AUTO_TAG) == nonce:
                return run.info.run_id
        if experiment_id is not None and delay >= 0.04:
            found = make_client().search_runs([str(experiment_id)], filter_string=f"tags.`{AUTO_TAG}` = '{nonce}'",
                                       max_results=1)
            if found:
                return found[0].info.run_id
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    return None


def _capture_when_created(cap, stack: list, experiment_id, tracking_uri: str, t0: float, kind, path) -> None:
    from mlflow.tracking import MlflowClient

    from . import capture

    try:
        clients = []  # made when needed: not while start_run is still creating the run

        def client():
            if not clients:
                clients.append(MlflowClient(tracking_uri))
            return clients[0]

        cap.run_id = _find_run(client, stack, experiment_id, cap.nonce, FIND_RUN_TIMEOUT)
        if cap.run_id is None:  # MLflow failed to create it (the user sees that error)
            return
        capture._capture(client(), cap, t0, kind, path, (), None, False, background=False)
    except Exception as e:
        cap._problem("capture", e)
    finally:
        cap.seconds_total = time.perf_counter() - t0
        cap._done.set()
