"""The HTTP contract between the hub's deployment API and `fedhub-edge` agents.

Paths are under the fedhub API (`{hub}/services/fedhub/`); every call carries a hub API token
of the device's owner (`Authorization: token ...`). Payloads are JSON; `check_*` functions
validate them on both sides and raise ContractError naming the field.

    POST {API}/edge/devices                   register   {"name", "group", "platform"?}
                                              -> 200/201 {"name", "group"}
    GET  {API}/edge/groups/{group}/bundle     assignment -> 200 {"bundle_id", "name", "version",
                                                 "url", "sha256", "size"} | 204 nothing assigned
    GET  <url>                                the bundle archive (zip: manifest.json,
                                              manifest.sig, model.onnx), sha256 as announced
    POST {API}/edge/devices/{name}/status     status {"state", "serving", "bundle_id"?, "reason"?,
                                                 "previous"?} -> 204
    GET  {API}/edge/key                       the hub's public key (PEM) that signs bundles

`url` may be absolute or relative to the assignment's URL. Agents pin the key: given on the
command line (`--public-key`) or fetched once and kept in their state dir.
"""

from __future__ import annotations

import re

API_PREFIX = "services/fedhub/api"
REGISTER = "edge/devices"
ASSIGNMENT = "edge/groups/{group}/bundle"
STATUS = "edge/devices/{name}/status"
PUBLIC_KEY = "edge/key"

#: states an agent reports
SERVING = "serving"        # the assigned bundle verified, loaded and serves
REFUSED = "refused"        # signature or checksum failed: the bundle was deleted, not served
LOAD_FAILED = "load-failed"  # verified, but onnxruntime could not load or run it
ROLLED_BACK = "rolled-back"  # the current bundle failed at start: the previous one serves
IDLE = "idle"              # nothing assigned (or nothing loadable) yet
STATES = (SERVING, REFUSED, LOAD_FAILED, ROLLED_BACK, IDLE)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ContractError(ValueError):
    """A payload that does not follow the contract; the message names the field."""


def _require(doc, field: str, kind, where: str):
    if not isinstance(doc, dict):
        raise ContractError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    value = doc.get(field)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ContractError(f"{where}: '{field}' must be a {names}, got {value!r}")
    return value


def check_name(value: str, field: str, where: str) -> str:
    if not isinstance(value, str) or not NAME.match(value):
        raise ContractError(f"{where}: '{field}' must be 1-64 letters, digits, '_', '.', '-', got {value!r}")
    return value


def check_registration(doc) -> dict:
    where = "device registration"
    check_name(_require(doc, "name", str, where), "name", where)
    check_name(_require(doc, "group", str, where), "group", where)
    if "platform" in doc and not isinstance(doc["platform"], dict):
        raise ContractError(f"{where}: 'platform' must be an object")
    return doc


def check_assignment(doc) -> dict:
    where = "bundle assignment"
    _require(doc, "bundle_id", str, where)
    _require(doc, "name", str, where)
    _require(doc, "version", (int, str), where)
    _require(doc, "url", str, where)
    if not SHA256.match(_require(doc, "sha256", str, where)):
        raise ContractError(f"{where}: 'sha256' must be 64 lowercase hex digits")
    if _require(doc, "size", int, where) <= 0:
        raise ContractError(f"{where}: 'size' must be > 0")
    return doc


def check_status(doc) -> dict:
    where = "device status"
    if _require(doc, "state", str, where) not in STATES:
        raise ContractError(f"{where}: 'state' must be one of {', '.join(STATES)}, got {doc['state']!r}")
    if doc.get("serving") is not None and not isinstance(doc["serving"], str):
        raise ContractError(f"{where}: 'serving' must be a bundle id or null")
    for field in ("bundle_id", "reason", "previous"):
        if doc.get(field) is not None and not isinstance(doc[field], str):
            raise ContractError(f"{where}: '{field}' must be a string or null")
    return doc


def assignment_doc(archive, url: str, name: str, version) -> dict:
    """The hub side of `GET edge/groups/{group}/bundle`: the document for a bundle archive.
    The bundle id is derived from the archive's sha256, so a rebuilt bundle is a new id."""
    import hashlib
    from pathlib import Path

    digest = hashlib.sha256(Path(archive).read_bytes()).hexdigest()
    return check_assignment({"bundle_id": f"{digest[:24]}", "name": name, "version": version, "url": url,
                             "sha256": digest, "size": Path(archive).stat().st_size})
