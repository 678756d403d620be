"""Placement as pure data: ranking, reasons, ties, full sites, GPU types, refusals."""

from fedhub.spawner.inventory import InventoryError, Node, SiteInventory
from fedhub.spawner.placement import ANY_GPU, SessionRequest, rank_sites

G = 10**9


def site(name, cpus=8, mem=16 * G, gpus=None, nodes=1, **kw):
    inv = SiteInventory(name, **kw)
    for i in range(nodes):
        inv.add_node(Node(f"{name}-n{i}", cpus, mem, gpus))
    return inv


def test_cpu_request_goes_to_the_emptier_site_with_a_reason():
    a, b = site("a"), site("b")
    a.allocate("a-n0", 4, G)
    r = rank_sites(SessionRequest(cpus=1, memory=G), [a, b])
    assert [c.site for c in r.candidates] == ["b", "a"]
    assert r.candidates[0].reason.startswith("most free capacity: 8 of 8 CPUs free")
    assert r.candidates[1].reason.startswith("fallback #1")


def test_ties_keep_catalogue_order():
    r = rank_sites(SessionRequest(), [site("x"), site("y"), site("z")])
    assert [c.site for c in r.candidates] == ["x", "y", "z"]


def test_gpu_type_filters_sites_and_any_picks_the_freest_type():
    a, b = site("a", gpus={"a100": 2}), site("b", gpus={"t4": 4})
    assert [c.site for c in rank_sites(SessionRequest(gpus=1, gpu_type="a100"), [a, b]).candidates] == ["a"]
    r = rank_sites(SessionRequest(gpus=1, gpu_type=ANY_GPU), [a, b])
    assert [(c.site, c.gpu_type) for c in r.candidates] == [("b", "t4"), ("a", "a100")]
    assert "4 of 4 t4 GPUs free" in r.candidates[0].reason


def test_full_site_spills_to_the_other_and_nothing_fits_is_explained():
    a, b = site("a", gpus={"a100": 2}), site("b", gpus={"a100": 1})
    a.allocate("a-n0", 1, G, "a100", 2)
    r = rank_sites(SessionRequest(gpus=1, gpu_type="a100"), [a, b])
    assert [c.site for c in r.candidates] == ["b"]
    assert "at most 0 free on one node" in r.rejected["a"]
    b.allocate("b-n0", 1, G, "a100", 1)
    r = rank_sites(SessionRequest(gpus=1, gpu_type="a100"), [a, b])
    assert not r
    msg = r.refusal(SessionRequest(gpus=1, gpu_type="a100"))
    assert msg.startswith("No site can run 1 CPU, 1G memory, 1 a100 GPU now.")
    assert "a: 1 a100 GPUs requested, at most 0 free on one node (2 in total)" in msg


def test_refusal_names_cpu_memory_and_missing_gpu_type():
    a = site("a", cpus=2, mem=4 * G)
    assert "4 CPUs requested, at most 2 free" in rank_sites(SessionRequest(cpus=4), [a]).rejected["a"]
    assert "8G memory requested, at most 4G free" in rank_sites(SessionRequest(memory=8 * G), [a]).rejected["a"]
    assert rank_sites(SessionRequest(gpus=1, gpu_type="h100"), [a]).rejected["a"] == "has no h100 GPUs"


def test_named_site_only_considers_that_site():
    a, b = site("a"), site("b")
    b.allocate("b-n0", 6, G)
    r = rank_sites(SessionRequest(site="b"), [a, b])
    assert [c.site for c in r.candidates] == ["b"]
    assert r.candidates[0].reason.startswith("the site you asked for")


def test_down_and_max_sessions_sites_are_skipped():
    a, b = site("a", max_sessions=1), site("b")
    a.allocate("a-n0", 1, G)
    b.set_health(False, "controller unreachable")
    r = rank_sites(SessionRequest(), [a, b])
    assert not r
    assert r.rejected == {"a": "full (1 of 1 sessions)", "b": "down (controller unreachable)"}


def test_gpus_are_packed_within_a_site_and_cpu_sessions_avoid_gpu_nodes():
    inv = SiteInventory("s")
    inv.add_node(Node("gpu1", 16, 64 * G, {"a100": 4}))
    inv.add_node(Node("gpu2", 16, 64 * G, {"a100": 4}))
    inv.add_node(Node("cpu", 16, 64 * G))
    inv.allocate("gpu2", 1, G, "a100", 3)
    r = rank_sites(SessionRequest(gpus=1, gpu_type="a100"), [inv])
    assert r.candidates[0].node == "gpu2"  # the node with fewest free GPUs that still fit
    assert rank_sites(SessionRequest(), [inv]).candidates[0].node == "cpu"


def test_allocation_accounting_and_release():
    inv = site("a", gpus={"a100": 4})
    first = inv.allocate("a-n0", 2, 2 * G, "a100", 2)
    assert first.gpu_ids == (0, 1)
    second = inv.allocate("a-n0", 1, G, "a100", 1)
    assert second.gpu_ids == (2,)
    assert inv.free_gpus("a100") == 1
    inv.release(first)
    assert inv.free_gpus("a100") == 3
    assert inv.allocate("a-n0", 1, G, "a100", gpu_ids=(0,)).gpu_ids == (0,)
    try:
        inv.allocate("a-n0", 1, G, "a100", gpu_ids=(2,))
        raise AssertionError("double-booked GPU 2")
    except InventoryError as e:
        assert "taken" in str(e)
    d = inv.to_dict()
    assert d["gpus"][0] == {"type": "a100", "capacity": 4, "used": 2, "free": 2, "max_free_on_a_node": 2}
    assert d["sessions"] == 2


def test_a_site_without_usable_nodes_says_so():
    inv = SiteInventory("empty")
    assert rank_sites(SessionRequest(), [inv]).rejected == {"empty": "no usable nodes (down, drained or not responding)"}
