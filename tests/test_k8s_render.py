"""`fedhub k8s render`: z2jh values and manifests from fedhub's config, validated against the
Kubernetes 1.37 OpenAPI schemas (kubernetes-validate, strict). No cluster runs here: nothing
is applied, the documents are checked as data. The hub Dockerfile is checked statically
(no Docker engine on these machines)."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from traitlets.config import Config

from fedhub.hub.hubconfig import FEDHUB_SCOPES
from fedhub.hub.k8s_render import RenderSettings, render

ROOT = Path(__file__).resolve().parents[1]
K8S = "1.37.0"
KUBECONFIG_TOKEN = "kubeconfig-token-must-not-leak-7f3a"
JWT = "slurm-jwt-must-not-leak-91bc"


def validate(doc: dict) -> None:
    assert kubernetes_validate.validate(doc, K8S, strict=True) == "1.37"


@pytest.fixture
def config(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "gpu",
        "contexts": [{"name": "gpu", "context": {"cluster": "gpu", "user": "u"}}],
        "clusters": [{"name": "gpu", "cluster": {"server": "https://k8s.example:6443"}}],
        "users": [{"name": "u", "user": {"token": KUBECONFIG_TOKEN}}]}))
    jwt = tmp_path / "jwt"
    jwt.write_text(JWT)
    catalogue = {"sites": [
        {"name": "laptop", "kind": "local", "cpus": 4, "memory": "8G"},
        {"name": "cloud", "kind": "kubernetes", "cpus": 96, "memory": "600G",
         "gpus": [{"type": "a100", "count": 8}],
         "options": {"kubeconfig": str(kubeconfig), "context": "gpu"}},
        {"name": "hpc", "kind": "slurm", "cpus": 512, "memory": "2T",
         "options": {"rest_url": "http://slurm.example:6820", "rest_user": "fedhub", "jwt_file": str(jwt)}},
    ]}
    policy = {"groups": {"physics": {"sites": ["hpc"]}}}
    (tmp_path / "sites.yaml").write_text(yaml.safe_dump(catalogue))
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    return tmp_path, catalogue, policy


@pytest.fixture
def files(config):
    _, catalogue, policy = config
    return render(catalogue, policy, RenderSettings(image="registry.example:5000/fedhub/hub:0.9"))


def manifests(files):
    return {name: doc for name, doc in files.items() if name != "values.yaml"}


def test_every_manifest_validates_strictly_against_kubernetes_1_37(files):
    kinds = sorted(doc["kind"] for doc in manifests(files).values())
    assert kinds == ["ConfigMap", "Deployment", "PersistentVolumeClaim",
                     "Secret", "Secret", "Secret", "Secret", "Service"]
    for doc in manifests(files).values():
        validate(doc)


def test_the_values_pod_parts_validate_as_a_pod(files):
    """z2jh copies hub.extraEnv/extraVolumes/extraVolumeMounts into the hub pod as they are."""
    hub = files["values.yaml"]["hub"]
    validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hub"}, "spec": {
        "containers": [{"name": "hub", "image": f"{hub['image']['name']}:{hub['image']['tag']}",
                        "env": hub["extraEnv"], "volumeMounts": hub["extraVolumeMounts"]}],
        "volumes": hub["extraVolumes"]}})
    # ...and hub.service.extraPorts / hub.networkPolicy.ingress into the hub Service and NetworkPolicy
    validate({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "hub"},
              "spec": {"selector": {"component": "hub"}, "ports": hub["service"]["extraPorts"]}})
    validate({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "hub"},
              "spec": {"podSelector": {}, "ingress": hub["networkPolicy"]["ingress"]}})
    # the fedhub service's URL is the port the Service and the policy open
    port = hub["service"]["extraPorts"][0]["port"]
    assert hub["services"]["fedhub"]["url"] == f"http://hub:{port}"
    assert hub["networkPolicy"]["ingress"][0]["ports"] == [{"port": port}]


@pytest.mark.parametrize("path,typo", [
    (("spec", "template", "spec", "containers", 0), "imagePullPolice"),
    (("spec",), "replica"),
])
def test_a_wrong_field_is_caught_by_the_validation(files, path, typo):
    doc = copy.deepcopy(files["deployment-fedhub-mlflow.yaml"])
    node = doc
    for step in path:
        node = node[step]
    node[typo] = 1
    with pytest.raises(kubernetes_validate.ValidationError, match=f"'{typo}' was unexpected"):
        validate(doc)


def test_hub_values_wire_the_spawner_services_database_and_image(files):
    hub = files["values.yaml"]["hub"]
    assert hub["image"] == {"name": "registry.example:5000/fedhub/hub", "tag": "0.9"}
    assert hub["db"] == {"type": "postgres", "url": RenderSettings.db_url}
    assert {"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": "fedhub-db", "key": "jupyterhub-password"}}} \
        in hub["extraEnv"]
    assert set(hub["services"]) == {"fedhub", "mlflow"}
    assert hub["services"]["mlflow"]["url"] == "http://fedhub-mlflow:5000"
    assert hub["services"]["fedhub"]["command"][:3] == ["python", "-m", "fedhub.hub.service.app"]
    # extraConfig is real Python that configures JupyterHub
    c = Config()
    exec(compile(hub["extraConfig"]["fedhub"], "extraConfig", "exec"), {"c": c})
    assert c.JupyterHub.spawner_class == "federated"
    assert c.FederatedSpawner.catalogue_file == "/etc/fedhub/config/sites.yaml"
    assert c.FederatedSpawner.policy_file == "/etc/fedhub/config/policy.yaml"
    assert c.JupyterHub.custom_scopes == FEDHUB_SCOPES
    assert {r["name"] for r in c.JupyterHub.load_roles} >= {"user", "server", "fedhub-service"}


def test_the_fedhub_service_keeps_its_state_in_postgres_with_the_password_from_a_secret(files):
    hub = files["values.yaml"]["hub"]
    env = hub["services"]["fedhub"]["environment"]
    assert env["FEDHUB_STATE_DB_URL"] == RenderSettings.state_db_url and "@" in env["FEDHUB_STATE_DB_URL"]
    assert {"name": "FEDHUB_STATE_PGPASSWORD", "valueFrom": {"secretKeyRef": {
        "name": "fedhub-db", "key": "fedhub-state-password"}}} in hub["extraEnv"]
    assert "fedhub-state-password" in files["secret-fedhub-db.yaml"]["stringData"]
    # the extraConfig hands the hub pod's secret to the service as libpq's PGPASSWORD
    import os
    c = Config()
    c.JupyterHub.services = [{"name": "fedhub"}, {"name": "mlflow"}]
    os.environ["FEDHUB_STATE_PGPASSWORD"] = "from-the-secret"
    try:
        exec(compile(hub["extraConfig"]["fedhub-state-db"], "extraConfig", "exec"), {"c": c})
    finally:
        del os.environ["FEDHUB_STATE_PGPASSWORD"]
    assert c.JupyterHub.services[0]["environment"] == {"PGPASSWORD": "from-the-secret"}
    assert "environment" not in c.JupyterHub.services[1]


def test_without_a_state_database_url_the_state_stays_in_sqlite_on_the_volume(config):
    _, catalogue, policy = config
    files = render(catalogue, policy, RenderSettings(state_db_url=""))
    hub = files["values.yaml"]["hub"]
    assert "FEDHUB_STATE_DB_URL" not in hub["services"]["fedhub"]["environment"]
    assert "fedhub-state-db" not in hub["extraConfig"]
    assert "fedhub-state-password" not in files["secret-fedhub-db.yaml"]["stringData"]


def test_site_credentials_come_from_secrets_by_name(files):
    cm = files["configmap-fedhub-config.yaml"]
    sites = {s["name"]: s for s in yaml.safe_load(cm["data"]["sites.yaml"])["sites"]}
    assert sites["cloud"]["options"]["kubeconfig"] == "/etc/fedhub/sites/cloud/kubeconfig"
    assert sites["hpc"]["options"]["jwt_file"] == "/etc/fedhub/sites/hpc/jwt"
    assert yaml.safe_load(cm["data"]["policy.yaml"]) == {"groups": {"physics": {"sites": ["hpc"]}}}
    assert files["secret-fedhub-site-cloud.yaml"]["stringData"] == {"kubeconfig": ""}
    assert files["secret-fedhub-site-hpc.yaml"]["stringData"] == {"jwt": ""}
    mounts = {m["name"]: m["mountPath"] for m in files["values.yaml"]["hub"]["extraVolumeMounts"]}
    assert mounts["fedhub-site-cloud"] == "/etc/fedhub/sites/cloud"
    # every Secret is a template: keys, never values
    for name, doc in files.items():
        if doc.get("kind") == "Secret":
            assert set(doc["stringData"].values()) == {""}, name


def test_mlflow_uses_postgres_and_s3_with_credentials_from_secrets(files):
    container = files["deployment-fedhub-mlflow.yaml"]["spec"]["template"]["spec"]["containers"][0]
    cmd = container["command"]
    assert cmd[cmd.index("--backend-store-uri") + 1] == RenderSettings.mlflow_db_url
    assert cmd[cmd.index("--artifacts-destination") + 1] == "s3://fedhub-mlflow/artifacts"
    labels = files["deployment-fedhub-mlflow.yaml"]["spec"]["template"]["metadata"]["labels"]
    assert labels["hub.jupyter.org/network-access-hub"] == "true"  # z2jh's hub NetworkPolicy admits it
    env = {e["name"]: e for e in container["env"]}
    for name in ("PGPASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "JUPYTERHUB_API_TOKEN"):
        assert "value" not in env[name] and "secretKeyRef" in env[name]["valueFrom"], name
    assert env["JUPYTERHUB_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hub",
                                                                        "key": "hub.services.mlflow.apiToken"}


def fedhub(*args, env=None):
    return subprocess.run([sys.executable, "-m", "fedhub.server_ext.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_cli_writes_the_files_and_no_secret_reaches_them(config, monkeypatch):
    tmp, _, _ = config
    out = tmp / "rendered"
    env = {"PATH": "/usr/bin:/bin", "AWS_SECRET_ACCESS_KEY": "aws-secret-must-not-leak", "PGPASSWORD": "pg-leak"}
    r = fedhub("k8s", "render", "--catalogue", str(tmp / "sites.yaml"), "--policy", str(tmp / "policy.yaml"),
               "--out", str(out), env=env)
    assert r.returncode == 0, r.stderr
    written = sorted(p.name for p in out.iterdir())
    assert "values.yaml" in written and "deployment-fedhub-mlflow.yaml" in written and len(written) == 9
    text = "".join(p.read_text() for p in out.iterdir())
    for secret in (KUBECONFIG_TOKEN, JWT, "aws-secret-must-not-leak", "pg-leak"):
        assert secret not in text
    for p in out.iterdir():
        doc = yaml.safe_load(p.read_text())
        if p.name != "values.yaml":
            validate(doc)


def test_cli_refuses_a_password_in_a_database_url(config):
    tmp, _, _ = config
    r = fedhub("k8s", "render", "--catalogue", str(tmp / "sites.yaml"),
               "--db-url", "postgresql://hub:hunter2@db:5432/hub")
    assert r.returncode == 2
    assert "--db-url holds a password" in r.stderr and "fedhub-db" in r.stderr and "hunter2" not in r.stdout
    r = fedhub("k8s", "render", "--catalogue", str(tmp / "sites.yaml"),
               "--state-db-url", "postgresql://fedhub:hunter2@db:5432/state")
    assert r.returncode == 2 and "--state-db-url holds a password" in r.stderr


def test_cli_names_the_file_and_key_of_a_bad_catalogue(tmp_path):
    bad = tmp_path / "sites.yaml"
    bad.write_text(yaml.safe_dump({"sites": [{"name": "x", "kind": "local", "cpus": -1, "memory": "1G"}]}))
    r = fedhub("k8s", "render", "--catalogue", str(bad))
    assert r.returncode == 2
    assert "sites.yaml" in r.stderr and "cpus" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------- hub image (static: no Docker engine here)

DOCKERFILE = ROOT / "docker" / "hub.Dockerfile"


def test_hub_dockerfile_installs_the_pyproject_pins_and_has_its_entrypoint():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11[-\w.]*bookworm", text, re.M)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    hub_pins = [p for p in pyproject["project"]["optional-dependencies"]["hub"] if "==" in p]
    constraints = [line for line in (ROOT / "docker" / "hub-constraints.txt").read_text().splitlines()
                   if line.strip() and not line.startswith("#")]
    assert sorted(constraints) == sorted(re.sub(r"\[.*?\]", "", p.replace(" ", "")) for p in hub_pins)
    # configurable-http-proxy: the version package.json pins for `fedhub up`
    chp = re.search(r"configurable-http-proxy@([\d.]+)", text).group(1)
    assert json.loads((ROOT / "package.json").read_text())["dependencies"]["configurable-http-proxy"] == chp
    assert '".[hub]"' in text and "-c docker/hub-constraints.txt" in text
    # the entrypoint is installed by the image itself, the command is JupyterHub (z2jh's hub config path)
    entry = re.search(r'^ENTRYPOINT \["([^"]+)"', text, re.M).group(1)
    assert entry == "tini" and re.search(r"apt-get install[^\n]*\btini\b", text)
    assert re.search(r'^CMD \["jupyterhub", "--config", "/usr/local/etc/jupyterhub/jupyterhub_config.py"\]', text, re.M)
