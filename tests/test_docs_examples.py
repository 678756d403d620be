"""The catalogues shown in the docs are what the code accepts, and the errors they quote are the code's.

- docs/examples/federation.yaml passes the schema check, has the sites and kinds the docs describe,
  and every site's options pass its backend's checks (the files it names replaced by stand-ins).
- Every ```yaml block with a top-level `sites:` key in docs/catalogue.md and docs/site-operators.md loads with
  catalogue_from_dict, except the blocks marked with a preceding `<!-- invalid example -->`. Those are skipped by
  that check; they must fail instead, with the message the docs print right after them.
"""

from __future__ import annotations

import copy
import re
import textwrap
from pathlib import Path

import jinja2
import pytest
import yaml

from fedhub.hub.catalogue import DEFAULT_CATALOGUE_YAML, CatalogueError, catalogue_from_dict, load_catalogue
from fedhub.spawner.backends.slurm import BATCH_SCRIPT
from fedhub.spawner.federation import Federation
from fedhub.spawner.inventory import Allocation
from fedhub.spawner.placement import SessionRequest

DOCS = Path(__file__).resolve().parents[1] / "docs"
EXAMPLE = DOCS / "examples" / "federation.yaml"
GUIDES = ("catalogue.md", "site-operators.md")
INVALID = "<!-- invalid example -->"
G = 10**9

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)


def fenced_blocks(name: str) -> list[dict]:
    """Every fenced block of a doc: language, body (dedented), line, whether marked invalid, the text after it."""
    text = (DOCS / name).read_text()
    blocks = []
    for m in _FENCE.finditer(text):
        blocks.append({
            "doc": name, "lang": m.group("lang"), "line": text.count("\n", 0, m.start()) + 1,
            "body": textwrap.dedent(m.group("body")),
            "invalid": text[:m.start()].rstrip().endswith(INVALID),
            "start": m.start(), "end": m.end(),
        })
    for block, following in zip(blocks, blocks[1:] + [None]):
        # the plain block right after a marked example holds its message
        gap = text[block["end"]:following["start"]] if following else "x"
        block["message"] = following["body"].strip() if (following and not following["lang"]
                                                         and not gap.strip()) else None
    return blocks


def catalogue_blocks() -> list[dict]:
    return [b for name in GUIDES for b in fenced_blocks(name)
            if b["lang"] == "yaml" and re.search(r"^sites:", b["body"], re.M)]


def block_id(block: dict) -> str:
    return f"{block['doc']}:{block['line']}"


VALID = [b for b in catalogue_blocks() if not b["invalid"]]
MARKED = [b for b in catalogue_blocks() if b["invalid"]]


def with_stand_ins(doc: dict, tmp_path: Path) -> dict:
    """The catalogue with the hub-side files its options name (slurm.conf, JWT, kubeconfig) replaced by stand-ins."""
    doc = copy.deepcopy(doc)
    for site in doc["sites"]:
        options = site.get("options") or {}
        if site["kind"] == "slurm" and "slurm_conf" in options:
            conf = tmp_path / f"{site['name']}.slurm.conf"
            conf.write_text("# stand-in\n")
            options["slurm_conf"] = str(conf)
        if site["kind"] == "slurm" and "jwt_file" in options:
            jwt = tmp_path / f"{site['name']}.jwt"
            jwt.write_text("stand-in-token\n")
            options["jwt_file"] = str(jwt)
        if site["kind"] == "kubernetes" and "kubeconfig" in options:
            kubeconfig = tmp_path / f"{site['name']}.kubeconfig"
            kubeconfig.write_text(yaml.safe_dump({"contexts": [{"name": options.get("context") or "default"}]}))
            options["kubeconfig"] = str(kubeconfig)
    return doc


# ---------------------------------------------------------------- docs/examples/federation.yaml


def test_the_federation_example_passes_the_schema_with_every_kind_of_site():
    cat = load_catalogue(EXAMPLE)
    assert [(s.name, s.kind) for s in cat.sites] == [
        ("hub-local", "local"), ("hpc-north", "slurm"), ("hpc-south", "slurm"), ("hpc-east", "slurm"),
        ("cloud-gpu", "kubernetes")]
    assert cat.gpu_types == ("a100", "t4")
    slurm = [s for s in cat.sites if s.kind == "slurm"]
    # one site per cluster: the sinfo poller is per slurm.conf
    by_conf = [s.options["slurm_conf"] for s in slurm if "slurm_conf" in s.options]
    assert len(set(by_conf)) == len(by_conf) == 2
    # an unquoted 4:00:00 would reach Slurm as 14400 (minutes)
    assert all(isinstance(s.options["runtime"], str) for s in slurm if "runtime" in s.options)
    assert cat.site("hpc-north").options["runtime"] == "4:00:00"
    assert cat.site("hub-local").cpus == 8 and cat.site("hub-local").memory == 32 * G
    assert cat.limits.max_gpus == 4 and cat.defaults.memory == 4 * G


def test_the_federation_example_options_pass_each_backends_checks(tmp_path):
    doc = with_stand_ins(yaml.safe_load(EXAMPLE.read_text()), tmp_path)
    fed = Federation(catalogue_from_dict(doc, "federation.yaml"))
    assert {name: type(b).__name__ for name, b in fed.backends.items()} == {
        "hub-local": "LocalBackend", "hpc-north": "SlurmBackend", "hpc-south": "SlurmBackend",
        "hpc-east": "SlurmRestBackend", "cloud-gpu": "KubernetesBackend"}
    assert fed.backends["hpc-north"].start_timeout == 180
    assert fed.backends["hpc-south"].poll_interval == 10
    assert fed.backends["cloud-gpu"].options.gpu_products == {"a100": "NVIDIA-A100-SXM4-80GB", "t4": "Tesla-T4"}


# ---------------------------------------------------------------- yaml blocks in the guides


def test_the_guides_have_catalogue_examples_of_both_sorts():
    assert len(VALID) >= 5 and len(MARKED) >= 15
    for name in GUIDES:
        text = (DOCS / name).read_text()
        marked_here = [b for b in MARKED if b["doc"] == name]
        # every marker sits right before a catalogue block, so none is skipped by mistake
        assert text.count(INVALID) == len(marked_here), f"{name}: a {INVALID} marker not followed by a catalogue"


@pytest.mark.parametrize("block", VALID, ids=block_id)
def test_catalogue_examples_load(block):
    catalogue_from_dict(yaml.safe_load(block["body"]), "sites.yaml")


@pytest.mark.parametrize("block", VALID, ids=block_id)
def test_catalogue_examples_options_pass_each_backends_checks(block, tmp_path):
    doc = with_stand_ins(yaml.safe_load(block["body"]), tmp_path)
    Federation(catalogue_from_dict(doc, "sites.yaml"))


@pytest.mark.parametrize("block", MARKED, ids=block_id)
def test_invalid_examples_fail_with_the_message_the_docs_quote(block, tmp_path):
    path = tmp_path / "sites.yaml"
    path.write_text(block["body"])
    with pytest.raises(CatalogueError) as e:
        Federation(load_catalogue(path))  # the schema first, then each site's options, as at hub start
    if block["message"] is not None:
        assert str(e.value) == block["message"]


# ---------------------------------------------------------------- other output the guides quote


def test_catalogue_md_quotes_the_default_catalogue_fedhub_up_writes():
    first = next(b for b in fenced_blocks("catalogue.md") if b["lang"] == "yaml")
    assert first["body"] == DEFAULT_CATALOGUE_YAML


def test_catalogue_md_quotes_the_file_errors(tmp_path):
    text = (DOCS / "catalogue.md").read_text()
    empty = tmp_path / "sites.yaml"
    empty.write_text("")
    for path in (empty, Path("/srv/fedhub/missing.yaml")):
        with pytest.raises(CatalogueError) as e:
            load_catalogue(path)
        assert f"\n{e.value}\n" in text


def slurm_example() -> dict:
    section = (DOCS / "site-operators.md").read_text().split("\n## Slurm sites\n", 1)[1].split("\n## ", 1)[0]
    return yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))


def test_the_slurm_guide_quotes_the_hub_start_error_of_its_example(tmp_path):
    doc = with_stand_ins(slurm_example(), tmp_path)
    options = doc["sites"][1]["options"]
    options["partiton"] = options.pop("partition")
    with pytest.raises(CatalogueError) as e:
        Federation(catalogue_from_dict(doc, "sites.yaml"))
    assert f"\nfedhub: invalid site catalogue: {e.value}\n" in (DOCS / "site-operators.md").read_text()


def test_the_slurm_guide_shows_the_batch_script_of_its_example(tmp_path):
    fed = Federation(catalogue_from_dict(with_stand_ins(slurm_example(), tmp_path), "sites.yaml"))
    o = fed.backends["hpc-north"].spawner_overrides(
        Allocation("hpc-north", "gpu001", 4.0, 16 * G, "a100", (0, 1)),
        SessionRequest(cpus=4, memory=16 * G, gpus=2, gpu_type="a100"))
    script = jinja2.Template(BATCH_SCRIPT).render(
        homedir="<data_dir>/homes/alice", username="alice", keepvars="<the session's environment variable names>",
        partition=o["req_partition"], account=o["req_account"], qos=o["req_qos"], runtime=o["req_runtime"],
        memory=o["req_memory"], gres=o["req_gres"], nprocs=o["req_nprocs"], srun="srun",
        cmd="batchspawner-singleuser <venv>/bin/jupyterhub-singleuser", prologue="", epilogue="")
    shown = [b["body"] for b in fenced_blocks("site-operators.md") if b["body"].startswith("#!/bin/bash\n")]
    assert shown == [script.rstrip("\n") + "\n"]
