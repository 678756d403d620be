"""Governance policy: what each hub group is granted, and the dataset catalogue.

Pure data and a YAML loader (policy.yaml next to sites.yaml), like hub/catalogue.py, whose
reader it reuses so errors read ``policy.yaml: groups.vo-example.max_gpus: expected a
non-negative integer, got -1``.

A user's entitlements are the union of the grants of their hub groups (sites, GPU types,
datasets; the largest per-user GPU quota); a user in no group with a grant gets the
`default` grant. Group quotas (`max_gpus`: GPUs the whole group may hold at once) are
checked by `check_gpu_quota` against the GPUs its members' sessions hold.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from .catalogue import CatalogueError, _Reader, read_yaml
from .datasets import Dataset, Decision, check_use, parse_datasets

ALL = "*"
PolicyError = CatalogueError  # same "file: key.path: expected X, got Y" messages


class QuotaError(Exception):
    """A request over a GPU quota; the message names the quota."""


@dataclass(frozen=True)
class Grant:
    sites: tuple[str, ...] | None = None       # None: every site
    gpu_types: tuple[str, ...] | None = None   # None: every type; (): no GPUs
    max_gpus_per_user: int | None = None       # None: no per-user cap
    max_gpus: int | None = None                # GPUs the whole group may hold at once
    datasets: tuple[str, ...] = ()

    def allows_gpu_type(self, gpu_type: str) -> bool:
        if self.gpu_types is None:
            return True
        if gpu_type in ("any", ""):
            return bool(self.gpu_types)
        return gpu_type in self.gpu_types


OPEN_GRANT = Grant()


@dataclass(frozen=True)
class Entitlements:
    """What one user may use, merged from their groups' grants (an input of placement)."""

    groups: tuple[str, ...] = ()            # the user's groups that have grants
    sites: frozenset[str] | None = None     # None: every site
    gpu_types: frozenset[str] | None = None  # None: every type
    max_gpus_per_user: int | None = None
    datasets: frozenset[str] = frozenset()   # datasets the grants list
    source: str = "no policy"               # which grants these come from, for messages
    dataset_sites: Mapping[str, frozenset[str]] = field(default_factory=dict, hash=False, compare=False)

    def allows_site(self, site: str) -> bool:
        return self.sites is None or site in self.sites

    def allows_gpu_type(self, gpu_type: str) -> bool:
        return self.gpu_types is None or gpu_type in self.gpu_types

    @property
    def may_use_gpus(self) -> bool:
        return (self.gpu_types is None or bool(self.gpu_types)) and self.max_gpus_per_user != 0


UNRESTRICTED = Entitlements()


@dataclass(frozen=True)
class Policy:
    groups: Mapping[str, Grant] = field(default_factory=dict)
    default: Grant = Grant(gpu_types=(), max_gpus_per_user=0)
    datasets: tuple[Dataset, ...] = ()
    source: str = "<policy>"

    def dataset(self, name: str) -> Dataset | None:
        return next((d for d in self.datasets if d.name == name), None)

    def granted_groups(self, user_groups: Iterable[str]) -> list[str]:
        user_groups = set(user_groups)
        return [g for g in self.groups if g in user_groups]  # policy order

    def entitlements(self, user_groups: Iterable[str]) -> Entitlements:
        names = self.granted_groups(user_groups)
        grants = [self.groups[g] for g in names] or [self.default]

        def union(attr):
            values = [getattr(gr, attr) for gr in grants]
            return None if any(v is None for v in values) else frozenset(x for v in values for x in v)

        caps = [gr.max_gpus_per_user for gr in grants]
        return Entitlements(
            groups=tuple(names), sites=union("sites"), gpu_types=union("gpu_types"),
            max_gpus_per_user=None if any(c is None for c in caps) else max(caps),
            datasets=frozenset(d for gr in grants for d in gr.datasets),
            source=f"group{'s' if len(names) > 1 else ''} {', '.join(names)}" if names else "the default grant",
            dataset_sites={d.name: frozenset(d.sites) for d in self.datasets})

    def may_use(self, dataset: Dataset, user_groups: Iterable[str], purpose: str) -> Decision:
        user_groups = list(user_groups)
        return check_use(dataset, user_groups, purpose, self.entitlements(user_groups).datasets)

    def usable_datasets(self, user_groups: Iterable[str], purpose: str, site: str | None = None) -> list[Dataset]:
        user_groups = list(user_groups)
        return [d for d in self.datasets if (site is None or site in d.sites)
                and self.may_use(d, user_groups, purpose)]


# ---------------------------------------------------------------- quotas


def check_gpu_quota(policy: Policy, user_groups: Iterable[str], gpus: int, gpu_type: str,
                    user_gpus_in_use: int, group_gpus_in_use: Mapping[str, int]) -> str:
    """Refuse (QuotaError naming the quota) a request for `gpus` more GPUs over a quota.
    Returns the group the GPUs are charged to ("" for none)."""
    if gpus <= 0:
        return ""
    ent = policy.entitlements(user_groups)
    if not ent.may_use_gpus:
        raise QuotaError(f"GPU quota: {ent.source} grants no GPUs")
    cap = ent.max_gpus_per_user
    if cap is not None and user_gpus_in_use + gpus > cap:
        raise QuotaError(f"GPU quota per user ({ent.source}): at most {cap} GPUs at once; "
                         f"you hold {user_gpus_in_use} and asked for {gpus}")
    if not ent.groups:
        return ""
    candidates = [g for g in ent.groups if policy.groups[g].allows_gpu_type(gpu_type)]
    for g in candidates:
        limit = policy.groups[g].max_gpus
        if limit is None or group_gpus_in_use.get(g, 0) + gpus <= limit:
            return g
    g = candidates[0] if candidates else ent.groups[0]
    limit = policy.groups[g].max_gpus
    raise QuotaError(f"GPU quota of group {g}: at most {limit} GPUs at once for the whole group; "
                     f"{group_gpus_in_use.get(g, 0)} in use, {gpus} asked for")


# ---------------------------------------------------------------- loading


def _grant(r: _Reader, raw: Any, path: str, site_names, gpu_types) -> Grant:
    r.mapping(raw, path, {"sites", "gpu_types", "max_gpus_per_user", "max_gpus", "datasets"})

    def names(key, known, what):
        value = raw.get(key, ALL)
        if value == ALL:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            r.fail(f"{path}.{key}", f"'*' or a list of {what}", value)
        for v in value:
            if known is not None and v not in known:
                r.fail(f"{path}.{key}", f"{what} among {sorted(known)}", v)
        return tuple(value)

    def cap(key):
        value = raw.get(key)
        return None if value is None else r.positive_int(value, f"{path}.{key}", allow_zero=True)

    datasets = raw.get("datasets", [])
    if not isinstance(datasets, list) or not all(isinstance(d, str) for d in datasets):
        r.fail(f"{path}.datasets", "a list of dataset names", datasets)
    return Grant(sites=names("sites", site_names, "site names"),
                 gpu_types=names("gpu_types", gpu_types, "GPU types"),
                 max_gpus_per_user=cap("max_gpus_per_user"), max_gpus=cap("max_gpus"),
                 datasets=tuple(datasets))


def policy_from_dict(doc: Any, source: str = "<policy>", catalogue=None) -> Policy:
    """Validate a policy document; with a catalogue, site and GPU type names are checked too."""
    r = _Reader(source)
    if doc is None:
        doc = {}
    r.mapping(doc, "", {"groups", "default", "datasets"})
    site_names = set(catalogue.site_names) if catalogue is not None else None
    gpu_types = set(catalogue.gpu_types) if catalogue is not None else None
    groups: dict[str, Grant] = {}
    raw_groups = doc.get("groups")
    raw_groups = {} if raw_groups is None else raw_groups
    if not isinstance(raw_groups, dict):
        r.fail("groups", "a mapping of hub group name -> grant", raw_groups)
    for name, raw in raw_groups.items():
        if not isinstance(name, str) or not name:
            r.fail("groups", "hub group names as keys", name)
        groups[name] = _grant(r, raw, f"groups.{name}", site_names, gpu_types)
    default = Policy.default
    if "default" in doc:
        default = _grant(r, doc["default"], "default", site_names, gpu_types)
    site_kinds = {s.name: s.kind for s in catalogue.sites} if catalogue is not None else None
    datasets = parse_datasets(doc.get("datasets"), r, site_names, site_kinds)
    known = {d.name for d in datasets}
    for name, grant in groups.items():
        for d in grant.datasets:
            if d not in known:
                r.fail(f"groups.{name}.datasets", f"dataset names among {sorted(known)}", d)
    for d in default.datasets:
        if d not in known:
            r.fail("default.datasets", f"dataset names among {sorted(known)}", d)
    if catalogue is not None:
        check_site_datasets(r, datasets, catalogue)
    return Policy(groups=groups, default=default, datasets=datasets, source=source)


def check_site_datasets(r: _Reader, datasets: tuple[Dataset, ...], catalogue) -> None:
    """The policy's dataset locations are authoritative (they carry paths and usage policies);
    a catalogue site that lists `datasets` must list exactly the datasets located there.
    A site that lists none takes them from the policy (`datasets_at`)."""
    where = {d.name: i for i, d in enumerate(datasets)}
    for i, site in enumerate(catalogue.sites):
        if not site.datasets:
            continue
        listed = f"{catalogue.source} sites[{i}].datasets"
        for name in site.datasets:
            if name not in where:
                r.fail("datasets", f"a dataset named {name!r}, which {listed} lists at site {site.name} "
                                   f"(datasets here: {sorted(where)})", show_got=False)
            d = datasets[where[name]]
            if site.name not in d.sites:
                r.fail(f"datasets[{where[name]}].locations",
                       f"a location at site {site.name}, where {listed} lists {name}", list(d.sites))
        for d in datasets:
            if site.name in d.sites and d.name not in site.datasets:
                j = d.sites.index(site.name)
                r.fail(f"datasets[{where[d.name]}].locations[{j}].site",
                       f"a site whose catalogue entry lists {d.name} ({listed} is {list(site.datasets)}; "
                       f"add {d.name} there or leave that list empty to take it from the policy)", site.name)


def datasets_at(policy: "Policy | None", site) -> tuple[str, ...]:
    """The datasets a catalogue site holds: its own `datasets` list, else the policy's locations."""
    if site.datasets or policy is None:
        return tuple(site.datasets)
    return tuple(d.name for d in policy.datasets if site.name in d.sites)


def load_policy(path: str | Path, catalogue=None) -> Policy:
    path = Path(path)
    if not path.exists():
        raise PolicyError(path.name, "groups", "an existing policy file (not found)", show_got=False)
    return policy_from_dict(read_yaml(path), path.name, catalogue)


_cache: dict[str, tuple[int, Policy]] = {}


def cached_policy(path: str | Path | None, catalogue=None) -> Policy | None:
    """The policy at `path`, re-read when the file changes; None when no policy is configured.
    An invalid file raises PolicyError (callers refuse rather than run without governance)."""
    if not path:
        return None
    mtime = os.stat(path).st_mtime_ns if os.path.exists(path) else -1
    hit = _cache.get(str(path))
    if hit and hit[0] == mtime:
        return hit[1]
    policy = load_policy(path, catalogue)
    _cache[str(path)] = (mtime, policy)
    return policy
