"""Triton on Kubernetes: the pure builders' manifests, validated as data.

No cluster runs here. Deployments and Services are validated against the Kubernetes 1.37
OpenAPI schemas (kubernetes-validate, strict: unknown fields are errors). KServe's
InferenceService is a CRD the schemas do not ship, so it is checked in two parts: the
PodSpec fields KServe inlines into the predictor (and the Container fields of
predictor.model) are validated by embedding them in a Pod; the KServe-specific fields are
checked against the v1beta1 field names listed below (from KServe's InferenceService CRD:
PredictorSpec, ModelSpec, ModelFormat).
"""

from __future__ import annotations

import copy
import json
import re

import kubernetes_validate
import pytest
import yaml

from fedhub.hub.deploy.k8s import (KSERVE_TRITON_RUNTIME, ManifestError, TritonOnKubernetes, deployment_manifests,
                                   kserve_inference_service, parse_repository_source, settings_from_env,
                                   triton_deployment, triton_service)
from fedhub.spawner.backends.k8s_manifests import GPU_RESOURCE

K8S = "1.37.0"
A100 = "NVIDIA-A100-SXM4-80GB"
RECORD = {"id": "0123abcd", "owner": "Alice", "name": "digits", "model_name": "alice--digits", "target": "site:k8s-gpu"}

# serving.kserve.io/v1beta1 field names (KServe's InferenceService CRD)
KSERVE_PREDICTOR_FIELDS = {"minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "containerConcurrency",
                           "timeout", "canaryTrafficPercent", "logger", "batcher", "labels", "annotations",
                           "deploymentStrategy", "model", "workerSpec"}
KSERVE_MODEL_FIELDS = {"modelFormat", "runtime", "protocolVersion", "storageUri"}  # + Container fields
KSERVE_MODEL_FORMAT_FIELDS = {"name", "version"}
POD_SPEC_FIELDS_IN_PREDICTOR = {"nodeSelector", "tolerations", "serviceAccountName", "affinity", "volumes",
                                "imagePullSecrets", "priorityClassName", "runtimeClassName"}


def validate(manifest: dict) -> None:
    assert kubernetes_validate.validate(manifest, K8S, strict=True) == "1.37"


def validate_kserve(isvc: dict) -> None:
    """KServe v1beta1 structure + its embedded PodSpec/Container parts against the schemas."""
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    assert set(isvc["spec"]) <= {"predictor", "transformer", "explainer"}
    predictor = isvc["spec"]["predictor"]
    unknown = set(predictor) - KSERVE_PREDICTOR_FIELDS - POD_SPEC_FIELDS_IN_PREDICTOR
    assert not unknown, f"not KServe v1beta1 predictor fields: {unknown}"
    model = predictor["model"]
    assert set(model["modelFormat"]) <= KSERVE_MODEL_FORMAT_FIELDS
    container = {k: v for k, v in model.items() if k not in KSERVE_MODEL_FIELDS}
    pod_spec = {k: v for k, v in predictor.items() if k in POD_SPEC_FIELDS_IN_PREDICTOR}
    # KServe fills in the container's name and the runtime's image; the rest must be valid
    pod_spec["containers"] = [{"name": "kserve-container", "image": "runtime-image", **container}]
    validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": isvc["metadata"]["name"]}, "spec": pod_spec})


SOURCES = {
    "s3": "s3://models-bucket/fedhub",
    "pvc": "pvc://fedhub-models/repos",
    "hub artifact store": "https://hub.example.org/services/fedhub/api/deployments/0123abcd/repository.tar.gz",
}


@pytest.mark.parametrize("gpus", [0, 2])
@pytest.mark.parametrize("source", SOURCES)
def test_triton_deployment_and_service_validate_against_the_schemas(source, gpus):
    settings = TritonOnKubernetes(s3_secret="s3-creds", fetch_token_secret="hub-token",
                                  gpu_products={"a100": A100}, namespace="serving")
    options = {"model_repository": SOURCES[source], "gpus": gpus, "gpu_product": "a100" if gpus else ""}
    deployment, service = deployment_manifests(RECORD, 3, None, options, settings)
    validate(deployment)
    validate(service)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "nvcr.io/nvidia/tritonserver:25.10-py3"
    assert {p["containerPort"] for p in container["ports"]} == {8000, 8001, 8002}
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert deployment["metadata"]["name"] == "alice--digits" and deployment["metadata"]["namespace"] == "serving"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert deployment["metadata"]["labels"]["fedhub.io/version"] == "3"
    repository_arg = [a for a in container["args"] if a.startswith("--model-repository=")]
    if source == "s3":
        assert repository_arg == ["--model-repository=s3://models-bucket/fedhub/alice--digits"]
        # the keys Triton's S3 client reads, from the Secret by name and key: no value in the manifest
        assert container["env"] == [
            {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}}},
            {"name": "AWS_SECRET_ACCESS_KEY",
             "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"}}},
            {"name": "AWS_SESSION_TOKEN", "valueFrom": {"secretKeyRef": {
                "name": "s3-creds", "key": "AWS_SESSION_TOKEN", "optional": True}}},
            {"name": "AWS_DEFAULT_REGION", "valueFrom": {"secretKeyRef": {
                "name": "s3-creds", "key": "AWS_DEFAULT_REGION", "optional": True}}}]
        assert "envFrom" not in container
    elif source == "pvc":
        assert repository_arg == ["--model-repository=/models"]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "models")
        assert mount["subPath"] == "repos/alice--digits" and mount["readOnly"]
        claim = next(v for v in pod["volumes"] if v["name"] == "models")["persistentVolumeClaim"]
        assert claim == {"claimName": "fedhub-models", "readOnly": True}
    else:
        (init,) = pod["initContainers"]
        assert init["image"] == "busybox:1.37" and "tar -xz -C /models" in init["command"][-1]
        assert {"name": "REPOSITORY_URL", "value": SOURCES[source]} in init["env"]
        assert init["env"][1]["valueFrom"]["secretKeyRef"] == {"name": "hub-token", "key": "token"}
    if gpus:
        assert container["resources"]["limits"][GPU_RESOURCE] == "2"
        assert pod["nodeSelector"] == {"nvidia.com/gpu.product": A100}
        assert pod["tolerations"] == [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    else:
        assert GPU_RESOURCE not in container["resources"]["limits"]
        assert "nodeSelector" not in pod and "tolerations" not in pod


@pytest.mark.parametrize("gpus", [0, 1])
@pytest.mark.parametrize("source", ["s3", "pvc"])
def test_kserve_inference_service_has_the_v1beta1_structure_and_a_valid_pod_part(source, gpus):
    settings = TritonOnKubernetes(server="kserve", service_account="kserve-storage", gpu_products={"a100": A100})
    (isvc,) = deployment_manifests(RECORD, 1, None, {"model_repository": SOURCES[source], "gpus": gpus,
                                                      "gpu_product": "a100" if gpus else ""}, settings)
    validate_kserve(isvc)
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "onnx"} and model["runtime"] == KSERVE_TRITON_RUNTIME
    assert model["protocolVersion"] == "v2"
    assert model["storageUri"] == {"s3": "s3://models-bucket/fedhub/alice--digits",
                                   "pvc": "pvc://fedhub-models/repos/alice--digits"}[source]
    assert isvc["spec"]["predictor"]["serviceAccountName"] == "kserve-storage"
    if gpus:
        assert model["resources"]["limits"][GPU_RESOURCE] == "1"
        assert isvc["spec"]["predictor"]["nodeSelector"] == {"nvidia.com/gpu.product": A100}


def test_a_wrong_field_is_caught_by_the_validation():
    deployment = triton_deployment("digits", source=parse_repository_source("s3://models/p"))
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["resource"] = {}  # typo of "resources"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)
    broken = copy.deepcopy(deployment)
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)
    isvc = kserve_inference_service("digits", source=parse_repository_source("s3://models/p"))
    bad = copy.deepcopy(isvc)
    bad["spec"]["predictor"]["model"]["storageURI"] = "s3://models/p"  # wrong case: not a KServe field
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_kserve(bad)
    bad = copy.deepcopy(isvc)
    bad["spec"]["predictor"]["minReplica"] = 1
    with pytest.raises(AssertionError, match="not KServe v1beta1 predictor fields"):
        validate_kserve(bad)


def test_manifests_serialise_as_yaml_documents_an_operator_can_apply():
    docs = list(yaml.safe_load_all(yaml.safe_dump_all(deployment_manifests(RECORD, 2, None, {}))))
    assert [d["kind"] for d in docs] == ["Deployment", "Service"]
    for doc in docs:
        validate(doc)
    assert docs[0]["spec"]["template"]["spec"]["volumes"][1]["persistentVolumeClaim"]["claimName"] == "fedhub-models"


@pytest.mark.parametrize("options, message", [
    ({"server": "seldon"}, "options.server must be 'triton' or 'kserve'"),
    ({"model_repository": "ftp://x"}, "expected s3://, gs://, as://, pvc:// or https://"),
    ({"model_repository": "pvc://Bad_Claim"}, "not a valid PersistentVolumeClaim name"),
    ({"model_repository": "pvc://claim/../etc"}, "may not contain '..'"),
    ({"gpus": 1}, "options.gpu_product: a GPU deployment needs the GPU type"),
    ({"gpus": -1}, "options.gpus must be a whole number >= 0"),
    ({"server": "kserve", "model_repository": "https://hub/x.tar.gz"}, "KServe reads s3://"),
    ({"model_repository": "s3://AKIA:secret@minio:9000/models"}, "holds credentials"),
    ({"model_repository": "s3://Models_Bucket/x"}, "not a valid bucket name"),
    ({"server": "kserve", "model_repository": "s3://minio:9000/models/x"}, "KServe's storageUri is s3://bucket/path"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises(ManifestError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")
                       .replace("*", r"\*").replace("?", r"\?").replace("+", r"\+")):
        deployment_manifests(RECORD, 1, None, options)


def test_bad_names_and_service_types_are_named():
    with pytest.raises(ManifestError, match="'Digits_1' is not a valid Kubernetes name"):
        triton_deployment("Digits_1", source=parse_repository_source("s3://models"))
    with pytest.raises(ManifestError, match="service_type must be ClusterIP, NodePort or LoadBalancer"):
        triton_service("digits", service_type="External")
    assert deployment_manifests({**RECORD, "model_name": "Bob.Model_v2"}, 1, None, {})[0]["metadata"]["name"] == \
        "bob-model-v2"


def test_every_setting_has_help_text():
    for name, trait in TritonOnKubernetes.class_traits(config=True).items():
        assert trait.help and len(trait.help) > 20, name


@pytest.mark.parametrize("repository, endpoint, expected", [
    ("s3://models-bucket/fedhub", "http://minio.storage.svc:9000",
     "s3://minio.storage.svc:9000/models-bucket/fedhub/alice--digits"),
    ("s3://models-bucket/fedhub", "https://s3.example.org", "s3://https://s3.example.org:443/models-bucket/fedhub/alice--digits"),
    ("s3://minio.storage.svc:9000/models-bucket", "", "s3://minio.storage.svc:9000/models-bucket/alice--digits"),
    ("s3://https://minio:9443/models-bucket/p/", "", "s3://https://minio:9443/models-bucket/p/alice--digits"),
])
def test_an_s3_compatible_store_goes_into_tritons_path_form(repository, endpoint, expected):
    """Triton takes a non-AWS S3 store as s3://[https://]host:port/bucket/path; keys stay in the Secret."""
    settings = TritonOnKubernetes(model_repository=repository, s3_endpoint=endpoint, s3_secret="fedhub-s3")
    deployment, service = deployment_manifests(RECORD, 1, None, {}, settings)
    validate(deployment)
    validate(service)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert f"--model-repository={expected}" in container["args"]
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]} == {"fedhub-s3"}
    assert all("value" not in e for e in container["env"])


def test_settings_reach_the_api_service_through_its_environment():
    settings = settings_from_env({"FEDHUB_TRITON_KUBERNETES": json.dumps(
        {"model_repository": "s3://models-bucket/sites", "s3_secret": "fedhub-s3", "cpus": 4})})
    assert (settings.model_repository, settings.s3_secret, settings.cpus) == ("s3://models-bucket/sites", "fedhub-s3", 4)
    assert settings_from_env({}).model_repository == "pvc://fedhub-models"
    for raw, words in [("{", "not JSON"), ('{"s3_secrets": "x"}', "FEDHUB_TRITON_KUBERNETES.s3_secrets: no such setting"),
                       ('{"cpus": "four"}', "FEDHUB_TRITON_KUBERNETES.cpus: "), ("[1]", "expected a JSON object")]:
        with pytest.raises(ManifestError, match=re.escape(words)):
            settings_from_env({"FEDHUB_TRITON_KUBERNETES": raw})


def test_k8s_render_passes_the_s3_repository_to_the_api_service_by_secret_name(tmp_path, monkeypatch, capsys):
    """`fedhub k8s render --model-repository s3://...`: the API service builds site manifests from
    it, the hub pod gets the keys from Secret fedhub-s3 by name, no value lands in a file."""
    from traitlets.config import Config

    from fedhub.hub.k8s_render import RenderSettings, main, render
    catalogue = {"sites": [{"name": "cloud", "kind": "kubernetes", "cpus": 8, "memory": "32G"}]}
    files = render(catalogue, None, RenderSettings(model_repository="s3://models-bucket/sites",
                                                   s3_endpoint="http://minio.storage.svc:9000"))
    hub = files["values.yaml"]["hub"]
    service_env = hub["services"]["fedhub"]["environment"]
    settings = settings_from_env(service_env)
    deployment, _ = deployment_manifests(RECORD, 1, None, {}, settings)
    validate(deployment)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert "--model-repository=s3://minio.storage.svc:9000/models-bucket/sites/alice--digits" in container["args"]
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]} == {"fedhub-s3"}
    # the hub pod: keys from the Secret, by name (validated as the pod z2jh makes of them)
    keys = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in hub["extraEnv"] if e["name"].startswith("AWS_")}
    assert keys == {"AWS_ACCESS_KEY_ID": {"name": "fedhub-s3", "key": "AWS_ACCESS_KEY_ID"},
                    "AWS_SECRET_ACCESS_KEY": {"name": "fedhub-s3", "key": "AWS_SECRET_ACCESS_KEY"}}
    validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hub"},
              "spec": {"containers": [{"name": "hub", "image": "hub:1", "env": hub["extraEnv"]}]}})
    # ...and the hub's extraConfig hands them to the fedhub service (services do not inherit them)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMSECRET")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "value-from-secret")
    c = Config()
    c.JupyterHub.services = [{"name": "fedhub", "environment": dict(service_env)}, {"name": "mlflow"}]
    exec(hub["extraConfig"]["fedhub-s3-models"], {"c": c})
    assert c.JupyterHub.services[0]["environment"]["AWS_SECRET_ACCESS_KEY"] == "value-from-secret"
    assert "environment" not in c.JupyterHub.services[1]
    # without --model-repository nothing of this is rendered
    plain = render(catalogue, None, RenderSettings())["values.yaml"]["hub"]
    assert "FEDHUB_TRITON_KUBERNETES" not in plain["services"]["fedhub"]["environment"]
    assert "fedhub-s3-models" not in plain["extraConfig"]

    (tmp_path / "sites.yaml").write_text(yaml.safe_dump(catalogue))
    out = tmp_path / "out"
    assert main(["--catalogue", str(tmp_path / "sites.yaml"), "--model-repository", "s3://models-bucket/sites",
                 "--out", str(out)]) == 0
    values = yaml.safe_load((out / "values.yaml").read_text())
    assert json.loads(values["hub"]["services"]["fedhub"]["environment"]["FEDHUB_TRITON_KUBERNETES"])[
        "model_repository"] == "s3://models-bucket/sites"
    assert "value-from-secret" not in "".join(p.read_text() for p in out.iterdir())
    assert main(["--catalogue", str(tmp_path / "sites.yaml"), "--model-repository",
                 "s3://AKIA:very-secret@minio:9000/models-bucket"]) == 2
    error = capsys.readouterr().err
    assert "--model-repository: the URI holds credentials" in error and "very-secret" not in error
