"""Local sites: sessions run as processes on the hub's own machine.

A local site declares its CPUs, memory and GPUs in the catalogue; the inventory is
that declaration minus what fedhub's own sessions hold (one node per site). GPUs are
handed out by index through CUDA_VISIBLE_DEVICES, as Slurm and the NVIDIA device
plugin do on real sites.
"""

from __future__ import annotations

import psutil
from jupyterhub.spawner import SimpleLocalProcessSpawner
from traitlets import Dict, Unicode

from ..inventory import Node, SiteInventory
from .base import SiteBackend
from .dataset_links import link_overrides, session_command


class LocalSiteSpawner(SimpleLocalProcessSpawner):
    """SimpleLocalProcessSpawner that survives hub restarts on this machine.

    `os.kill(pid, 0)` succeeds for a zombie, and orphaned single-user servers become
    zombies after a hub restart where nothing reaps them, so a zombie counts as gone.
    """

    home_dir_template = Unicode(
        "/tmp/fedhub-homes/{username}", config=True,
        help="Home directory of a user's local sessions; {username} is expanded.",
    )
    dataset_links = Dict(
        default_value=None, allow_none=True,
        help="Datasets this session may use (name -> path): ~/datasets/<name> links made at start, "
             "links to any other dataset removed. None (no policy): ~/datasets is left alone. "
             "Set by FederatedSpawner from the governance policy.",
    )

    async def start(self):
        if self.dataset_links is None:
            return await super().start()
        base = list(self.cmd)
        self.cmd = session_command(base, self.dataset_links)
        try:
            return await super().start()
        finally:
            self.cmd = base

    async def _signal(self, sig):
        try:
            if psutil.Process(self.pid).status() == psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            return False
        return await super()._signal(sig)


class LocalBackend(SiteBackend):
    kind = "local"

    def build_inventory(self) -> SiteInventory:
        inv = SiteInventory(self.site.name, kind=self.kind, max_sessions=self.site.max_sessions)
        inv.add_node(Node(self.site.options.get("node", "localhost"), self.site.cpus,
                          self.site.memory, {g.type: g.count for g in self.site.gpus}))
        return inv

    def spawner_class(self):
        return LocalSiteSpawner

    def spawner_overrides(self, allocation, request):
        env = self.session_env(allocation, request)
        # an empty CUDA_VISIBLE_DEVICES hides every GPU, which is right for CPU sessions
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in allocation.gpu_ids)
        return {
            "environment": env,
            "cpu_limit": allocation.cpus,
            "mem_limit": allocation.memory,
        }

    def dataset_overrides(self, datasets):
        return link_overrides(datasets)
