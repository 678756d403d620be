"""Site catalogue validation: every error names the file, the key path and what was expected."""

import pytest

from fedhub.hub.catalogue import (DEFAULT_CATALOGUE_YAML, CatalogueError, catalogue_from_dict,
                                  load_catalogue, parse_memory)
from fedhub.spawner.federation import load_catalogue_with_overrides, merge_catalogue

GOOD = {"sites": [{"name": "local-a", "kind": "local", "cpus": 4, "memory": "8G",
                   "gpus": [{"type": "a100", "count": 2}]}]}


def test_default_catalogue_is_valid(tmp_path):
    f = tmp_path / "sites.yaml"
    f.write_text(DEFAULT_CATALOGUE_YAML)
    cat = load_catalogue(f)
    assert cat.site_names == ("local-a", "local-b")
    assert cat.gpu_types == ("a100", "t4")
    assert cat.site("local-b").gpus[0].count == 4


@pytest.mark.parametrize("doc, message", [
    ({"sites": [{"name": "a", "kind": "local", "cpus": 1, "memory": "1G"},
                {"name": "b", "kind": "local", "cpus": 1, "memory": "1G", "gpus": [{"type": "t4", "count": -2}]}]},
     "sites.yaml: sites[1].gpus[0].count: expected a positive integer, got -2"),
    ({"sites": [{"name": "a", "kind": "cloud", "cpus": 1, "memory": "1G"}]},
     "sites.yaml: sites[0].kind: expected one of ['local', 'slurm', 'kubernetes'], got 'cloud'"),
    ({"sites": [{"name": "a", "kind": "local", "cpus": 1, "memory": "lots"}]},
     "sites.yaml: sites[0].memory: expected a memory size"),
    ({"sites": [{"name": "a", "kind": "local", "memory": "1G"}]},
     "sites.yaml: sites[0].cpus: expected a value (required key is missing for local sites)"),
    ({"sites": [{"name": "Bad Name", "kind": "local", "cpus": 1, "memory": "1G"}]},
     "sites.yaml: sites[0].name: expected a name of lower-case letters"),
    ({"sites": [{"name": "a", "kind": "local", "cpus": 1, "memory": "1G"},
                {"name": "a", "kind": "local", "cpus": 1, "memory": "1G"}]},
     "sites.yaml: sites[1].name: expected a site name not used by an earlier site, got 'a'"),
    ({"sites": [{"name": "a", "kind": "local", "cpus": 1, "memory": "1G", "gpu": []}]},
     "sites.yaml: sites[0].gpu: expected one of the keys"),
    ({"sites": []}, "sites.yaml: sites: expected a non-empty list of sites, got []"),
    ({"sites": [{"name": "a", "kind": "local", "cpus": 0, "memory": "1G"}]},
     "sites.yaml: sites[0].cpus: expected a positive number, got 0"),
    ({"sites": [{"name": "a", "kind": "local", "cpus": 1, "memory": "1G", "gpus": [{"type": "any", "count": 1}]}]},
     "sites.yaml: sites[0].gpus[0].type: expected a GPU type name other than the reserved words"),
    ({"sites": GOOD["sites"], "limits": {"max_gpus": True}},
     "sites.yaml: limits.max_gpus: expected a positive integer, got True"),
    (["not", "a", "mapping"], "sites.yaml: : expected a mapping"),
])
def test_broken_catalogues_name_file_key_and_expectation(doc, message):
    with pytest.raises(CatalogueError) as e:
        catalogue_from_dict(doc, "sites.yaml")
    assert str(e.value).startswith(message), str(e.value)


def test_bad_yaml_and_missing_file(tmp_path):
    f = tmp_path / "sites.yaml"
    f.write_text("sites:\n  - name: a\n   kind: local\n")
    with pytest.raises(CatalogueError, match=r"sites.yaml: line \d+, column \d+: expected valid YAML"):
        load_catalogue(f)
    with pytest.raises(CatalogueError, match="expected an existing catalogue file"):
        load_catalogue(tmp_path / "nope.yaml")
    f.write_text("")
    with pytest.raises(CatalogueError, match="the file is empty"):
        load_catalogue(f)


def test_memory_sizes():
    assert parse_memory("16G") == 16 * 10**9
    assert parse_memory("512Mi") == 512 * 2**20
    assert parse_memory(1024) == 1024
    for bad in ("-1G", "0", "abc", True, 0):
        with pytest.raises(ValueError):
            parse_memory(bad)


def test_config_overrides_merge_sites_by_name(tmp_path):
    f = tmp_path / "sites.yaml"
    f.write_text(DEFAULT_CATALOGUE_YAML)
    cat = load_catalogue_with_overrides(str(f), {"sites": [
        {"name": "local-b", "gpus": [{"type": "t4", "count": 1}]},
        {"name": "extra", "kind": "local", "cpus": 2, "memory": "2G"}]})
    assert cat.site("local-b").gpus[0].count == 1
    assert cat.site("local-a").gpus[0].type == "a100"  # untouched
    assert cat.site_names == ("local-a", "local-b", "extra")
    merged = merge_catalogue({"limits": {"max_gpus": 4, "max_cpus": 2}}, {"limits": {"max_gpus": 1}})
    assert merged["limits"] == {"max_gpus": 1, "max_cpus": 2}
    with pytest.raises(CatalogueError, match=r"sites.yaml \+ FederatedSpawner.catalogue: sites\[0\].cpus"):
        load_catalogue_with_overrides(str(f), {"sites": [{"name": "local-a", "cpus": -1}]})
