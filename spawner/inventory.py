"""Site inventories: what each site has, what is in use, what is free.

An inventory is kept up to date by whoever watches the site (the local backend's own
accounting, a Slurm poller, Kubernetes reflectors) and read by placement, the spawn
form and the API. Nodes are indexed by (GPU type, free GPU count) so placement looks
at a handful of buckets instead of every node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

NO_GPU = ""  # bucket key for "this node, ignoring GPUs"


@dataclass(frozen=True)
class Allocation:
    """Resources reserved for one session on one node of one site."""

    site: str
    node: str
    cpus: float
    memory: int
    gpu_type: str = ""
    gpu_ids: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        return {"site": self.site, "node": self.node, "cpus": self.cpus, "memory": self.memory,
                "gpu_type": self.gpu_type, "gpu_ids": list(self.gpu_ids)}

    @classmethod
    def from_dict(cls, d: dict) -> "Allocation":
        return cls(site=d["site"], node=d["node"], cpus=float(d["cpus"]), memory=int(d["memory"]),
                   gpu_type=d.get("gpu_type", ""), gpu_ids=tuple(d.get("gpu_ids", ())))


class InventoryError(RuntimeError):
    """An allocation that does not match the inventory (unknown node, GPUs taken)."""


class Node:
    __slots__ = ("name", "cpus", "memory", "cpus_used", "memory_used", "gpu_total", "gpu_free")

    def __init__(self, name: str, cpus: float, memory: int, gpus: dict[str, int] | None = None):
        self.name = name
        self.cpus = float(cpus)
        self.memory = int(memory)
        self.cpus_used = 0.0
        self.memory_used = 0
        self.gpu_total: dict[str, int] = dict(gpus or {})
        # free device indices per type; the lowest are handed out first
        self.gpu_free: dict[str, set[int]] = {t: set(range(n)) for t, n in self.gpu_total.items()}

    @property
    def free_cpus(self) -> float:
        return self.cpus - self.cpus_used

    @property
    def free_memory(self) -> int:
        return self.memory - self.memory_used

    def fits(self, cpus: float, memory: int) -> bool:
        return self.cpus - self.cpus_used >= cpus - 1e-9 and self.memory - self.memory_used >= memory


@dataclass
class GpuSummary:
    type: str
    total: int = 0
    free: int = 0
    max_free_on_a_node: int = 0

    @property
    def used(self) -> int:
        return self.total - self.free


class SiteInventory:
    """Capacity and use of one site, indexed for placement.

    Not thread-safe: the hub changes and reads inventories on its event-loop thread only
    (pollers and reflector callbacks run there), which is what keeps placement lock-free.
    """

    def __init__(self, site: str, kind: str = "local", max_sessions: int | None = None):
        self.site = site
        self.kind = kind
        self.max_sessions = max_sessions
        self.sessions = 0
        self.up = True
        self.down_reason = ""
        self.version = 0  # bumped on every change; cheap staleness checks
        self.nodes: dict[str, Node] = {}
        self._gpu_capacity: dict[str, int] = {}  # per type, kept in add/remove_node
        # gpu type -> free count -> {node name: node}; NO_GPU -> 0 -> every node
        self._buckets: dict[str, dict[int, dict[str, Node]]] = {}

    # ------------------------------------------------------------ building

    def add_node(self, node: Node) -> Node:
        if node.name in self.nodes:
            self._unindex(self.nodes[node.name])
            self._count_capacity(self.nodes[node.name], -1)
        self.nodes[node.name] = node
        self._index(node)
        self._count_capacity(node, +1)
        self.version += 1
        return node

    def remove_node(self, name: str) -> None:
        node = self.nodes.pop(name, None)
        if node is not None:
            self._unindex(node)
            self._count_capacity(node, -1)
            self.version += 1

    def set_health(self, up: bool, reason: str = "") -> None:
        if up != self.up or reason != self.down_reason:
            self.up, self.down_reason = up, ("" if up else reason)
            self.version += 1

    def _count_capacity(self, node: Node, sign: int) -> None:
        for t, n in node.gpu_total.items():
            self._gpu_capacity[t] = self._gpu_capacity.get(t, 0) + sign * n

    def gpu_capacity(self, gpu_type: str) -> int:
        return self._gpu_capacity.get(gpu_type, 0)

    def _index(self, node: Node) -> None:
        self._buckets.setdefault(NO_GPU, {}).setdefault(0, {})[node.name] = node
        for t, free in node.gpu_free.items():
            self._buckets.setdefault(t, {}).setdefault(len(free), {})[node.name] = node

    def _unindex(self, node: Node) -> None:
        self._buckets[NO_GPU][0].pop(node.name, None)
        for t, free in node.gpu_free.items():
            bucket = self._buckets.get(t, {}).get(len(free))
            if bucket is not None:
                bucket.pop(node.name, None)

    # ------------------------------------------------------------ queries

    @property
    def gpu_types(self) -> tuple[str, ...]:
        return tuple(t for t in self._buckets if t != NO_GPU)

    def find_node(self, cpus: float, memory: int, gpu_type: str, gpus: int) -> Node | None:
        """A node with room for the request, packing GPUs (fewest free GPUs that still fit)."""
        if gpus <= 0:
            # prefer nodes without GPUs, so CPU sessions do not block GPU nodes
            for node in self._buckets.get(NO_GPU, {}).get(0, {}).values():
                if not node.gpu_total and node.fits(cpus, memory):
                    return node
            for node in self._buckets.get(NO_GPU, {}).get(0, {}).values():
                if node.fits(cpus, memory):
                    return node
            return None
        by_free = self._buckets.get(gpu_type)
        if not by_free:
            return None
        for free in sorted(k for k in by_free if k >= gpus):
            for node in by_free[free].values():
                if node.fits(cpus, memory):
                    return node
        return None

    def gpu_summary(self) -> dict[str, GpuSummary]:
        out: dict[str, GpuSummary] = {}
        for node in self.nodes.values():
            for t, total in node.gpu_total.items():
                s = out.setdefault(t, GpuSummary(t))
                s.total += total
                free = len(node.gpu_free[t])
                s.free += free
                s.max_free_on_a_node = max(s.max_free_on_a_node, free)
        return out

    def totals(self) -> dict:
        cpus = sum(n.cpus for n in self.nodes.values())
        cpus_used = sum(n.cpus_used for n in self.nodes.values())
        mem = sum(n.memory for n in self.nodes.values())
        mem_used = sum(n.memory_used for n in self.nodes.values())
        return {"cpus": cpus, "cpus_used": cpus_used, "memory": mem, "memory_used": mem_used}

    def free_gpus(self, gpu_type: str) -> int:
        by_free = self._buckets.get(gpu_type, {})
        return sum(k * len(b) for k, b in by_free.items())

    def max_free_gpus_on_a_node(self, gpu_type: str) -> int:
        by_free = self._buckets.get(gpu_type, {})
        return max((k for k, b in by_free.items() if b), default=0)

    # ------------------------------------------------------------ accounting

    def allocate(self, node_name: str, cpus: float, memory: int, gpu_type: str = "",
                 gpus: int = 0, gpu_ids: Iterable[int] | None = None) -> Allocation:
        """Reserve resources on a node. With gpu_ids, reserve exactly those (restoring state)."""
        node = self.nodes.get(node_name)
        if node is None:
            raise InventoryError(f"{self.site}: no node {node_name!r}")
        if not node.fits(cpus, memory):
            raise InventoryError(f"{self.site}/{node_name}: not enough CPU or memory free")
        chosen: tuple[int, ...] = ()
        if gpu_ids is not None:
            gpu_ids = tuple(gpu_ids)
            gpus = len(gpu_ids)
        if gpus:
            free = node.gpu_free.get(gpu_type)
            if free is None or len(free) < gpus:
                raise InventoryError(f"{self.site}/{node_name}: {gpus} {gpu_type} GPUs not free")
            if gpu_ids is not None:
                if not set(gpu_ids) <= free:
                    raise InventoryError(f"{self.site}/{node_name}: {gpu_type} GPUs {gpu_ids} taken")
                chosen = gpu_ids
            else:
                chosen = tuple(sorted(free)[:gpus])
        self._unindex(node)
        node.cpus_used += cpus
        node.memory_used += memory
        if chosen:
            node.gpu_free[gpu_type].difference_update(chosen)
        self._index(node)
        self.sessions += 1
        self.version += 1
        return Allocation(self.site, node_name, cpus, memory, gpu_type if chosen else "", chosen)

    def count_restored(self) -> None:
        """Count a session restored after a hub restart on a site whose own view (Slurm's sinfo)
        already holds its resources: nothing is reserved twice, but the session counts."""
        self.sessions += 1
        self.version += 1

    def release(self, alloc: Allocation) -> None:
        node = self.nodes.get(alloc.node)
        if node is None:  # gone from the site (or not polled yet): the session still ends
            self.sessions = max(0, self.sessions - 1)
            self.version += 1
            return
        self._unindex(node)
        node.cpus_used = max(0.0, node.cpus_used - alloc.cpus)
        node.memory_used = max(0, node.memory_used - alloc.memory)
        if alloc.gpu_ids:
            node.gpu_free.setdefault(alloc.gpu_type, set()).update(alloc.gpu_ids)
        self._index(node)
        self.sessions = max(0, self.sessions - 1)
        self.version += 1

    # ------------------------------------------------------------ views

    def to_dict(self) -> dict:
        t = self.totals()
        return {
            "name": self.site,
            "kind": self.kind,
            "up": self.up,
            "down_reason": self.down_reason,
            "sessions": self.sessions,
            "max_sessions": self.max_sessions,
            "nodes": len(self.nodes),
            "cpus": {"capacity": t["cpus"], "used": t["cpus_used"], "free": t["cpus"] - t["cpus_used"]},
            "memory": {"capacity": t["memory"], "used": t["memory_used"],
                       "free": t["memory"] - t["memory_used"]},
            "gpus": [
                {"type": s.type, "capacity": s.total, "used": s.used, "free": s.free,
                 "max_free_on_a_node": s.max_free_on_a_node}
                for s in self.gpu_summary().values()
            ],
        }


def iter_gpu_types(inventories: Iterable[SiteInventory]) -> Iterator[str]:
    seen: set[str] = set()
    for inv in inventories:
        for t in inv.gpu_types:
            if t not in seen:
                seen.add(t)
                yield t
