"""The blocking work of each deployment step, per target (run in worker threads).

Packaging, Kubernetes manifests and edge bundles are built by fedhub.hub.deploy's
packaging, k8s and edge.bundle modules; here they are put where each target serves
them from: the embedded server's repository (one served version at a time, chosen by
the config's version_policy), a site's manifest folder, an edge group's bundle folder.
Each version's config.pbtxt is kept beside the deployment's files, so a rollback serves
the old version with the config it was packaged with.

The embedded server's repository is a folder (the default) or an S3 bucket prefix
(`model_repository = s3://...`, fedhub.hub.deploy.s3repo); `embedded_repository` picks one,
and both offer write / select / remove / discard_version.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from .model_config import CONFIG_FILE, config_to_text, read_config
from .s3repo import S3ModelRepository, is_s3_uri, parse_s3_uri

PROTOCOL_TO_NUMPY = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
                     "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
                     "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}


def package(local: Path, info: dict, model_name: str, version: int, repository: Path, options: dict) -> Path:
    """The downloaded model -> repository/model_name/{config.pbtxt, version/model.onnx}."""
    from .packaging import DEFAULT_MAX_BATCH_SIZE, package_model
    max_batch = options.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE)
    if not isinstance(max_batch, int) or not 0 <= max_batch <= 4096:
        raise ValueError(f"options.max_batch_size must be an integer 0..4096, got {max_batch!r}")
    packaged = package_model(str(local), repository, model_name, version, max_batch_size=max_batch,
                             dynamic_batching=bool(options.get("dynamic_batching", True)))
    return packaged.model_dir


def warm_up() -> None:
    """Import what packaging needs, ahead of the first deployment."""
    import mlflow.models  # noqa: F401
    import mlflow.sklearn  # noqa: F401
    import onnx  # noqa: F401
    from sklearn.linear_model import LogisticRegression

    from .packaging import Tensor, sklearn_to_onnx
    # skl2onnx registers its converters on the first conversion: pay that now, on a toy model
    toy = LogisticRegression().fit(np.array([[0.0, 1.0], [1.0, 0.0]]), [0, 1])
    sklearn_to_onnx(toy, [Tensor("X", "FP32", (-1, 2))])


def _configs_dir(model_dir: Path) -> Path:
    # beside the repository, never inside it: the server sees only what it serves
    return model_dir.parent.parent / "model-configs" / model_dir.name


def write_embedded(staged: Path, model_dir: Path, version: int) -> str:
    """Move a packaged version into the served repository; serve it (and only it) on load."""
    version_dir = model_dir / str(version)
    if version_dir.exists():
        shutil.rmtree(version_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(staged / str(version), version_dir)
    configs = _configs_dir(model_dir)
    configs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(staged / CONFIG_FILE, configs / f"{version}.pbtxt")
    set_served_version(model_dir, version)
    return f"{version_dir}"


def set_served_version(model_dir: Path, version: int) -> str:
    """config.pbtxt := that version's own config, with version_policy { specific [version] }."""
    kept = _configs_dir(model_dir) / f"{version}.pbtxt"
    config = read_config(kept if kept.exists() else model_dir)
    config.name = model_dir.name
    config.version_policy.specific.versions[:] = [version]
    model_dir.mkdir(parents=True, exist_ok=True)
    # atomic: the server may read the config at any moment (a restart, another load)
    tmp = model_dir / f".{CONFIG_FILE}.new"
    tmp.write_text(config_to_text(config))
    os.replace(tmp, model_dir / CONFIG_FILE)
    return f"version {version} selected"


def remove_embedded(model_dir: Path) -> None:
    shutil.rmtree(model_dir, ignore_errors=True)
    shutil.rmtree(_configs_dir(model_dir), ignore_errors=True)


class LocalEmbeddedRepository:
    """The embedded server's repository in a folder on the hub machine."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def __str__(self) -> str:
        return str(self.root)

    def write(self, staged: Path, model: str, version: int) -> str:
        return write_embedded(staged, self.root / model, version)

    def select(self, model: str, version: int) -> str:
        return set_served_version(self.root / model, version)

    def remove(self, model: str) -> None:
        remove_embedded(self.root / model)

    def discard_version(self, model: str, version: int) -> None:
        shutil.rmtree(self.root / model / str(version), ignore_errors=True)


def embedded_repository(uri: str, models_dir: Path):
    """`model_repository` setting -> where embedded deployments are written: s3://... (Triton's
    forms) or a folder ("" = the hub's models folder)."""
    if is_s3_uri(uri):
        return S3ModelRepository.from_uri(uri)
    return LocalEmbeddedRepository(Path(uri) if uri else models_dir)


def sample_inputs(inputs_metadata: list[dict], seed: int = 0) -> list[dict]:
    """KServe v2 JSON input tensors that fit a model's metadata: one row, values in [0, 1)."""
    rng = np.random.default_rng(seed)
    tensors = []
    for t in inputs_metadata:
        shape = [1 if d < 0 else int(d) for d in t["shape"]]
        dtype = t["datatype"]
        if dtype == "BYTES":
            data = ["sample"] * int(np.prod(shape))
        elif dtype == "BOOL":
            data = [bool(x) for x in rng.integers(0, 2, int(np.prod(shape)))]
        else:
            np_type = PROTOCOL_TO_NUMPY.get(dtype, np.float32)
            values = rng.random(int(np.prod(shape))) if np.issubdtype(np_type, np.floating) else \
                rng.integers(0, 10, int(np.prod(shape)))
            data = values.astype(np_type).tolist()
        tensors.append({"name": t["name"], "shape": shape, "datatype": dtype, "data": data})
    return tensors


# ---------------------------------------------------------------- Kubernetes sites
def _site_dir(files: Path, version: int) -> Path:
    return files / "site" / str(version)


def write_site_manifests(record: dict, version: int, staged: Path, files: Path, sites: list[dict],
                         options: dict) -> str:
    """The site's manifests (Triton Deployment + Service, or a KServe InferenceService), with
    the packaged repository beside them, for the operator to apply. When the site reads an
    s3:// repository, the version is also written there (Triton's layout, that version served),
    so the Triton pods find it."""
    from . import k8s
    settings = k8s.settings_from_env()
    out = _site_dir(files, version)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(staged.parent, out / "repository")
    manifests = k8s.deployment_manifests(record, version, out / "repository", options, settings)
    text = _yaml_documents(manifests)
    (out / "manifests.yaml").write_text(text)
    message = f"{len(manifests)} manifest document(s)"
    uri = options.get("model_repository", settings.model_repository)
    if is_s3_uri(uri):
        store = _site_store(uri, settings.s3_endpoint, staged.name)
        (out / SITE_STORE_FILE).write_text(json.dumps({"uri": uri, "s3_endpoint": settings.s3_endpoint}))
        message += f"; {store.write(staged, staged.name, version)}"
    return message


SITE_STORE_FILE = "s3-repository.json"


def _site_store(uri: str, s3_endpoint: str, model_name: str) -> S3ModelRepository:
    """The site's own repository in S3: PREFIX/MODEL, holding MODEL/ (as k8s.py points Triton)."""
    environ = {**os.environ, "FEDHUB_S3_ENDPOINT_URL": s3_endpoint} if s3_endpoint else None
    return S3ModelRepository(parse_s3_uri(uri, environ).child(model_name))


def _site_store_of(files: Path, version: int, model_name: str) -> S3ModelRepository | None:
    kept = _site_dir(files, version) / SITE_STORE_FILE
    if not kept.is_file():
        return None
    where = json.loads(kept.read_text())
    return _site_store(where["uri"], where.get("s3_endpoint", ""), model_name)


def _yaml_documents(objects) -> str:
    import yaml
    return yaml.safe_dump_all(list(objects), sort_keys=False)


def select_site_version(files: Path, version: int, model_name: str = "") -> str:
    if not (_site_dir(files, version) / "manifests.yaml").exists():
        raise FileNotFoundError(f"the manifests of version {version} are gone")
    store = _site_store_of(files, version, model_name) if model_name else None
    if store is not None:  # the Triton pods serve what config.pbtxt in S3 selects
        store.select(model_name, version)
    return f"version {version} selected"


def remove_site(files: Path, model_name: str) -> None:
    """Undeploy: the deployment's objects in the site's S3 repository, if it has one."""
    kept = sorted(files.glob(f"site/*/{SITE_STORE_FILE}"))
    if kept:
        _site_store_of(files, int(kept[-1].parent.name), model_name).remove(model_name)


def read_site_manifests(files: Path, version: int) -> str:
    return (_site_dir(files, version) / "manifests.yaml").read_text()


# ---------------------------------------------------------------- edge groups
def _edge_dir(files: Path, version: int) -> Path:
    return files / "edge" / str(version)


def build_edge_bundle(record: dict, version: int, staged: Path, files: Path, state_dir: Path, work: Path,
                      options: dict) -> str:
    """An int8 bundle signed with the hub's key, kept under the deployment's files."""
    from .edge import bundle
    _dedupe_opsets(staged / str(version) / "model.onnx")
    out = _edge_dir(files, version)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    path = bundle.build_bundle_for_deployment(staged, out, state_dir, record, version, options)
    return f"bundle {Path(path).name}"


def _dedupe_opsets(path: Path) -> None:
    """skl2onnx may list the default opset twice; onnxruntime's quantiser refuses such graphs
    ("Failed to find proper ai.onnx domain"). One entry per domain, the highest version."""
    import onnx
    if not path.is_file():
        return
    model = onnx.load(str(path))
    best: dict[str, int] = {}
    for entry in model.opset_import:
        domain = "" if entry.domain == "ai.onnx" else entry.domain
        best[domain] = max(best.get(domain, 0), entry.version)
    if len(best) == len(model.opset_import):
        return
    del model.opset_import[:]
    for domain, version in best.items():
        model.opset_import.add(domain=domain, version=version)
    onnx.save(model, str(path))


def select_edge_version(files: Path, version: int) -> str:
    if not _edge_dir(files, version).exists():
        raise FileNotFoundError(f"the bundle of version {version} is gone")
    return f"version {version} selected"


def edge_bundle_path(files: Path, version: int) -> Path | None:
    found = sorted(_edge_dir(files, version).glob("*")) if _edge_dir(files, version).exists() else []
    return found[0] if found else None
