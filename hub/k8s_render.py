"""`fedhub k8s render`: zero-to-jupyterhub values and Kubernetes manifests from fedhub's config.

Pure functions: (catalogue, policy, settings) -> a values.yaml fragment for the z2jh Helm
chart plus manifests for what z2jh does not run (MLflow Deployment + Service, the catalogue
ConfigMap, a PVC for fedhub's own state, Secret templates). Credentials are referenced by
Secret name and key only: the rendered files never hold a password, token or key.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .catalogue import CatalogueError, catalogue_from_dict, read_yaml

CONFIG_DIR = "/etc/fedhub/config"        # catalogue + policy (ConfigMap)
SITE_SECRETS_DIR = "/etc/fedhub/sites"   # one folder per site (Secret fedhub-site-<name>)
STATE_DIR = "/srv/fedhub/state"          # fedhub's jobs, deployments, ledger (PVC): not yet in SQL
FEDHUB_API_PORT = 10101                  # the fedhub API service, in the hub pod
HUB_ACCESS_LABEL = "hub.jupyter.org/network-access-hub"
DB_SECRET = "fedhub-db"
S3_SECRET = "fedhub-s3"
# site option -> key of the site's Secret that replaces the file named by the option
CREDENTIAL_OPTIONS = {"kubeconfig": "kubeconfig", "jwt_file": "jwt"}


@dataclass
class RenderSettings:
    """What differs between installs; every credential is a Secret reference, never a value."""
    image: str = "ghcr.io/fedhub/hub:latest"
    namespace: str = "fedhub"
    db_url: str = "postgresql+psycopg2://jupyterhub@postgres:5432/jupyterhub"
    mlflow_db_url: str = "postgresql+psycopg2://mlflow@postgres:5432/mlflow"
    # fedhub's own state (jobs, deployments, ledger); "" = SQLite on the state PVC
    state_db_url: str = "postgresql+psycopg2://fedhub@postgres:5432/fedhub_state"
    artifacts_uri: str = "s3://fedhub-mlflow/artifacts"
    state_storage: str = "10Gi"
    # Triton on Kubernetes sites reads model repositories here (s3://...; "" = the site's PVC)
    model_repository: str = ""
    s3_endpoint: str = ""  # the S3-compatible store as the Triton pods reach it, http(s)://host:port
    extra: dict = field(default_factory=dict)


def _split_image(image: str) -> tuple[str, str]:
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:  # no tag, or a registry port
        return image, "latest"
    return name, tag


def site_secret_name(site: str) -> str:
    return f"fedhub-site-{site}".lower().replace("_", "-")


def _labels(component: str) -> dict:
    return {"app.kubernetes.io/name": "fedhub", "app.kubernetes.io/component": component}


def incluster_catalogue(raw: dict) -> tuple[dict, dict[str, list[str]]]:
    """The catalogue with credential file paths pointing at the mounted site Secrets,
    and {secret name: keys} for the Secrets those paths need."""
    out = copy.deepcopy(raw)
    needed: dict[str, list[str]] = {}
    for site in out.get("sites") or []:
        options = site.get("options") or {}
        for option, key in CREDENTIAL_OPTIONS.items():
            if options.get(option):
                options[option] = f"{SITE_SECRETS_DIR}/{site['name']}/{key}"
                needed.setdefault(site_secret_name(site["name"]), []).append(key)
    return out, needed


def secret_template(name: str, keys: list[str], namespace: str) -> dict:
    """A Secret with its keys and empty values: the admin fills them (kubectl create secret)."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace, "labels": _labels("credentials")},
            "stringData": {k: "" for k in keys}}


def config_map(catalogue_yaml: str, policy_yaml: str, namespace: str) -> dict:
    data = {"sites.yaml": catalogue_yaml}
    if policy_yaml:
        data["policy.yaml"] = policy_yaml
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "fedhub-config", "namespace": namespace, "labels": _labels("config")},
            "data": data}


def state_pvc(storage: str, namespace: str) -> dict:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "fedhub-state", "namespace": namespace, "labels": _labels("state")},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": storage}}}}


def _secret_env(name: str, secret: str, key: str, optional: bool = False) -> dict:
    ref = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def mlflow_deployment(s: RenderSettings) -> dict:
    """MLflow behind fedhub's gate: the gate checks hub tokens, MLflow keeps its runs in
    PostgreSQL (password from the Secret via libpq's PGPASSWORD) and artifacts in S3."""
    name, tag = _split_image(s.image)
    env = [
        {"name": "JUPYTERHUB_API_URL", "value": "http://hub:8081/hub/api"},
        {"name": "JUPYTERHUB_SERVICE_NAME", "value": "mlflow"},
        {"name": "JUPYTERHUB_SERVICE_PREFIX", "value": "/services/mlflow/"},
        # z2jh generates each hub service's token into the hub Secret
        _secret_env("JUPYTERHUB_API_TOKEN", "hub", "hub.services.mlflow.apiToken"),
        _secret_env("PGPASSWORD", DB_SECRET, "mlflow-password"),
        _secret_env("AWS_ACCESS_KEY_ID", S3_SECRET, "AWS_ACCESS_KEY_ID"),
        _secret_env("AWS_SECRET_ACCESS_KEY", S3_SECRET, "AWS_SECRET_ACCESS_KEY"),
        _secret_env("MLFLOW_S3_ENDPOINT_URL", S3_SECRET, "MLFLOW_S3_ENDPOINT_URL", optional=True),
    ]
    container = {
        "name": "mlflow", "image": f"{name}:{tag}",
        "command": ["python", "-m", "fedhub.hub.tracking", "--port", "5000", "--mlflow-port", "5001",
                    "--data-dir", "/srv/mlflow", "--backend-store-uri", s.mlflow_db_url,
                    "--artifacts-destination", s.artifacts_uri],
        "ports": [{"name": "http", "containerPort": 5000}],
        "env": env,
        "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 10},
        "volumeMounts": [{"name": "mlflow-data", "mountPath": "/srv/mlflow"}],
    }
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "fedhub-mlflow", "namespace": s.namespace, "labels": _labels("mlflow")},
            "spec": {"replicas": 1, "selector": {"matchLabels": _labels("mlflow")},
                     # z2jh's hub NetworkPolicy lets pods with this label reach the hub API
                     "template": {"metadata": {"labels": {**_labels("mlflow"), HUB_ACCESS_LABEL: "true"}},
                                  "spec": {"containers": [container],
                                           # the gate's auth ini and secret; runs are in PostgreSQL
                                           "volumes": [{"name": "mlflow-data", "emptyDir": {}}]}}}}


def mlflow_service(namespace: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "fedhub-mlflow", "namespace": namespace, "labels": _labels("mlflow")},
            "spec": {"selector": _labels("mlflow"),
                     "ports": [{"name": "http", "port": 5000, "targetPort": "http"}]}}


EXTRA_CONFIG = '''\
# fedhub: sessions placed on federated sites; fedhub actions are custom scopes
from fedhub.hub.hubconfig import FEDHUB_SCOPES
c.JupyterHub.spawner_class = "federated"
c.FederatedSpawner.catalogue_file = "{config}/sites.yaml"
c.FederatedSpawner.state_dir = "{state}"
{policy}c.JupyterHub.custom_scopes = FEDHUB_SCOPES
_user = ["self", *FEDHUB_SCOPES, "access:services!service=fedhub", "access:services!service=mlflow"]
c.JupyterHub.load_roles = [
    {{"name": "user", "scopes": _user}},
    {{"name": "server", "scopes": ["users:activity!user", "access:servers!server", *_user[1:]]}},
    {{"name": "fedhub-service", "services": ["fedhub"],
     "scopes": ["tokens", "read:users:groups", "read:groups", "admin:servers"]}},
    {{"name": "fedhub-mlflow-gate", "services": ["mlflow"], "scopes": ["read:groups:name"]}},
]
'''


def pass_to_fedhub_service(why: str, names: dict[str, str]) -> str:
    """hub.extraConfig that hands the hub pod's environment variables (pod name -> service name)
    to the fedhub API service: JupyterHub services do not inherit the hub's environment."""
    return (f"# fedhub: {why}\nimport os\n"
            "for _service in c.JupyterHub.services:\n"
            "    if _service.get(\"name\") == \"fedhub\":\n"
            f"        _service.setdefault(\"environment\", {{}}).update(\n"
            f"            {{v: os.environ[k] for k, v in {names!r}.items() if os.environ.get(k)}})\n")


# the API service writes Triton model repositories to S3 with the hub pod's keys (Secret fedhub-s3)
S3_MODELS_CONFIG = pass_to_fedhub_service(
    "the S3 keys for Triton model repositories (Secret fedhub-s3)",
    {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"})
# the state database's password (Secret fedhub-db, key fedhub-state-password) reaches libpq as PGPASSWORD
STATE_DB_CONFIG = pass_to_fedhub_service(
    "the state database's password as libpq's PGPASSWORD (Secret fedhub-db)",
    {"FEDHUB_STATE_PGPASSWORD": "PGPASSWORD"})


def triton_settings(s: RenderSettings) -> dict:
    """TritonOnKubernetes settings for the API service ($FEDHUB_TRITON_KUBERNETES), names only."""
    return {"model_repository": s.model_repository, "s3_secret": S3_SECRET, "s3_endpoint": s.s3_endpoint}


def hub_values(s: RenderSettings, site_secrets: dict[str, list[str]], has_policy: bool) -> dict:
    name, tag = _split_image(s.image)
    mounts = [{"name": "fedhub-config", "mountPath": CONFIG_DIR, "readOnly": True},
              {"name": "fedhub-state", "mountPath": STATE_DIR}]
    volumes = [{"name": "fedhub-config", "configMap": {"name": "fedhub-config"}},
               {"name": "fedhub-state", "persistentVolumeClaim": {"claimName": "fedhub-state"}}]
    for secret in site_secrets:
        site = secret.removeprefix("fedhub-site-")
        volumes.append({"name": secret, "secret": {"secretName": secret, "defaultMode": 0o400}})
        mounts.append({"name": secret, "mountPath": f"{SITE_SECRETS_DIR}/{site}", "readOnly": True})
    policy = f'c.FederatedSpawner.policy_file = "{CONFIG_DIR}/policy.yaml"\n' if has_policy else ""
    service_env = {"FEDHUB_CATALOGUE_FILE": f"{CONFIG_DIR}/sites.yaml",
                   "FEDHUB_POLICY_FILE": f"{CONFIG_DIR}/policy.yaml" if has_policy else ""}
    extra_env, extra_config = [_secret_env("PGPASSWORD", DB_SECRET, "jupyterhub-password")], {}
    if s.model_repository:  # Triton on the sites reads S3: the hub writes there
        service_env["FEDHUB_TRITON_KUBERNETES"] = json.dumps(triton_settings(s))
        extra_env += [_secret_env(k, S3_SECRET, k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]
        extra_config["fedhub-s3-models"] = S3_MODELS_CONFIG
    if s.state_db_url:  # jobs, deployments and the ledger in PostgreSQL, not on the state PVC
        service_env["FEDHUB_STATE_DB_URL"] = s.state_db_url
        extra_env.append(_secret_env("FEDHUB_STATE_PGPASSWORD", DB_SECRET, "fedhub-state-password"))
        extra_config["fedhub-state-db"] = STATE_DB_CONFIG
    return {"hub": {
        "image": {"name": name, "tag": tag},
        # the password reaches libpq as PGPASSWORD, so the URL holds none
        "db": {"type": "postgres", "url": s.db_url},
        "extraEnv": extra_env,
        "extraVolumes": volumes,
        "extraVolumeMounts": mounts,
        "services": {
            "fedhub": {"url": f"http://hub:{FEDHUB_API_PORT}", "command": [
                "python", "-m", "fedhub.hub.service.app", "--port", str(FEDHUB_API_PORT), "--ip", "0.0.0.0",
                "--state-dir", STATE_DIR], "environment": service_env,
                "oauth_no_confirm": True, "display": True},
            "mlflow": {"url": "http://fedhub-mlflow:5000", "oauth_no_confirm": True, "display": True},
        },
        # the proxy reaches the fedhub API in the hub pod through the hub Service
        "service": {"extraPorts": [{"name": "fedhub-api", "port": FEDHUB_API_PORT,
                                    "targetPort": FEDHUB_API_PORT}]},
        "networkPolicy": {"ingress": [{"ports": [{"port": FEDHUB_API_PORT}], "from": [
            {"podSelector": {"matchLabels": {"app": "jupyterhub", "component": "proxy"}}}]}]},
        "extraConfig": {"fedhub": EXTRA_CONFIG.format(config=CONFIG_DIR, state=STATE_DIR, policy=policy),
                        **extra_config},
    }}


def render(catalogue: dict, policy: dict | None, s: RenderSettings) -> dict[str, dict]:
    """{file name: document}: values.yaml for z2jh and one manifest per file."""
    raw, site_secrets = incluster_catalogue(catalogue)
    policy_yaml = yaml.safe_dump(policy, sort_keys=False) if policy else ""
    files = {
        "values.yaml": hub_values(s, site_secrets, bool(policy)),
        "configmap-fedhub-config.yaml": config_map(yaml.safe_dump(raw, sort_keys=False), policy_yaml, s.namespace),
        "pvc-fedhub-state.yaml": state_pvc(s.state_storage, s.namespace),
        "deployment-fedhub-mlflow.yaml": mlflow_deployment(s),
        "service-fedhub-mlflow.yaml": mlflow_service(s.namespace),
        f"secret-{DB_SECRET}.yaml": secret_template(
            DB_SECRET, ["jupyterhub-password", "mlflow-password"] + (["fedhub-state-password"] if s.state_db_url
                                                                      else []), s.namespace),
        f"secret-{S3_SECRET}.yaml": secret_template(
            S3_SECRET, ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"], s.namespace),
    }
    for secret, keys in site_secrets.items():
        files[f"secret-{secret}.yaml"] = secret_template(secret, keys, s.namespace)
    return files


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fedhub k8s render",
                                description="z2jh values.yaml and Kubernetes manifests from fedhub's config")
    p.add_argument("--catalogue", required=True, help="site catalogue YAML (the one `fedhub up` uses)")
    p.add_argument("--policy", default="", help="governance policy YAML, if any")
    p.add_argument("--image", default=RenderSettings.image, help="hub image (docker/hub.Dockerfile)")
    p.add_argument("--namespace", default=RenderSettings.namespace)
    p.add_argument("--db-url", default=RenderSettings.db_url, help="JupyterHub database URL, without password")
    p.add_argument("--mlflow-db-url", default=RenderSettings.mlflow_db_url,
                   help="MLflow backend store URL, without password")
    p.add_argument("--artifacts-uri", default=RenderSettings.artifacts_uri, help="MLflow artifacts (s3://...)")
    p.add_argument("--state-db-url", default=RenderSettings.state_db_url,
                   help="fedhub's state database (jobs, deployments, ledger), without password; "
                        "'' keeps it in SQLite on the state volume")
    p.add_argument("--model-repository", default="", help="s3://bucket/prefix (or s3://host:port/bucket/prefix) "
                   "Triton on the Kubernetes sites reads model repositories from; keys from Secret fedhub-s3")
    p.add_argument("--s3-endpoint", default="", help="the S3-compatible store's http(s)://host:port, as the "
                   "sites' Triton pods reach it (default: AWS S3, or the host:port in --model-repository)")
    p.add_argument("--out", default="", help="folder to write the files to (default: print them)")
    args = p.parse_args(argv)
    for option, url in (("--db-url", args.db_url), ("--mlflow-db-url", args.mlflow_db_url),
                        ("--state-db-url", args.state_db_url)):
        if "@" in url and ":" in url.split("://", 1)[-1].split("@", 1)[0]:
            print(f"fedhub k8s render: {option} holds a password; put it in Secret {DB_SECRET} "
                  "and give the URL without it", file=sys.stderr)
            return 2
    if args.model_repository:
        from .deploy.k8s import ManifestError, parse_repository_source
        try:
            if not args.model_repository.startswith("s3://"):
                raise ManifestError(f"expected s3://bucket/prefix, got {args.model_repository!r}")
            parse_repository_source(args.model_repository, "", args.s3_endpoint)
        except ManifestError as e:
            print(f"fedhub k8s render: --model-repository: {str(e).removeprefix('model_repository: ')}",
                  file=sys.stderr)
            return 2
    try:
        raw = read_yaml(Path(args.catalogue))
        catalogue_from_dict(raw, Path(args.catalogue).name)  # same checks as `fedhub up`
        policy = read_yaml(Path(args.policy)) if args.policy else None
    except (CatalogueError, OSError) as e:
        print(f"fedhub k8s render: invalid config: {e}", file=sys.stderr)
        return 2
    files = render(raw, policy, RenderSettings(image=args.image, namespace=args.namespace, db_url=args.db_url,
                                               mlflow_db_url=args.mlflow_db_url, artifacts_uri=args.artifacts_uri,
                                               model_repository=args.model_repository, s3_endpoint=args.s3_endpoint,
                                               state_db_url=args.state_db_url))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, doc in files.items():
            (out / name).write_text(yaml.safe_dump(doc, sort_keys=False))
            print(f"wrote {out / name}")
    else:
        print("\n---\n".join(f"# {name}\n{yaml.safe_dump(doc, sort_keys=False)}" for name, doc in files.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
