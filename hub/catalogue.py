"""The site catalogue: which sites the federation has and what each offers.

Pure data and a YAML loader. Imports nothing else of fedhub, so the spawner, the
API service and light extras (edge agent) can all use it.

Every validation error names the file, the key path and what was expected, e.g.
``sites.yaml: sites[1].gpus[0].count: expected a positive integer, got -2``.
We validate by hand rather than with pydantic so the messages read exactly like that.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SITE_KINDS = ("local", "slurm", "kubernetes")
SESSION_TYPES = ("jupyterlab", "vscode")
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_MEM_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?)?B?\s*$", re.IGNORECASE)
_MEM_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
              "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}


class CatalogueError(ValueError):
    """A catalogue file (or dict) that does not follow the schema."""

    def __init__(self, source: str, path: str, expected: str, got: Any = None, *, show_got=True):
        self.source, self.path, self.expected, self.got = source, path, expected, got
        message = f"{source}: {path}: expected {expected}"
        if show_got:
            message += f", got {got!r}"
        super().__init__(message)


def parse_memory(value: Any) -> int:
    """'16G', '512Mi', 1073741824 -> bytes. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, (int, float)):
        if int(value) <= 0:
            raise ValueError(value)
        return int(value)
    m = _MEM_RE.match(str(value))
    if not m:
        raise ValueError(value)
    number = float(m.group(1))
    unit = (m.group(2) or "").upper()
    result = int(number * _MEM_UNITS[unit])
    if result <= 0:
        raise ValueError(value)
    return result


def format_memory(nbytes: int) -> str:
    for unit, size in (("T", 10**12), ("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if nbytes >= size:
            value = nbytes / size
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return str(nbytes)


@dataclass(frozen=True)
class GpuOffer:
    type: str
    count: int
    memory: int | None = None  # per GPU, bytes; informational


@dataclass(frozen=True)
class Site:
    name: str
    kind: str
    cpus: float
    memory: int
    gpus: tuple[GpuOffer, ...] = ()
    description: str = ""
    max_sessions: int | None = None
    datasets: tuple[str, ...] = ()
    options: dict = field(default_factory=dict, hash=False, compare=False)
    #: may federated (Flower) jobs run a SuperNode here? A mapping {data_path} also says where
    #: the site's data for them lies (passed to the app as node config `data-path`)
    federated: bool | dict = True

    @property
    def gpu_types(self) -> tuple[str, ...]:
        return tuple(g.type for g in self.gpus)


@dataclass(frozen=True)
class SessionLimits:
    """Largest single session anyone may ask for; refuses absurd requests early."""

    max_cpus: float = 64
    max_memory: int = 512 * 10**9
    max_gpus: int = 16


@dataclass(frozen=True)
class SessionDefaults:
    cpus: float = 1
    memory: int = 2 * 10**9
    session_type: str = "jupyterlab"


@dataclass(frozen=True)
class Catalogue:
    sites: tuple[Site, ...]
    defaults: SessionDefaults = SessionDefaults()
    limits: SessionLimits = SessionLimits()
    source: str = "<catalogue>"

    def site(self, name: str) -> Site:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def site_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sites)

    @property
    def gpu_types(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for s in self.sites:
            for g in s.gpus:
                seen.setdefault(g.type, None)
        return tuple(seen)


# ---------------------------------------------------------------- validation


class _Reader:
    """Walks a parsed YAML document, raising CatalogueError with the key path."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, path, expected, got=None, show_got=True):
        raise CatalogueError(self.source, path, expected, got, show_got=show_got)

    def mapping(self, value, path, allowed: set[str], required: set[str] = frozenset()):
        if not isinstance(value, dict):
            self.fail(path, "a mapping", value)
        for key in value:
            if key not in allowed:
                self.fail(f"{path}.{key}" if path else str(key),
                          f"one of the keys {sorted(allowed)}", key, show_got=False)
        for key in required:
            if key not in value:
                self.fail(f"{path}.{key}" if path else key, "a value (required key is missing)",
                          show_got=False)
        return value

    def positive_int(self, value, path, allow_zero=False):
        ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok or value < 0 or (value == 0 and not allow_zero):
            self.fail(path, "a non-negative integer" if allow_zero else "a positive integer", value)
        return value

    def positive_number(self, value, path):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            self.fail(path, "a positive number", value)
        return float(value)

    def memory(self, value, path):
        try:
            return parse_memory(value)
        except (ValueError, TypeError):
            self.fail(path, "a memory size such as 16G, 512Mi or a byte count", value)

    def name(self, value, path):
        if not isinstance(value, str) or not _NAME_RE.match(value):
            self.fail(path, "a name of lower-case letters, digits and '-' (at most 63)", value)
        return value

    def string(self, value, path):
        if not isinstance(value, str):
            self.fail(path, "a string", value)
        return value


def catalogue_from_dict(doc: Any, source: str = "<catalogue>") -> Catalogue:
    r = _Reader(source)
    if doc is None:
        r.fail("sites", "a catalogue with a 'sites' list (the file is empty)", show_got=False)
    r.mapping(doc, "", {"sites", "defaults", "limits"}, {"sites"})
    raw_sites = doc["sites"]
    if not isinstance(raw_sites, list) or not raw_sites:
        r.fail("sites", "a non-empty list of sites", raw_sites)

    sites: list[Site] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_sites):
        p = f"sites[{i}]"
        r.mapping(raw, p, {"name", "kind", "cpus", "memory", "gpus", "description",
                           "max_sessions", "datasets", "options", "federated"}, {"name", "kind"})
        name = r.name(raw["name"], f"{p}.name")
        if name in seen:
            r.fail(f"{p}.name", "a site name not used by an earlier site", name)
        seen.add(name)
        kind = raw["kind"]
        if kind not in SITE_KINDS:
            r.fail(f"{p}.kind", f"one of {list(SITE_KINDS)}", kind)
        # local sites declare their capacity; Slurm and Kubernetes sites report their own
        for key in ("cpus", "memory"):
            if kind == "local" and key not in raw:
                r.fail(f"{p}.{key}", "a value (required key is missing for local sites)", show_got=False)
        gpus: list[GpuOffer] = []
        raw_gpus = raw.get("gpus") or []
        if not isinstance(raw_gpus, list):
            r.fail(f"{p}.gpus", "a list of {type, count}", raw_gpus)
        gpu_types: set[str] = set()
        for j, g in enumerate(raw_gpus):
            gp = f"{p}.gpus[{j}]"
            r.mapping(g, gp, {"type", "count", "memory"}, {"type", "count"})
            gtype = r.name(g["type"], f"{gp}.type")
            if gtype in ("any", "none", "auto"):
                r.fail(f"{gp}.type", "a GPU type name other than the reserved words any/none/auto", gtype)
            if gtype in gpu_types:
                r.fail(f"{gp}.type", "each GPU type listed once per site", gtype)
            gpu_types.add(gtype)
            count = r.positive_int(g["count"], f"{gp}.count")
            mem = r.memory(g["memory"], f"{gp}.memory") if "memory" in g else None
            gpus.append(GpuOffer(gtype, count, mem))
        max_sessions = raw.get("max_sessions")
        if max_sessions is not None:
            r.positive_int(max_sessions, f"{p}.max_sessions")
        datasets = raw.get("datasets") or []
        if not isinstance(datasets, list) or not all(isinstance(d, str) for d in datasets):
            r.fail(f"{p}.datasets", "a list of dataset names", datasets)
        options = raw.get("options") or {}
        if not isinstance(options, dict):
            r.fail(f"{p}.options", "a mapping of backend options", options)
        federated = raw.get("federated", True)
        if isinstance(federated, dict):
            r.mapping(federated, f"{p}.federated", {"data_path"})
            r.string(federated.get("data_path", ""), f"{p}.federated.data_path")
        elif not isinstance(federated, bool):
            r.fail(f"{p}.federated", "true, false or a mapping {data_path} (may federated jobs use this site?)",
                   federated)
        sites.append(Site(
            name=name, kind=kind,
            cpus=r.positive_number(raw["cpus"], f"{p}.cpus") if "cpus" in raw else 0.0,
            memory=r.memory(raw["memory"], f"{p}.memory") if "memory" in raw else 0,
            gpus=tuple(gpus),
            description=r.string(raw.get("description", ""), f"{p}.description"),
            max_sessions=max_sessions, datasets=tuple(datasets), options=dict(options),
            federated=federated,
        ))

    defaults = SessionDefaults()
    if "defaults" in doc:
        d = r.mapping(doc["defaults"], "defaults", {"cpus", "memory", "session_type"})
        stype = d.get("session_type", defaults.session_type)
        if stype not in SESSION_TYPES:
            r.fail("defaults.session_type", f"one of {list(SESSION_TYPES)}", stype)
        defaults = SessionDefaults(
            cpus=r.positive_number(d.get("cpus", defaults.cpus), "defaults.cpus"),
            memory=r.memory(d.get("memory", defaults.memory), "defaults.memory"),
            session_type=stype,
        )
    limits = SessionLimits()
    if "limits" in doc:
        lim = r.mapping(doc["limits"], "limits", {"max_cpus", "max_memory", "max_gpus"})
        limits = SessionLimits(
            max_cpus=r.positive_number(lim.get("max_cpus", limits.max_cpus), "limits.max_cpus"),
            max_memory=r.memory(lim.get("max_memory", limits.max_memory), "limits.max_memory"),
            max_gpus=r.positive_int(lim.get("max_gpus", limits.max_gpus), "limits.max_gpus"),
        )
    return Catalogue(sites=tuple(sites), defaults=defaults, limits=limits, source=source)


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; a missing file or bad YAML is a CatalogueError naming the spot."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CatalogueError(str(path), "sites", "an existing catalogue file (not found)", show_got=False)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise CatalogueError(path.name, where, f"valid YAML ({getattr(e, 'problem', e)})", show_got=False)


def load_catalogue(path: str | Path) -> Catalogue:
    """Read and validate a catalogue YAML file."""
    return catalogue_from_dict(read_yaml(path), Path(path).name)


DEFAULT_CATALOGUE_YAML = """\
# fedhub site catalogue (schema: docs/catalogue.md).
# Two sites on this machine, so placement has real choices on one host.
# CPUs and memory are schedulable capacity, not cores: an idle JupyterLab uses little,
# so a 2-core workshop VM can hold a class (as Slurm's CPUs= on such a node would).
# GPUs here are declared, not detected: sessions see CUDA_VISIBLE_DEVICES for the
# devices placement chose, which is what real sites hand out.
sites:
  - name: local-a
    kind: local
    description: This machine, partition A
    cpus: 32
    memory: 64G
    gpus:
      - {type: a100, count: 2}
  - name: local-b
    kind: local
    description: This machine, partition B
    cpus: 32
    memory: 64G
    gpus:
      - {type: t4, count: 4}
defaults:
  cpus: 0.5
  memory: 512M
limits:
  max_cpus: 8
  max_memory: 16G
  max_gpus: 4
"""
