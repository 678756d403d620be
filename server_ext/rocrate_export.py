"""A run as an RO-Crate (https://w3id.org/ro/crate), with the `rocrate` package.

    from fedhub.server_ext.rocrate_export import export_run
    export_run(run_id, "run.zip")      # or a directory

The crate holds:
- the run's captured artifacts (`fedhub/...`: notebook, HTML, script, git diff,
  requirements lock, conda env, inputs manifest) as File data entities, with size and sha256;
  every other artifact too with all_artifacts=True;
- the declared input files as File entities referenced by `file://` URL (not copied:
  the data may not leave its site), with their sha256;
- the run as a CreateAction (`#run-<id>`): name, start/end time, status, agent (the
  MLflow user), location (the fedhub site), instrument (the notebook or script and the
  Python runtime), object (inputs and params as PropertyValues), result (metrics as
  PropertyValues), plus the site/hardware/git tags as additionalProperty;
- software: Python and every package of the lock file as SoftwareApplications
  (`softwareRequirements` of the Python runtime).
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from .capture import ARTIFACT_DIR
from .reproduce import ReproduceError, _client

_FORMATS = {".ipynb": "application/x-ipynb+json", ".py": "text/x-python", ".diff": "text/x-diff",
            ".lock": "text/plain", ".yaml": "application/yaml", ".json": "application/json",
            ".html": "text/html"}


def _iso(ms: int | None) -> str | None:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat() if ms else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in s)


def build_crate(run, artifacts_dir: Path, *, include_all: bool = False):
    """The ROCrate (not yet written) for `run`, whose artifacts were downloaded to artifacts_dir."""
    from rocrate.model.contextentity import ContextEntity
    from rocrate.model.person import Person
    from rocrate.model.softwareapplication import SoftwareApplication
    from rocrate.rocrate import ROCrate

    info, data = run.info, run.data
    tags = data.tags
    crate = ROCrate()
    name = info.run_name or info.run_id
    crate.name = f"MLflow run {name} ({info.run_id})"
    crate.description = (f"Run {info.run_id} of MLflow experiment {info.experiment_id}, exported by fedhub "
                         "with what fedhub.track() captured to reproduce it (`fedhub reproduce "
                         f"{info.run_id}`).")
    crate.datePublished = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    crate.keywords = ["MLflow", "fedhub", "provenance", "reproducibility"]

    def add(entity_id, props):
        return crate.add(ContextEntity(crate, entity_id, properties=props))

    # ---- files
    files = {}
    for path in sorted(p for p in artifacts_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(artifacts_dir).as_posix()
        if not include_all and not rel.startswith(f"{ARTIFACT_DIR}/"):
            continue
        fmt = _FORMATS.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        props = {"name": path.name, "encodingFormat": fmt, "contentSize": str(path.stat().st_size),
                 "sha256": _sha256(path)}
        if path.name in ("notebook.ipynb", "script.py"):
            props["@type"] = ["File", "SoftwareSourceCode"]
            props["programmingLanguage"] = {"@id": "#python"}
        files[rel] = crate.add_file(path, dest_path=rel, properties=props)

    # ---- software: python + packages from the lock file
    python = SoftwareApplication(crate, "#python", properties={
        "name": "Python", "version": tags.get("fedhub.python", ""), "url": {"@id": "https://www.python.org/"}})
    packages = []
    lock = artifacts_dir / ARTIFACT_DIR / "requirements.lock"
    if lock.exists():
        for line in lock.read_text().splitlines():
            pkg, sep, version = line.strip().partition("==")
            if not sep or line.startswith(("#", "-")):
                continue
            packages.append(crate.add(SoftwareApplication(crate, f"#pkg-{_slug(pkg.lower())}", properties={
                "name": pkg, "version": version, "url": {"@id": f"https://pypi.org/project/{pkg}/{version}/"}})))
    if packages:
        python["softwareRequirements"] = packages
    crate.add(python)

    # ---- inputs: referenced where they live, with their checksum
    objects = []
    manifest = artifacts_dir / ARTIFACT_DIR / "inputs.json"
    if manifest.exists():
        for rec in json.loads(manifest.read_text()).get("inputs", []):
            host = tags.get("fedhub.host", "")
            url = Path(rec["abspath"]).as_uri()
            objects.append(crate.add_file(url, properties={
                "name": rec["path"], "sha256": rec.get("sha256"), "contentSize": str(rec.get("size") or ""),
                "description": f"input file declared to fedhub.track(), on host {host}"
                               + (f" (site {tags['fedhub.site']})" if tags.get("fedhub.site") else "")}))
    for k, v in sorted(data.params.items()):
        objects.append(add(f"#param-{_slug(k)}", {"@type": "PropertyValue", "name": k, "value": v,
                                                  "propertyID": f"params.{k}"}))

    # ---- metrics
    results = [add(f"#metric-{_slug(k)}", {"@type": "PropertyValue", "name": k, "value": v,
                                           "propertyID": f"metrics.{k}"})
               for k, v in sorted(data.metrics.items())]

    # ---- the run
    extra = [add(f"#tag-{_slug(k)}", {"@type": "PropertyValue", "name": k, "value": v})
             for k, v in sorted(tags.items()) if k.startswith("fedhub.")]
    status = {"FINISHED": "CompletedActionStatus", "FAILED": "FailedActionStatus",
              "KILLED": "FailedActionStatus"}.get(info.status, "ActiveActionStatus")
    props = {"@type": "CreateAction", "name": f"MLflow run {name}", "identifier": info.run_id,
             "actionStatus": {"@id": f"http://schema.org/{status}"}}
    if _iso(info.start_time):
        props["startTime"] = _iso(info.start_time)
    if _iso(info.end_time):
        props["endTime"] = _iso(info.end_time)
    if tags.get("mlflow.note.content"):
        props["description"] = tags["mlflow.note.content"]
    entry = files.get(f"{ARTIFACT_DIR}/notebook.ipynb") or files.get(f"{ARTIFACT_DIR}/script.py")
    instrument = [e for e in (entry, python) if e is not None]
    if tags.get("fedhub.git.commit"):
        code = {"@type": "SoftwareSourceCode", "name": "source repository", "version": tags["fedhub.git.commit"]}
        if tags.get("fedhub.git.remote"):
            code["codeRepository"] = tags["fedhub.git.remote"]
        instrument.append(add("#source", code))
    action = crate.add_action(instrument, identifier=f"#run-{info.run_id}", object=objects or None,
                              result=results or None, properties=props)
    if extra:
        action["additionalProperty"] = extra
    if tags.get("mlflow.user"):
        action["agent"] = crate.add(Person(crate, f"#user-{_slug(tags['mlflow.user'])}",
                                           properties={"name": tags["mlflow.user"]}))
    if tags.get("fedhub.site"):
        action["location"] = add(f"#site-{_slug(tags['fedhub.site'])}", {
            "@type": "Place", "name": tags["fedhub.site"],
            "description": "fedhub site the run executed on"})
    if tags.get("mlflow.parentRunId"):
        action["isPartOf"] = {"@id": f"#run-{tags['mlflow.parentRunId']}"}
    crate.root_dataset["mentions"] = action
    if entry is not None:
        crate.mainEntity = entry
    return crate


def export_run(run_id: str, dest: str | os.PathLike, *, all_artifacts: bool = False) -> Path:
    """Write the RO-Crate of run_id to `dest`: a .zip file, else a directory. Returns dest."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise ReproduceError(f"no run {run_id!r} in the tracking server", 404) from None
        raise
    dest = Path(dest)
    with tempfile.TemporaryDirectory(prefix="fedhub-crate-") as tmp:
        tmp = Path(tmp)
        top = [f.path for f in client.list_artifacts(run_id)]
        for path in top:
            if all_artifacts or path == ARTIFACT_DIR:
                mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(tmp))
        crate = build_crate(run, tmp, include_all=all_artifacts)
        if dest.suffix == ".zip":
            dest.parent.mkdir(parents=True, exist_ok=True)
            crate.write_zip(dest)
        else:
            crate.write(dest)
    return dest
