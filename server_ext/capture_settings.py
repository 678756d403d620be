"""The session's capture settings (traitlets of the server extension)."""

from __future__ import annotations

import os

from traitlets import Bool
from traitlets.config import Configurable

# defined here, not in auto_capture: importing that module imports mlflow, whose plugin
# registry imports auto_capture again (a circular import when this comes first)
AUTO_CAPTURE_ENV = "FEDHUB_AUTO_CAPTURE"


class FedhubCapture(Configurable):
    """Reproducibility capture in a fedhub session (jupyter_server_config: `c.FedhubCapture...`)."""

    auto_capture = Bool(True, help="""Capture every MLflow run started in this session's kernels and
        terminals (plain `mlflow.start_run()`, or the first `mlflow.log_*`) as
        `fedhub.server_ext.track()` does: notebook, git state, package lock, hardware. Sets
        $FEDHUB_AUTO_CAPTURE for the processes the server starts; a user's own
        FEDHUB_AUTO_CAPTURE=0 turns it off too. False: only runs that call track() are captured.""",
    ).tag(config=True)


def configure_auto_capture(serverapp, environ=None) -> bool:
    """Set $FEDHUB_AUTO_CAPTURE for the kernels this server starts; return whether it is on."""
    env = os.environ if environ is None else environ
    if FedhubCapture(parent=serverapp).auto_capture:
        env.setdefault(AUTO_CAPTURE_ENV, "1")  # the user's own setting wins
    else:
        env[AUTO_CAPTURE_ENV] = "0"
    return env[AUTO_CAPTURE_ENV] not in ("0", "false", "no", "off")
