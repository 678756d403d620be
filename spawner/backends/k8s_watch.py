"""Shared watches of Kubernetes clusters: one API client and one set of reflectors (nodes,
pods) per kube context, whatever the number of sites and spawners that use the cluster.

The reflectors are kubespawner's ResourceReflector, adapted: cluster-scoped objects
(nodes) are keyed by name, stored objects are trimmed to what the inventory reads, every
change is reported, and an unreachable API marks the cluster down and is retried forever
instead of giving up (a dead cluster must never take the hub down).

KubeSpawner reads its API client from module globals (one cluster per hub); `bound_to()`
points those at one site's cluster while a spawner or reflector of ours is built.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Callable

import kubernetes_asyncio.client
import kubernetes_asyncio.config
import kubespawner.reflector as ks_reflector
import kubespawner.spawner as ks_spawner
from kubernetes_asyncio import watch
from kubernetes_asyncio.client import ApiException, Configuration
from traitlets import Any, Float
from traitlets.config import LoggingConfigurable

from .k8s_manifests import ALLOCATION_LABEL


class KubeClients:
    """API clients for one kube context (its kubeconfig, or the in-cluster service account).

    `api()` has the signature of kubespawner.clients.shared_client. `apis` pre-fills clients
    by type name; tests put a fake of the API layer there.
    """

    def __init__(self, kubeconfig: str = "", context: str = "", apis: dict | None = None):
        self.kubeconfig, self.context = kubeconfig, context
        self.key = (kubeconfig, context)
        self.fixed = dict(apis or {})
        self._configuration: Configuration | None = None
        self._apis: dict[tuple, object] = {}

    def __repr__(self) -> str:
        return f"<KubeClients context={self.context or '(current)'} kubeconfig={self.kubeconfig or '(default)'}>"

    def load(self) -> Configuration:
        """Read the context's credentials once. Blocking (kubeconfig exec plugins may run)."""
        if self._configuration is None and not self.fixed:
            conf = Configuration()
            if not (self.kubeconfig or self.context):
                try:
                    kubernetes_asyncio.config.load_incluster_config(client_configuration=conf)
                    self._configuration = conf
                    return conf
                except kubernetes_asyncio.config.ConfigException:
                    pass  # not in a cluster: the kubeconfig's current context
            load = partial(kubernetes_asyncio.config.load_kube_config, config_file=self.kubeconfig or None,
                           context=self.context or None, client_configuration=conf, persist_config=False)
            # as kubespawner.clients.load_config: its own loop in a thread, whatever the caller's
            with ThreadPoolExecutor(1) as pool:
                pool.submit(lambda: asyncio.run(load())).result()
            self._configuration = conf
        return self._configuration

    def api(self, client_type: str, *args, **kwargs):
        if client_type in self.fixed:
            return self.fixed[client_type]
        key = (asyncio.get_running_loop(), client_type)  # aiohttp sessions belong to one loop
        if key not in self._apis:
            api_client = kubernetes_asyncio.client.ApiClient(configuration=self.load())
            self._apis[key] = getattr(kubernetes_asyncio.client, client_type)(api_client)
        return self._apis[key]

    async def close(self) -> None:
        for api in self._apis.values():
            await api.api_client.close()
        self._apis.clear()


@contextlib.contextmanager
def bound_to(clients: KubeClients):
    """While building a KubeSpawner or reflector, make kubespawner use this cluster's client.

    Synchronous: nothing else runs on the loop between the swap and the restore.
    """
    saved = ks_spawner.load_config, ks_spawner.shared_client, ks_reflector.shared_client
    ks_spawner.load_config = lambda **kw: None  # the global kubeconfig is not ours to load
    ks_spawner.shared_client = ks_reflector.shared_client = clients.api
    try:
        yield
    finally:
        ks_spawner.load_config, ks_spawner.shared_client, ks_reflector.shared_client = saved


def describe_error(e: BaseException) -> str:
    if isinstance(e, ApiException):
        return f"API answered {e.status} {e.reason}".strip()
    return f"API unreachable ({type(e).__name__}: {e})" if str(e) else f"API unreachable ({type(e).__name__})"


def trim_node(node: dict) -> dict:
    md, status = node.get("metadata") or {}, node.get("status") or {}
    return {"metadata": {"name": md.get("name"), "labels": md.get("labels") or {},
                         "resourceVersion": md.get("resourceVersion")},
            "spec": {"unschedulable": (node.get("spec") or {}).get("unschedulable", False)},
            "status": {"allocatable": status.get("allocatable") or {},
                       "conditions": [{"type": c.get("type"), "status": c.get("status")}
                                      for c in status.get("conditions") or []]}}


def trim_pod(pod: dict) -> dict:
    """Keep what the inventory reads: a cluster's pods are many and large."""
    md, spec = pod.get("metadata") or {}, pod.get("spec") or {}

    def res(c):
        return {"resources": c.get("resources") or {}, "restartPolicy": c.get("restartPolicy")}

    labels = md.get("labels") or {}
    return {"metadata": {"name": md.get("name"), "namespace": md.get("namespace"),
                         "resourceVersion": md.get("resourceVersion"),
                         "labels": {ALLOCATION_LABEL: labels[ALLOCATION_LABEL]} if ALLOCATION_LABEL in labels else {}},
            "spec": {"nodeName": spec.get("nodeName"), "overhead": spec.get("overhead"),
                     "containers": [res(c) for c in spec.get("containers") or []],
                     "initContainers": [res(c) for c in spec.get("initContainers") or []]},
            "status": {"phase": (pod.get("status") or {}).get("phase")}}


class ClusterReflector(ks_reflector.ResourceReflector):
    """kubespawner's ResourceReflector for the inventory (see the module docstring)."""

    on_change = Any(None, allow_none=True, help="Called after every list and watch event.")
    on_health = Any(None, allow_none=True, help="Called as on_health(up, reason).")
    trim = Any(None, allow_none=True, help="Reduces a stored object to the fields that matter.")
    max_retry_delay = Float(
        30, config=True, help="Longest wait between retries while the API server does not answer.")

    def __init__(self, clients: KubeClients, **kwargs):
        with bound_to(clients):
            super().__init__(**kwargs)
        self.error: str | None = None  # None until the first list succeeds or fails

    @staticmethod
    def key_of(obj: dict) -> str:
        md = obj["metadata"]
        return f"{md['namespace']}/{md['name']}" if md.get("namespace") else md["name"]

    def _store(self, obj: dict) -> dict:
        return self.trim(obj) if self.trim else obj

    def _report(self, error: str) -> None:
        if error != self.error:
            self.error = error
            if self.on_health:
                self.on_health(not error, error)

    def _changed(self) -> None:
        if self.on_change:
            self.on_change()

    async def _list_and_update(self, resource_version=None):
        kwargs = dict(label_selector=self.label_selector, field_selector=self.field_selector,
                      _request_timeout=self.request_timeout, _preload_content=False)
        if resource_version is not None:
            kwargs.update(resource_version=resource_version, resource_version_match="NotOlderThan")
        if not self.omit_namespace:
            kwargs["namespace"] = self.namespace
        resp = await getattr(self.api, self.list_method_name)(**kwargs)
        if not resp.ok:
            raise ApiException(status=resp.status, reason=resp.reason)
        listed = json.loads(await resp.read())
        self.resources = {self.key_of(o): self._store(o) for o in listed["items"]}
        if not self.first_load_future.done():
            self.first_load_future.set_result(None)
        self._report("")
        self._changed()
        return listed["metadata"]["resourceVersion"]

    async def _watch_and_update(self):
        resource_version, delay = "0", 0.1
        while not self._stopping:
            start, w = time.monotonic(), watch.Watch()
            try:
                resource_version = await self._list_and_update(resource_version)
                delay = 0.1
                args = {"label_selector": self.label_selector, "field_selector": self.field_selector,
                        "resource_version": resource_version, "timeout_seconds": self.timeout_seconds,
                        "_request_timeout": self.request_timeout}
                if not self.omit_namespace:
                    args["namespace"] = self.namespace
                method = partial(getattr(self.api, self.list_method_name), _preload_content=False)
                async with w.stream(method, **args) as stream:
                    async for event in stream:
                        obj = event["raw_object"]
                        if event["type"] == "DELETED":
                            self.resources.pop(self.key_of(obj), None)
                        elif event["type"] in ("ADDED", "MODIFIED"):
                            self.resources[self.key_of(obj)] = self._store(obj)
                            resource_version = obj["metadata"]["resourceVersion"]
                        self._changed()
                        if self._stopping or time.monotonic() - start >= self.restart_seconds:
                            break
            except asyncio.CancelledError:
                raise
            except asyncio.TimeoutError:
                continue  # a quiet watch: list again and reconnect
            except Exception as e:
                resource_version = "0"
                if not (isinstance(e, ApiException) and e.status == 410):  # 410 Gone: just relist
                    self._report(describe_error(e))
                    self.log.warning("Watching %s: %s; retrying in %.1f s", self.kind, describe_error(e), delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.max_retry_delay)
            finally:
                w.stop()
                await w.close()

    async def start(self):
        # unlike ResourceReflector.start(), never raise: the first list is retried like any other
        if not (self.watch_task and not self.watch_task.done()):
            self.watch_task = asyncio.ensure_future(self._watch_and_update())

    async def stop(self):
        # ResourceReflector.stop() re-raises the watch task's CancelledError into the caller
        self._stopping = True
        task, self.watch_task = self.watch_task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=5)


WAITING = "waiting for the first node and pod lists"


class ClusterWatch(LoggingConfigurable):
    """The node and pod reflectors of one cluster, and who to tell when they change."""

    rebuild_delay = Float(
        0.2, config=True,
        help="Seconds to gather watch events before inventories are rebuilt: a burst costs one rebuild.")
    max_retry_delay = Float(
        30, config=True, help="Longest wait between retries while the cluster's API does not answer.")

    def __init__(self, clients: KubeClients, pod_namespace: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.clients, self.pod_namespace = clients, pod_namespace
        self.nodes: ClusterReflector | None = None
        self.pods: ClusterReflector | None = None
        self.listeners: list[Callable[[], None]] = []
        self.error = WAITING
        self._task: asyncio.Task | None = None
        self._pending: asyncio.TimerHandle | None = None

    @property
    def loaded(self) -> bool:
        return all(r is not None and r.first_load_future.done() and not r.first_load_future.exception()
                   for r in (self.nodes, self.pods))

    @property
    def up(self) -> bool:
        return self.loaded and not self.error

    def subscribe(self, listener: Callable[[], None]) -> None:
        if listener not in self.listeners:
            self.listeners.append(listener)

    def node_list(self) -> list[dict]:
        return list(self.nodes.resources.values()) if self.nodes else []

    def pod_list(self) -> list[dict]:
        return list(self.pods.resources.values()) if self.pods else []

    def _notify(self) -> None:
        self._pending = None
        for listener in list(self.listeners):
            try:
                listener()
            except Exception:  # one site's bug must not stop the others' updates
                self.log.exception("Inventory update failed")

    def _changed(self) -> None:
        if self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(self.rebuild_delay, self._notify)

    def _health(self, _up: bool, _reason: str) -> None:
        errors = [r.error for r in (self.nodes, self.pods) if r is not None and r.error]
        self.error = errors[0] if errors else ("" if self.loaded else WAITING)
        self._notify()  # health changes are shown at once

    def start(self) -> None:
        """Start watching (idempotent, never raises: failures show as the cluster being down)."""
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        delay = 0.5
        while True:  # credentials first: a missing kubeconfig or context is retried, not fatal
            try:
                await asyncio.to_thread(self.clients.load)
                self.error = WAITING
                break
            except Exception as e:
                self.error = f"cannot load credentials for context {self.clients.context or '(current)'}: {e}"
                self.log.warning("Kubernetes %s", self.error)
                self._notify()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_retry_delay)
        common = dict(clients=self.clients, on_change=self._changed, on_health=self._health,
                      max_retry_delay=self.max_retry_delay, parent=self)
        self.nodes = ClusterReflector(kind="nodes", list_method_name="list_node", omit_namespace=True,
                                      trim=trim_node, **common)
        if self.pod_namespace:
            self.pods = ClusterReflector(kind="pods", namespace=self.pod_namespace, omit_namespace=False,
                                         list_method_name="list_namespaced_pod", trim=trim_pod, **common)
        else:
            self.pods = ClusterReflector(kind="pods", omit_namespace=True, trim=trim_pod,
                                         list_method_name="list_pod_for_all_namespaces", **common)
        # finished pods hold nothing: let the API server leave them out
        self.pods.field_selector = "status.phase!=Succeeded,status.phase!=Failed"
        await self.nodes.start()
        await self.pods.start()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for r in (self.nodes, self.pods):
            if r is not None:
                await r.stop()
        if self._pending is not None:
            self._pending.cancel()
        if not any(w.clients is self.clients for w in CLUSTERS.values() if w is not self):
            await self.clients.close()


# kube context (kubeconfig, context, pod namespace or None) -> its watch, for the whole hub process
CLUSTERS: dict[tuple[str, str, str | None], ClusterWatch] = {}


def cluster_watch(kubeconfig: str, context: str, pod_namespace: str | None = None) -> ClusterWatch:
    key = (kubeconfig, context, pod_namespace)
    if key not in CLUSTERS:
        # sites on one context share its clients even when they watch pods differently
        clients = next((w.clients for k, w in CLUSTERS.items() if k[:2] == key[:2]), None)
        CLUSTERS[key] = ClusterWatch(clients or KubeClients(kubeconfig, context), pod_namespace)
    return CLUSTERS[key]

