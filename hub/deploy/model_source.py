"""Fetch an MLflow model as the caller: through the hub's MLflow service, with their hub token.

The MLflow gate checks the token and MLflow's own permissions decide, so a user can
only deploy a model they can read. The mlflow client takes its token from the
environment (MLFLOW_TRACKING_TOKEN), which is process-wide: calls made here hold a
lock while they set it, so two users' deployments never see each other's token.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

_ENV_LOCK = threading.Lock()
_CRED_VARS = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
MODEL_URI = re.compile(r"^(runs:/[0-9a-zA-Z]+(/.*)?|models:/[^/]+(/[^/]+|@[^/]+)?|"
                       r"mlflow-artifacts:/.+|m-[0-9a-f]{32})$")
#: MLmodel flavours the packaging step turns into a Triton model
SUPPORTED_FLAVOURS = ("onnx", "sklearn", "pytorch")


class ModelSourceError(Exception):
    """The model cannot be used; `status` is the HTTP status for the caller."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def check_uri(uri) -> str:
    if not isinstance(uri, str) or not MODEL_URI.match(uri.strip()):
        raise ModelSourceError(400, f"'model' must be an MLflow model URI (runs:/RUN_ID/PATH, "
                                    f"models:/NAME/VERSION, models:/NAME@ALIAS or an .onnx artifact), got {uri!r}")
    uri = uri.strip()
    if uri.startswith("m-"):
        uri = f"models:/{uri}"
    return uri


class _AsCaller:
    """Set the caller's token for the mlflow client, one caller at a time."""

    def __init__(self, token: str):
        self.token = token

    def __enter__(self):
        _ENV_LOCK.acquire()
        self.saved = {k: os.environ.pop(k, None) for k in _CRED_VARS}
        os.environ["MLFLOW_TRACKING_TOKEN"] = self.token

    def __exit__(self, *exc):
        for k in _CRED_VARS:
            os.environ.pop(k, None)
            if self.saved[k] is not None:
                os.environ[k] = self.saved[k]
        _ENV_LOCK.release()


def _translate(e: Exception, uri: str) -> ModelSourceError:
    code = getattr(e, "error_code", "") or ""
    text = getattr(e, "message", None) or str(e)
    first = text.splitlines()[0] if text else type(e).__name__
    if "PERMISSION_DENIED" in code or "PERMISSION_DENIED" in text or "403" in first:
        # MLflow answers the same for another user's run and a run that does not exist
        return ModelSourceError(403, f"You cannot read the model {uri} in MLflow (no such model of yours, "
                                     "and none shared with you)")
    if "UNAUTHENTICATED" in code or "401" in first:
        return ModelSourceError(401, "MLflow did not accept your hub token")
    if ("RESOURCE_DOES_NOT_EXIST" in code or "RESOURCE_DOES_NOT_EXIST" in text or "INVALID_PARAMETER_VALUE" in code
            or "not found" in text.lower() or "No such file" in text or "404" in first):
        return ModelSourceError(400, f"No model at {uri} in MLflow: {first[:300]}")
    return ModelSourceError(502, f"MLflow could not give the model {uri}: {first[:300]}")


def inspect(tracking_uri: str, token: str, uri: str) -> dict:
    """Check that the caller can read `uri` and that we can package it: {"flavour", "onnx_file"}.
    Raises ModelSourceError with a status for the caller."""
    if uri.lower().endswith(".onnx"):
        _download(tracking_uri, token, uri, None, check_only=True)
        return {"flavour": "onnx", "onnx_file": True}
    from mlflow.models import get_model_info
    with _AsCaller(token):
        try:
            info = get_model_info(_with_tracking(uri, tracking_uri))
        except Exception as e:  # mlflow raises MlflowException, OSError, ... for one cause
            raise _translate(e, uri) from None
    flavours = [f for f in info.flavors if f != "python_function"]
    usable = [f for f in SUPPORTED_FLAVOURS if f in flavours]
    if not usable:
        raise ModelSourceError(400, f"The model {uri} has flavour(s) {', '.join(flavours) or 'none'}; "
                                    f"deployable flavours are {', '.join(SUPPORTED_FLAVOURS)}")
    return {"flavour": usable[0], "onnx_file": False}


def _with_tracking(uri: str, tracking_uri: str) -> str:
    # get_model_info resolves runs:/ and models:/ against the default tracking URI
    import mlflow
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return uri


def _download(tracking_uri: str, token: str, uri: str, dest: Path | None, check_only: bool = False) -> Path:
    import tempfile

    import mlflow
    with _AsCaller(token):
        try:
            if check_only:
                if not uri.startswith("runs:/"):
                    return Path(uri)  # checked when downloaded
                run_id, _, path = uri[len("runs:/"):].partition("/")
                folder = str(Path(path).parent) if "/" in path else None
                listed = mlflow.artifacts.list_artifacts(run_id=run_id, artifact_path=folder,
                                                         tracking_uri=tracking_uri)
                if not any(a.path == path for a in listed):
                    raise ModelSourceError(400, f"No model at {uri} in MLflow")
                return Path(path)
            return Path(mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=str(dest or tempfile.mkdtemp()), tracking_uri=tracking_uri))
        except ModelSourceError:
            raise
        except Exception as e:
            raise _translate(e, uri) from None


def download(tracking_uri: str, token: str, uri: str, dest: Path) -> Path:
    """Download the model (an MLflow model directory, or one .onnx file) into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    return _download(tracking_uri, token, uri, dest)


def copy_file(path: Path, dest: Path) -> Path:
    """A workspace .onnx file, copied so later edits of the file do not change the deployment."""
    import shutil
    dest.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(path, dest / path.name))
