"""Pure builders for the Kubernetes side of one fedhub session.

`session_traits()` is the one place a reservation (CPUs, memory, GPUs of a type, storage)
becomes Kubernetes terms: KubeSpawner trait values. `pod_manifest()`, `service_manifest()`
and `pvc_manifest()` turn those into the plain dicts the API server receives, through
kubespawner.objects (make_pod, make_service, make_pvc): the functions KubeSpawner itself
calls, so what the tests validate against the Kubernetes OpenAPI schemas is what a site
gets. No cluster, no API client, no event loop.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Mapping

from kubernetes_asyncio.client import ApiClient
from kubespawner.objects import make_owner_reference, make_pod, make_pvc, make_service

GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"  # set by NVIDIA GPU feature discovery
DEFAULT_GPU_TOLERATIONS = ({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},)
DEFAULT_IMAGE = "quay.io/jupyter/base-notebook:latest"
DEFAULT_HOME = "/home/jovyan"
SITE_LABEL = "fedhub.io/site"
ALLOCATION_LABEL = "fedhub.io/allocation"  # ties a pod to the reservation it was started for
HOME_VOLUME = "home"
DATASETS_FOLDER = "datasets"  # granted datasets appear read-only at <home>/datasets/<name>


class _Serializer(ApiClient):
    """ApiClient's model -> JSON conversion without its HTTP session (none is needed)."""

    def __init__(self):  # noqa: D107 - deliberately skips ApiClient.__init__
        pass


def to_dict(obj: Any) -> dict:
    """A kubernetes_asyncio model (V1Pod...) as the JSON dict the API server receives."""
    return _Serializer().sanitize_for_serialization(obj)


def session_traits(*, cpus: float, memory: int, gpus: int = 0, gpu_product: str = "",
                   gpu_product_label: str = DEFAULT_GPU_PRODUCT_LABEL,
                   tolerations: Iterable[dict] | None = None, node_selector: dict | None = None,
                   storage: str = "", storage_class: str = "", home: str = DEFAULT_HOME,
                   prefer_node: str = "") -> dict:
    """KubeSpawner trait values for a session's resources.

    Requests equal limits (Guaranteed QoS): placement counted exactly this much, so the pod
    must neither get less nor use more. GPUs are an `nvidia.com/gpu` limit (the device plugin
    picks the devices and sets CUDA_VISIBLE_DEVICES), a node selector on the product label
    (so the scheduler agrees with placement on the type) and tolerations for the GPU taint
    (default: NVIDIA's `nvidia.com/gpu:NoSchedule`). `tolerations` apply to GPU sessions only,
    so CPU sessions stay off tainted GPU nodes. `prefer_node` (the node placement chose) is a
    preference, not a rule: the scheduler may still use another node that fits.
    """
    selector = dict(node_selector or {})
    traits: dict[str, Any] = {
        "cpu_guarantee": float(cpus), "cpu_limit": float(cpus),
        "mem_guarantee": int(memory), "mem_limit": int(memory),
        "extra_resource_limits": {}, "node_selector": selector, "tolerations": [],
        "node_affinity_preferred": [],
    }
    if prefer_node:
        traits["node_affinity_preferred"] = [{"weight": 100, "preference": {"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": [prefer_node]}]}}]
    if gpus:
        if not gpu_product:
            raise ValueError("a GPU session needs the GPU product its node selector targets")
        traits["extra_resource_limits"] = {GPU_RESOURCE: int(gpus)}
        selector[gpu_product_label] = gpu_product
        chosen = DEFAULT_GPU_TOLERATIONS if tolerations is None else tolerations
        traits["tolerations"] = [dict(t) for t in chosen]
    if storage:
        traits.update({
            "storage_pvc_ensure": True, "storage_capacity": storage,
            "storage_class": storage_class or None,
            # {pvc_name} is expanded by KubeSpawner to the claim it ensures
            "volumes": [{"name": HOME_VOLUME, "persistentVolumeClaim": {"claimName": "{pvc_name}"}}],
            "volume_mounts": [{"name": HOME_VOLUME, "mountPath": home}],
        })
    return traits


def dataset_mount_path(name: str, home: str = DEFAULT_HOME) -> str:
    return f"{home.rstrip('/')}/{DATASETS_FOLDER}/{name}"


def _volume_name(dataset: str) -> str:
    name = f"dataset-{dataset}"
    if len(name) > 63:  # a volume name is a DNS label
        name = f"dataset-{dataset[:45]}-{hashlib.sha256(dataset.encode()).hexdigest()[:8]}"
    return name


def dataset_volumes(datasets: Mapping[str, Any], home: str = DEFAULT_HOME) -> tuple[list[dict], list[dict]]:
    """(volumes, volumeMounts) giving a session exactly these datasets (name -> DatasetLocation
    at this site), read-only at <home>/datasets/<name>.

    A location with `pvc` mounts that claim (read-only; `path` is the folder inside it, `/`
    for all of it); otherwise `path` is a folder on the node (hostPath, which must exist).
    """
    volumes, mounts = [], []
    for name, loc in sorted(datasets.items()):
        vol = _volume_name(name)
        mount = {"name": vol, "mountPath": dataset_mount_path(name, home), "readOnly": True}
        if loc.pvc:
            volumes.append({"name": vol, "persistentVolumeClaim": {"claimName": loc.pvc, "readOnly": True}})
            if loc.path.strip("/"):
                mount["subPath"] = loc.path.strip("/")
        else:
            volumes.append({"name": vol, "hostPath": {"path": loc.path, "type": "Directory"}})
        mounts.append(mount)
    return volumes, mounts


def _with_pvc_name(items: list[dict], pvc_name: str) -> list[dict]:
    out = []
    for item in items:
        item = dict(item)
        claim = item.get("persistentVolumeClaim")
        if claim:
            item["persistentVolumeClaim"] = {**claim, "claimName": claim["claimName"].format(pvc_name=pvc_name)}
        out.append(item)
    return out


def pod_manifest(*, name: str, image: str = DEFAULT_IMAGE, cpus: float, memory: int, gpus: int = 0,
                 gpu_product: str = "", gpu_product_label: str = DEFAULT_GPU_PRODUCT_LABEL,
                 tolerations: Iterable[dict] | None = None, node_selector: dict | None = None,
                 storage: str = "", storage_class: str = "", pvc_name: str = "",
                 env: dict | None = None, cmd: list[str] | None = None, port: int = 8888,
                 labels: dict | None = None, home: str = DEFAULT_HOME, prefer_node: str = "",
                 datasets: Mapping[str, Any] | None = None) -> dict:
    """The session pod, built as KubeSpawner.get_pod_manifest() builds it from the same traits
    (`datasets`: name -> DatasetLocation granted to the session, see dataset_volumes)."""
    t = session_traits(cpus=cpus, memory=memory, gpus=gpus, gpu_product=gpu_product,
                       gpu_product_label=gpu_product_label, tolerations=tolerations,
                       node_selector=node_selector, storage=storage, storage_class=storage_class, home=home,
                       prefer_node=prefer_node)
    if storage and not pvc_name:
        raise ValueError("a session with storage needs the name of its claim (pvc_name)")
    data_volumes, data_mounts = dataset_volumes(datasets or {}, home)
    pod = make_pod(
        name=name, cmd=list(cmd) if cmd else None, port=port, image=image, env=env or {},
        labels=dict(labels or {}), node_selector=t["node_selector"] or None,
        tolerations=t["tolerations"] or None,
        cpu_guarantee=t["cpu_guarantee"], cpu_limit=t["cpu_limit"],
        mem_guarantee=t["mem_guarantee"], mem_limit=t["mem_limit"],
        extra_resource_limits=t["extra_resource_limits"] or None,
        node_affinity_preferred=t["node_affinity_preferred"] or None,
        volumes=_with_pvc_name(t.get("volumes", []), pvc_name) + data_volumes,
        volume_mounts=t.get("volume_mounts", []) + data_mounts,
    )
    return to_dict(pod)


def service_manifest(*, name: str, port: int = 8888, selector: dict, labels: dict | None = None,
                     owner_pod: tuple[str, str] | None = None) -> dict:
    """The ClusterIP service KubeSpawner creates per pod when `services_enabled` is on.

    owner_pod = (pod name, pod uid): the service is garbage-collected with the pod.
    """
    owners = [make_owner_reference(*owner_pod)] if owner_pod else None
    svc = make_service(name=name, port=port, selector=dict(selector), owner_references=owners,
                       labels=dict(labels or {}))
    svc.api_version = "v1"  # make_service leaves it unset; the API server needs it in a manifest
    return to_dict(svc)


def pvc_manifest(*, name: str, storage: str, storage_class: str = "",
                 access_modes: Iterable[str] = ("ReadWriteOnce",), labels: dict | None = None) -> dict:
    """The home volume claim KubeSpawner ensures when a site has `storage`."""
    pvc = make_pvc(name=name, storage_class=storage_class or None, access_modes=list(access_modes),
                   selector=None, storage=storage, labels=dict(labels or {}))
    return to_dict(pvc)
