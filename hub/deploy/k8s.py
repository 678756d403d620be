"""Triton on a Kubernetes site: pure manifest builders.

Two shapes, both serving a Triton model repository (what packaging.py writes):
- a Triton Deployment + Service (`tritonserver` from NGC, HTTP 8000, gRPC 8001, metrics 8002);
- the alternative for sites running KServe: an InferenceService (serving.kserve.io/v1beta1)
  with KServe's Triton runtime, model format onnx, protocol v2.

Where the model repository comes from (`model_repository`):
- `s3://bucket/path` (or gs://, as://): Triton and KServe read it directly; credentials come
  from a Secret (`s3_secret`: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY by name, never a
  value) or, for KServe, the service account's. An S3-compatible store's endpoint goes into
  Triton's own path form, `s3://host:port/bucket/path` (`s3_endpoint`, or given so);
- `pvc://claim/sub/path`: a PersistentVolumeClaim the site already has, mounted read-only;
- `https://...tar.gz`: the hub's artifact store; an init container downloads and unpacks
  the repository into an emptyDir (token from `fetch_token_secret`). Deployment only.

GPUs use the session helpers of fedhub.spawner.backends.k8s_manifests (session_traits):
an `nvidia.com/gpu` limit, a node selector on the GPU product label, NVIDIA's taint
tolerated. No cluster, no client: dicts in, dicts out, validated against the Kubernetes
schemas by the tests.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Iterable

from traitlets import Dict, Integer, TraitError, Unicode
from traitlets.config import Configurable

from fedhub.spawner.backends.k8s_manifests import DEFAULT_GPU_PRODUCT_LABEL, GPU_RESOURCE, session_traits

DEFAULT_TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:25.10-py3"
DEFAULT_FETCH_IMAGE = "busybox:1.37"
KSERVE_API_VERSION = "serving.kserve.io/v1beta1"
KSERVE_TRITON_RUNTIME = "kserve-tritonserver"  # the ClusterServingRuntime KServe installs
MODELS_DIR = "/models"
PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
APP_LABEL = "app.kubernetes.io/name"
DEPLOYMENT_LABEL = "fedhub.io/deployment"
DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
SETTINGS_ENV = "FEDHUB_TRITON_KUBERNETES"  # JSON {setting: value} for the API service (k8s render)
# Secret keys of `s3_secret` -> (env var, required); Triton's S3 client reads these variables
S3_SECRET_KEYS = {"AWS_ACCESS_KEY_ID": True, "AWS_SECRET_ACCESS_KEY": True, "AWS_SESSION_TOKEN": False,
                  "AWS_DEFAULT_REGION": False}


class ManifestError(ValueError):
    """Settings that cannot become valid manifests; the message names the setting."""


class TritonOnKubernetes(Configurable):
    """How fedhub deploys a model to a Kubernetes site with Triton (per hub; a deployment's
    options may override cpus, memory, gpus, gpu_product, model_repository and server)."""

    image = Unicode(DEFAULT_TRITON_IMAGE, help="The Triton Inference Server image (NGC tritonserver).").tag(config=True)
    fetch_image = Unicode(DEFAULT_FETCH_IMAGE, help=(
        "Image of the init container that downloads an https:// model repository (needs sh, wget "
        "with --header, tar -z).")).tag(config=True)
    namespace = Unicode("", help="Namespace of the manifests; empty: the site's (kubectl -n) namespace.").tag(config=True)
    server = Unicode("triton", help=(
        "'triton' (a Deployment + Service running tritonserver) or 'kserve' (an InferenceService "
        "with KServe's Triton runtime; the site must run KServe).")).tag(config=True)
    model_repository = Unicode("pvc://fedhub-models", help=(
        "Where the site reads model repositories: s3://bucket/prefix, pvc://claim[/path] or an "
        "https:// URL of a .tar.gz. The deployment's model name is appended to s3 and pvc "
        "locations.")).tag(config=True)
    s3_secret = Unicode("", help=(
        "Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and optional AWS_SESSION_TOKEN, "
        "AWS_DEFAULT_REGION) for s3:// repositories (Deployment), referenced by name and key only. "
        "For KServe, give its service account the credentials.")).tag(config=True)
    s3_endpoint = Unicode("", help=(
        "Endpoint (http(s)://host:port) of the S3-compatible store an s3://bucket/prefix model_repository "
        "is in, as the Triton pods reach it; written into Triton's s3://host:port/bucket/prefix path. "
        "Empty: AWS S3, or the host:port already in model_repository.")).tag(config=True)
    service_account = Unicode("", help="Service account of the Triton pods (KServe: for storage credentials).").tag(config=True)
    fetch_token_secret = Unicode("", help=(
        "Secret (key 'token') with a hub API token the init container sends when downloading an "
        "https:// repository from the hub.")).tag(config=True)
    service_type = Unicode("ClusterIP", help="Type of the Triton Service: ClusterIP, NodePort or LoadBalancer.").tag(config=True)
    cpus = Integer(2, help="CPUs per Triton replica (requests = limits).").tag(config=True)
    memory = Unicode("4Gi", help="Memory per Triton replica, a Kubernetes quantity (requests = limits).").tag(config=True)
    shm_size = Unicode("1Gi", help="Size of /dev/shm (Triton's Python backend and large batches use it).").tag(config=True)
    gpu_product_label = Unicode(DEFAULT_GPU_PRODUCT_LABEL, help="Node label that names the GPU product.").tag(config=True)
    gpu_products = Dict(help=(
        "GPU type name -> value of the GPU product label (as the site's gpu_products option), "
        "e.g. {'a100': 'NVIDIA-A100-SXM4-80GB'}.")).tag(config=True)


def settings_from_env(environ=None) -> TritonOnKubernetes:
    """The hub's TritonOnKubernetes settings, from $FEDHUB_TRITON_KUBERNETES (JSON) in the
    API service's environment (`fedhub k8s render` writes it); defaults when unset."""
    raw = (os.environ if environ is None else environ).get(SETTINGS_ENV, "")
    if not raw:
        return TritonOnKubernetes()
    try:
        values = json.loads(raw)
    except ValueError as e:
        raise ManifestError(f"${SETTINGS_ENV}: not JSON ({e})") from None
    if not isinstance(values, dict):
        raise ManifestError(f"${SETTINGS_ENV}: expected a JSON object of settings")
    known = set(TritonOnKubernetes.class_trait_names(config=True))
    for key, value in values.items():
        if key not in known:
            raise ManifestError(f"${SETTINGS_ENV}.{key}: no such setting; expected one of {sorted(known)}")
        try:
            TritonOnKubernetes(**{key: value})
        except TraitError as e:
            raise ManifestError(f"${SETTINGS_ENV}.{key}: {e}") from None
    return TritonOnKubernetes(**values)


@dataclass(frozen=True)
class RepositorySource:
    kind: str  # "s3" (any cloud storage Triton reads natively), "pvc" or "http"
    uri: str   # for s3://, Triton's form (the endpoint, if any, as host:port in the path)
    claim: str = ""
    sub_path: str = ""
    endpoint: str = ""  # an S3-compatible store's http(s)://host:port


CLOUD_SCHEMES = ("s3://", "gs://", "as://")


def parse_repository_source(uri: str, model_name: str = "", s3_endpoint: str = "") -> RepositorySource:
    """s3://, gs://, as://, pvc://claim/path or https://; the model name is appended to cloud
    and pvc locations, so one bucket or claim holds every deployment's repository."""
    if not isinstance(uri, str) or not uri:
        raise ManifestError("model_repository: expected s3://bucket/prefix, pvc://claim[/path] or https://...tar.gz")
    suffix = f"/{model_name}" if model_name else ""
    if uri.startswith("s3://"):
        from .s3repo import S3RepositoryError, parse_s3_uri
        try:
            location = parse_s3_uri(uri, {"FEDHUB_S3_ENDPOINT_URL": s3_endpoint} if s3_endpoint else {})
        except S3RepositoryError as e:
            raise ManifestError(str(e)) from None
        location = location.child(model_name) if model_name else location
        return RepositorySource("s3", location.triton_uri(), endpoint=location.endpoint_url)
    if uri.startswith(CLOUD_SCHEMES):
        return RepositorySource("s3", uri.rstrip("/") + suffix)
    if uri.startswith("pvc://"):
        claim, _, sub = uri[len("pvc://"):].partition("/")
        if not DNS_NAME.match(claim):
            raise ManifestError(f"model_repository: {claim!r} is not a valid PersistentVolumeClaim name")
        sub_path = str(PurePosixPath(sub or ".") / model_name) if model_name else sub.strip("/")
        if ".." in PurePosixPath(sub_path).parts:
            raise ManifestError("model_repository: the pvc path may not contain '..'")
        sub_path = "" if sub_path == "." else sub_path
        return RepositorySource("pvc", f"pvc://{claim}/{sub_path}".rstrip("/"), claim, sub_path)
    if uri.startswith(("https://", "http://")):
        return RepositorySource("http", uri)
    raise ManifestError(f"model_repository {uri!r}: expected s3://, gs://, as://, pvc:// or https://")


def check_dns_name(name: str, what: str = "name") -> str:
    if not isinstance(name, str) or not DNS_NAME.match(name):
        raise ManifestError(f"{what} {name!r} is not a valid Kubernetes name "
                            "(lowercase letters, digits and '-', at most 63, starting and ending alphanumeric)")
    return name


def kubernetes_name(text: str) -> str:
    """A model or deployment name made into a DNS-1123 label (Triton model names allow '_', '.')."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63].rstrip("-")
    return check_dns_name(name or "model")


def _resources(cpus: float, memory: str, gpu_limits: dict) -> dict:
    amounts = {"cpu": str(cpus), "memory": memory}
    return {"requests": dict(amounts), "limits": {**amounts, **{k: str(v) for k, v in gpu_limits.items()}}}


def _gpu_placement(gpus: int, gpu_product: str, gpu_product_label: str, tolerations, node_selector) -> dict:
    """The GPU parts of a pod, computed as for a session (one place knows GPU scheduling)."""
    if gpus and not gpu_product:
        raise ManifestError("gpu_product: a GPU deployment needs the GPU product its node selector targets")
    traits = session_traits(cpus=1, memory=1, gpus=gpus, gpu_product=gpu_product,
                            gpu_product_label=gpu_product_label, tolerations=tolerations,
                            node_selector=node_selector)
    return {"limits": traits["extra_resource_limits"], "node_selector": traits["node_selector"],
            "tolerations": traits["tolerations"]}


def triton_deployment(name: str, *, source: RepositorySource, image: str = DEFAULT_TRITON_IMAGE,
                      replicas: int = 1, cpus: float = 2, memory: str = "4Gi", gpus: int = 0,
                      gpu_product: str = "", gpu_product_label: str = DEFAULT_GPU_PRODUCT_LABEL,
                      tolerations: Iterable[dict] | None = None, node_selector: dict | None = None,
                      namespace: str = "", labels: dict | None = None, s3_secret: str = "",
                      fetch_image: str = DEFAULT_FETCH_IMAGE, fetch_token_secret: str = "",
                      service_account: str = "", shm_size: str = "1Gi",
                      extra_args: Iterable[str] = ()) -> dict:
    """A Deployment running tritonserver on the repository, with health probes on /v2/health."""
    check_dns_name(name)
    if replicas < 1:
        raise ManifestError(f"replicas must be >= 1, got {replicas}")
    gpu = _gpu_placement(gpus, gpu_product, gpu_product_label, tolerations, node_selector)
    selector = {APP_LABEL: "tritonserver", DEPLOYMENT_LABEL: name}
    volumes = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}}]
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}]
    env, env_from, init = [], [], []
    if source.kind == "s3":
        repository = source.uri
        if s3_secret and source.uri.startswith("s3://"):  # the keys Triton reads, by name only
            secret = check_dns_name(s3_secret, "s3_secret")
            for key, required in S3_SECRET_KEYS.items():
                ref = {"name": secret, "key": key, **({} if required else {"optional": True})}
                env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
        elif s3_secret:  # gs://, as://: the store's own variables, all of the Secret
            env_from.append({"secretRef": {"name": check_dns_name(s3_secret, "s3_secret")}})
    elif source.kind == "pvc":
        repository = MODELS_DIR
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": source.claim, "readOnly": True}})
        mount = {"name": "models", "mountPath": MODELS_DIR, "readOnly": True}
        if source.sub_path:
            mount["subPath"] = source.sub_path
        mounts.append(mount)
    else:
        repository = MODELS_DIR
        volumes.append({"name": "models", "emptyDir": {}})
        mounts.append({"name": "models", "mountPath": MODELS_DIR, "readOnly": True})
        header = '--header "Authorization: token $FEDHUB_TOKEN" ' if fetch_token_secret else ""
        fetch_env = [{"name": "REPOSITORY_URL", "value": source.uri}]
        if fetch_token_secret:
            fetch_env.append({"name": "FEDHUB_TOKEN", "valueFrom": {"secretKeyRef": {
                "name": check_dns_name(fetch_token_secret, "fetch_token_secret"), "key": "token"}}})
        init.append({
            "name": "fetch-model-repository", "image": fetch_image,
            "command": ["sh", "-c", f'set -e; wget -q -O - {header}"$REPOSITORY_URL" | tar -xz -C {MODELS_DIR}'],
            "env": fetch_env, "volumeMounts": [{"name": "models", "mountPath": MODELS_DIR}],
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
        })
    probe = {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 5, "failureThreshold": 3}
    container = {
        "name": "tritonserver", "image": image,
        "args": ["tritonserver", f"--model-repository={repository}", "--strict-readiness=true", *extra_args],
        "ports": [{"name": key, "containerPort": port, "protocol": "TCP"} for key, port in PORTS.items()],
        "resources": _resources(cpus, memory, gpu["limits"]),
        "volumeMounts": mounts,
        "readinessProbe": probe,
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 10},
        # models can take minutes to load: liveness waits for the first ready
        "startupProbe": {**probe, "failureThreshold": 120},
    }
    if env:
        container["env"] = env
    if env_from:
        container["envFrom"] = env_from
    pod_spec = {"containers": [container], "volumes": volumes}
    if init:
        pod_spec["initContainers"] = init
    if gpu["node_selector"]:
        pod_spec["nodeSelector"] = gpu["node_selector"]
    if gpu["tolerations"]:
        pod_spec["tolerations"] = gpu["tolerations"]
    if service_account:
        pod_spec["serviceAccountName"] = check_dns_name(service_account, "service_account")
    metadata = {"name": name, "labels": {**(labels or {}), **selector}}
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata,
        "spec": {"replicas": replicas, "selector": {"matchLabels": selector},
                 "template": {"metadata": {"labels": {**(labels or {}), **selector}}, "spec": pod_spec}},
    }


def triton_service(name: str, *, namespace: str = "", labels: dict | None = None,
                   service_type: str = "ClusterIP") -> dict:
    """The Service in front of the Deployment's pods: HTTP, gRPC and metrics ports."""
    check_dns_name(name)
    if service_type not in ("ClusterIP", "NodePort", "LoadBalancer"):
        raise ManifestError(f"service_type must be ClusterIP, NodePort or LoadBalancer, got {service_type!r}")
    selector = {APP_LABEL: "tritonserver", DEPLOYMENT_LABEL: name}
    metadata = {"name": name, "labels": {**(labels or {}), **selector}}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "Service", "metadata": metadata,
            "spec": {"type": service_type, "selector": selector,
                     "ports": [{"name": key, "port": port, "targetPort": key, "protocol": "TCP"}
                               for key, port in PORTS.items()]}}


def kserve_inference_service(name: str, *, source: RepositorySource, runtime: str = KSERVE_TRITON_RUNTIME,
                             cpus: float = 2, memory: str = "4Gi", gpus: int = 0, gpu_product: str = "",
                             gpu_product_label: str = DEFAULT_GPU_PRODUCT_LABEL,
                             tolerations: Iterable[dict] | None = None, node_selector: dict | None = None,
                             namespace: str = "", labels: dict | None = None, min_replicas: int = 1,
                             max_replicas: int = 1, service_account: str = "") -> dict:
    """A KServe v1beta1 InferenceService: predictor.model with modelFormat onnx on the Triton
    runtime, protocol v2; the predictor's pod fields (nodeSelector, tolerations...) as KServe
    inlines them from PodSpec."""
    check_dns_name(name)
    if source.kind == "http":
        raise ManifestError("KServe reads s3://, gs://, as:// or pvc:// storage URIs; "
                            "set model_repository to one of those")
    if source.endpoint:
        raise ManifestError("KServe's storageUri is s3://bucket/path: give an S3-compatible store's endpoint "
                            "to KServe with its S3 credentials (serving.kserve.io/s3-endpoint), not in "
                            "model_repository or s3_endpoint")
    if not 0 <= min_replicas <= max_replicas or max_replicas < 1:
        raise ManifestError(f"replicas: need 0 <= min_replicas <= max_replicas, max >= 1; got {min_replicas}, {max_replicas}")
    gpu = _gpu_placement(gpus, gpu_product, gpu_product_label, tolerations, node_selector)
    predictor: dict = {
        "minReplicas": min_replicas, "maxReplicas": max_replicas,
        "model": {"modelFormat": {"name": "onnx"}, "runtime": runtime, "protocolVersion": "v2",
                  "storageUri": source.uri, "resources": _resources(cpus, memory, gpu["limits"])},
    }
    if gpu["node_selector"]:
        predictor["nodeSelector"] = gpu["node_selector"]
    if gpu["tolerations"]:
        predictor["tolerations"] = gpu["tolerations"]
    if service_account:
        predictor["serviceAccountName"] = check_dns_name(service_account, "service_account")
    metadata = {"name": name, "labels": {**(labels or {}), DEPLOYMENT_LABEL: name}}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": KSERVE_API_VERSION, "kind": "InferenceService", "metadata": metadata,
            "spec": {"predictor": predictor}}


def deployment_manifests(record: dict, version: int, repository_dir=None, options: dict | None = None,
                         settings: TritonOnKubernetes | None = None) -> list[dict]:
    """The deployment manager's step: manifests for one deployment version on a Kubernetes site.

    options (from the deploy request) override settings: server, model_repository, cpus, memory,
    gpus, gpu_product (a type of `gpu_products` or a product label value), replicas, namespace.
    """
    options = dict(options or {})
    s = settings or TritonOnKubernetes()
    name = kubernetes_name(record.get("model_name") or record["name"])
    server = options.get("server", s.server)
    if server not in ("triton", "kserve"):
        raise ManifestError(f"options.server must be 'triton' or 'kserve', got {server!r}")
    source = parse_repository_source(options.get("model_repository", s.model_repository),
                                     record.get("model_name") or record["name"], s.s3_endpoint)
    gpus = options.get("gpus", 0)
    if not isinstance(gpus, int) or gpus < 0:
        raise ManifestError(f"options.gpus must be a whole number >= 0, got {gpus!r}")
    product = options.get("gpu_product", "")
    product = s.gpu_products.get(product, product)
    if gpus and not product:
        raise ManifestError("options.gpu_product: a GPU deployment needs the GPU type "
                            f"({', '.join(s.gpu_products) or 'a value of the ' + s.gpu_product_label + ' label'})")
    labels = {"fedhub.io/owner": kubernetes_name(str(record.get("owner", "unknown"))),
              "fedhub.io/version": str(version)}
    common = dict(source=source, cpus=options.get("cpus", s.cpus), memory=str(options.get("memory", s.memory)),
                  gpus=gpus, gpu_product=product, gpu_product_label=s.gpu_product_label,
                  namespace=options.get("namespace", s.namespace), labels=labels,
                  service_account=s.service_account)
    if server == "kserve":
        return [kserve_inference_service(name, **common)]
    return [triton_deployment(name, image=options.get("image", s.image), replicas=int(options.get("replicas", 1)),
                              s3_secret=s.s3_secret, fetch_image=s.fetch_image,
                              fetch_token_secret=s.fetch_token_secret, shm_size=s.shm_size, **common),
            triton_service(name, namespace=common["namespace"], labels=labels, service_type=s.service_type)]


__all__ = ["GPU_RESOURCE", "ManifestError", "RepositorySource", "TritonOnKubernetes", "deployment_manifests",
           "kserve_inference_service", "parse_repository_source", "settings_from_env", "triton_deployment",
           "triton_service"]
