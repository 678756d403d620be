"""A Kubernetes site's inventory, computed from node and pod objects (API JSON shape).

`inventory_from()` is pure: reflectors hand it the nodes and pods they hold, tests hand it
recorded lists. Free = node allocatable minus the requests of the pods bound to the node
that still hold resources, which is what the scheduler itself subtracts.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

from ..inventory import Allocation, Node, SiteInventory
from .k8s_manifests import ALLOCATION_LABEL, DEFAULT_GPU_PRODUCT_LABEL, GPU_RESOURCE

_QUANTITY_RE = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
_SUFFIX = {None: 1, "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
           "P": 1e15, "E": 1e18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
           "Pi": 2**50, "Ei": 2**60}
_DONE_PHASES = ("Succeeded", "Failed")  # pods in these hold no node resources


def parse_quantity(value) -> float:
    """A Kubernetes quantity ('7500m', '32Gi', '1e3', 4) as a number of base units."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = _QUANTITY_RE.match(str(value).strip())
    if not m:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    number = float(m.group(1)) * (10 ** int(m.group(2)[1:]) if m.group(2) else 1)
    return number * _SUFFIX[m.group(3)]


def _resources(container: dict) -> tuple[float, float, int]:
    res = container.get("resources") or {}
    req, lim = res.get("requests") or {}, res.get("limits") or {}
    # extended resources (GPUs) may be given as limits only: requests default to them
    gpus = req.get(GPU_RESOURCE, lim.get(GPU_RESOURCE, 0))
    cpu = req.get("cpu", lim.get("cpu", 0))
    mem = req.get("memory", lim.get("memory", 0))
    return parse_quantity(cpu), parse_quantity(mem), int(parse_quantity(gpus))


def pod_requests(pod: dict) -> tuple[float, int, int]:
    """(CPUs, memory bytes, GPUs) the scheduler reserves for a pod.

    max(sum of containers + sidecars, largest ordinary init container + sidecars) + overhead:
    init containers run one at a time before the app containers; sidecars (init containers
    with restartPolicy Always) keep running next to them.
    """
    spec = pod.get("spec") or {}
    main = [_resources(c) for c in spec.get("containers") or []]
    sidecars = [_resources(c) for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    inits = [_resources(c) for c in spec.get("initContainers") or [] if c.get("restartPolicy") != "Always"]
    side = [sum(r[i] for r in sidecars) for i in range(3)]
    total = [sum(r[i] for r in main) + side[i] for i in range(3)]
    for r in inits:
        total = [max(total[i], r[i] + side[i]) for i in range(3)]
    overhead = spec.get("overhead") or {}
    total[0] += parse_quantity(overhead.get("cpu", 0))
    total[1] += parse_quantity(overhead.get("memory", 0))
    return total[0], int(total[1]), int(total[2])


def holds_resources(pod: dict) -> bool:
    """Bound to a node and not finished (Pending-but-bound pods already hold their requests)."""
    return bool((pod.get("spec") or {}).get("nodeName")) and \
        (pod.get("status") or {}).get("phase") not in _DONE_PHASES


def node_unusable(node: dict) -> str:
    """Why sessions cannot go to this node ('' if they can)."""
    if (node.get("spec") or {}).get("unschedulable"):
        return "cordoned"
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return "" if cond.get("status") == "True" else "NotReady"
    return "NotReady"  # no Ready condition reported yet


def gpu_type_of(node: dict, label: str, products: dict[str, str] | None) -> str:
    """The fedhub GPU type of a node: its product label mapped back through `products`
    (fedhub type -> label value). Without a mapping the label value is the type; with one,
    unmapped products are not offered (nothing could request them)."""
    product = ((node.get("metadata") or {}).get("labels") or {}).get(label, "")
    if not product:
        return ""  # no product label: a node selector could not target it
    if products is None:
        return product
    for gpu_type, value in products.items():
        if value == product:
            return gpu_type
    return ""


def inventory_from(site_name: str, nodes: Iterable[dict], pods: Iterable[dict], *,
                   gpu_products: dict[str, str] | None = None,
                   gpu_product_label: str = DEFAULT_GPU_PRODUCT_LABEL,
                   node_selector: dict | None = None, max_sessions: int | None = None,
                   inventory_class: type[SiteInventory] = SiteInventory) -> SiteInventory:
    """The site's inventory: usable nodes matching `node_selector`, minus bound pods' requests."""
    inv = inventory_class(site_name, kind="kubernetes", max_sessions=max_sessions)
    wanted = dict(node_selector or {})
    for raw in nodes:
        labels = (raw.get("metadata") or {}).get("labels") or {}
        if node_unusable(raw) or any(labels.get(k) != v for k, v in wanted.items()):
            continue
        alloc = (raw.get("status") or {}).get("allocatable") or {}
        gpu_type = gpu_type_of(raw, gpu_product_label, gpu_products)
        count = int(parse_quantity(alloc.get(GPU_RESOURCE, 0))) if gpu_type else 0
        inv.add_node(Node(raw["metadata"]["name"], parse_quantity(alloc.get("cpu", 0)),
                          int(parse_quantity(alloc.get("memory", 0))), {gpu_type: count} if count else None))
    for pod in pods:
        node = inv.nodes.get((pod.get("spec") or {}).get("nodeName", ""))
        if node is not None and holds_resources(pod):
            charge(inv, node, *pod_requests(pod))
    return inv


def charge(inv: SiteInventory, node: Node, cpus: float, memory: int, gpus: int) -> None:
    """Count usage on a node, keeping the inventory's GPU index current. Other workloads take
    the highest free GPU indices, so fedhub's own reservations keep theirs."""
    inv._unindex(node)
    node.cpus_used += cpus
    node.memory_used += memory
    for free in node.gpu_free.values():
        for index in sorted(free, reverse=True)[:gpus]:
            free.discard(index)
    inv._index(node)
    inv.version += 1


def placed_allocation_tokens(pods: Iterable[dict]) -> set[str]:
    """Reservation tokens of fedhub pods the cluster already counts."""
    return {((p.get("metadata") or {}).get("labels") or {}).get(ALLOCATION_LABEL, "")
            for p in pods if holds_resources(p)} - {""}


class KubeSiteInventory(SiteInventory):
    """A Kubernetes site's live inventory. Its nodes and usage come from the cluster (pods),
    plus fedhub sessions still starting; fedhub's own bookkeeping only adds the reservation
    of a new session until the next rebuild, so nothing is counted twice.
    """

    def __init__(self, *args, on_release: Callable[[], None] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.on_release = on_release

    def allocate(self, node_name, cpus, memory, gpu_type="", gpus=0, gpu_ids=None) -> Allocation:
        if gpu_ids is not None:
            # restoring a session after a hub restart: its pod is already counted (or gone);
            # count the session only, even before the first node list arrives
            self.sessions += 1
            self.version += 1
            ids = tuple(gpu_ids)
            return Allocation(self.site, node_name, cpus, memory, gpu_type if ids else "", ids)
        return super().allocate(node_name, cpus, memory, gpu_type, gpus)

    def release(self, alloc: Allocation) -> None:
        # the pod's requests leave when the reflector sees the pod go: rebuild, don't subtract
        self.sessions = max(0, self.sessions - 1)
        self.version += 1
        if self.on_release is not None:
            self.on_release()

    def replace_nodes(self, fresh: SiteInventory, starting: Iterable[Allocation] = ()) -> None:
        """Become `fresh` (the cluster's view), plus the sessions fedhub is still starting."""
        for name in [n for n in self.nodes if n not in fresh.nodes]:
            self.remove_node(name)
        for node in fresh.nodes.values():
            self.add_node(node)
        for alloc in starting:
            node = self.nodes.get(alloc.node)
            if node is not None:
                charge(self, node, alloc.cpus, alloc.memory, len(alloc.gpu_ids))
