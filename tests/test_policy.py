"""Governance policy as pure data: grants per group, default grant, GPU quotas, dataset
policies, validation errors naming file/key/expected; and what placement and the spawn
form make of a user's entitlements."""

import pytest
import yaml

from fedhub.hub.catalogue import DEFAULT_CATALOGUE_YAML, catalogue_from_dict
from fedhub.hub.datasets import check_use
from fedhub.hub.policy import PolicyError, QuotaError, check_gpu_quota, load_policy, policy_from_dict
from fedhub.spawner.form import PolicyRefusal, RequestError, parse_request, render_form
from fedhub.spawner.inventory import Node, SiteInventory
from fedhub.spawner.placement import ANY_GPU, SessionRequest, rank_sites

CAT = catalogue_from_dict(yaml.safe_load(DEFAULT_CATALOGUE_YAML), "sites.yaml")
G = 10**9

POLICY_YAML = """
groups:
  vo-example:
    sites: [local-a, local-b]
    gpu_types: [a100]
    max_gpus_per_user: 1
    max_gpus: 2
    datasets: [digits-b]
  vo-other:
    sites: [local-b]
    gpu_types: [t4]
    max_gpus_per_user: 3
default:
  sites: [local-b]
  gpu_types: []
  max_gpus_per_user: 0
datasets:
  - name: digits-a
    title: Digits held at site A
    license: CC-BY-4.0
    locations: [{site: local-a, path: /data/digits}]
    policy: {allowed_groups: [vo-example], purposes: [interactive, federated-training], may_leave_site: false}
  - name: digits-b
    locations: [{site: local-b, path: /data/digits-b}]
    policy: {allowed_groups: [vo-other], purposes: [interactive]}
  - name: open-data
    locations: [{site: local-a, path: /data/open}, {site: local-b, path: /srv/open}]
    policy: {allowed_groups: ['*'], purposes: [interactive, deployment], may_leave_site: true}
"""
POLICY = policy_from_dict(yaml.safe_load(POLICY_YAML), "policy.yaml", CAT)


def inventories():
    out = []
    for s in CAT.sites:
        inv = SiteInventory(s.name)
        inv.add_node(Node(f"{s.name}-n0", s.cpus, s.memory, {g.type: g.count for g in s.gpus}))
        out.append(inv)
    return out


def test_entitlements_are_the_union_of_the_users_granted_groups():
    ent = POLICY.entitlements(["vo-example", "unrelated"])
    assert ent.groups == ("vo-example",) and ent.source == "group vo-example"
    assert ent.sites == {"local-a", "local-b"} and ent.gpu_types == {"a100"}
    both = POLICY.entitlements(["vo-other", "vo-example"])
    assert both.gpu_types == {"a100", "t4"} and both.max_gpus_per_user == 3
    assert both.source == "groups vo-example, vo-other"


def test_users_in_no_granted_group_get_the_configurable_default():
    ent = POLICY.entitlements(["nobody"])
    assert ent.source == "the default grant" and ent.sites == {"local-b"} and not ent.may_use_gpus
    # without a default section: all sites, no GPUs
    bare = policy_from_dict({"groups": {}}, "policy.yaml", CAT).entitlements([])
    assert bare.sites is None and not bare.may_use_gpus


def test_placement_offers_only_granted_sites_and_gpu_types_with_reasons():
    ent = POLICY.entitlements(["vo-other"])
    r = rank_sites(SessionRequest(gpus=1, gpu_type=ANY_GPU, memory=G), inventories(), ent)
    assert [(c.site, c.gpu_type) for c in r.candidates] == [("local-b", "t4")]
    assert r.rejected["local-a"] == "not granted to you (group vo-other)"
    ent = POLICY.entitlements(["vo-example"])
    r = rank_sites(SessionRequest(gpus=1, gpu_type=ANY_GPU, memory=G), inventories(), ent)
    assert [(c.site, c.gpu_type) for c in r.candidates] == [("local-a", "a100")]
    assert r.rejected["local-b"] == "its t4 GPUs are not granted to you (group vo-example)"


def test_placement_puts_a_dataset_session_only_on_sites_holding_it():
    ent = POLICY.entitlements(["vo-example"])
    r = rank_sites(SessionRequest(memory=G, datasets=("digits-a",)), inventories(), ent)
    assert [c.site for c in r.candidates] == ["local-a"]
    assert r.rejected == {"local-b": "does not hold dataset digits-a"}


def test_spawn_form_shows_only_what_the_user_may_use():
    html_example = render_form(CAT, inventories(), policy=POLICY, groups=["vo-example"])
    assert "value='a100'" in html_example and "value='t4'" not in html_example
    assert "value='digits-a'" in html_example and "value='open-data'" in html_example
    assert "value='digits-b'" in html_example  # granted through the group's grant
    assert "GPUs at most 1 at once" in html_example
    html_other = render_form(CAT, inventories(), policy=POLICY, groups=["vo-other"])
    assert "value='t4'" in html_other and "value='a100'" not in html_other
    assert "value='local-a'" not in html_other and "data-site='local-a'" not in html_other
    assert "value='digits-a'" not in html_other
    html_default = render_form(CAT, inventories(), policy=POLICY, groups=[])
    assert 'max="0"' in html_default and "GPU types: none" in html_default


@pytest.mark.parametrize("groups, options, message", [
    (["vo-other"], {"site": "local-a"}, "site: local-a is not granted to you (group vo-other)"),
    (["vo-other"], {"gpus": 1, "gpu_type": "a100"}, "gpu_type: a100 GPUs are not granted to you (group vo-other)"),
    ([], {"gpus": 1}, "gpus: the default grant grants no GPUs"),
    (["vo-other"], {"datasets": ["digits-a"]},
     "datasets: dataset 'digits-a' policy: only groups ['vo-example'] may use it; your groups: ['vo-other']"),
])
def test_requests_outside_the_grants_are_refused_naming_the_policy(groups, options, message):
    with pytest.raises(PolicyRefusal) as e:
        parse_request(options, CAT, POLICY, groups)
    assert str(e.value).startswith(message), str(e.value)


def test_dataset_names_are_checked_and_kept_in_the_request():
    req = parse_request({"datasets": "digits-a, open-data"}, CAT, POLICY, ["vo-example"])
    assert req.datasets == ("digits-a", "open-data") and req.to_dict()["datasets"] == ["digits-a", "open-data"]
    with pytest.raises(RequestError, match="unknown dataset 'nope'"):
        parse_request({"datasets": ["nope"]}, CAT, POLICY, ["vo-example"])
    with pytest.raises(RequestError, match="no dataset catalogue"):
        parse_request({"datasets": ["digits-a"]}, CAT)


def test_gpu_quotas_per_user_and_per_group_are_named_when_refusing():
    groups = ["vo-example"]
    assert check_gpu_quota(POLICY, groups, 1, "a100", 0, {}) == "vo-example"
    with pytest.raises(QuotaError, match=r"GPU quota per user \(group vo-example\): at most 1 GPUs at once; "
                                         r"you hold 1 and asked for 1"):
        check_gpu_quota(POLICY, groups, 1, "a100", 1, {"vo-example": 1})
    with pytest.raises(QuotaError, match="GPU quota of group vo-example: at most 2 GPUs at once for the whole "
                                         "group; 2 in use, 1 asked for"):
        check_gpu_quota(POLICY, groups, 1, "a100", 0, {"vo-example": 2})
    with pytest.raises(QuotaError, match="the default grant grants no GPUs"):
        check_gpu_quota(POLICY, [], 1, ANY_GPU, 0, {})
    assert check_gpu_quota(POLICY, [], 0, ANY_GPU, 0, {}) == ""


def test_dataset_usage_policy_decisions_name_the_policy():
    a, b, open_ = POLICY.datasets
    assert check_use(a, ["vo-example"], "interactive")
    refused = check_use(a, ["vo-example"], "deployment")
    assert not refused and refused.reason == ("dataset 'digits-a' policy: purpose deployment is not allowed "
                                              "(allowed purposes: interactive, federated-training)")
    assert POLICY.may_use(b, ["vo-example"], "interactive")  # through the group's grant
    assert not POLICY.may_use(b, ["vo-example"], "federated-training")
    assert check_use(open_, [], "interactive").reason == "dataset 'open-data' policy: open to every user for interactive"
    assert [d.name for d in POLICY.usable_datasets(["vo-other"], "interactive", "local-b")] == ["digits-b", "open-data"]


def test_jsonld_self_description_carries_locations_and_usage_policy():
    doc = POLICY.dataset("digits-a").jsonld("https://hub.example.org/services/fedhub")
    assert doc["@id"] == "https://hub.example.org/services/fedhub/api/datasets/digits-a"
    assert "gx:DataResource" in doc["@type"] and doc["license"] == "CC-BY-4.0"
    assert doc["dcat:distribution"][0] == {"@type": "dcat:Distribution", "fedhub:site": "local-a",
                                           "dcat:accessURL": "file:///data/digits"}
    perm = doc["odrl:hasPolicy"]["odrl:permission"][0]["odrl:constraint"]
    assert perm[0]["odrl:rightOperand"] == ["interactive", "federated-training"]
    assert perm[1]["odrl:rightOperand"] == ["vo-example"]
    assert doc["odrl:hasPolicy"]["odrl:prohibition"][0]["odrl:action"] == {"@id": "odrl:distribute"}
    assert "odrl:prohibition" not in POLICY.dataset("open-data").jsonld()["odrl:hasPolicy"]


@pytest.mark.parametrize("doc, message", [
    ({"groups": {"g": {"max_gpus": -1}}}, "policy.yaml: groups.g.max_gpus: expected a non-negative integer, got -1"),
    ({"groups": {"g": {"sites": ["mars"]}}},
     "policy.yaml: groups.g.sites: expected site names among ['local-a', 'local-b'], got 'mars'"),
    ({"groups": {"g": {"gpu_types": "a100"}}}, "policy.yaml: groups.g.gpu_types: expected '*' or a list of GPU types"),
    ({"groups": {"g": {"colour": 1}}}, "policy.yaml: groups.g.colour: expected one of the keys"),
    ({"groups": {"g": {"datasets": ["x"]}}}, "policy.yaml: groups.g.datasets: expected dataset names among [], got 'x'"),
    ({"groups": []}, "policy.yaml: groups: expected a mapping of hub group name -> grant, got []"),
    ({"datasets": [{"name": "d", "locations": [{"site": "local-a", "path": "rel"}], "policy": {"allowed_groups": []}}]},
     "policy.yaml: datasets[0].locations[0].path: expected an absolute path on the site, got 'rel'"),
    ({"datasets": [{"name": "d", "locations": [{"site": "x", "path": "/d"}], "policy": {"allowed_groups": []}}]},
     "policy.yaml: datasets[0].locations[0].site: expected a site of the catalogue"),
    ({"datasets": [{"name": "d", "locations": [{"site": "local-a", "path": "/d"}],
                    "policy": {"allowed_groups": ["g"], "purposes": ["selling"]}}]},
     "policy.yaml: datasets[0].policy.purposes: expected a list of purposes among ['interactive', "
     "'federated-training', 'deployment'], got ['selling']"),
    ({"datasets": [{"name": "d", "locations": [{"site": "local-a", "path": "/d"}]}]},
     "policy.yaml: datasets[0].policy: expected a value (required key is missing)"),
])
def test_invalid_policies_name_file_key_and_expectation(doc, message):
    with pytest.raises(PolicyError) as e:
        policy_from_dict(doc, "policy.yaml", CAT)
    assert str(e.value).startswith(message), str(e.value)


def _cat_with_site_datasets(a: list[str], b: list[str] | None = None):
    return catalogue_from_dict({"sites": [
        {"name": "local-a", "kind": "local", "cpus": 4, "memory": "8G", "datasets": a},
        {"name": "local-b", "kind": "local", "cpus": 4, "memory": "8G", "datasets": b or []},
        {"name": "k8s", "kind": "kubernetes"}]}, "sites.yaml")


def _ds(name, *sites, **extra):
    return {"name": name, "locations": [{"site": s, "path": f"/data/{name}", **extra} for s in sites],
            "policy": {"allowed_groups": ["*"]}}


@pytest.mark.parametrize("site_datasets, datasets, message", [
    (["digits"], [], "policy.yaml: datasets: expected a dataset named 'digits', which sites.yaml "
                     "sites[0].datasets lists at site local-a (datasets here: [])"),
    (["digits"], [_ds("digits", "local-b")],
     "policy.yaml: datasets[0].locations: expected a location at site local-a, where sites.yaml "
     "sites[0].datasets lists digits, got ['local-b']"),
    (["digits"], [_ds("digits", "local-a"), _ds("scans", "local-b", "local-a")],
     "policy.yaml: datasets[1].locations[1].site: expected a site whose catalogue entry lists scans "
     "(sites.yaml sites[0].datasets is ['digits']; add scans there or leave that list empty to take it "
     "from the policy), got 'local-a'"),
    ([], [_ds("d", "local-a", pvc="Bad_Claim")],
     "policy.yaml: datasets[0].locations[0].pvc: expected a PersistentVolumeClaim name"),
    ([], [_ds("d", "local-a", pvc="claim")],
     "policy.yaml: datasets[0].locations[0].pvc: expected no pvc: site local-a is a local site"),
])
def test_dataset_locations_and_the_catalogues_site_datasets_must_agree(site_datasets, datasets, message):
    with pytest.raises(PolicyError) as e:
        policy_from_dict({"datasets": datasets}, "policy.yaml", _cat_with_site_datasets(site_datasets))
    assert str(e.value).startswith(message), str(e.value)


def test_the_policy_is_authoritative_and_fills_sites_that_list_no_datasets():
    from fedhub.hub.policy import datasets_at
    cat = _cat_with_site_datasets(["digits"])
    p = policy_from_dict({"datasets": [_ds("digits", "local-a", "local-b"), _ds("scans", "k8s", pvc="scans")]},
                         "policy.yaml", cat)
    assert datasets_at(p, cat.site("local-a")) == ("digits",)     # the catalogue's own list, which agrees
    assert datasets_at(p, cat.site("local-b")) == ("digits",)     # none listed: from the policy
    assert datasets_at(p, cat.site("k8s")) == ("scans",)
    assert datasets_at(None, cat.site("local-b")) == ()
    assert p.dataset("scans").location_at("k8s").pvc == "scans"
    assert p.dataset("scans").jsonld()["dcat:distribution"][0]["dcat:accessURL"] == "pvc://scans/data/scans"


def test_policy_file_loading(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY_YAML)
    assert load_policy(path, CAT).groups.keys() == {"vo-example", "vo-other"}
    path.write_text("groups: [")
    with pytest.raises(PolicyError, match=r"policy.yaml: line 1, column 10: expected valid YAML"):
        load_policy(path, CAT)
    with pytest.raises(PolicyError, match="missing.yaml: groups: expected an existing policy file"):
        load_policy(tmp_path / "missing.yaml")


def _yaml_blocks(doc):
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "docs" / doc).read_text()
    return [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]


def test_docs_examples_load():
    cat = catalogue_from_dict({"sites": [
        {"name": "local", "kind": "local", "cpus": 4, "memory": "8G"},
        {"name": "hpc-a", "kind": "slurm", "gpus": [{"type": "a100", "count": 4}, {"type": "t4", "count": 2}]}]},
        "sites.yaml")
    (policy,) = _yaml_blocks("governance.md")
    p = policy_from_dict(policy, "governance.md", cat)
    assert p.entitlements(["vo-example"]).max_gpus_per_user == 2 and p.dataset("digits-hpc").sites == ("hpc-a",)


def test_identity_docs_example_loads(tmp_path):
    from fedhub.hub.identity import groups_from_claims, load_identity, parse_group_rules
    (doc,) = _yaml_blocks("identity.md")
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    doc["oidc"]["client_secret_file"] = str(secret)
    (tmp_path / "identity.yaml").write_text(yaml.safe_dump(doc))
    settings = load_identity(tmp_path / "identity.yaml")
    assert settings["client_secret"] == "s3cret" and settings["issuer"] == "https://aai.egi.eu/auth/realms/egi"
    rules = parse_group_rules(settings["group_rules"])
    claims = {"eduperson_entitlement": ["urn:mace:egi.eu:group:vo.example.org:role=member#aai.egi.eu",
                                        "urn:mace:egi.eu:group:vo.other.org:role=member#aai.egi.eu",
                                        "urn:mace:egi.eu:group:vo.example.org:role=vm_operator#aai.egi.eu"]}
    assert groups_from_claims(rules, claims) == {"vo-example", "vo-other"}
    assert groups_from_claims(rules, {"eduperson_entitlement": "urn:other"}) == set()
    assert groups_from_claims(rules, {}) == set()
