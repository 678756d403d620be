"""The dataset catalogue: where each dataset lives, what it is, and how it may be used.

Pure data (no I/O beyond what hub/policy.py hands in). A dataset has locations (site +
path on that site), a self-description served as JSON-LD in the spirit of GAIA-X
self-descriptions (a gx:DataResource that is also a dcat:Dataset, with its usage policy as
an ODRL policy), and a usage policy: which groups may use it, for which purposes
(interactive sessions, federated training, deployment), and whether its data may leave
the site that holds it.

`check_use()` is the one decision function; every refusal names the dataset's policy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

PURPOSES = ("interactive", "federated-training", "deployment")
EVERYONE = "*"  # allowed_groups entry meaning every logged-in user

JSONLD_CONTEXT = {
    "@vocab": "https://schema.org/",
    "gx": "https://w3id.org/gaia-x/development#",
    "dcat": "http://www.w3.org/ns/dcat#",
    "dct": "http://purl.org/dc/terms/",
    "odrl": "http://www.w3.org/ns/odrl/2/",
    "fedhub": "https://fedhub.example.org/ns#",
}


@dataclass(frozen=True)
class DatasetLocation:
    site: str
    path: str  # absolute path on the site; with `pvc`, the folder inside that claim
    pvc: str = ""  # Kubernetes sites: the PersistentVolumeClaim holding it (else a hostPath)

    @property
    def access_url(self) -> str:
        return f"pvc://{self.pvc}{self.path}" if self.pvc else f"file://{self.path}"


@dataclass(frozen=True)
class UsagePolicy:
    allowed_groups: tuple[str, ...] = ()
    purposes: tuple[str, ...] = ("interactive",)
    may_leave_site: bool = False


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str

    def __bool__(self) -> bool:
        return self.allowed


@dataclass(frozen=True)
class Dataset:
    name: str
    locations: tuple[DatasetLocation, ...]
    policy: UsagePolicy = UsagePolicy()
    title: str = ""
    description: str = ""
    license: str = ""
    keywords: tuple[str, ...] = ()
    contains_pii: bool = False
    extra: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(loc.site for loc in self.locations)

    def path_at(self, site: str) -> str | None:
        return next((loc.path for loc in self.locations if loc.site == site), None)

    def location_at(self, site: str) -> DatasetLocation | None:
        return next((loc for loc in self.locations if loc.site == site), None)

    def jsonld(self, base_url: str = "") -> dict:
        """The self-description: GAIA-X DataResource + DCAT dataset + ODRL usage policy."""
        ident = f"{base_url.rstrip('/')}/api/datasets/{self.name}" if base_url else f"urn:fedhub:dataset:{self.name}"
        p = self.policy
        constraints = [{"odrl:leftOperand": "odrl:purpose", "odrl:operator": {"@id": "odrl:isAnyOf"},
                        "odrl:rightOperand": list(p.purposes)}]
        if EVERYONE not in p.allowed_groups:
            constraints.append({"odrl:leftOperand": "fedhub:group", "odrl:operator": {"@id": "odrl:isAnyOf"},
                                "odrl:rightOperand": list(p.allowed_groups)})
        policy = {"@type": "odrl:Set", "@id": f"{ident}#policy",
                  "odrl:permission": [{"odrl:action": {"@id": "odrl:use"}, "odrl:constraint": constraints}]}
        if not p.may_leave_site:
            policy["odrl:prohibition"] = [{"odrl:action": {"@id": "odrl:distribute"},
                                           "fedhub:note": "data may not leave the site that holds it"}]
        return {
            "@context": JSONLD_CONTEXT,
            "@id": ident,
            "@type": ["gx:DataResource", "dcat:Dataset"],
            "name": self.name,
            "dct:title": self.title or self.name,
            "description": self.description,
            "license": self.license,
            "keywords": list(self.keywords),
            "gx:containsPII": self.contains_pii,
            "dcat:distribution": [{"@type": "dcat:Distribution", "fedhub:site": loc.site,
                                   "dcat:accessURL": loc.access_url} for loc in self.locations],
            "fedhub:purposes": list(p.purposes),
            "fedhub:allowedGroups": list(p.allowed_groups),
            "fedhub:mayLeaveSite": p.may_leave_site,
            "odrl:hasPolicy": policy,
            **self.extra,
        }


def check_use(dataset: Dataset, groups: Iterable[str], purpose: str,
              granted: Iterable[str] = ()) -> Decision:
    """May someone in `groups` use `dataset` for `purpose`? `granted`: dataset names their
    groups' grants list (a grant is another way in, next to the policy's allowed_groups)."""
    groups = set(groups)
    p = dataset.policy
    label = f"dataset {dataset.name!r} policy"
    if purpose not in p.purposes:
        return Decision(False, f"{label}: purpose {purpose} is not allowed "
                               f"(allowed purposes: {', '.join(p.purposes) or 'none'})")
    if EVERYONE in p.allowed_groups:
        return Decision(True, f"{label}: open to every user for {purpose}")
    member = sorted(groups & set(p.allowed_groups))
    if member:
        return Decision(True, f"{label}: your group {member[0]} is an allowed group for {purpose}")
    if dataset.name in set(granted):
        return Decision(True, f"{label}: granted to your groups for {purpose}")
    return Decision(False, f"{label}: only groups {list(p.allowed_groups)} may use it; "
                           f"your groups: {sorted(groups) or 'none'}")


_CLAIM_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def parse_datasets(raw, r, site_names: Iterable[str] | None = None,
                   site_kinds: dict[str, str] | None = None) -> tuple[Dataset, ...]:
    """`datasets:` of a policy file -> Datasets; `r` is catalogue._Reader (errors name file and key).
    `site_kinds` (site -> kind, from the catalogue) lets `pvc` be checked: Kubernetes sites only."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        r.fail("datasets", "a list of datasets", raw)
    known_sites = set(site_names) if site_names is not None else None
    out: list[Dataset] = []
    seen: set[str] = set()
    for i, d in enumerate(raw):
        p = f"datasets[{i}]"
        r.mapping(d, p, {"name", "title", "description", "license", "keywords", "contains_pii",
                         "locations", "policy", "extra"}, {"name", "locations", "policy"})
        name = r.name(d["name"], f"{p}.name")
        if name in seen:
            r.fail(f"{p}.name", "a dataset name not used by an earlier dataset", name)
        seen.add(name)
        locs = d["locations"]
        if not isinstance(locs, list) or not locs:
            r.fail(f"{p}.locations", "a non-empty list of {site, path}", locs)
        locations = []
        for j, loc in enumerate(locs):
            lp = f"{p}.locations[{j}]"
            r.mapping(loc, lp, {"site", "path", "pvc"}, {"site", "path"})
            site = r.name(loc["site"], f"{lp}.site")
            if known_sites is not None and site not in known_sites:
                r.fail(f"{lp}.site", f"a site of the catalogue {sorted(known_sites)}", site)
            path = r.string(loc["path"], f"{lp}.path")
            if not path.startswith("/"):
                r.fail(f"{lp}.path", "an absolute path on the site", path)
            pvc = loc.get("pvc", "")
            if pvc != "":
                if not isinstance(pvc, str) or not _CLAIM_RE.match(pvc):
                    r.fail(f"{lp}.pvc", "a PersistentVolumeClaim name (lower-case letters, digits, '-' and '.')", pvc)
                kind = (site_kinds or {}).get(site)
                if kind is not None and kind != "kubernetes":
                    r.fail(f"{lp}.pvc", f"no pvc: site {site} is a {kind} site (pvc is for Kubernetes sites; "
                                        f"the path alone names the data there)", pvc)
            locations.append(DatasetLocation(site, path, pvc))
        pol = r.mapping(d["policy"], f"{p}.policy", {"allowed_groups", "purposes", "may_leave_site"},
                        {"allowed_groups"})
        groups = pol["allowed_groups"]
        if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
            r.fail(f"{p}.policy.allowed_groups", "a list of hub group names ('*' = every user)", groups)
        purposes = pol.get("purposes", ["interactive"])
        if not isinstance(purposes, list) or not all(x in PURPOSES for x in purposes):
            r.fail(f"{p}.policy.purposes", f"a list of purposes among {list(PURPOSES)}", purposes)
        leave = pol.get("may_leave_site", False)
        if not isinstance(leave, bool):
            r.fail(f"{p}.policy.may_leave_site", "true or false", leave)
        keywords = d.get("keywords", [])
        if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
            r.fail(f"{p}.keywords", "a list of strings", keywords)
        pii = d.get("contains_pii", False)
        if not isinstance(pii, bool):
            r.fail(f"{p}.contains_pii", "true or false", pii)
        extra = d.get("extra", {})
        if not isinstance(extra, dict):
            r.fail(f"{p}.extra", "a mapping of extra JSON-LD properties", extra)
        out.append(Dataset(
            name=name, locations=tuple(locations),
            policy=UsagePolicy(tuple(groups), tuple(dict.fromkeys(purposes)), leave),
            title=r.string(d.get("title", ""), f"{p}.title"),
            description=r.string(d.get("description", ""), f"{p}.description"),
            license=r.string(d.get("license", ""), f"{p}.license"),
            keywords=tuple(keywords), contains_pii=pii, extra=dict(extra)))
    return tuple(out)
