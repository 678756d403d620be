"""Turn `fedhub up` settings into JupyterHub configuration.

Pure apart from reading the settings file: `configure(c, settings)` sets traitlets on
JupyterHub's config object. The packaged jupyterhub_config.py calls it; a user's own
jupyterhub_config.py is loaded afterwards, so any traitlet can be overridden there.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

FEDHUB_SCOPES = {
    "custom:fedhub:sites:read": {"description": "See the federation's sites and their live free capacity."},
    "custom:fedhub:sessions:read": {"description": "See your own sessions and where they run."},
    "custom:fedhub:provenance:read": {"description": "See and verify your own provenance records."},
    "custom:fedhub:provenance:write": {"description": "Record your runs in the provenance ledger."},
    "custom:fedhub:deployments:read": {"description": "See your own model deployments, their status and endpoints."},
    "custom:fedhub:deploy": {"description": "Deploy, undeploy and roll back your models; register edge devices."},
    "custom:fedhub:edge:device": {"description": "An edge device: fetch its group's bundle and report its status."},
    "custom:fedhub:jobs:read": {"description": "See your own federated jobs, their rounds, metrics and logs."},
    "custom:fedhub:federate": {"description": "Launch and cancel federated (Flower) jobs on the sites you may use."},
    "custom:fedhub:datasets:read": {"description": "See the datasets you may use, their self-descriptions and usage policies."},
}


MLFLOW_STORE_ENV = ("PGPASSWORD", "PGPASSFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                    "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "MLFLOW_S3_ENDPOINT_URL")


# what libpq reads from the environment: the state database's password is passed on, never written
STATE_DB_ENV = ("PGPASSWORD", "PGPASSFILE", "PGSSLMODE", "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY")


def venv_bin() -> Path:
    return Path(sys.executable).parent


def configure(c, s: dict) -> None:
    data = Path(s["data_dir"])
    ports = s["ports"]
    c.JupyterHub.ip = s["ip"]
    c.JupyterHub.port = s["port"]
    c.JupyterHub.hub_ip = "127.0.0.1"
    c.JupyterHub.hub_port = ports["hub"]
    # PostgreSQL (docs/production.md) or the embedded SQLite; a password comes from $PGPASSWORD
    c.JupyterHub.db_url = s.get("db_url") or f"sqlite:///{data / 'jupyterhub.sqlite'}"
    c.JupyterHub.cookie_secret_file = str(data / "jupyterhub_cookie_secret")
    c.JupyterHub.pid_file = str(data / "jupyterhub.pid")
    c.JupyterHub.cleanup_servers = not s.get("keep_servers", False)
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{ports['proxy_api']}"
    c.ConfigurableHTTPProxy.command = [s["proxy_command"]]
    c.ConfigurableHTTPProxy.pid_file = str(data / "proxy.pid")

    # identity: a shared password by default (a workshop or one researcher's machine);
    # tmp logins, or OIDC with claims -> groups (fedhub.hub.identity, docs/identity.md)
    from .identity import configure_authenticator
    _public_ip = "127.0.0.1" if s["ip"] in ("", "0.0.0.0") else s["ip"]
    configure_authenticator(c, {**s, "public_url_resolved": (s.get("public_url") or
                                                             f"http://{_public_ip}:{s['port']}").rstrip("/")})

    # where sessions run
    c.JupyterHub.spawner_class = "federated"
    c.FederatedSpawner.catalogue_file = s["catalogue_file"]
    c.FederatedSpawner.state_dir = str(data / "state")
    if s.get("policy_file"):  # governance: group grants, quotas, datasets (docs/governance.md)
        c.FederatedSpawner.policy_file = s["policy_file"]
    c.LocalSiteSpawner.home_dir_template = str(data / "homes" / "{username}")
    c.SlurmSiteSpawner.home_dir_template = str(data / "homes" / "{username}")
    if s.get("landing_notebook"):  # workshop preset: the class's notebook in each new home
        from .workshop import landing_hook
        c.Spawner.pre_spawn_hook = landing_hook(s["landing_notebook"], str(data / "homes" / "{username}"))
    c.Spawner.cmd = [str(venv_bin() / "jupyterhub-singleuser")]
    c.Spawner.args = ["--allow-root"] if os.geteuid() == 0 else []
    c.Spawner.default_url = "/lab"
    # FEDHUB_URL: where sessions reach the hub's public side (proxy), for the fedhub CLI and clients
    public_ip = "127.0.0.1" if s["ip"] in ("", "0.0.0.0") else s["ip"]
    c.Spawner.environment = {"PATH": f"{venv_bin()}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                             "FEDHUB_URL": s.get("public_url") or f"http://{public_ip}:{s['port']}"}
    # fedhub queues starts itself and waits for the server to answer inside start(),
    # so these bound one whole spawn including its wait in the queue
    c.Spawner.start_timeout = s.get("start_timeout", 600)
    c.Spawner.http_timeout = s.get("http_timeout", 120)

    # fedhub actions are JupyterHub custom scopes, granted through roles
    c.JupyterHub.custom_scopes = FEDHUB_SCOPES
    user_scopes = ["self", *FEDHUB_SCOPES, "access:services!service=fedhub"]
    if s.get("mlflow", True):
        user_scopes.append("access:services!service=mlflow")
    if s.get("inference", True):
        user_scopes.append("access:services!service=inference")
    # the session's own JUPYTERHUB_API_TOKEN reaches fedhub's services too (fedhub CLI, mlflow)
    server_scopes = ["users:activity!user", "access:servers!server", *user_scopes[1:]]
    c.JupyterHub.load_roles = [{"name": "user", "scopes": user_scopes},
                               {"name": "server", "scopes": server_scopes},
                               # the API service mints least-scope tokens for edge devices
                               {"name": "fedhub-service", "services": ["fedhub"],
                                # groups: the dataset and federated-job policies depend on them
                                "scopes": ["tokens", "read:users:groups", "read:groups",
                                           # expiry: stop a session at its time limit
                                           "admin:servers"]}]

    python = sys.executable
    services = [{
        "name": "fedhub",
        "url": f"http://127.0.0.1:{ports['fedhub_api']}",
        "command": [python, "-m", "fedhub.hub.service.app", "--port", str(ports["fedhub_api"]),
                    "--state-dir", str(data / "state")],
        "oauth_no_confirm": True,
        "oauth_client_allowed_scopes": list(FEDHUB_SCOPES),
        "display": True,
    }]
    if s.get("mlflow", True):
        services.append({
            "name": "mlflow",
            "url": f"http://127.0.0.1:{ports['mlflow']}",
            "command": [python, "-m", "fedhub.hub.tracking", "--port", str(ports["mlflow"]),
                        "--mlflow-port", str(ports["mlflow_internal"]), "--data-dir", str(data / "mlflow"),
                        "--backend-store-uri", s.get("mlflow_db_url", ""),
                        "--artifacts-destination", s.get("artifacts_uri", "")],
            "oauth_no_confirm": True,
            "display": True,
            # services only inherit a few variables: pass the database and S3 credentials on
            # from the hub's environment (never written to a file)
            "environment": {k: os.environ[k] for k in MLFLOW_STORE_ENV if k in os.environ},
        })
        # the MLflow gate checks that a hub group exists before sharing an experiment with it
        c.JupyterHub.load_roles.append({"name": "fedhub-mlflow-gate", "services": ["mlflow"],
                                        "scopes": ["read:groups:name"]})
    services[0]["environment"] = {"FEDHUB_DEPLOY_SETTINGS": json.dumps(deploy_settings(s)),
                                  "FEDHUB_POLICY_FILE": s.get("policy_file", ""),
                                  "FEDHUB_CATALOGUE_FILE": str(s["catalogue_file"])}
    if s.get("inference", True):
        services.append({
            "name": "inference",
            "url": f"http://127.0.0.1:{ports['inference']}",
            "command": [python, "-m", "fedhub.hub.deploy.gate", "--port", str(ports["inference"]),
                        "--http-port", str(ports["inference_http"]), "--grpc-port", str(ports["inference_grpc"]),
                        "--model-repository", s.get("model_repository") or str(data / "models")],
            "oauth_no_confirm": True,
            # an s3:// model repository: keys and endpoint from the hub's environment, never a file
            "environment": model_repository_env(s),
        })
    services[0]["environment"].update(model_repository_env(s))
    services[0].setdefault("environment", {})["FEDHUB_FEDERATION_SETTINGS"] = json.dumps(federation_settings(s))
    if s.get("state_db_url"):  # fedhub's own state in PostgreSQL (fedhub.hub.statedb); SQLite otherwise
        services[0]["environment"]["FEDHUB_STATE_DB_URL"] = s["state_db_url"]
        services[0]["environment"].update({k: os.environ[k] for k in STATE_DB_ENV if k in os.environ})
    if s.get("cull_idle"):
        # the culler runs in the API service: it lists ready servers and asks each what runs in it
        services[0]["environment"]["FEDHUB_CULLER"] = json.dumps(
            {"idle_timeout": s["cull_idle"], "hub_url": deploy_settings(s)["public_url"]})
        service_role = next(r for r in c.JupyterHub.load_roles if r["name"] == "fedhub-service")
        service_role["scopes"] += ["list:users", "read:users", "admin:server_state", "access:servers"]
    c.JupyterHub.services = services


def model_repository_env(s: dict) -> dict:
    """The S3 variables the deployment manager and the inference server need, from the hub's
    environment, when the model repository is in S3."""
    from .deploy.s3repo import S3_ENV, is_s3_uri
    if not is_s3_uri(s.get("model_repository", "")):
        return {}
    return {k: os.environ[k] for k in S3_ENV if k in os.environ}


def deploy_settings(s: dict) -> dict:
    """What the deployment manager (in the API service) needs to know about this hub."""
    ports, data = s["ports"], Path(s["data_dir"])
    public_ip = "127.0.0.1" if s["ip"] in ("", "0.0.0.0") else s["ip"]
    public_url = s.get("public_url") or f"http://{public_ip}:{s['port']}"
    inference = s.get("inference", True)
    return {
        "public_url": public_url,
        "models_dir": str(data / "models"),
        # the embedded server's repository: "" (models_dir), another folder, or s3://...
        "model_repository": s.get("model_repository", ""),
        # an .onnx file in a user's own workspace may be deployed by path
        "homes_dir": str(data / "homes"),
        "inference": inference,
        "inference_http": f"127.0.0.1:{ports['inference_http']}" if inference else "",
        "inference_grpc": f"127.0.0.1:{ports['inference_grpc']}" if inference else "",
        "inference_proxy": f"{public_url}/services/inference" if inference else "",
        # the MLflow gate itself (not the proxy): callers' tokens are checked there
        "mlflow_url": f"http://127.0.0.1:{ports['mlflow']}/services/mlflow" if s.get("mlflow", True) else "",
    }


def federation_settings(s: dict) -> dict:
    """FederatedJobs settings of the API service (fedhub.hub.federation.manager)."""
    data = Path(s["data_dir"])
    return {
        "catalogue_file": str(s["catalogue_file"]),
        "homes_dir": str(data / "homes"),  # the home template of local and Slurm sessions
        "mlflow_url": f"http://127.0.0.1:{s['ports']['mlflow']}/services/mlflow" if s.get("mlflow", True) else "",
    }


def pass_federated_jobs_config(c) -> None:
    """`c.FederatedJobs.<name>` in a jupyterhub_config.py reaches the job manager, which runs
    in the fedhub API service (another process): merged into its settings environment."""
    overrides = {k: v for k, v in c.FederatedJobs.items()}
    if not overrides:
        return
    from fedhub.hub.federation.manager import FederatedJobs

    known = set(FederatedJobs.class_trait_names(config=True))
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"c.FederatedJobs.{unknown[0]}: no such setting; expected one of {sorted(known)}")
    for svc in c.JupyterHub.services:
        if svc.get("name") == "fedhub":
            env = svc.setdefault("environment", {})
            settings = json.loads(env.get("FEDHUB_FEDERATION_SETTINGS") or "{}")
            settings.update(overrides)
            env["FEDHUB_FEDERATION_SETTINGS"] = json.dumps(settings)
