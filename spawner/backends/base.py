"""What a site backend is: the bridge between one catalogue site and one Spawner class.

FederatedSpawner never starts anything itself. For the site placement chose it asks
the site's backend for a spawner class and trait overrides, builds that spawner
(a LocalProcessSpawner, a KubeSpawner, a batchspawner SlurmSpawner...) and delegates
start/poll/stop to it. Backends also own the site's inventory and whatever keeps it
fresh (nothing for local sites; a poller for Slurm; reflectors for Kubernetes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedhub.hub.catalogue import Site

from ..inventory import Allocation, SiteInventory

if TYPE_CHECKING:  # pragma: no cover
    from typing import Mapping

    from jupyterhub.spawner import Spawner

    from fedhub.hub.datasets import DatasetLocation

    from ..placement import SessionRequest


def merged_overrides(overrides: dict, extra: dict) -> dict:
    """`overrides` plus `extra`; list values (volumes, mounts) are added to, not replaced."""
    out = dict(overrides)
    for key, value in extra.items():
        out[key] = [*out.get(key, []), *value] if isinstance(value, list) else value
    return out


class SiteOptionError(ValueError):
    """A bad `options` entry of a site; the federation adds the file and key path."""

    def __init__(self, key: str, expected: str, got=None):
        self.key, self.expected, self.got = key, expected, got
        super().__init__(f"options.{key}: expected {expected}")


class SiteBackend:
    """Base class; one instance per site, shared by every user's spawner."""

    kind = "base"
    #: seconds a start may take on this site before the next site is tried (None: the spawner's)
    start_timeout: float | None = None
    #: the longest a session may run here (a batch system's walltime), in hours; None: no site limit
    max_session_hours: float | None = None
    #: the site's own view of its nodes counts running sessions (a batch system's queue): a
    #: session restored after a hub restart needs no reservation of its own
    site_counts_sessions = False

    def __init__(self, site: Site, log=None):
        self.site = site
        self.log = log
        self.inventory = self.build_inventory()

    def build_inventory(self) -> SiteInventory:
        raise NotImplementedError

    def spawner_class(self) -> type["Spawner"]:
        raise NotImplementedError

    def spawner_overrides(self, allocation: Allocation, request: "SessionRequest") -> dict:
        """Trait values for the site's spawner (resources, environment...)."""
        return {}

    def session_env(self, allocation: Allocation, request: "SessionRequest") -> dict[str, str]:
        """Environment every session sees, whatever the backend: where it runs and on what."""
        env = {
            "FEDHUB_SITE": allocation.site,
            "FEDHUB_SITE_KIND": self.site.kind,
            "FEDHUB_NODE": allocation.node,
            "FEDHUB_SESSION_TYPE": request.session_type,
            "FEDHUB_CPUS": f"{allocation.cpus:g}",
            "FEDHUB_MEMORY": str(allocation.memory),
            "FEDHUB_GPU_TYPE": allocation.gpu_type,
            "FEDHUB_GPUS": str(len(allocation.gpu_ids)),
        }
        return env

    def dataset_overrides(self, datasets: "Mapping[str, DatasetLocation]") -> dict:
        """Trait values that make exactly these datasets (name -> location here) reachable in the
        session, and no other (local, Slurm: ~/datasets links; Kubernetes: read-only volumes).
        List values are added to the backend's own lists (volumes...)."""
        return {}

    def dataset_paths(self, datasets: "Mapping[str, DatasetLocation]") -> dict[str, str]:
        """Where the session sees each dataset (FEDHUB_DATASET_<NAME>): the site's path by default."""
        return {name: loc.path for name, loc in datasets.items()}

    def note_starting(self, allocation: Allocation) -> None:
        """A fedhub session was placed here and is starting (the site may not count it yet)."""

    def note_settled(self, allocation: Allocation) -> None:
        """That session is running or gone: the site's own view counts it from now on."""

    def abandon(self, spawner) -> None:
        """A start on this site failed and its spawner could not be stopped cleanly:
        remember it so nothing is left running once the site answers again."""

    async def start_watching(self, on_change=lambda: None) -> None:
        """Start whatever keeps the inventory fresh (once per hub process); call on_change after updates."""

    async def stop_watching(self) -> None:
        """Stop pollers and watches."""
