"""Edge bundle format: signing on the hub, verification on a device.

A bundle is a zip of three files: `model.onnx`, `manifest.json` (name, version, tensors,
sha256 and size of every other file, provenance, accuracy) and `manifest.sig` (base64
Ed25519 signature of manifest.json's exact bytes, by the hub's key). Verification checks
the signature first, then every checksum, and refuses files the manifest does not list:
a single changed byte anywhere is refused with the reason.

Only the standard library and cryptography: this runs on edge devices.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zipfile
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

FORMAT = "fedhub-edge-bundle/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MODEL = "model.onnx"
BUNDLE_FILES = (MANIFEST, SIGNATURE, MODEL)
MAX_ARCHIVE_ENTRY = 2 * 1024**3  # a zip bomb guard: no model file beyond 2 GiB


class BundleRefused(Exception):
    """The bundle must not be served; `reason` says which check failed."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short fingerprint of the key: the first 16 hex digits of sha256(raw public key)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def load_public_key(pem: str | bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    except ValueError as exc:
        raise ValueError(f"not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def manifest_bytes(manifest: dict) -> bytes:
    return json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"


def sign_directory(directory: Path, manifest: dict, key: Ed25519PrivateKey) -> None:
    """Write manifest.json (with every file's sha256 and size added) and manifest.sig."""
    files = {}
    for path in sorted(directory.iterdir()):
        if path.name not in (MANIFEST, SIGNATURE):
            files[path.name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    data = manifest_bytes({**manifest, "format": FORMAT, "key_id": key_id(key.public_key()), "files": files})
    (directory / MANIFEST).write_bytes(data)
    (directory / SIGNATURE).write_text(base64.b64encode(key.sign(data)).decode() + "\n")


def verify_directory(directory: str | Path, public_key: Ed25519PublicKey) -> dict:
    """The manifest of a bundle directory whose signature and checksums hold; BundleRefused otherwise."""
    directory = Path(directory)
    for name in (MANIFEST, SIGNATURE):
        if not (directory / name).is_file():
            raise BundleRefused(f"{name} is missing")
    data = (directory / MANIFEST).read_bytes()
    try:
        signature = base64.b64decode((directory / SIGNATURE).read_text().strip(), validate=True)
        public_key.verify(signature, data)
    except (InvalidSignature, ValueError):
        raise BundleRefused(f"{SIGNATURE} does not match {MANIFEST} under the hub's key "
                            f"{key_id(public_key)} (altered manifest or another signer)") from None
    manifest = json.loads(data)
    if manifest.get("format") != FORMAT:
        raise BundleRefused(f"{MANIFEST}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    listed = manifest.get("files") or {}
    if MODEL not in listed:
        raise BundleRefused(f"{MANIFEST} does not list {MODEL}")
    for name, entry in listed.items():
        path = directory / name
        if "/" in name or name in (MANIFEST, SIGNATURE) or not path.is_file():
            raise BundleRefused(f"{name}: listed in the manifest but missing")
        actual = sha256_file(path)
        if actual != entry.get("sha256"):
            raise BundleRefused(f"{name}: sha256 {actual[:16]}... does not match the manifest's "
                                f"{str(entry.get('sha256'))[:16]}... (file altered)")
        if path.stat().st_size != entry.get("bytes"):
            raise BundleRefused(f"{name}: {path.stat().st_size} bytes, the manifest says {entry.get('bytes')}")
    extra = sorted(p.name for p in directory.iterdir() if p.name not in listed and p.name not in (MANIFEST, SIGNATURE))
    if extra:
        raise BundleRefused(f"files not listed in the manifest: {', '.join(extra)}")
    return manifest


def pack(directory: Path, archive: Path) -> Path:
    """The bundle directory as one zip (stored, not compressed: ONNX weights barely compress)."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(directory.iterdir()):
            zf.write(path, path.name)
    return archive


def unpack(archive: Path, directory: Path) -> Path:
    """Extract a bundle archive: flat names only, nothing but the bundle's files, bounded sizes."""
    try:
        with zipfile.ZipFile(archive) as zf:
            entries = zf.infolist()
            names = [e.filename for e in entries]
            unexpected = [n for n in names if n not in BUNDLE_FILES]
            if unexpected:
                raise BundleRefused(f"unexpected entries in the archive: {', '.join(unexpected)}")
            if len(set(names)) != len(names):
                raise BundleRefused("the archive holds a file twice")
            if any(e.file_size > MAX_ARCHIVE_ENTRY for e in entries):
                raise BundleRefused("an archive entry is larger than 2 GiB")
            directory.mkdir(parents=True, exist_ok=True)
            for entry in entries:
                (directory / entry.filename).write_bytes(zf.read(entry))
    except zipfile.BadZipFile as exc:
        raise BundleRefused(f"not a bundle archive: {exc}") from None
    return directory
