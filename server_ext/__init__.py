"""fedhub inside a session: the jupyter-server extension, clients, CLI, widgets, capture.

Kept light: nothing heavy (mlflow, tornado handlers) is imported until used.
"""

from __future__ import annotations


def _jupyter_server_extension_points():
    return [{"module": "fedhub.server_ext"}]


def _load_jupyter_server_extension(serverapp):
    from .extension import load

    load(serverapp)


def _jupyter_labextension_paths():
    return [{"src": "labextension", "dest": "@fedhub/labextension"}]


def __getattr__(name):
    # `from fedhub.server_ext import track` without importing mlflow at package import
    if name == "track":
        from .capture import track

        return track
    raise AttributeError(name)
