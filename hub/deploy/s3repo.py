"""Triton model repositories in an S3-compatible store (boto3).

The layout is Triton's own, so a real `tritonserver --model-repository=s3://...` loads it:

    s3://BUCKET/PREFIX/MODEL/config.pbtxt
    s3://BUCKET/PREFIX/MODEL/VERSION/model.onnx (or model.py)

plus, per version written by fedhub, `MODEL/VERSION/.fedhub-version.json` (written last: the
files' sizes and SHA-256, and the config that version was packaged with, for rollbacks).
Triton skips hidden files; the embedded server uses it to check a copy is complete.

Repository URIs take Triton's forms: `s3://bucket/prefix` (AWS S3), `s3://host:port/bucket/prefix`
(an S3-compatible server over HTTP) and `s3://https://host:port/bucket/prefix`. The endpoint may
also come from $FEDHUB_S3_ENDPOINT_URL, $AWS_ENDPOINT_URL_S3 or $AWS_ENDPOINT_URL. Keys come only
from the environment (boto3's credential chain: $AWS_ACCESS_KEY_ID, $AWS_SECRET_ACCESS_KEY...),
never from a URI or a settings file.

Every S3 failure becomes an `S3RepositoryError` whose message says what went wrong in words
(no such bucket, access denied, endpoint not answering), for a failed deployment step.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from .model_config import CONFIG_FILE, ModelConfigError, config_to_text, parse_config

VERSION_MANIFEST = ".fedhub-version.json"
ENDPOINT_ENV = ("FEDHUB_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
# what a process that reads or writes an S3 repository needs from the hub's environment
S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
          "AWS_REGION", "AWS_CA_BUNDLE", *ENDPOINT_ENV)
TRITON_S3_URI = re.compile(r"^s3://(?:(?P<scheme>https?)://)?(?:(?P<host>[A-Za-z0-9.\-]+):(?P<port>\d+)/)?"
                           r"(?P<bucket>[^/]*)(?:/(?P<prefix>.*))?$")
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
MODEL_DIR = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


class S3RepositoryError(Exception):
    """An S3 repository that cannot be used; the message is the reason, in words."""


class ModelNotInStore(S3RepositoryError):
    """No object under MODEL/ in the repository."""


def is_s3_uri(uri) -> bool:
    return isinstance(uri, str) and uri.startswith("s3://")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str = ""          # no leading or trailing '/'
    endpoint_url: str = ""    # http(s)://host:port of an S3-compatible server; "" = AWS S3

    def key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p and p.strip("/"))

    def child(self, *parts: str) -> "S3Location":
        return replace(self, prefix=self.key(*parts))

    def triton_uri(self) -> str:
        """The location as tritonserver's --model-repository takes it (endpoint in the path)."""
        path = "/".join(p for p in (self.bucket, self.prefix) if p)
        if not self.endpoint_url:
            return f"s3://{path}"
        url = urlsplit(self.endpoint_url)
        port = url.port or (443 if url.scheme == "https" else 80)
        scheme = "https://" if url.scheme == "https" else ""
        return f"s3://{scheme}{url.hostname}:{port}/{path}"

    def __str__(self) -> str:
        return f"s3://{'/'.join(p for p in (self.bucket, self.prefix) if p)}" + (
            f" at {self.endpoint_url}" if self.endpoint_url else "")


def parse_s3_uri(uri: str, environ=None, setting: str = "model_repository") -> S3Location:
    """`s3://[http(s)://host:port/]bucket[/prefix]` -> S3Location; errors name `setting`."""
    environ = os.environ if environ is None else environ
    if not is_s3_uri(uri):
        raise S3RepositoryError(f"{setting}: expected s3://bucket/prefix, got {uri!r}")
    if "@" in re.sub(r"^https?://", "", uri[len("s3://"):]).split("/", 1)[0]:
        raise S3RepositoryError(f"{setting}: the URI holds credentials; give keys only in the environment "
                                "($AWS_ACCESS_KEY_ID, $AWS_SECRET_ACCESS_KEY) or a Kubernetes Secret")
    match = TRITON_S3_URI.match(uri)
    if not match:
        raise S3RepositoryError(f"{setting}: {uri!r} is not s3://bucket/prefix, s3://host:port/bucket/prefix "
                                "or s3://https://host:port/bucket/prefix")
    bucket, prefix = match["bucket"], (match["prefix"] or "").strip("/")
    if not BUCKET_NAME.match(bucket or ""):
        raise S3RepositoryError(f"{setting}: {bucket!r} in {uri!r} is not a valid bucket name "
                                "(3-63 lowercase letters, digits, '.' and '-')")
    if ".." in prefix.split("/"):
        raise S3RepositoryError(f"{setting}: the prefix of {uri!r} may not contain '..'")
    if match["host"]:
        endpoint = f"{match['scheme'] or 'http'}://{match['host']}:{match['port']}"
    else:
        endpoint = next((environ[k] for k in ENDPOINT_ENV if environ.get(k)), "").rstrip("/")
        if endpoint and urlsplit(endpoint).scheme not in ("http", "https"):
            raise S3RepositoryError(f"${next(k for k in ENDPOINT_ENV if environ.get(k))}: expected "
                                    f"http(s)://host[:port], got {endpoint!r}")
    return S3Location(bucket, prefix, endpoint)


def explain(exc: Exception, location: S3Location, action: str) -> S3RepositoryError:
    """A boto3/botocore error -> what went wrong, in words, naming the bucket or endpoint."""
    from botocore import exceptions as bx
    where = location.endpoint_url or "AWS S3"
    if isinstance(exc, S3RepositoryError):
        return exc
    cause = exc.__cause__ or exc.__context__
    if not isinstance(exc, bx.BotoCoreError) and isinstance(cause, (bx.BotoCoreError, bx.ClientError)):
        exc = cause  # boto3's transfers wrap the error that says what happened (S3UploadFailedError)
    if isinstance(exc, bx.NoCredentialsError):
        return S3RepositoryError(f"{action}: no S3 credentials; set $AWS_ACCESS_KEY_ID and "
                                 "$AWS_SECRET_ACCESS_KEY in the environment")
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError,
                        bx.ConnectionClosedError)):
        return S3RepositoryError(f"{action}: the S3 endpoint {where} does not answer ({exc})")
    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        code, message = str(error.get("Code", "")), error.get("Message", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return S3RepositoryError(f"{action}: bucket '{location.bucket}' does not exist at {where}")
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403",
                    "ExpiredToken", "InvalidToken") or status == 403:
            return S3RepositoryError(f"{action}: access denied to s3://{location.bucket}/{location.prefix} "
                                     f"at {where} ({code}: {message}); check the S3 credentials in the "
                                     "environment")
        return S3RepositoryError(f"{action}: S3 error {code or status} from {where}: {message}")
    if isinstance(exc, bx.BotoCoreError):
        return S3RepositoryError(f"{action}: {type(exc).__name__}: {exc}")
    return S3RepositoryError(f"{action}: {type(exc).__name__}: {exc}")


def _file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class S3ModelRepository:
    """One Triton model repository in S3: what the deployment manager writes (write, select,
    remove) and what the embedded server reads (model_names, sync). Thread-safe."""

    def __init__(self, location: S3Location):
        self.location = location
        self._client = None
        self._lock = threading.Lock()

    @classmethod
    def from_uri(cls, uri: str, environ=None, setting: str = "model_repository") -> "S3ModelRepository":
        return cls(parse_s3_uri(uri, environ, setting))

    def __str__(self) -> str:
        return str(self.location)

    # ------------------------------------------------------------------ plumbing
    @property
    def client(self):
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config
                # fail fast when the endpoint is down: a deployment step waits on this
                config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 2, "mode": "standard"},
                                s3={"addressing_style": "path"} if self.location.endpoint_url else None)
                self._client = boto3.session.Session().client(
                    "s3", endpoint_url=self.location.endpoint_url or None, config=config)
            return self._client

    @contextlib.contextmanager
    def _errors(self, action: str):
        try:
            yield
        except S3RepositoryError:
            raise
        except Exception as exc:
            raise explain(exc, self.location, action) from None

    def _objects(self, *parts: str) -> list[dict]:
        """Every object under PREFIX/parts/ (Key relative to that folder, Size, ETag)."""
        folder = self.location.key(*parts) + "/" if self.location.key(*parts) else ""
        found = []
        with self._errors(f"listing s3://{self.location.bucket}/{folder}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.location.bucket, Prefix=folder):
                for obj in page.get("Contents", []):
                    found.append({"Key": obj["Key"][len(folder):], "Size": obj["Size"],
                                  "ETag": obj.get("ETag", "").strip('"')})
        return found

    def _put(self, key: str, body: bytes) -> None:
        with self._errors(f"writing s3://{self.location.bucket}/{key}"):
            self.client.put_object(Bucket=self.location.bucket, Key=key, Body=body)

    def _get(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError
        with self._errors(f"reading s3://{self.location.bucket}/{key}"):
            try:
                return self.client.get_object(Bucket=self.location.bucket, Key=key)["Body"].read()
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise

    def _delete(self, *parts: str) -> int:
        folder = self.location.key(*parts) + "/"
        keys = [folder + o["Key"] for o in self._objects(*parts)]  # as listed: "1/" markers too
        with self._errors(f"deleting s3://{self.location.bucket}/{self.location.key(*parts)}/"):
            for start in range(0, len(keys), 1000):
                self.client.delete_objects(Bucket=self.location.bucket, Delete={
                    "Objects": [{"Key": k} for k in keys[start:start + 1000]], "Quiet": True})
        return len(keys)

    # ------------------------------------------------------------------ writer (deployment manager)
    def write(self, staged: Path, model: str, version: int) -> str:
        """Upload a packaged version (staged/VERSION/* and staged/config.pbtxt), manifest last,
        then serve it: config.pbtxt := its config with version_policy { specific [version] }."""
        version_dir = Path(staged) / str(version)
        files = sorted(p for p in version_dir.rglob("*") if p.is_file())
        manifest = {"version": version, "files": {}, "config": (Path(staged) / CONFIG_FILE).read_text()}
        for path in files:
            relative = path.relative_to(version_dir).as_posix()
            key = self.location.key(model, str(version), relative)
            with self._errors(f"writing s3://{self.location.bucket}/{key}"):
                self.client.upload_file(str(path), self.location.bucket, key)
            manifest["files"][relative] = {"size": path.stat().st_size, "sha256": _file_digest(path, "sha256")}
        self._put(self.location.key(model, str(version), VERSION_MANIFEST),
                  json.dumps(manifest, indent=1).encode())
        self.select(model, version)
        return f"{len(files) + 2} objects in {self.location.child(model).triton_uri()}"

    def select(self, model: str, version: int) -> str:
        """Serve `version` (rollback): its own config, with version_policy { specific [version] }."""
        raw = self._get(self.location.key(model, str(version), VERSION_MANIFEST))
        if raw is None:
            raise S3RepositoryError(f"version {version} of {model} is not in {self.location.child(model)}")
        config = parse_config(json.loads(raw)["config"], f"{model}/{version}/{VERSION_MANIFEST}")
        config.name = model
        config.version_policy.specific.versions[:] = [version]
        self._put(self.location.key(model, CONFIG_FILE), config_to_text(config).encode())  # one PUT: atomic
        return f"version {version} selected"

    def remove(self, model: str) -> str:
        return f"{self._delete(model)} objects removed"

    def discard_version(self, model: str, version: int) -> None:
        self._delete(model, str(version))

    # ------------------------------------------------------------------ reader (embedded server)
    def model_names(self) -> list[str]:
        folder = self.location.key() + "/" if self.location.key() else ""
        names = []
        with self._errors(f"listing {self.location}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.location.bucket, Prefix=folder, Delimiter="/"):
                for common in page.get("CommonPrefixes", []):
                    name = common["Prefix"][len(folder):].strip("/")
                    if MODEL_DIR.match(name) and not name.startswith("."):
                        names.append(name)
        return sorted(names)

    def sync(self, model: str, dest: Path, served_versions) -> Path:
        """Copy MODEL/ to dest (the config, and the version folders `served_versions(config,
        available)` picks), reusing cached files whose MD5 matches the ETag, and check the copy
        is complete (every listed object, its size; fedhub's manifests: every file, its SHA-256)
        before it replaces dest."""
        # folder markers ("1/") and keys that would leave the model's folder are no model files
        objects = [o for o in self._objects(model)
                   if o["Key"] and not o["Key"].endswith("/") and ".." not in o["Key"].split("/")]
        if not objects:
            raise ModelNotInStore(f"no model '{model}' in {self.location}")
        by_key = {o["Key"]: o for o in objects}
        available = sorted({int(k.split("/", 1)[0]) for k in by_key if k.split("/", 1)[0].isdigit() and "/" in k})
        wanted = set(available)
        if CONFIG_FILE in by_key:
            try:
                config = parse_config(self._get(self.location.key(model, CONFIG_FILE)).decode(), CONFIG_FILE)
                wanted = set(served_versions(config, available))
            except (ModelConfigError, UnicodeDecodeError, AttributeError):
                pass  # copy everything: the loader reports the bad config with its line
        keys = [k for k in by_key if "/" not in k or (k.split("/", 1)[0].isdigit()
                                                      and int(k.split("/", 1)[0]) in wanted)]
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{model}.sync-", dir=dest.parent))
        try:
            for key in keys:
                self._fetch(model, key, by_key[key], dest / key, staging / key)
            self._verify(model, staging, {k: by_key[k] for k in keys})
            old = dest.parent / f".{model}.old-{os.getpid()}-{threading.get_ident()}"
            if dest.exists():
                os.replace(dest, old)
            os.replace(staging, dest)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return dest

    def _fetch(self, model: str, key: str, obj: dict, cached: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        etag = obj["ETag"]
        plain_md5 = re.fullmatch(r"[0-9a-f]{32}", etag) is not None
        if plain_md5 and cached.is_file() and cached.stat().st_size == obj["Size"] \
                and _file_digest(cached, "md5") == etag:
            shutil.copy2(cached, target)  # unchanged since the last load
            return
        full = self.location.key(model, key)
        with self._errors(f"reading s3://{self.location.bucket}/{full}"):
            self.client.download_file(self.location.bucket, full, str(target))

    def _verify(self, model: str, copy: Path, objects: dict[str, dict]) -> None:
        where = self.location.child(model)
        for key, obj in objects.items():
            path = copy / key
            size = path.stat().st_size if path.is_file() else None
            if size != obj["Size"]:
                raise S3RepositoryError(f"{where}/{key}: copied {size} of {obj['Size']} bytes")
        # contents: botocore checks each download against the object's checksum when it has one;
        # fedhub's versions are also checked against the SHA-256 they were written with. (An ETag
        # is not always an MD5, e.g. with SSE-KMS: it only decides whether a cached file is reused.)
        for manifest_path in copy.glob(f"*/{VERSION_MANIFEST}"):
            version_dir = manifest_path.parent
            try:
                files = json.loads(manifest_path.read_text())["files"]
            except (ValueError, KeyError) as exc:
                raise S3RepositoryError(f"{where}/{version_dir.name}/{VERSION_MANIFEST}: unreadable ({exc})") from None
            for relative, expected in files.items():
                path = version_dir / relative
                if not path.is_file():
                    raise S3RepositoryError(f"{where}/{version_dir.name}: {relative} is missing (an "
                                            "incomplete upload?)")
                if path.stat().st_size != expected["size"] or _file_digest(path, "sha256") != expected["sha256"]:
                    raise S3RepositoryError(f"{where}/{version_dir.name}/{relative}: differs from what "
                                            "was deployed (size or SHA-256)")
