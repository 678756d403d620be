"""Slurm backend pieces as pure data: sinfo parsing, inventory, options, batch script."""

import jinja2
import pytest

from fedhub.hub.catalogue import CatalogueError, catalogue_from_dict
from fedhub.spawner.backends.slurm import BATCH_SCRIPT, parse_gres, parse_sinfo, pending_reason
from fedhub.spawner.federation import Federation
from fedhub.spawner.inventory import Allocation
from fedhub.spawner.placement import SessionRequest

SINFO = """\
nodea|3/5/0/8|8000|2048|gpu:a100:4|gpu:a100:2(IDX:0,2)|mixed|
nodeb|0/16/0/16|64000|0|gpu:h100:2,gpu:t4:1|gpu:h100:0(IDX:N/A),gpu:t4:1(IDX:0)|idle|
nodec|0/0/8/8|8000|0|(null)|(null)|drained|
nodea|3/5/0/8|8000|2048|gpu:a100:4|gpu:a100:2(IDX:0,2)|mixed|
noded|8/0/0/8|8000|8000|gpu:a100:4|gpu:a100:4(IDX:0-3)|allocated|
"""


def test_parse_sinfo_reads_cpus_memory_gres_and_used_indices():
    nodes = {n.name: n for n in parse_sinfo(SINFO)}
    assert set(nodes) == {"nodea", "nodeb", "nodec", "noded"}  # duplicate partition rows folded
    a = nodes["nodea"]
    assert (a.cpus, a.cpus_alloc, a.memory, a.memory_alloc) == (8, 3, 8000 * 2**20, 2048 * 2**20)
    assert a.gpus == {"a100": 4} and a.gpus_used == {"a100": {0, 2}}
    assert nodes["nodeb"].gpus == {"h100": 2, "t4": 1} and nodes["nodeb"].gpus_used == {"h100": set(), "t4": {0}}
    assert nodes["noded"].gpus_used == {"a100": {0, 1, 2, 3}}
    assert not nodes["nodec"].usable and nodes["nodea"].usable


def test_parse_gres_reads_types_counts_and_used_indices():
    assert parse_gres("gpu:a100:4,gpu:t4:1", "gpu:a100:3(IDX:0-1,3),gpu:t4:0(IDX:N/A)") == (
        {"a100": 4, "t4": 1}, {"a100": {0, 1, 3}, "t4": set()})
    assert parse_gres("(null)", "(null)") == ({}, {})
    assert parse_gres("gpu:2", "") == ({}, {})  # untyped GPUs are not offered


def backend(tmp_path, **options):
    conf = tmp_path / "slurm.conf"
    conf.write_text("# test\n")
    doc = {"sites": [{"name": "hpc", "kind": "slurm", "options": {"slurm_conf": str(conf), **options}}]}
    return Federation(catalogue_from_dict(doc, "sites.yaml")).backends["hpc"]


def test_inventory_is_slurms_view_plus_fedhubs_jobs_not_yet_placed(tmp_path):
    b = backend(tmp_path)
    assert not b.inventory.up  # until the first poll
    b.note_starting(Allocation("hpc", "nodeb", 2, 10**9, "h100", (0,)))
    b.apply_nodes(parse_sinfo(SINFO))
    inv = b.inventory
    assert set(inv.nodes) == {"nodea", "nodeb", "noded"}  # the drained node is not offered
    assert inv.free_gpus("a100") == 2 and inv.nodes["nodea"].gpu_free["a100"] == {1, 3}
    assert inv.free_gpus("h100") == 1  # one h100 held for the pending fedhub job
    assert inv.nodes["nodeb"].cpus_used == 2
    b.note_settled(b.pending[0])
    b.apply_nodes(parse_sinfo(SINFO))
    assert inv.free_gpus("h100") == 2


def test_pending_reason():
    assert pending_reason("PENDING Resources n/a") == "Resources"
    assert pending_reason("RUNNING None nodea") == "None"
    assert pending_reason("") == ""


@pytest.mark.parametrize("options, message", [
    ({"partitoin": "x"}, "sites.yaml: sites[0].options.partitoin: expected one of the Slurm site options"),
    ({"poll_interval": 0}, "sites.yaml: sites[0].options.poll_interval: expected a positive number of seconds, got 0"),
    ({"hosts": ["a"]}, "sites.yaml: sites[0].options.hosts: expected a map of node name -> address"),
    ({"runtime": 14400}, "sites.yaml: sites[0].options.runtime: expected a Slurm time string in quotes"),
    ({"runtime": "4h"}, "sites.yaml: sites[0].options.runtime: expected a Slurm time limit (MM, MM:SS, HH:MM:SS"),
    ({"runtime": "0"}, "sites.yaml: sites[0].options.runtime: expected a Slurm time limit"),
])
def test_bad_slurm_options_name_the_key(tmp_path, options, message):
    with pytest.raises(CatalogueError) as e:
        backend(tmp_path, **options)
    assert str(e.value).startswith(message), str(e.value)


def test_missing_slurm_conf_is_named(tmp_path):
    doc = {"sites": [{"name": "hpc", "kind": "slurm"}]}
    with pytest.raises(CatalogueError, match=r"sites\[0\].options.slurm_conf: expected the path of the cluster's slurm.conf"):
        Federation(catalogue_from_dict(doc, "sites.yaml"))


def test_overrides_become_a_batch_script_with_gres(tmp_path):
    b = backend(tmp_path, partition="gpu", account="proj1", qos="short", runtime="2:00:00")
    o = b.spawner_overrides(Allocation("hpc", "nodea", 2, 4 * 2**30, "a100", (0, 1)), SessionRequest(gpus=2))
    assert o["req_gres"] == "gpu:a100:2" and o["req_nprocs"] == "2" and o["req_memory"] == "4096M"
    assert "CUDA_VISIBLE_DEVICES" not in o["environment"]  # Slurm sets it from the GRES
    assert o["environment"]["FEDHUB_SITE"] == "hpc"
    script = jinja2.Template(BATCH_SCRIPT).render(
        homedir="/h", username="ann", keepvars="PATH", partition=o["req_partition"], account=o["req_account"],
        qos=o["req_qos"], runtime=o["req_runtime"], memory=o["req_memory"], gres=o["req_gres"],
        nprocs=o["req_nprocs"], srun="srun", cmd="batchspawner-singleuser jupyterhub-singleuser",
        prologue="", epilogue="")
    for line in ("#SBATCH --gres=gpu:a100:2", "#SBATCH --partition=gpu", "#SBATCH --account=proj1",
                 "#SBATCH --qos=short", "#SBATCH --time=2:00:00", "#SBATCH --cpus-per-task=2",
                 "#SBATCH --mem=4096M", "srun batchspawner-singleuser jupyterhub-singleuser"):
        assert line in script
    cpu_only = b.spawner_overrides(Allocation("hpc", "nodea", 2.5, 2**30), SessionRequest())
    assert cpu_only["req_gres"] == "" and cpu_only["req_nprocs"] == "3"  # never fewer CPUs than asked


@pytest.mark.parametrize("runtime, hours", [
    ("90", 1.5), ("30:00", 0.5), ("2:30:00", 2.5), ("1-12", 36), ("1-0:30", 24.5), ("2-00:00:00", 48),
    ("UNLIMITED", None),
])
def test_the_sites_walltime_is_read_from_its_slurm_runtime(tmp_path, runtime, hours):
    """Sessions end (with the expiry warning) before Slurm kills the job at --time."""
    assert backend(tmp_path, runtime=runtime).max_session_hours == hours


def test_the_default_runtime_is_the_walltime_too(tmp_path):
    b = backend(tmp_path)
    o = b.spawner_overrides(Allocation("hpc", "nodea", 1, 2**30), SessionRequest())
    assert o["req_runtime"] == "8:00:00" and b.max_session_hours == 8


def test_a_session_restored_before_the_first_poll_is_kept(tmp_path):
    """Right after a hub restart sinfo has not answered yet (no nodes): the running job's session
    is still fedhub's (listed, its quota charged, its expiry watched); Slurm's view counts it."""
    (tmp_path / "slurm.conf").write_text("# test\n")
    conf = tmp_path / "slurm.conf"
    fed = Federation(catalogue_from_dict({"sites": [
        {"name": "hpc", "kind": "slurm", "options": {"slurm_conf": str(conf)}}]}, "sites.yaml"))
    alloc = Allocation("hpc", "nodea", 1, 2**30, "a100", (0,))
    assert not fed.inventory("hpc").nodes
    assert fed.restore(("rae", ""), alloc, {"status": "running"}) == alloc
    assert ("rae", "") in fed.sessions and fed.inventory("hpc").sessions == 1
    fed.release(("rae", ""))
    assert fed.inventory("hpc").sessions == 0 and not fed.sessions
