"""Kubernetes sites without a cluster: manifests validated against the Kubernetes OpenAPI
schemas, the inventory computed from recorded node and pod lists, and the reflectors driven
by a fake of the API layer that replays those recordings.

No API server can run on these machines. Everything below that looks like a cluster is
FakeKubeAPI_RecordedLists: recorded lists (tests/data/k8s, real API shape) and watch events
the tests push. The manifests, KubeSpawner, the reflectors and the inventory code are real.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import kubernetes_validate
import pytest
import yaml

from fedhub.hub.catalogue import CatalogueError, catalogue_from_dict
from fedhub.spawner.backends.base import SiteOptionError
from fedhub.spawner.backends.k8s_inventory import inventory_from, parse_quantity, pod_requests
from fedhub.spawner.backends.k8s_manifests import (ALLOCATION_LABEL, GPU_RESOURCE, SITE_LABEL, pod_manifest,
                                                   pvc_manifest, service_manifest, to_dict)
from fedhub.spawner.backends.k8s_watch import CLUSTERS, ClusterWatch, KubeClients
from fedhub.spawner.backends.kubernetes import KubernetesBackend, KubeSiteSpawner
from fedhub.spawner.federation import Federation
from fedhub.spawner.inventory import Allocation
from fedhub.spawner.placement import ANY_GPU, SessionRequest, rank_sites

DATA = Path(__file__).parent / "data" / "k8s"
K8S = "1.37.0"
G = 10**9
A100 = "NVIDIA-A100-SXM4-80GB"
PRODUCTS = {"a100": A100, "t4": "Tesla-T4"}
CONTEXT = "fake-recorded"


def recorded(kind: str) -> list[dict]:
    return json.loads((DATA / f"{kind}.json").read_text())["items"]


def site_doc(options=None, name="k8s-gpu") -> dict:
    return {"name": name, "kind": "kubernetes", "cpus": 96, "memory": "600G",
            "gpus": [{"type": "a100", "count": 8}, {"type": "t4", "count": 2}],
            "options": {"context": CONTEXT, "gpu_products": PRODUCTS, **(options or {})}}


def catalogue(*sites):
    return catalogue_from_dict({"sites": list(sites)}, "sites.yaml")


def validate(manifest: dict) -> None:
    assert kubernetes_validate.validate(manifest, K8S, strict=True) == "1.37"


# ---------------------------------------------------------------- manifests

CASES = {
    "cpu": dict(cpus=2, memory=4 * G),
    "1 gpu": dict(cpus=4, memory=16 * G, gpus=1, gpu_product="Tesla-T4"),
    "2 gpus of a type": dict(cpus=8, memory=64 * G, gpus=2, gpu_product=A100),
    "storage": dict(cpus=1, memory=2 * G, storage="10Gi", storage_class="standard-rwo", pvc_name="claim-alice"),
}


@pytest.mark.parametrize("case", CASES)
def test_session_manifests_validate_against_the_kubernetes_schemas(case):
    labels = {SITE_LABEL: "k8s-gpu", "hub.jupyter.org/username": "alice"}
    pod = pod_manifest(name="jupyter-alice", env={"FEDHUB_SITE": "k8s-gpu"}, cmd=["jupyterhub-singleuser"],
                       labels=labels, prefer_node="gpu-a100-1", **CASES[case])
    validate(pod)
    validate(service_manifest(name="jupyter-alice", selector=labels, labels=labels,
                              owner_pod=("jupyter-alice", "0b6f8f0e-5d1c-4c8e-9d7a-2f1e3c4b5a69")))
    if "storage" in CASES[case]:
        pvc = pvc_manifest(name="claim-alice", storage="10Gi", storage_class="standard-rwo")
        validate(pvc)
        assert pvc["spec"]["resources"]["requests"]["storage"] == "10Gi"
        mount = pod["spec"]["containers"][0]["volumeMounts"][0]
        assert pod["spec"]["volumes"] == [{"name": mount["name"], "persistentVolumeClaim": {"claimName": "claim-alice"}}]


def test_strict_validation_catches_a_misspelt_field():
    pod = pod_manifest(name="jupyter-alice", **CASES["2 gpus of a type"])
    pod["spec"]["nodeSelecter"] = pod["spec"].pop("nodeSelector")
    kubernetes_validate.validate(pod, K8S)  # lenient mode lets the typo through...
    with pytest.raises(kubernetes_validate.ValidationError, match="'nodeSelecter' was unexpected"):
        kubernetes_validate.validate(pod, K8S, strict=True)  # ...strict mode does not


def test_gpu_sessions_get_the_limit_the_product_selector_and_the_toleration():
    pod = pod_manifest(name="jupyter-bob", node_selector={"pool": "research"}, **CASES["2 gpus of a type"])
    spec, container = pod["spec"], pod["spec"]["containers"][0]
    assert container["resources"]["limits"][GPU_RESOURCE] == 2
    assert GPU_RESOURCE not in container["resources"]["requests"]  # extended resources: requests = limits
    assert container["resources"]["requests"]["cpu"] == container["resources"]["limits"]["cpu"] == 8
    assert spec["nodeSelector"] == {"pool": "research", "nvidia.com/gpu.product": A100}
    assert spec["tolerations"] == [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    assert not any(e["name"] == "CUDA_VISIBLE_DEVICES" for e in container.get("env", []))

    cpu = pod_manifest(name="jupyter-bob", node_selector={"pool": "research"}, **CASES["cpu"])
    assert GPU_RESOURCE not in cpu["spec"]["containers"][0]["resources"]["limits"]
    assert cpu["spec"]["nodeSelector"] == {"pool": "research"}
    assert "tolerations" not in cpu["spec"]  # CPU sessions stay off tainted GPU nodes


async def test_kubespawner_builds_a_valid_pod_from_the_backend_overrides(fake_cluster):
    backend = KubernetesBackend(catalogue(site_doc({"storage": "20Gi", "environment": {"HF_HOME": "/data/hf"}}))
                                .sites[0])
    alloc = Allocation("k8s-gpu", "gpu-a100-2", 4.0, 32 * G, "a100", (0, 1))
    backend.note_starting(alloc)
    overrides = backend.spawner_overrides(alloc, SessionRequest(cpus=4, memory=32 * G, gpus=2, gpu_type="a100"))
    env = {"PATH": "/srv/hub/.venv/bin:/usr/bin", **overrides.pop("environment")}  # PATH as fedhub up sets it
    spawner = KubeSiteSpawner(
        user=SimpleNamespace(name="alice", id=1, url="/user/alice/"), environment=env,
        hub=SimpleNamespace(public_host="", url="http://hub:8081/hub/", base_url="/",
                            api_url="http://hub:8081/hub/api"), **overrides)
    assert spawner.api is fake_cluster  # the site's client, not a global kubeconfig's

    pod = to_dict(await spawner.get_pod_manifest())
    validate(pod)
    container, spec = pod["spec"]["containers"][0], pod["spec"]
    assert container["resources"]["limits"][GPU_RESOURCE] == 2
    assert spec["nodeSelector"]["nvidia.com/gpu.product"] == A100
    assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert container["image"] == "quay.io/jupyter/base-notebook:latest"
    assert container["args"][0] == "jupyterhub-singleuser"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FEDHUB_SITE"] == "k8s-gpu" and env["FEDHUB_GPUS"] == "2" and env["HF_HOME"] == "/data/hf"
    assert "PATH" not in env and "CUDA_VISIBLE_DEVICES" not in env
    labels = pod["metadata"]["labels"]
    assert labels[SITE_LABEL] == "k8s-gpu" and labels[ALLOCATION_LABEL] == backend.starting[0][1]
    assert spec["volumes"][0]["persistentVolumeClaim"]["claimName"] == spawner.pvc_name
    assert spawner.namespace == "fedhub" and spawner.storage_pvc_ensure
    validate(to_dict(spawner.get_pvc_manifest()))


async def test_kubespawner_mounts_granted_datasets_read_only_beside_the_home(fake_cluster):
    from fedhub.hub.datasets import DatasetLocation
    from fedhub.spawner.backends.base import merged_overrides
    backend = KubernetesBackend(catalogue(site_doc({"storage": "20Gi"})).sites[0])
    alloc = Allocation("k8s-gpu", "gpu-a100-2", 1.0, 2 * G)
    granted = {"digits": DatasetLocation("k8s-gpu", "/srv/digits"),
               "scans": DatasetLocation("k8s-gpu", "/2026", pvc="scans-claim")}
    # as FederatedSpawner does: the backend's own volumes (the home) plus the datasets'
    overrides = merged_overrides(backend.spawner_overrides(alloc, SessionRequest()), backend.dataset_overrides(granted))
    env = overrides.pop("environment")
    spawner = KubeSiteSpawner(
        user=SimpleNamespace(name="alice", id=1, url="/user/alice/"), environment=env,
        hub=SimpleNamespace(public_host="", url="http://hub:8081/hub/", base_url="/",
                            api_url="http://hub:8081/hub/api"), **overrides)
    pod = to_dict(await spawner.get_pod_manifest())
    validate(pod)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["name"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert volumes["home"]["persistentVolumeClaim"]["claimName"] == spawner.pvc_name
    assert volumes["dataset-digits"]["hostPath"] == {"path": "/srv/digits", "type": "Directory"}
    assert volumes["dataset-scans"]["persistentVolumeClaim"] == {"claimName": "scans-claim", "readOnly": True}
    assert mounts["dataset-digits"]["mountPath"] == "/home/jovyan/datasets/digits" and mounts["dataset-digits"]["readOnly"]
    assert mounts["dataset-scans"]["subPath"] == "2026" and mounts["dataset-scans"]["readOnly"]
    # the session is told where it sees them: the mount, not the node's path
    assert backend.dataset_paths(granted) == {"digits": "/home/jovyan/datasets/digits",
                                              "scans": "/home/jovyan/datasets/scans"}


# ---------------------------------------------------------------- inventory


def test_quantities_and_pod_requests():
    assert parse_quantity("7500m") == 7.5 and parse_quantity("32Gi") == 32 * 2**30
    assert parse_quantity("1e3") == 1000 and parse_quantity(4) == 4
    pods = {p["metadata"]["name"]: p for p in recorded("pods")}
    # init container (2 CPUs) outweighs the app container (1.5)
    assert pod_requests(pods["preprocess-7c9f"]) == (2.0, 4 * 2**30, 0)
    # GPUs given as a limit only count as requested
    assert pod_requests(pods["train-esm-0"]) == (8.0, 64 * 2**30, 2)


def test_inventory_from_recorded_lists():
    inv = inventory_from("k8s-gpu", recorded("nodes"), recorded("pods"), gpu_products=PRODUCTS)
    # cpu-pool-2 is cordoned and gpu-t4-2 NotReady: neither is offered
    assert sorted(inv.nodes) == ["cpu-pool-1", "gpu-a100-1", "gpu-a100-2", "gpu-t4-1"]
    gpus = {g["type"]: g for g in inv.to_dict()["gpus"]}
    # a100: 2 held by train-esm-0, 1 by carol's session; the finished job's 4 are free again
    assert (gpus["a100"]["capacity"], gpus["a100"]["used"], gpus["a100"]["free"]) == (8, 3, 5)
    assert gpus["a100"]["max_free_on_a_node"] == 3
    # t4: the bound-but-pulling pod holds one; the failed pod holds none
    assert (gpus["t4"]["capacity"], gpus["t4"]["used"], gpus["t4"]["free"]) == (2, 1, 1)
    cpu = inv.nodes["cpu-pool-1"]
    assert cpu.cpus == pytest.approx(7.91)
    assert cpu.cpus_used == pytest.approx(0.1 + 0.1 + 2.0)  # coredns, kube-proxy, preprocess
    assert cpu.memory_used == 70 * 2**20 + 4 * 2**30
    assert inv.nodes["gpu-a100-1"].free_memory == 254876412 * 2**10 - 64 * 2**30
    # the site's node_selector limits the inventory to matching nodes
    only_a100 = inventory_from("k8s-gpu", recorded("nodes"), recorded("pods"), gpu_products=PRODUCTS,
                               node_selector={"nvidia.com/gpu.product": A100})
    assert sorted(only_a100.nodes) == ["gpu-a100-1", "gpu-a100-2"]
    # unmapped products are not offered: nothing could request them
    assert inventory_from("k8s-gpu", recorded("nodes"), [], gpu_products={"a100": A100}).gpu_types == ("a100",)


def test_placement_sends_a_gpu_request_to_a_node_with_that_product():
    inv = inventory_from("k8s-gpu", recorded("nodes"), recorded("pods"), gpu_products=PRODUCTS)
    labels = {n["metadata"]["name"]: n["metadata"]["labels"] for n in recorded("nodes")}

    best = rank_sites(SessionRequest(cpus=4, memory=16 * G, gpus=2, gpu_type="a100"), [inv]).candidates[0]
    assert labels[best.node]["nvidia.com/gpu.product"] == A100
    assert best.node == "gpu-a100-1"  # packing: the A100 node with the fewest free that still fit
    pod = pod_manifest(name="jupyter-alice", cpus=4, memory=16 * G, gpus=2, gpu_product=PRODUCTS[best.gpu_type],
                       prefer_node=best.node)
    assert pod["spec"]["nodeSelector"]["nvidia.com/gpu.product"] == labels[best.node]["nvidia.com/gpu.product"]

    t4 = rank_sites(SessionRequest(gpus=1, gpu_type="t4"), [inv]).candidates[0]
    assert (t4.node, t4.gpu_type) == ("gpu-t4-1", "t4")
    assert rank_sites(SessionRequest(cpus=1), [inv]).candidates[0].node == "cpu-pool-1"
    assert rank_sites(SessionRequest(gpus=1, gpu_type=ANY_GPU), [inv]).candidates[0].gpu_type == "a100"
    refused = rank_sites(SessionRequest(gpus=4, gpu_type="a100"), [inv])
    assert not refused and "at most 3 free on one node (8 in total)" in refused.rejected["k8s-gpu"]


# ---------------------------------------------------------------- site options

BAD_OPTIONS = [
    ({"namespace": "Fed_Hub"}, "options.namespace: expected a namespace name"),
    ({"storage": "ten gigs"}, "options.storage: expected a size such as 10Gi"),
    ({"gpu_products": {"h100": "NVIDIA-H100-80GB-HBM3"}}, "options.gpu_products.h100: expected a GPU type this site"),
    ({"tolerations": [{"key": "nvidia.com/gpu", "operater": "Exists"}]}, "options.tolerations[0].operater"),
    ({"tolerations": [{"key": "x", "effect": "NoScheduling"}]}, "options.tolerations[0].effect"),
    ({"nodeselector": {"pool": "a"}}, "options.nodeselector: expected one of the Kubernetes site options"),
    ({"node_selector": {"pool": 3}}, "options.node_selector.pool: expected a map of node label keys"),
    ({"kubeconfig": "/nonexistent/kubeconfig"}, "options.kubeconfig: expected the path of an existing kubeconfig"),
    ({"start_timeout": -5}, "options.start_timeout: expected a positive number of seconds"),
    ({"pod_scope": "everything"}, "options.pod_scope: expected cluster or namespace"),
]


@pytest.mark.parametrize("options,message", BAD_OPTIONS, ids=[m.split(":")[0] for _, m in BAD_OPTIONS])
def test_bad_site_options_name_the_key(options, message):
    local = {"name": "here", "kind": "local", "cpus": 4, "memory": "8G"}
    with pytest.raises(CatalogueError) as e:
        Federation(catalogue(local, site_doc(options)))
    assert str(e.value).startswith(f"sites.yaml: sites[1].{message}")


def test_a_context_missing_from_the_kubeconfig_is_named(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "contexts": [
        {"name": "staging", "context": {"cluster": "staging", "user": "hub"}}]}))
    with pytest.raises(SiteOptionError) as e:
        KubernetesBackend(catalogue(site_doc({"kubeconfig": str(kubeconfig), "context": "prod"})).sites[0])
    assert e.value.key == "context" and "it has ['staging']" in e.value.expected


# ---------------------------------------------------------------- reflectors over the fake API


class FakeKubeAPI_RecordedLists:
    """A FAKE of the CoreV1Api calls fedhub and KubeSpawner make; no API server runs here.

    Lists and watches (with _preload_content=False, as kubespawner calls them) serve the
    recorded lists in tests/data/k8s, apply the field, label and namespace selectors sent,
    and stream the events a test pushes. Creating a pod replays what an API server, the
    scheduler and the kubelet were seen doing: ADDED (Pending, bound to the preferred node),
    then MODIFIED (Running, with a pod IP, containers ready). Every request body is kept in
    `created`, to be validated against the schemas. `cut()` makes every call fail as an
    unreachable API server does."""

    def __init__(self):
        self.objects = {"nodes": {}, "pods": {}, "events": {}}
        for kind in ("nodes", "pods"):
            for obj in recorded(kind):
                self.objects[kind][self._key(obj)] = obj
        self.version = 880400
        self.watches: dict[str, list[asyncio.Queue]] = {kind: [] for kind in self.objects}
        self.unreachable: Exception | None = None
        self.created: list[dict] = []

    @staticmethod
    def _key(obj):
        md = obj["metadata"]
        return f"{md.get('namespace', '')}/{md['name']}"

    @staticmethod
    def _matches(obj, field_selector="", label_selector=""):
        for term in filter(None, (field_selector or "").split(",")):
            path, op, value = (term.partition("!=") if "!=" in term else term.partition("="))
            actual = obj
            for part in path.split("."):
                actual = (actual or {}).get(part)
            if (actual == value) != (op == "="):
                return False
        labels = obj["metadata"].get("labels") or {}
        return all(labels.get(k) == v for k, _, v in (t.partition("=") for t in
                                                     filter(None, (label_selector or "").split(","))))

    def push(self, kind: str, event: str, obj: dict) -> None:
        """Something changed in the 'cluster': update the recording, tell open watches."""
        self.version += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.version)
        if event == "DELETED":
            self.objects[kind].pop(self._key(obj), None)
        else:
            self.objects[kind][self._key(obj)] = obj
        for q in self.watches[kind]:
            q.put_nowait({"type": event, "object": obj})

    def cut(self, error: Exception) -> None:
        """The API server stops answering: calls fail, open watches break."""
        self.unreachable = error
        for queues in self.watches.values():
            for q in queues:
                q.put_nowait(error)

    async def _call(self, kind, watch=False, field_selector="", label_selector="", timeout_seconds=10,
                    namespace=None, **_):
        if self.unreachable is not None:
            raise self.unreachable
        if namespace:
            field_selector = ",".join(filter(None, [field_selector, f"metadata.namespace={namespace}"]))
        if watch:
            q: asyncio.Queue = asyncio.Queue()
            self.watches[kind].append(q)
            return _FakeWatchResponse(q, timeout_seconds, self, kind, field_selector, label_selector)
        items = [o for o in self.objects[kind].values() if self._matches(o, field_selector, label_selector)]
        return _FakeListResponse({"kind": "List", "apiVersion": "v1",
                                  "metadata": {"resourceVersion": str(self.version)}, "items": items})

    async def list_node(self, **kwargs):
        return await self._call("nodes", **kwargs)

    async def list_pod_for_all_namespaces(self, **kwargs):
        return await self._call("pods", **kwargs)

    async def list_namespaced_pod(self, namespace, **kwargs):
        return await self._call("pods", namespace=namespace, **kwargs)

    async def list_namespaced_event(self, namespace, **kwargs):
        return await self._call("events", namespace=namespace, **kwargs)

    async def create_namespaced_persistent_volume_claim(self, namespace, body):
        if self.unreachable is not None:
            raise self.unreachable
        self.created.append(to_dict(body))

    async def create_namespaced_pod(self, namespace, body):
        if self.unreachable is not None:
            raise self.unreachable
        pod = to_dict(body)
        self.created.append(copy.deepcopy(pod))
        pod["metadata"].update(namespace=namespace, uid="3f0c9a52-7d1e-4b8a-9c55-0f6e2d1b7a43",
                               creationTimestamp="2026-11-24T10:15:02Z")
        preferred = pod["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        pod["spec"]["nodeName"] = preferred[0]["preference"]["matchFields"][0]["values"][0]
        pod["status"] = {"phase": "Pending", "qosClass": "Guaranteed"}
        self.push("pods", "ADDED", pod)
        running = copy.deepcopy(pod)
        running["status"] = {"phase": "Running", "podIP": "10.244.3.77", "hostIP": "10.164.0.21",
                             "qosClass": "Guaranteed", "startTime": "2026-11-24T10:15:02Z",
                             "containerStatuses": [{"name": "notebook", "ready": True, "restartCount": 0,
                                                    "image": pod["spec"]["containers"][0]["image"],
                                                    "imageID": "", "started": True,
                                                    "state": {"running": {"startedAt": "2026-11-24T10:15:09Z"}}}]}
        asyncio.get_running_loop().call_later(0.05, self.push, "pods", "MODIFIED", running)

    async def delete_namespaced_pod(self, name, namespace, body=None, grace_period_seconds=None):
        if self.unreachable is not None:
            raise self.unreachable
        pod = self.objects["pods"].get(f"{namespace}/{name}")
        if pod is not None:
            self.push("pods", "DELETED", pod)


class _FakeListResponse:
    ok, status, reason = True, 200, "OK"

    def __init__(self, body):
        self.body = json.dumps(body).encode()

    async def read(self):
        return self.body

    async def json(self):
        return json.loads(self.body)


class _FakeWatchResponse:
    def __init__(self, queue, timeout, api, kind, field_selector, label_selector):
        self.queue, self.timeout, self.api, self.kind = queue, timeout, api, kind
        self.selectors = (field_selector, label_selector)
        self.content = self  # aiohttp: resp.content.readline()

    async def readline(self) -> bytes:
        while True:
            try:
                item = await asyncio.wait_for(self.queue.get(), self.timeout)
            except asyncio.TimeoutError:
                return b""  # the server ends a watch after timeoutSeconds
            if isinstance(item, Exception):
                raise item
            if self.api._matches(item["object"], *self.selectors) or item["type"] == "DELETED":
                return (json.dumps(item) + "\n").encode()

    def release(self):
        if self.queue in self.api.watches[self.kind]:
            self.api.watches[self.kind].remove(self.queue)

    close = release


@pytest.fixture
async def fake_cluster():
    """The kube context CONTEXT, served by FakeKubeAPI_RecordedLists."""
    fake = FakeKubeAPI_RecordedLists()
    clients = KubeClients("", CONTEXT, apis={"CoreV1Api": fake})
    CLUSTERS[("", CONTEXT, None)] = ClusterWatch(clients, rebuild_delay=0.01, max_retry_delay=0.05)
    yield fake
    await KubeSiteSpawner._stop_all_reflectors()  # KubeSpawner's own, per namespace and context
    for watch in list(CLUSTERS.values()):
        await watch.stop()
    CLUSTERS.clear()


async def until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def gpu_free(inv, gpu_type):
    return inv.free_gpus(gpu_type)


async def test_reflectors_keep_the_inventory_live_and_report_health(fake_cluster):
    fed = Federation(catalogue(site_doc(), site_doc(name="k8s-gpu-2")))  # starts watching, as in the hub
    backend = fed.backends["k8s-gpu"]
    assert not backend.inventory.up  # nothing is placed before the first lists arrive
    await until(lambda: backend.inventory.up)
    inv = backend.inventory
    assert (gpu_free(inv, "a100"), gpu_free(inv, "t4")) == (5, 1)
    # two sites on one kube context share one watch: one set of reflectors
    assert fed.backends["k8s-gpu-2"].watch is backend.watch and len(CLUSTERS) == 1

    job = copy.deepcopy(next(p for p in recorded("pods") if p["metadata"]["name"] == "train-esm-0"))
    job["metadata"]["name"] = "train-esm-1"
    fake_cluster.push("pods", "ADDED", job)  # the scheduler binds another 2-A100 job
    await until(lambda: gpu_free(inv, "a100") == 3)

    t4 = copy.deepcopy(next(n for n in recorded("nodes") if n["metadata"]["name"] == "gpu-t4-1"))
    t4["spec"]["unschedulable"] = True  # kubectl cordon
    fake_cluster.push("nodes", "MODIFIED", t4)
    await until(lambda: "gpu-t4-1" not in inv.nodes and inv.gpu_capacity("t4") == 0)

    fake_cluster.push("pods", "DELETED", job)
    await until(lambda: gpu_free(inv, "a100") == 5)

    fake_cluster.cut(aiohttp.ClientConnectionError("Cannot connect to host 10.0.0.1:6443 ssl:True"))
    await until(lambda: not inv.up)
    assert "API unreachable" in inv.down_reason and "10.0.0.1:6443" in inv.down_reason
    assert rank_sites(SessionRequest(), [inv]).rejected["k8s-gpu"].startswith("down (API unreachable")

    fake_cluster.unreachable = None  # the API server is back: the site comes back by itself
    await until(lambda: inv.up)
    assert gpu_free(inv, "a100") == 5
    for b in fed.backends.values():
        await b.stop_watching()


async def test_kubespawner_starts_and_stops_a_session_through_the_site_client(fake_cluster):
    fed = Federation(catalogue(site_doc({"storage": "10Gi"})))
    backend = fed.backends["k8s-gpu"]
    inv = backend.inventory
    await until(lambda: inv.up)
    req = SessionRequest(cpus=2, memory=8 * G, gpus=1, gpu_type="a100")
    cand = rank_sites(req, [inv]).candidates[0]
    alloc = fed.reserve(("erin", ""), cand, req, {})
    overrides = backend.spawner_overrides(alloc, req)  # as FederatedSpawner builds the site's spawner
    spawner = KubeSiteSpawner(
        user=SimpleNamespace(name="erin", id=5, url="/user/erin/"), environment=overrides.pop("environment"),
        hub=SimpleNamespace(public_host="", url="http://hub:8081/hub/", base_url="/",
                            api_url="http://hub:8081/hub/api"), **overrides)
    spawner.api_token = "token-of-erins-server"

    url = await spawner.start()
    assert url == "http://10.244.3.77:8888"
    pvc, pod = fake_cluster.created  # what the API server received: both valid, strictly
    validate(pvc)
    validate(pod)
    assert (pvc["kind"], pod["kind"]) == ("PersistentVolumeClaim", "Pod")
    assert pod["spec"]["containers"][0]["resources"]["limits"][GPU_RESOURCE] == 1
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    await asyncio.sleep(0.1)
    assert gpu_free(inv, "a100") == 4  # the pod counts, once

    fed.set_status(("erin", ""), "running")
    await spawner.stop(now=True)
    fed.release(("erin", ""))
    await until(lambda: gpu_free(inv, "a100") == 5)
    await backend.stop_watching()


async def test_a_starting_session_is_counted_once(fake_cluster):
    fed = Federation(catalogue(site_doc()))
    backend = fed.backends["k8s-gpu"]
    inv = backend.inventory
    await until(lambda: inv.up)
    req = SessionRequest(cpus=2, memory=8 * G, gpus=2, gpu_type="a100")
    cand = rank_sites(req, [inv]).candidates[0]
    alloc = fed.reserve(("dave", ""), cand, req, {})
    assert gpu_free(inv, "a100") == 3  # reserved at once: a concurrent spawn sees it
    backend.refresh()
    assert gpu_free(inv, "a100") == 3  # still counted after a rebuild: its pod does not exist yet

    token = backend.spawner_overrides(alloc, req)["fedhub_labels"][ALLOCATION_LABEL]
    pod = pod_manifest(name="jupyter-dave", cpus=2, memory=8 * G, gpus=2, gpu_product=A100,
                       labels={SITE_LABEL: "k8s-gpu", ALLOCATION_LABEL: token})
    pod["metadata"]["namespace"] = "fedhub"
    pod["spec"]["nodeName"] = "gpu-a100-2"  # the scheduler chose the other A100 node
    pod["status"] = {"phase": "Pending"}
    fake_cluster.push("pods", "ADDED", pod)
    await asyncio.sleep(0.1)
    assert gpu_free(inv, "a100") == 3  # the pod now counts, the reservation no longer does
    assert inv.nodes["gpu-a100-2"].gpu_free["a100"] == {0} and len(inv.nodes["gpu-a100-1"].gpu_free["a100"]) == 2

    fed.set_status(("dave", ""), "running")
    assert gpu_free(inv, "a100") == 3 and inv.sessions == 1
    fed.release(("dave", ""))  # the session stops; its pod is counted until the cluster drops it
    assert inv.sessions == 0 and gpu_free(inv, "a100") == 3
    fake_cluster.push("pods", "DELETED", pod)
    await until(lambda: gpu_free(inv, "a100") == 5)
    await backend.stop_watching()


# ---------------------------------------------------------------- the operator guide stays true


def test_the_operator_guide_examples_are_what_the_code_does(tmp_path):
    guide = (Path(__file__).parents[1] / "docs" / "site-operators.md").read_text()
    section = guide.split("\n## Kubernetes sites\n", 1)[1]
    catalogue_yaml, pod_yaml, rbac_yaml = re.findall(r"```yaml\n(.*?)```", section, re.S)
    # the catalogue example loads (its kubeconfig replaced by one holding its context)
    doc = yaml.safe_load(catalogue_yaml)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({"contexts": [{"name": doc["sites"][1]["options"]["context"]}]}))
    doc["sites"][1]["options"]["kubeconfig"] = str(kubeconfig)
    backend = Federation(catalogue_from_dict(doc, "sites.yaml")).backends["cloud-gpu"]
    # the pod excerpt is what that site's 2 x a100 session gets
    traits = backend.spawner_overrides(Allocation("cloud-gpu", "gpu-a100-1", 4.0, 16 * G, "a100", (0, 1)),
                                       SessionRequest(cpus=4, memory=16 * G, gpus=2, gpu_type="a100"))
    pod = pod_manifest(name="jupyter-alice", cpus=4, memory=16 * G, gpus=2, gpu_product=A100,
                       node_selector={"pool": "research"}, prefer_node="gpu-a100-1")
    excerpt = yaml.safe_load(pod_yaml)["spec"]
    assert excerpt["nodeSelector"] == pod["spec"]["nodeSelector"] == traits["node_selector"]
    assert excerpt["tolerations"] == pod["spec"]["tolerations"]
    assert excerpt["affinity"] == pod["spec"]["affinity"]
    assert excerpt["containers"][0]["resources"] == pod["spec"]["containers"][0]["resources"]
    # the RBAC objects are valid, and the error messages quoted are the ones the code gives
    for obj in yaml.safe_load_all(rbac_yaml):
        validate(obj)
    for options, _ in (BAD_OPTIONS[0], BAD_OPTIONS[2]):
        with pytest.raises(CatalogueError) as e:
            Federation(catalogue({"name": "here", "kind": "local", "cpus": 4, "memory": "8G"}, site_doc(options)))
        assert str(e.value) in section


def test_a_session_restored_after_a_hub_restart_counts_before_the_first_list():
    fed = Federation(catalogue(site_doc()))  # no event loop: nothing is watched yet
    inv = fed.backends["k8s-gpu"].inventory
    alloc = Allocation("k8s-gpu", "gpu-a100-2", 2.0, 8 * G, "a100", (0,))
    assert fed.restore(("carol", ""), alloc, {"status": "running"}) == alloc
    assert inv.sessions == 1 and not inv.nodes  # its pod is counted by the cluster's view, once it arrives
    fed.release(("carol", ""))
    assert inv.sessions == 0
