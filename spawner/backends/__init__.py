"""Site backends, by catalogue `kind`."""

from __future__ import annotations

import importlib

# kind -> "module:class"; imported lazily so a hub without kubespawner still starts
BACKENDS = {
    "local": "fedhub.spawner.backends.local:LocalBackend",
    "slurm": "fedhub.spawner.backends.slurm:SlurmBackend",
    "kubernetes": "fedhub.spawner.backends.kubernetes:KubernetesBackend",
}


class BackendNotAvailable(LookupError):
    pass


def backend_class(kind: str):
    target = BACKENDS.get(kind)
    if target is None:
        raise BackendNotAvailable(
            f"no backend for site kind {kind!r} in this fedhub version; available: {sorted(BACKENDS)}")
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)
