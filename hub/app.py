"""`fedhub up`: run a federated hub on this machine.

Prepares the data dir (catalogue, secrets, stable ports), validates the catalogue,
prints where to log in, then becomes JupyterHub (exec), which starts
configurable-http-proxy, the fedhub API and MLflow services. Ctrl-C reaches JupyterHub
directly, which stops everything it started. Running `fedhub up` again with the same
data dir reuses users, sessions' records and MLflow runs.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import sys
from pathlib import Path

from traitlets import Bool, Float, Int, List, Unicode, default
from traitlets.config import Application

from .catalogue import DEFAULT_CATALOGUE_YAML, CatalogueError, catalogue_from_dict, read_yaml
from .statedb.db import URL_SCHEMES as STATE_DB_URL_SCHEMES, sqlalchemy_url, sqlite_url

PORT_NAMES = ("hub", "proxy_api", "fedhub_api", "mlflow", "mlflow_internal",
              "inference", "inference_http", "inference_grpc")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_proxy() -> str | None:
    """configurable-http-proxy from PATH, or the repo's node_modules (editable installs)."""
    found = shutil.which("configurable-http-proxy")
    if found:
        return found
    for base in (Path(__file__).resolve().parents[1], Path.cwd()):
        candidate = base / "node_modules" / ".bin" / "configurable-http-proxy"
        if candidate.exists():
            return str(candidate)
    return None


def check_database_urls(urls: dict[str, str]) -> None:
    """A database URL names the server, never its password: settings land in files."""
    from urllib.parse import urlsplit
    for option, url in urls.items():
        if url and urlsplit(url).password:
            raise ValueError(f"{option}: the URL holds a password; give it without one and set "
                             "$PGPASSWORD (or ~/.pgpass) in the environment instead")


class FedhubUp(Application):
    name = "fedhub up"
    description = __doc__

    ip = Unicode("127.0.0.1", config=True, help="Address the hub's public proxy listens on.")
    port = Int(8000, config=True, help="Port the hub's public proxy listens on.")
    data_dir = Unicode(
        config=True,
        help="Folder holding all of fedhub's state (databases, homes, secrets). "
             "Default: $FEDHUB_DATA_DIR, else .fedhub in the current folder.")
    catalogue_file = Unicode(
        "", config=True,
        help="Site catalogue YAML. Default: sites.yaml in the data dir, created on first run.")
    config_file = Unicode(
        "", config=True,
        help="Extra jupyterhub_config.py loaded last. Default: jupyterhub_config.py in the data dir, if present.")
    mlflow = Bool(True, config=True, help="Run MLflow as a hub service at /services/mlflow/.")
    inference = Bool(
        True, config=True,
        help="Run the embedded Triton-protocol inference server as a hub service at "
             "/services/inference/ (HTTP and gRPC also on loopback ports, see ports.json).")
    keep_servers = Bool(
        False, config=True,
        help="Leave single-user servers running when the hub stops, to reconnect on the next start.")
    authenticator = Unicode(
        "shared-password", config=True,
        help="Login: shared-password (default, one password for a class), tmp (a temporary account per "
             "visitor), oidc (an OpenID Connect provider; settings in the data dir's identity.yaml, "
             "docs/identity.md), or any JupyterHub authenticator entry point name or class.")
    identity_file = Unicode(
        "", config=True,
        help="OIDC provider settings (with --authenticator oidc). Default: identity.yaml in the data dir.")
    policy_file = Unicode(
        "", config=True,
        help="Governance policy: group grants (sites, GPU types, GPU quotas, datasets) and the dataset "
             "catalogue (docs/governance.md). Default: policy.yaml in the data dir, if present; none: "
             "every user may use every site.")
    admin_users = List(Unicode(), config=True, help="User names that are hub admins.")
    start_timeout = Int(600, config=True, help="Seconds one spawn may take, including its wait in the start queue.")
    dry_run = Bool(False, config=True, help="Prepare and validate, print the settings, do not start.")
    seats = Int(
        0, config=True,
        help="Workshop preset: serve a class of this many seats on this machine (a one-site catalogue "
             "with room for exactly N sessions; seat N+1 is refused). 0: the catalogue decides.")
    seat_cpus = Float(1.0, config=True, help="Workshop preset: CPUs per seat (with --seats).")
    seat_memory = Unicode("2G", config=True, help="Workshop preset: memory per seat, e.g. 2G or 512M (with --seats).")
    cull_idle = Int(
        0, config=True,
        help="Stop sessions idle this many seconds: no busy kernel, no process running in a terminal, "
             "no GPU in use, no activity the hub saw. Files are kept. 0: never cull.")
    landing_notebook = Unicode(
        "", config=True,
        help="Workshop preset: a notebook copied into each new home on first start (never over a student's copy).")
    db_url = Unicode(
        "", config=True,
        help="JupyterHub's database, e.g. postgresql://hub@db.example:5432/jupyterhub (without password: "
             "libpq reads it from $PGPASSWORD or ~/.pgpass). Default: SQLite in the data dir.")
    mlflow_db_url = Unicode(
        "", config=True,
        help="MLflow's backend store (runs, metrics), e.g. postgresql://mlflow@db.example:5432/mlflow "
             "(without password, as --db-url). Default: SQLite in the data dir.")
    artifacts_uri = Unicode(
        "", config=True,
        help="Where MLflow keeps artifacts, e.g. s3://bucket/prefix (credentials from $AWS_ACCESS_KEY_ID, "
             "$AWS_SECRET_ACCESS_KEY, and $MLFLOW_S3_ENDPOINT_URL for an S3-compatible store). "
             "Default: a folder in the data dir.")
    model_repository = Unicode(
        "", config=True,
        help="Where the embedded inference server's Triton model repository lives: a folder, or an "
             "S3-compatible store in Triton's forms s3://bucket/prefix, s3://host:port/bucket/prefix or "
             "s3://https://host:port/bucket/prefix (keys from $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY, "
             "endpoint also from $FEDHUB_S3_ENDPOINT_URL or $AWS_ENDPOINT_URL; never in a file). "
             "Default: the models folder in the data dir.")

    state_db_url = Unicode(
        "", config=True,
        help="fedhub's own state (federated jobs and their events, deployments, edge devices, the "
             "provenance ledger), e.g. postgresql://fedhub@db.example:5432/fedhub (without password, "
             "as --db-url). Migrated to the newest schema on every start (also: `fedhub db upgrade`). "
             "Default: SQLite, state/fedhub-state.sqlite in the data dir.")

    aliases = {
        "state-db-url": "FedhubUp.state_db_url",
        "ip": "FedhubUp.ip", "port": "FedhubUp.port", "data-dir": "FedhubUp.data_dir",
        "catalogue": "FedhubUp.catalogue_file", "config": "FedhubUp.config_file",
        "authenticator": "FedhubUp.authenticator", "admin": "FedhubUp.admin_users",
        "policy": "FedhubUp.policy_file", "identity": "FedhubUp.identity_file",
        "landing-notebook": "FedhubUp.landing_notebook", "seats": "FedhubUp.seats", "seat-cpus": "FedhubUp.seat_cpus", "seat-memory": "FedhubUp.seat_memory",
        "cull-idle": "FedhubUp.cull_idle",
        "db-url": "FedhubUp.db_url", "mlflow-db-url": "FedhubUp.mlflow_db_url",
        "artifacts-uri": "FedhubUp.artifacts_uri", "model-repository": "FedhubUp.model_repository",
    }
    flags = {
        "no-mlflow": ({"FedhubUp": {"mlflow": False}}, "Do not run MLflow."),
        "no-inference": ({"FedhubUp": {"inference": False}}, "Do not run the embedded inference server."),
        "keep-servers": ({"FedhubUp": {"keep_servers": True}}, "Keep sessions running across hub restarts."),
        "dry-run": ({"FedhubUp": {"dry_run": True}}, "Validate and print settings only."),
    }

    @default("data_dir")
    def _default_data_dir(self):
        return os.environ.get("FEDHUB_DATA_DIR", str(Path.cwd() / ".fedhub"))

    def _load_json(self, path: Path) -> dict:
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def prepare(self) -> dict:
        data = Path(self.data_dir).resolve()
        data.mkdir(parents=True, exist_ok=True)
        catalogue = Path(self.catalogue_file).resolve() if self.catalogue_file else data / "sites.yaml"
        if self.cull_idle < 0:
            raise ValueError(f"--cull-idle: expected seconds >= 0 (0: never cull), got {self.cull_idle}")
        if self.landing_notebook and not Path(self.landing_notebook).is_file():
            raise ValueError(f"--landing-notebook: no such file: {self.landing_notebook}")
        if self.seats and not self.catalogue_file:
            from .workshop import workshop_catalogue
            catalogue.write_text(workshop_catalogue(self.seats, self.seat_cpus, self.seat_memory))
        elif not self.catalogue_file and not catalogue.exists():
            catalogue.write_text(DEFAULT_CATALOGUE_YAML)
        check_database_urls({"--db-url": self.db_url, "--mlflow-db-url": self.mlflow_db_url,
                             "--state-db-url": self.state_db_url})
        if self.state_db_url and not self.state_db_url.startswith(STATE_DB_URL_SCHEMES):
            raise ValueError(f"--state-db-url: expected postgresql://user@host:port/db or sqlite:///<file>, "
                             f"got {self.state_db_url.split(':', 1)[0]}:...")
        model_repository = self._model_repository()
        cat = catalogue_from_dict(read_yaml(catalogue), catalogue.name)  # raises CatalogueError
        policy = Path(self.policy_file).resolve() if self.policy_file else data / "policy.yaml"
        if self.policy_file or policy.exists():
            from .policy import load_policy
            load_policy(policy, cat)  # raises PolicyError (a CatalogueError)
        oidc = None
        if self.authenticator == "oidc":
            from .identity import discover, load_identity
            identity = Path(self.identity_file).resolve() if self.identity_file else data / "identity.yaml"
            oidc = discover(load_identity(identity), identity.name)  # raises IdentityError

        # stable internal ports: running sessions keep the hub's API URL across restarts
        ports = self._load_json(data / "ports.json")
        for name in PORT_NAMES:
            ports.setdefault(name, free_port())
        (data / "ports.json").write_text(json.dumps(ports, indent=1))

        secrets_file = data / "secrets.json"
        secret = self._load_json(secrets_file)
        secret.setdefault("shared_password", secrets.token_urlsafe(12))
        secret.setdefault("admin_password", secrets.token_urlsafe(32))  # JupyterHub wants >= 32 characters
        secrets_file.write_text(json.dumps(secret))
        secrets_file.chmod(0o600)

        proxy = find_proxy()
        if proxy is None:
            raise SystemExit("fedhub up: configurable-http-proxy not found on PATH; "
                             "install it with `npm install configurable-http-proxy` (./dev setup does)")
        extra = [self.config_file] if self.config_file else []
        if not extra and (data / "jupyterhub_config.py").exists():
            extra = [str(data / "jupyterhub_config.py")]
        for path in extra:
            if not Path(path).exists():
                raise SystemExit(f"fedhub up: --config {path}: file not found")
        settings = {
            "ip": self.ip, "port": self.port, "data_dir": str(data), "catalogue_file": str(catalogue),
            "ports": ports, "shared_password": secret["shared_password"],
            "admin_password": secret["admin_password"], "mlflow": self.mlflow, "inference": self.inference,
            "keep_servers": self.keep_servers, "authenticator": self.authenticator,
            "admin_users": list(self.admin_users), "proxy_command": proxy,
            "landing_notebook": str(Path(self.landing_notebook).resolve()) if self.landing_notebook else "",
            "cull_idle": self.cull_idle,
            "extra_configs": [str(Path(p).resolve()) for p in extra], "start_timeout": self.start_timeout,
            "policy_file": str(policy) if policy.exists() else "", "oidc": oidc,
            "state_db_url": sqlalchemy_url(self.state_db_url),
            "db_url": sqlalchemy_url(self.db_url), "mlflow_db_url": sqlalchemy_url(self.mlflow_db_url), "artifacts_uri": self.artifacts_uri,
            "model_repository": model_repository,
        }
        (data / "fedhub-up.json").write_text(json.dumps(settings, indent=1))
        (data / "fedhub-up.json").chmod(0o600)
        return settings

    def _model_repository(self) -> str:
        """--model-repository checked now (a bad one is named before anything starts)."""
        if not self.model_repository:
            return ""
        from .deploy.s3repo import S3RepositoryError, is_s3_uri, parse_s3_uri
        if is_s3_uri(self.model_repository):
            try:
                parse_s3_uri(self.model_repository, setting="--model-repository")
            except S3RepositoryError as e:
                raise ValueError(str(e)) from None
            return self.model_repository
        if "://" in self.model_repository:
            raise ValueError(f"--model-repository: expected a folder or s3://bucket/prefix, got "
                             f"{self.model_repository!r}")
        return str(Path(self.model_repository).resolve())

    def migrate_state_db(self, s: dict) -> None:
        """fedhub's state database at the newest schema (and an earlier version's state files
        imported) before anything starts; an unreachable server stops `fedhub up` here."""
        from .statedb import StateDBError, current_revision, open_state_db
        try:
            state = Path(s["data_dir"]) / "state"
            db = open_state_db(state, s.get("state_db_url") or sqlite_url(state))
        except StateDBError as e:
            print(f"fedhub up: --state-db-url: {e}", file=sys.stderr)
            raise SystemExit(2)
        print(f"  state database         {db.engine.url.render_as_string(hide_password=True)} "
              f"(schema {current_revision(db)})", flush=True)
        db.engine.dispose()

    def banner(self, s: dict) -> str:
        url = f"http://{'127.0.0.1' if s['ip'] in ('', '0.0.0.0') else s['ip']}:{s['port']}/"
        login = (f"any user name, password: {s['shared_password']}"
                 if s["authenticator"] == "shared-password" else f"your {s['authenticator']} login")
        if s["authenticator"] == "shared-password" and s["admin_users"]:
            login += f"\n  admins ({', '.join(s['admin_users'])}) password: {s['admin_password']}"
        return "\n".join([
            "", f"  fedhub {'would start' if self.dry_run else 'is starting'} at  {url}", f"  log in with            {login}",
            f"  sites                  {s['catalogue_file']}",
            f"  data dir               {s['data_dir']}", "  stop with              Ctrl-C", ""])

    def start(self):
        try:
            settings = self.prepare()
        except CatalogueError as e:
            what = ("identity settings" if e.source.startswith("identity") or e.path.startswith("oidc")
                    else "policy" if e.source.startswith("policy") else "site catalogue")
            print(f"fedhub up: invalid {what}: {e}", file=sys.stderr)
            raise SystemExit(2)
        except ValueError as e:  # WorkshopError: a bad --seats/--seat-cpus/--seat-memory
            print(f"fedhub up: {e}", file=sys.stderr)
            raise SystemExit(2)
        print(self.banner(settings), flush=True)
        if self.dry_run:
            return
        self.migrate_state_db(settings)
        env = {**os.environ, "FEDHUB_UP_SETTINGS": str(Path(settings["data_dir"]) / "fedhub-up.json")}
        config = str(Path(__file__).with_name("jupyterhub_config.py"))
        argv = [sys.executable, "-m", "jupyterhub", "-f", config]
        os.chdir(settings["data_dir"])
        os.execve(sys.executable, argv, env)


def main(argv=None):
    FedhubUp.launch_instance(argv)
