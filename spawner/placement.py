"""Placement: (request, inventories, user's entitlements) -> ranked sites, each with a reason.

A pure function of its inputs: it reads inventories and never changes them, so the
spawner, the spawn form, the API and the benchmarks all get the same answer.
Ranking spreads sessions: the site with the largest share of the requested resource
still free comes first (ties keep catalogue order), and within a site GPUs are packed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from fedhub.hub.catalogue import format_memory
from fedhub.hub.policy import Entitlements

from .inventory import SiteInventory

ANY_GPU = "any"


@dataclass(frozen=True)
class SessionRequest:
    cpus: float = 1.0
    memory: int = 10**9
    gpus: int = 0
    gpu_type: str = ANY_GPU  # a type name, or "any"; ignored when gpus == 0
    site: str | None = None  # None = auto
    session_type: str = "jupyterlab"
    datasets: tuple[str, ...] = ()  # the session needs these datasets: only sites holding them

    def describe(self) -> str:
        parts = [f"{self.cpus:g} CPU", f"{format_memory(self.memory)} memory"]
        if self.gpus:
            kind = "GPU" if self.gpu_type == ANY_GPU else f"{self.gpu_type} GPU"
            parts.append(f"{self.gpus} {kind}{'s' if self.gpus > 1 else ''}")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {"cpus": self.cpus, "memory": self.memory, "gpus": self.gpus,
                "gpu_type": self.gpu_type, "site": self.site, "session_type": self.session_type,
                "datasets": list(self.datasets)}


@dataclass(frozen=True)
class Candidate:
    site: str
    node: str
    gpu_type: str  # the concrete type chosen ("" with no GPUs)
    score: float
    reason: str


@dataclass
class Ranking:
    candidates: list[Candidate] = field(default_factory=list)
    # site -> why not; a reason that costs a scan is a callable, run only when asked
    _reasons: dict[str, "str | Callable[[], str]"] = field(default_factory=dict)

    @property
    def rejected(self) -> dict[str, str]:
        return {site: r if isinstance(r, str) else r() for site, r in self._reasons.items()}

    def __bool__(self) -> bool:
        return bool(self.candidates)

    def refusal(self, request: SessionRequest) -> str:
        why = "; ".join(f"{site}: {reason}" for site, reason in self.rejected.items())
        return f"No site can run {request.describe()} now. {why or 'No sites are configured.'}"


def _why_not(inv: SiteInventory, req: SessionRequest, gpu_types: Sequence[str]) -> str:
    """Explain a rejection by the first resource that is missing (slow path, refusals only)."""
    if not inv.nodes:
        return "no usable nodes (down, drained or not responding)"
    if req.gpus:
        present = [t for t in gpu_types if t in inv.gpu_types]
        if not present:
            wanted = "GPUs" if req.gpu_type == ANY_GPU else f"{req.gpu_type} GPUs"
            return f"has no {wanted}"
        best = max(present, key=inv.max_free_gpus_on_a_node)
        most = inv.max_free_gpus_on_a_node(best)
        if most < req.gpus:
            total = inv.gpu_capacity(best)
            return f"{req.gpus} {best} GPUs requested, at most {most} free on one node ({total} in total)"
    largest_cpu = max((n.free_cpus for n in inv.nodes.values()), default=0)
    if largest_cpu < req.cpus - 1e-9:
        return f"{req.cpus:g} CPUs requested, at most {largest_cpu:g} free on one node"
    largest_mem = max((n.free_memory for n in inv.nodes.values()), default=0)
    if largest_mem < req.memory:
        return (f"{format_memory(req.memory)} memory requested, "
                f"at most {format_memory(largest_mem)} free on one node")
    return "no single node has the CPUs, memory and GPUs together"


def _score(inv: SiteInventory, node, req: SessionRequest, gpu_type: str) -> tuple[float, str]:
    """Share of the site's requested resource free after placing (higher = emptier)."""
    if req.gpus:
        free = inv.free_gpus(gpu_type)
        total = inv.gpu_capacity(gpu_type) or 1
        return (free - req.gpus) / total, f"{free} of {total} {gpu_type} GPUs free"
    cpus = sum(n.cpus for n in inv.nodes.values()) if len(inv.nodes) < 64 else None
    if cpus is None:  # large sites: the chosen node stands in for the site, O(1)
        return (node.free_cpus - req.cpus) / node.cpus, f"{node.free_cpus:g} CPUs free on {node.name}"
    free = cpus - sum(n.cpus_used for n in inv.nodes.values())
    return (free - req.cpus) / cpus, f"{free:g} of {cpus:g} CPUs free"


def _not_entitled(inv: SiteInventory, req: SessionRequest, ent: Entitlements | None) -> str:
    """Why the user's grants or the request's datasets rule this site out ('' if they do not)."""
    if ent is None:
        return ""
    if not ent.allows_site(inv.site):
        return f"not granted to you ({ent.source})"
    for name in req.datasets:
        if inv.site not in ent.dataset_sites.get(name, ()):
            return f"does not hold dataset {name}"
    if req.gpus:
        wanted = inv.gpu_types if req.gpu_type == ANY_GPU else (req.gpu_type,)
        if wanted and not any(ent.allows_gpu_type(t) for t in wanted):
            return f"its {'/'.join(wanted)} GPUs are not granted to you ({ent.source})"
    return ""


def rank_sites(req: SessionRequest, inventories: Sequence[SiteInventory],
               entitlements: Entitlements | None = None) -> Ranking:
    """Every site that can run `req` now, best first, and why the others cannot.
    `entitlements` (None: no policy) limits the sites and GPU types to the user's grants."""
    ranking = Ranking()
    scored: list[tuple[float, int, Candidate]] = []
    for order, inv in enumerate(inventories):
        if req.site is not None and inv.site != req.site:
            continue
        denied = _not_entitled(inv, req, entitlements)
        if denied:
            ranking._reasons[inv.site] = denied
            continue
        if not inv.up:
            ranking._reasons[inv.site] = f"down ({inv.down_reason or 'not answering'})"
            continue
        if inv.max_sessions is not None and inv.sessions >= inv.max_sessions:
            ranking._reasons[inv.site] = f"full ({inv.sessions} of {inv.max_sessions} sessions)"
            continue
        if req.gpus:
            types = inv.gpu_types if req.gpu_type == ANY_GPU else (req.gpu_type,)
            if entitlements is not None:
                types = tuple(t for t in types if entitlements.allows_gpu_type(t))
        else:
            types = ("",)
        best: tuple[float, Candidate] | None = None
        for t in types:
            node = inv.find_node(req.cpus, req.memory, t, req.gpus)
            if node is None:
                continue
            score, detail = _score(inv, node, req, t)
            if best is None or score > best[0]:
                best = (score, Candidate(inv.site, node.name, t, score, detail))
        if best is None:
            types_for_reason = inv.gpu_types if req.gpu_type == ANY_GPU else (req.gpu_type,)
            ranking._reasons[inv.site] = (
                lambda inv=inv, types=types_for_reason: _why_not(inv, req, types))
            continue
        scored.append((-best[0], order, best[1]))
    scored.sort(key=lambda x: (x[0], x[1]))
    for rank, (_, _, cand) in enumerate(scored):
        if req.site is not None:
            why = "the site you asked for"
        elif rank == 0 and len(scored) > 1:
            why = "most free capacity"
        elif rank == 0:
            why = "the only site with room"
        else:
            why = f"fallback #{rank}"
        ranking.candidates.append(
            Candidate(cand.site, cand.node, cand.gpu_type, cand.score, f"{why}: {cand.reason}"))
    return ranking
