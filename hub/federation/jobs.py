"""Federated jobs: the request a researcher makes, checked, and the job record it becomes.

`validate_request()` is pure: a request body, the caller's home, the catalogue's sites and
their live state in; a `JobSpec` or a `JobError` (HTTP status + a message naming the field
and what was expected) out. `Job` is the persisted record the API returns.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATES = ("queued", "starting", "running", "succeeded", "failed", "cancelled")
FINAL_STATES = ("succeeded", "failed", "cancelled")
STRATEGIES = ("fedavg", "fedprox", "fedadam")
DROPOUT_POLICIES = ("continue", "fail")
MAX_ROUNDS = 1000
_RUN_CONFIG_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_EXPERIMENT = re.compile(r"^[^\x00-\x1f]{1,200}$")


class JobError(Exception):
    """A request the API refuses, with the status and the reason for the caller."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class SiteOffer:
    """One catalogue site as federated jobs see it."""

    name: str
    kind: str
    allowed: bool
    reason: str
    options: dict = field(default_factory=dict, compare=False)
    datasets: tuple = ()
    data_path: str = ""  # the site's data for federated jobs (node config data-path), if set
    #: dataset name -> its path at this site, from the dataset catalogue (policy.yaml)
    dataset_paths: dict = field(default_factory=dict, compare=False)

    def public(self) -> dict:
        return {"name": self.name, "kind": self.kind, "allowed": self.allowed, "reason": self.reason,
                "datasets": list(self.datasets), "data_path": self.data_path}


@dataclass(frozen=True)
class JobSpec:
    app: str            # absolute path of the app in the owner's home
    app_display: str    # as the caller wrote it
    sites: tuple[str, ...]
    rounds: int
    strategy: str = "fedavg"
    compression: dict | None = None
    on_dropout: str = "continue"
    run_config: dict = field(default_factory=dict)
    experiment: str = ""
    name: str = ""
    datasets: tuple[str, ...] = ()  # the datasets the job trains on, as named in the request
    data_paths: dict = field(default_factory=dict)  # site -> {dataset: its path at that site}


def resolve_app_path(raw, home: Path) -> Path:
    """The app directory under the user's home; anything outside (.., symlinks out) is refused."""
    if not isinstance(raw, str) or not raw.strip():
        raise JobError(400, "app: expected the path of a Flower app in your home (e.g. 'digits'), got "
                            f"{raw!r}")
    home = home.resolve()
    path = Path(raw.strip()).expanduser()
    candidate = (path if path.is_absolute() else home / path).resolve()
    if candidate != home and home not in candidate.parents:
        raise JobError(400, f"app: {raw!r} is outside your home ({home}); put the app in your workspace")
    if not candidate.exists():
        raise JobError(400, f"app: {raw!r} does not exist in your home")
    if not candidate.is_dir():
        raise JobError(400, f"app: {raw!r} is not a directory (a Flower app is a folder with pyproject.toml)")
    return candidate


def check_flower_app(path: Path, raw: str) -> None:
    try:
        from .apps import is_flower_app
    except ImportError:  # pragma: no cover - apps.py ships with the package
        is_flower_app = _is_flower_app_minimal
    ok, reason = is_flower_app(path)
    if not ok:
        raise JobError(400, f"app: {raw!r} is not a Flower app: {reason}")


def _is_flower_app_minimal(path: Path) -> tuple[bool, str]:
    import tomllib
    try:
        doc = tomllib.loads((path / "pyproject.toml").read_text())
    except FileNotFoundError:
        return False, "no pyproject.toml"
    except (ValueError, OSError) as e:
        return False, f"pyproject.toml is not valid TOML ({e})"
    if "app" not in doc.get("tool", {}).get("flwr", {}):
        return False, "pyproject.toml has no [tool.flwr.app] section"
    return True, ""


def parse_compression(raw) -> dict | None:
    """'none' -> None; 'int8', 'topk', 'topk:0.05' or {codec, fraction, value_bits} -> the codec
    spec, checked by the compression module itself."""
    if raw in (None, "", "none", {"codec": "none"}):
        return None
    if isinstance(raw, str):
        codec, _, arg = raw.partition(":")
        try:
            raw = {"codec": codec, **({"fraction": float(arg)} if arg else {})}
        except ValueError:
            raise JobError(400, f"compression: expected 'topk:<fraction>', got {raw!r}")
    if not isinstance(raw, dict) or not set(raw) <= {"codec", "kind", "fraction", "value_bits"}:
        raise JobError(400, "compression: expected 'none', 'int8', 'topk[:fraction]' or "
                            f"{{codec, fraction, value_bits}}, got {raw!r}")
    from .compression import CODECS, check_options
    codec = raw.get("codec", raw.get("kind"))
    if codec not in CODECS:
        raise JobError(400, f"compression: expected a codec among {list(CODECS)}, got {codec!r}")
    if codec == "none":
        return None
    # defaults: what P3 measured (20% kept, 8-bit values: 5.3x fewer bytes, -0.2 pp accuracy)
    fraction, bits = raw.get("fraction", 0.2), raw.get("value_bits", 8)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or \
            isinstance(bits, bool) or not isinstance(bits, int):
        raise JobError(400, f"compression: fraction must be a number and value_bits an integer, got {raw!r}")
    try:
        check_options(codec, float(fraction), bits)
    except (ValueError, TypeError) as e:
        raise JobError(400, f"compression: {e}")
    spec = {"codec": codec}
    if codec == "topk":
        spec.update(fraction=float(fraction), value_bits=bits)
    return spec


def validate_request(body, home: Path, offers: dict[str, SiteOffer]) -> JobSpec:
    """Check a POST /api/jobs body; every refusal names the field and what was expected."""
    if not isinstance(body, dict):
        raise JobError(400, "expected a JSON object with app, sites and rounds")
    allowed = {"app", "sites", "rounds", "strategy", "compression", "on_dropout", "run_config",
               "experiment", "name", "datasets"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise JobError(400, f"{unknown[0]}: unknown field; expected some of {sorted(allowed)}")
    app = resolve_app_path(body.get("app"), home)
    check_flower_app(app, body["app"])

    sites = body.get("sites")
    if isinstance(sites, str):
        sites = [s.strip() for s in sites.split(",") if s.strip()]
    if not isinstance(sites, list) or not sites or not all(isinstance(s, str) for s in sites):
        raise JobError(400, f"sites: expected a non-empty list of site names, got {body.get('sites')!r}")
    if len(set(sites)) != len(sites):
        raise JobError(400, f"sites: each site once, got {sites}")
    for name in sites:
        offer = offers.get(name)
        if offer is None:
            raise JobError(400, f"sites: unknown site {name!r}; known: {sorted(offers)}")
        if not offer.allowed:
            raise JobError(403, f"sites: {name} is not allowed for federated training: {offer.reason}")

    rounds = body.get("rounds")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds <= MAX_ROUNDS:
        raise JobError(400, f"rounds: expected an integer from 1 to {MAX_ROUNDS}, got {rounds!r}")
    strategy = str(body.get("strategy") or "fedavg").lower()
    if strategy not in STRATEGIES:
        raise JobError(400, f"strategy: expected one of {list(STRATEGIES)}, got {body.get('strategy')!r}")
    on_dropout = body.get("on_dropout") or "continue"
    if on_dropout not in DROPOUT_POLICIES:
        raise JobError(400, f"on_dropout: expected one of {list(DROPOUT_POLICIES)}, got {on_dropout!r}")
    from .flower import app_config_keys
    app_keys = app_config_keys(app)
    if strategy != "fedavg" and "strategy" not in app_keys:
        raise JobError(400, "strategy: this app picks its own strategy (it declares no 'strategy' key in "
                            "[tool.flwr.app.config]); leave strategy as fedavg or add that key")
    run_config = body.get("run_config") or {}
    if not isinstance(run_config, dict):
        raise JobError(400, f"run_config: expected a mapping of the app's config keys, got {run_config!r}")
    for key, value in run_config.items():
        if not _RUN_CONFIG_KEY.match(str(key)):
            raise JobError(400, f"run_config: {key!r} is not a config key name")
        if key not in app_keys:  # Flower refuses overrides of keys the app does not declare
            raise JobError(400, f"run_config.{key}: the app has no such key in [tool.flwr.app.config]; "
                                f"its keys: {sorted(app_keys)}")
        if not isinstance(value, (bool, int, float, str)):
            raise JobError(400, f"run_config.{key}: expected a number, string or boolean, got {value!r}")
    experiment = body.get("experiment") or ""
    if not isinstance(experiment, str) or (experiment and not _EXPERIMENT.match(experiment)):
        raise JobError(400, f"experiment: expected an MLflow experiment name, got {experiment!r}")
    name = body.get("name") or ""
    if not isinstance(name, str) or len(name) > 200:
        raise JobError(400, f"name: expected a short run name, got {name!r}")
    datasets, data_paths = dataset_paths(body.get("datasets"), sites, offers)
    return JobSpec(app=str(app), app_display=body["app"], sites=tuple(sites), rounds=rounds,
                   strategy=strategy, compression=parse_compression(body.get("compression")),
                   on_dropout=on_dropout, run_config=dict(run_config), experiment=experiment, name=name,
                   datasets=datasets, data_paths=data_paths)


def dataset_paths(raw, sites: list[str], offers: dict[str, SiteOffer]) -> tuple[tuple[str, ...], dict]:
    """The named datasets and, per site, each one's path there (from the dataset catalogue):
    what that site's SuperNode is told to read."""
    if raw is None:
        return (), {}
    if not isinstance(raw, list) or not raw or not all(isinstance(d, str) for d in raw):
        raise JobError(400, f"datasets: expected a non-empty list of dataset names, got {raw!r}")
    if len(set(raw)) != len(raw):
        raise JobError(400, f"datasets: each dataset once, got {raw}")
    paths: dict[str, dict[str, str]] = {}
    for site in sites:
        held = offers[site].dataset_paths
        for name in raw:
            if name not in held:
                raise JobError(400, f"datasets: {name} is not held at site {site} (the dataset catalogue "
                                    f"has {sorted(held) or 'no datasets'} there)")
        paths[site] = {name: held[name] for name in raw}
    return tuple(raw), paths


def new_job_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(3)


@dataclass
class Job:
    """The persisted record of one federated job (job.json), also what the API returns."""

    id: str
    owner: str
    app: str
    app_display: str
    sites: list[str]
    rounds: int
    strategy: str
    compression: dict | None
    on_dropout: str
    run_config: dict
    experiment: str
    name: str
    state: str = "queued"
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    site_status: dict = field(default_factory=dict)   # site -> {state, detail, kind}
    round_metrics: list = field(default_factory=list)  # [{round, metrics..., bytes}]
    bytes: dict = field(default_factory=dict)          # Flower's network-traffic of the run
    flower_run_id: str = ""
    flower_times: dict = field(default_factory=dict)  # Flower's running_at / finished_at of the run
    mlflow_run_id: str = ""
    mlflow_experiment_id: str = ""
    error: str = ""
    log_tail: str = ""
    warnings: list = field(default_factory=list)
    datasets: list = field(default_factory=list)       # datasets named in the request
    data_paths: dict = field(default_factory=dict)     # site -> {dataset: path there}, told to its SuperNode
    supernodes: list = field(default_factory=list)     # SuperNodeHandle dicts (restart clean-up)
    superlink_pid: int | None = None
    events: int = 0                                    # events so far (the next cursor)

    @classmethod
    def from_spec(cls, spec: JobSpec, owner: str) -> "Job":
        return cls(id=new_job_id(), owner=owner, app=spec.app, app_display=spec.app_display,
                   sites=list(spec.sites), rounds=spec.rounds, strategy=spec.strategy,
                   compression=spec.compression, on_dropout=spec.on_dropout, run_config=spec.run_config,
                   experiment=spec.experiment or f"{owner}/federated", name=spec.name,
                   datasets=list(spec.datasets), data_paths={k: dict(v) for k, v in spec.data_paths.items()},
                   site_status={s: {"state": "waiting", "detail": ""} for s in spec.sites})

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def to_dict(self) -> dict:
        return asdict(self)

    def public(self) -> dict:
        """What the owner sees (no process ids or internal paths beyond the app)."""
        d = self.to_dict()
        d.pop("supernodes")
        d.pop("superlink_pid")
        d["rounds_done"] = len(self.round_metrics)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Job":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})
