"""Kubernetes sites: a session is a pod started by KubeSpawner on the site's cluster.

Site options (catalogue `sites[i].options`; all optional):

    context:           kube context to use (default: the in-cluster service account if the
                       hub runs in a pod, else the kubeconfig's current context)
    kubeconfig:        path of the kubeconfig file holding `context` (default: $KUBECONFIG
                       or ~/.kube/config)
    namespace:         namespace of session pods, services and claims (default "fedhub")
    image:             session image (default "quay.io/jupyter/base-notebook:latest")
    cmd:               command that starts the server in the image
                       (default ["jupyterhub-singleuser"])
    environment:       extra environment variables for sessions on this site
    storage:           size of a per-user home volume claim, e.g. "10Gi" (default: none)
    storage_class:     storage class of that claim (default: the cluster's default)
    gpu_product_label: node label naming the GPU product (default "nvidia.com/gpu.product")
    gpu_products:      fedhub GPU type -> value of that label, e.g. {a100: NVIDIA-A100-SXM4-80GB}
                       (default: each of the site's GPU types maps to its own name)
    tolerations:       tolerations of GPU sessions (default: nvidia.com/gpu Exists NoSchedule)
    node_selector:     labels every session node must have; also limits the inventory
    pod_scope:         "cluster" (default): count every pod's requests, which needs cluster-wide
                       read access to pods; "namespace": count only pods in `namespace`
    hub_connect_url:   URL pods use to reach the hub's API, when the hub's own is not reachable
    start_timeout:     seconds a pod may take to start (image pulls) before the next site is
                       tried (default 300)

GPUs: an `nvidia.com/gpu` limit, a node selector on the product label and the tolerations;
the NVIDIA device plugin picks the devices and sets CUDA_VISIBLE_DEVICES, so fedhub does not.
The inventory is node allocatable minus pod requests, from one set of reflectors per kube
context shared by all sites and spawners (k8s_watch.py).
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field

import yaml
from kubespawner import KubeSpawner
from traitlets import Any, Dict, List

from ..inventory import Allocation
from .base import SiteBackend, SiteOptionError
from .k8s_inventory import KubeSiteInventory, inventory_from, placed_allocation_tokens
from .k8s_manifests import (ALLOCATION_LABEL, DEFAULT_GPU_PRODUCT_LABEL, DEFAULT_GPU_TOLERATIONS,
                            DEFAULT_HOME, DEFAULT_IMAGE, SITE_LABEL, dataset_mount_path, dataset_volumes,
                            session_traits)
from .k8s_watch import WAITING, CLUSTERS, ClusterWatch, bound_to, cluster_watch

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = re.compile(rf"^([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_NAME}$")
_LABEL_VALUE = re.compile(rf"^({_NAME})?$")
_STORAGE = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}


@dataclass(frozen=True)
class KubeSiteOptions:
    context: str = ""
    kubeconfig: str = ""
    namespace: str = "fedhub"
    image: str = DEFAULT_IMAGE
    cmd: tuple[str, ...] = ("jupyterhub-singleuser",)
    environment: dict = field(default_factory=dict)
    storage: str = ""
    storage_class: str = ""
    gpu_product_label: str = DEFAULT_GPU_PRODUCT_LABEL
    gpu_products: dict = field(default_factory=dict)
    tolerations: tuple[dict, ...] = DEFAULT_GPU_TOLERATIONS
    node_selector: dict = field(default_factory=dict)
    pod_scope: str = "cluster"
    hub_connect_url: str = ""
    start_timeout: float = 300.0


OPTIONS = tuple(KubeSiteOptions.__dataclass_fields__)


def _string(o: dict, key: str, pattern: re.Pattern | None = None, expected: str = "a string") -> str:
    value = o.get(key, "")
    if not isinstance(value, str) or (value and pattern is not None and not pattern.match(value)):
        raise SiteOptionError(key, expected, value)
    return value


def _str_map(o: dict, key: str, expected: str, key_re=None, value_re=None) -> dict:
    value = o.get(key) or {}
    if not isinstance(value, dict):
        raise SiteOptionError(key, expected, value)
    for k, v in value.items():
        if not isinstance(k, str) or (key_re is not None and not key_re.match(k)):
            raise SiteOptionError(f"{key}.{k}", expected, k)
        if not isinstance(v, str) or (value_re is not None and not value_re.match(v)):
            raise SiteOptionError(f"{key}.{k}", expected, v)
    return dict(value)


def _tolerations(o: dict) -> tuple[dict, ...]:
    if "tolerations" not in o:
        return DEFAULT_GPU_TOLERATIONS
    value = o["tolerations"]
    if not isinstance(value, list):
        raise SiteOptionError("tolerations", "a list of Kubernetes tolerations", value)
    for i, t in enumerate(value):
        where = f"tolerations[{i}]"
        if not isinstance(t, dict) or not t:
            raise SiteOptionError(where, "a toleration such as {key: nvidia.com/gpu, operator: Exists, "
                                         "effect: NoSchedule}", t)
        for k in t:
            if k not in _TOLERATION_KEYS:
                raise SiteOptionError(f"{where}.{k}", f"one of the toleration keys {sorted(_TOLERATION_KEYS)}")
        if t.get("operator", "Equal") not in ("Equal", "Exists"):
            raise SiteOptionError(f"{where}.operator", "Equal or Exists", t["operator"])
        if t.get("effect", "") not in ("", "NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise SiteOptionError(f"{where}.effect", "NoSchedule, PreferNoSchedule or NoExecute", t["effect"])
    return tuple(dict(t) for t in value)


def parse_options(site) -> KubeSiteOptions:
    """Check a site's options; a mistake raises SiteOptionError naming the key."""
    o = site.options
    for key in o:
        if key not in OPTIONS:
            raise SiteOptionError(key, f"one of the Kubernetes site options {sorted(OPTIONS)}")
    kubeconfig = _string(o, "kubeconfig")
    context = _string(o, "context")
    if kubeconfig:
        path = os.path.expanduser(kubeconfig)
        if not os.path.isfile(path):
            raise SiteOptionError("kubeconfig", "the path of an existing kubeconfig file", kubeconfig)
        try:
            with open(path) as f:
                contexts = [c.get("name") for c in (yaml.safe_load(f) or {}).get("contexts") or []]
        except (OSError, yaml.YAMLError, AttributeError):
            raise SiteOptionError("kubeconfig", "a readable kubeconfig (YAML) file", kubeconfig)
        if context and context not in contexts:
            raise SiteOptionError("context", f"a context of {kubeconfig} (it has {contexts})", context)
    cmd = o.get("cmd", list(KubeSiteOptions.cmd))
    if not isinstance(cmd, list) or not cmd or not all(isinstance(c, str) and c for c in cmd):
        raise SiteOptionError("cmd", "a non-empty list of strings", cmd)
    timeout = o.get("start_timeout", KubeSiteOptions.start_timeout)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise SiteOptionError("start_timeout", "a positive number of seconds", timeout)
    products = _str_map(o, "gpu_products", "a map of this site's GPU types to product label values",
                        value_re=_LABEL_VALUE)
    for gpu_type in products:
        if gpu_type not in site.gpu_types:
            raise SiteOptionError(f"gpu_products.{gpu_type}",
                                  f"a GPU type this site lists under gpus ({list(site.gpu_types)})", gpu_type)
    pod_scope = o.get("pod_scope", "cluster")
    if pod_scope not in ("cluster", "namespace"):
        raise SiteOptionError("pod_scope", "cluster or namespace", pod_scope)
    return KubeSiteOptions(
        context=context, kubeconfig=kubeconfig,
        namespace=_string(o, "namespace", _DNS_LABEL, "a namespace name (lower-case letters, digits "
                                                      "and '-', at most 63)") or "fedhub",
        image=_string(o, "image", re.compile(r"^\S+$"), "an image reference with no spaces") or DEFAULT_IMAGE,
        cmd=tuple(cmd),
        environment=_str_map(o, "environment", "a map of variable names to string values"),
        storage=_string(o, "storage", _STORAGE, "a size such as 10Gi or 500Mi"),
        storage_class=_string(o, "storage_class", _DNS_SUBDOMAIN, "a storage class name"),
        gpu_product_label=_string(o, "gpu_product_label", _LABEL_KEY, "a node label key such as "
                                  "nvidia.com/gpu.product") or DEFAULT_GPU_PRODUCT_LABEL,
        gpu_products=products, tolerations=_tolerations(o),
        node_selector=_str_map(o, "node_selector", "a map of node label keys to values",
                               key_re=_LABEL_KEY, value_re=_LABEL_VALUE),
        pod_scope=pod_scope,
        hub_connect_url=_string(o, "hub_connect_url", re.compile(r"^https?://\S+$"), "an http(s) URL"),
        start_timeout=float(timeout),
    )


class KubeSiteSpawner(KubeSpawner):
    """KubeSpawner bound to one site's cluster, with fedhub's labels and environment.

    KubeSpawner assumes one cluster per hub (a global kubeconfig, reflectors keyed by
    namespace); here the API client comes from the site's kube context and the reflectors
    are keyed by it too, so sites on different clusters never share them.
    """

    kube_clients = Any(None, allow_none=True, help="API clients of the site's cluster (set by the backend).")
    fedhub_labels = Dict(help="Labels fedhub adds to the pod: its site and its reservation (set by the backend).")
    site_environment = Dict(help="The site's `environment` option, applied last (set by the backend).")
    hub_only_env = List(
        ["PATH", "VIRTUAL_ENV", "PYTHONPATH", "CONDA_PREFIX"], config=True,
        help="Variables of Spawner.environment that describe the hub's machine and must not reach a pod: "
             "the image has its own. A site's `environment` option may still set them.",
    )

    def __init__(self, **kwargs):
        clients = kwargs.get("kube_clients")
        if clients is None:
            raise ValueError("KubeSiteSpawner needs kube_clients; KubernetesBackend sets it")
        with bound_to(clients):
            super().__init__(**kwargs)

    def _get_reflector_key(self, kind):
        return (*super()._get_reflector_key(kind), self.kube_clients.key)

    async def _start_reflector(self, kind, reflector_class, replace=False, **kwargs):
        current = self.__class__.reflectors.get(self._get_reflector_key(kind))
        if current is not None and current.watch_task is not None and current.watch_task.done():
            replace = True  # it gave up during an API outage; the site is back, so start afresh
        return await super()._start_reflector(kind, _site_bound(reflector_class), replace=replace, **kwargs)

    def _build_pod_labels(self, extra_labels):
        return {**super()._build_pod_labels(extra_labels), **self.fedhub_labels}

    def get_env(self):
        env = super().get_env()
        for name in self.hub_only_env:
            env.pop(name, None)
        env.update(self.site_environment)
        return env


_BOUND: dict[type, type] = {}


def _site_bound(reflector_class: type) -> type:
    """A subclass of a KubeSpawner reflector that takes its client from the spawner's site."""
    if reflector_class not in _BOUND:
        def __init__(self, *args, **kwargs):
            with bound_to(kwargs["parent"].kube_clients):
                reflector_class.__init__(self, *args, **kwargs)
        _BOUND[reflector_class] = type(reflector_class.__name__, (reflector_class,), {"__init__": __init__})
    return _BOUND[reflector_class]


class KubernetesBackend(SiteBackend):
    kind = "kubernetes"

    def __init__(self, site, log=None):
        self.options = parse_options(site)
        self.start_timeout = self.options.start_timeout
        self.starting: list[tuple[Allocation, str]] = []  # sessions the cluster may not count yet
        self.watch: ClusterWatch | None = None
        self._on_change = lambda: None
        super().__init__(site, log)

    @property
    def gpu_products(self) -> dict[str, str]:
        return {**{t: t for t in self.site.gpu_types}, **self.options.gpu_products}

    def build_inventory(self) -> KubeSiteInventory:
        inv = KubeSiteInventory(self.site.name, kind=self.kind, max_sessions=self.site.max_sessions,
                                on_release=self.refresh)
        inv.set_health(False, WAITING)
        return inv

    def cluster(self) -> ClusterWatch:
        o = self.options
        return cluster_watch(o.kubeconfig, o.context, o.namespace if o.pod_scope == "namespace" else None)

    async def start_watching(self, on_change=lambda: None) -> None:
        self._on_change = on_change
        self.watch = self.cluster()
        self.watch.subscribe(self.refresh)
        self.watch.start()  # shared with every site on this context; never raises
        self.refresh()

    async def stop_watching(self) -> None:
        watch, self.watch = self.watch, None
        if watch is not None and self.refresh in watch.listeners:
            watch.listeners.remove(self.refresh)
            if not watch.listeners:
                CLUSTERS.pop(next((k for k, w in CLUSTERS.items() if w is watch), None), None)
                await watch.stop()

    def refresh(self) -> None:
        """Rebuild the inventory from the reflectors' nodes and pods (and report health)."""
        w = self.watch
        if w is not None:
            if w.loaded:
                pods = w.pod_list()
                fresh = inventory_from(self.site.name, w.node_list(), pods, gpu_products=self.gpu_products,
                                       gpu_product_label=self.options.gpu_product_label,
                                       node_selector=self.options.node_selector)
                placed = placed_allocation_tokens(pods)
                self.inventory.replace_nodes(fresh, [a for a, token in self.starting if token not in placed])
            self.inventory.set_health(w.up, w.error or WAITING)
        self._on_change()

    def note_starting(self, allocation: Allocation) -> None:
        # the token goes on the pod as a label: once the cluster counts that pod, we stop
        self.starting.append((allocation, secrets.token_hex(8)))

    def note_settled(self, allocation: Allocation) -> None:
        before = len(self.starting)
        self.starting = [(a, t) for a, t in self.starting if a is not allocation]
        if len(self.starting) != before:
            self.refresh()

    def spawner_class(self):
        return KubeSiteSpawner

    def spawner_overrides(self, allocation: Allocation, request) -> dict:
        o = self.options
        gpus = len(allocation.gpu_ids)
        traits = session_traits(
            cpus=allocation.cpus, memory=allocation.memory, gpus=gpus,
            gpu_product=self.gpu_products.get(allocation.gpu_type, allocation.gpu_type) if gpus else "",
            gpu_product_label=o.gpu_product_label, tolerations=o.tolerations,
            node_selector=o.node_selector, storage=o.storage, storage_class=o.storage_class,
            prefer_node=allocation.node)
        labels = {SITE_LABEL: self.site.name}
        token = next((t for a, t in self.starting if a is allocation), "")
        if token:
            labels[ALLOCATION_LABEL] = token
        overrides = {
            **traits, "namespace": o.namespace, "image": o.image, "cmd": list(o.cmd),
            "start_timeout": int(o.start_timeout), "kube_clients": self.cluster().clients,
            "fedhub_labels": labels, "site_environment": dict(o.environment),
            # no CUDA_VISIBLE_DEVICES: the NVIDIA device plugin sets it for the devices it gave
            "environment": self.session_env(allocation, request),
        }
        if o.hub_connect_url:
            overrides["hub_connect_url"] = o.hub_connect_url
        return overrides

    def dataset_overrides(self, datasets) -> dict:
        volumes, mounts = dataset_volumes(datasets, DEFAULT_HOME)
        return {"volumes": volumes, "volume_mounts": mounts}

    def dataset_paths(self, datasets) -> dict[str, str]:
        return {name: dataset_mount_path(name, DEFAULT_HOME) for name in datasets}
