"""`fedhub-edge`: the agent on an edge device.

It registers the device (name, group) with the hub, pulls the bundle assigned to its group,
verifies it (signature with the pinned hub key, then checksums), loads it with onnxruntime,
serves it over the KServe v2 HTTP protocol and reports its status. The bundle that served
before is kept: a new bundle that fails to verify or load never replaces it, and if the
current bundle fails at start-up the agent rolls back to the previous one.

State dir: `hub-key.pem` (pinned), `state.json` ({"current", "previous", "failed"}),
`bundles/<bundle id>/` (verified bundles: current and previous only).

Depends on requests, numpy, onnxruntime and cryptography only (`pip install fedhub[edge]`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests

from . import contract
from . import manifest as fmt
from .v2http import LoadedModel, V2Server

log = logging.getLogger("fedhub.edge")
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
DOWNLOAD_CHUNK = 1 << 16


class AgentError(Exception):
    """The agent cannot go on (bad settings, no hub key); the message says what to fix."""


class EdgeAgent:
    def __init__(self, hub_url: str, name: str, group: str, state_dir: str | Path, *, token: str = "",
                 public_key: str | Path | None = None, host: str = "127.0.0.1", port: int = 0,
                 api_prefix: str = contract.API_PREFIX, timeout: float = 30.0):
        contract.check_name(name, "name", "--name")
        contract.check_name(group, "group", "--group")
        self.name, self.group = name, group
        self.api = hub_url.rstrip("/") + "/" + api_prefix.strip("/") + "/"
        self.state_dir = Path(state_dir)
        (self.state_dir / "bundles").mkdir(parents=True, exist_ok=True)
        self.http = requests.Session()
        if token:
            self.http.headers["Authorization"] = f"token {token}"
        self.timeout = timeout
        self.state = self._read_state()
        self.public_key = self._pin_key(public_key)
        self.server = V2Server(host, port)
        self.last_status: dict = {}
        self._lock = threading.Lock()  # one update at a time

    # ------------------------------------------------------------ state
    def _read_state(self) -> dict:
        path = self.state_dir / "state.json"
        state = json.loads(path.read_text()) if path.exists() else {}
        return {"current": state.get("current"), "previous": state.get("previous"), "failed": state.get("failed", {})}

    def _write_state(self) -> None:
        tmp = self.state_dir / "state.json.new"
        tmp.write_text(json.dumps(self.state, indent=2))
        os.replace(tmp, self.state_dir / "state.json")

    def _bundle_dir(self, bundle_id: str) -> Path:
        return self.state_dir / "bundles" / bundle_id

    def _pin_key(self, public_key):
        """The hub key: given (a PEM file or text), else pinned on first contact and kept."""
        pinned = self.state_dir / "hub-key.pem"
        if public_key:
            text = Path(public_key).read_text() if Path(str(public_key)).is_file() else str(public_key)
        elif pinned.exists():
            text = pinned.read_text()
        else:
            resp = self.http.get(self.api + contract.PUBLIC_KEY, timeout=self.timeout)
            if resp.status_code != 200:
                raise AgentError(f"cannot fetch the hub's public key ({resp.status_code}); pass --public-key")
            text = resp.text
            log.warning("pinned the hub key fetched from %s (trust on first use)", self.api)
        try:
            key = fmt.load_public_key(text)
        except ValueError as exc:
            raise AgentError(f"hub public key: {exc}") from None
        if not pinned.exists():
            pinned.write_text(fmt.public_key_pem(key))
        return key

    # ------------------------------------------------------------ hub calls
    def register(self) -> dict:
        doc = contract.check_registration({"name": self.name, "group": self.group, "platform": {
            "system": platform.system(), "machine": platform.machine(), "python": platform.python_version()}})
        resp = self.http.post(self.api + contract.REGISTER, json=doc, timeout=self.timeout)
        if resp.status_code not in (200, 201):
            raise AgentError(f"registration refused ({resp.status_code}): {resp.text[:300]}")
        return resp.json()

    def report(self, state: str, reason: str = "", bundle_id: str | None = None) -> dict:
        doc = contract.check_status({"state": state, "serving": self.state["current"],
                                     "previous": self.state["previous"], "bundle_id": bundle_id,
                                     "reason": reason or None})
        self.last_status = doc
        try:
            self.http.post(self.api + contract.STATUS.format(name=self.name), json=doc, timeout=self.timeout)
        except requests.RequestException as exc:  # the hub being away never stops serving
            log.warning("status report failed: %s", exc)
        return doc

    def assignment(self) -> dict | None:
        url = self.api + contract.ASSIGNMENT.format(group=self.group)
        resp = self.http.get(url, timeout=self.timeout)
        if resp.status_code in (204, 404):
            return None
        resp.raise_for_status()
        doc = contract.check_assignment(resp.json())
        doc["url"] = urljoin(url, doc["url"])
        return doc

    # ------------------------------------------------------------ bundles
    def _load(self, bundle_id: str) -> LoadedModel:
        """Verify a kept bundle again (the disk may have changed) and load it."""
        directory = self._bundle_dir(bundle_id)
        manifest = fmt.verify_directory(directory, self.public_key)
        model = LoadedModel.load(directory / fmt.MODEL, manifest["name"], manifest["version"], bundle_id)
        model.smoke_test()
        return model

    def _download(self, assignment: dict, into: Path) -> Path:
        archive = into / "bundle.zip"
        # the hub token goes to the hub only: a bundle URL elsewhere (object storage, a CDN) gets none
        same_origin = urlsplit(assignment["url"])[:2] == urlsplit(self.api)[:2]
        getter = self.http.get if same_origin else requests.get
        with getter(assignment["url"], stream=True, timeout=self.timeout) as resp:
            if resp.status_code != 200:
                raise fmt.BundleRefused(f"download failed with HTTP {resp.status_code}")
            size = 0
            with open(archive, "wb") as f:
                for chunk in resp.iter_content(DOWNLOAD_CHUNK):
                    size += len(chunk)
                    if size > assignment["size"]:
                        raise fmt.BundleRefused(f"download is larger than the announced {assignment['size']} bytes")
                    f.write(chunk)
        if fmt.sha256_file(archive) != assignment["sha256"]:
            raise fmt.BundleRefused("the downloaded archive's sha256 differs from the assignment's")
        return archive

    def start(self) -> int:
        """Serve what the state dir holds (rolling back if the current bundle fails); returns the port."""
        current, previous = self.state["current"], self.state["previous"]
        if current:
            try:
                self.server.model = self._load(current)
            except (fmt.BundleRefused, Exception) as exc:
                reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
                log.error("bundle %s cannot serve: %s", current, reason)
                self.state["failed"][current] = reason
                self.state.update(current=None)
                if previous:
                    try:
                        self.server.model = self._load(previous)
                        self.state.update(current=previous, previous=None)
                        self._write_state()
                        self.report(contract.ROLLED_BACK, f"bundle {current}: {reason}", current)
                    except Exception as exc2:  # noqa: BLE001 - both bad: serve nothing, say why
                        self.state.update(previous=None)
                        self._write_state()
                        self.report(contract.LOAD_FAILED, f"{current}: {reason}; {previous}: {exc2}", current)
                else:
                    self._write_state()
                    self.report(contract.LOAD_FAILED, reason, current)
        self.server.start()
        return self.server.port

    def poll_once(self) -> str:
        """Fetch the group's assignment and act on it. Returns the state reached:
        serving (updated or unchanged), refused, load-failed or idle."""
        with self._lock:
            assignment = self.assignment()
            if assignment is None:
                return contract.IDLE if self.server.model is None else contract.SERVING
            bundle_id = assignment["bundle_id"]
            if not SAFE_ID.match(bundle_id):
                return self.report(contract.REFUSED, f"bundle id {bundle_id!r} is not a safe name", None)["state"]
            if bundle_id == self.state["current"]:
                return contract.SERVING
            if bundle_id in self.state["failed"]:
                return self.last_status.get("state", contract.REFUSED)  # already reported; wait for a new one
            if bundle_id == self.state["previous"] and self._bundle_dir(bundle_id).is_dir():
                return self._back_to_previous(bundle_id)
            return self._update(assignment)

    def _back_to_previous(self, bundle_id: str) -> str:
        """The hub rolled the group back: serve the kept previous bundle (verified again), no download."""
        try:
            model = self._load(bundle_id)
        except Exception as exc:  # noqa: BLE001 - a bad kept copy: fetch it like a new bundle next time
            shutil.rmtree(self._bundle_dir(bundle_id), ignore_errors=True)
            self.state["previous"] = None
            self._write_state()
            return self.report(contract.LOAD_FAILED, f"kept bundle {bundle_id}: {getattr(exc, 'reason', exc)}",
                               bundle_id)["state"]
        self.server.model = model
        self.state.update(previous=self.state["current"], current=bundle_id)
        self._write_state()
        self.report(contract.SERVING, "", bundle_id)
        return contract.SERVING

    def _update(self, assignment: dict) -> str:
        bundle_id = assignment["bundle_id"]
        staging = Path(tempfile.mkdtemp(prefix="incoming-", dir=self.state_dir))
        try:
            archive = self._download(assignment, staging)
            content = fmt.unpack(archive, staging / "bundle")
            manifest = fmt.verify_directory(content, self.public_key)
        except (fmt.BundleRefused, requests.RequestException) as exc:
            reason = getattr(exc, "reason", None) or f"download failed: {exc}"
            shutil.rmtree(staging, ignore_errors=True)
            return self._fail(contract.REFUSED, bundle_id, reason)
        try:
            model = LoadedModel.load(content / fmt.MODEL, manifest["name"], manifest["version"], bundle_id)
            model.smoke_test()
        except Exception as exc:  # noqa: BLE001 - any load error keeps the current bundle serving
            shutil.rmtree(staging, ignore_errors=True)
            return self._fail(contract.LOAD_FAILED, bundle_id, f"onnxruntime: {exc}")
        target = self._bundle_dir(bundle_id)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(content, target)
        shutil.rmtree(staging, ignore_errors=True)
        self.server.model = model  # one reference swap: requests in flight finish on the old session
        self.state.update(previous=self.state["current"], current=bundle_id)
        self._write_state()
        self._prune()
        self.report(contract.SERVING, "", bundle_id)
        log.info("serving %s version %s (bundle %s)", manifest["name"], manifest["version"], bundle_id)
        return contract.SERVING

    def _fail(self, state: str, bundle_id: str, reason: str) -> str:
        log.error("bundle %s %s: %s", bundle_id, state, reason)
        self.state["failed"][bundle_id] = reason
        self._write_state()
        self.report(state, reason, bundle_id)
        return state

    def _prune(self) -> None:
        keep = {self.state["current"], self.state["previous"]}
        for path in (self.state_dir / "bundles").iterdir():
            if path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)

    def stop(self) -> None:
        self.server.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fedhub-edge", description=(
        "Serve the model bundle the hub assigns to this device's group over the KServe v2 HTTP protocol."))
    parser.add_argument("--hub", required=True, help="the hub's URL, e.g. https://hub.example.org")
    parser.add_argument("--name", required=True, help="this device's name (unique per owner)")
    parser.add_argument("--group", required=True, help="the device group whose bundle to serve")
    parser.add_argument("--state-dir", default=os.path.expanduser("~/.fedhub-edge"),
                        help="where the pinned key, state and bundles are kept (default ~/.fedhub-edge)")
    parser.add_argument("--public-key", help="the hub's bundle-signing public key (PEM file); default: "
                        "fetched on first contact and pinned in the state dir")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to serve on (default 8000; 0 = any free)")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between checks for a new bundle")
    parser.add_argument("--api-prefix", default=contract.API_PREFIX, help="path of the fedhub API on the hub")
    parser.add_argument("--once", action="store_true", help="check once, then keep serving without polling")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s fedhub-edge %(levelname)s %(message)s")
    token = os.environ.get("FEDHUB_EDGE_TOKEN") or os.environ.get("JUPYTERHUB_API_TOKEN", "")
    try:
        agent = EdgeAgent(args.hub, args.name, args.group, args.state_dir, token=token, public_key=args.public_key,
                          host=args.host, port=args.port, api_prefix=args.api_prefix)
        agent.register()
        port = agent.start()
    except (AgentError, contract.ContractError, requests.RequestException, OSError) as exc:
        print(f"fedhub-edge: {exc}", file=sys.stderr)
        return 2
    print(f"fedhub-edge: serving on http://{args.host}:{port}/v2", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.is_set():
        try:
            state = agent.poll_once()
            print(f"fedhub-edge: {state} {agent.state['current'] or ''}".rstrip(), flush=True)
        except (requests.RequestException, contract.ContractError) as exc:
            log.warning("hub unreachable or answered badly: %s", exc)  # keep serving what we have
        if args.once:
            stop.wait()
            break
        stop.wait(args.interval)
    agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
