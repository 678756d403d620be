"""Usage accounting: CPU-/GPU-hours from session intervals (pure), and through the real hub:
two short real sessions (one with a GPU) give intervals that bracket what the test saw,
GET /api/usage (own; admins everyone's and ?user=; others refused) and `fedhub usage`."""

import json
import subprocess
import sys
import time

import pytest

from conftest import wait_for
from fedhub.hub.accounting import Interval, UsageBook, UsageRecorder, summarise


def iv(user, site, cpus, gpus, start, end, n=0):
    return Interval(f"{user}/@{n}", user, site, cpus, gpus, "a100" if gpus else None, start, end)


def test_summary_sums_per_user_and_site():
    ivs = [iv("ann", "a", 2, 1, 0, 3600), iv("ann", "b", 1, 0, 100, 1900, 1),
           iv("bob", "a", 4, 2, 0, None, 2)]
    s = summarise(ivs, now=1800)
    ann = s["users"]["ann"]
    assert ann["sites"]["a"] == {"cpu_hours": 2.0, "gpu_hours": 1.0, "sessions": 1}
    assert ann["sites"]["b"] == {"cpu_hours": 0.5, "gpu_hours": 0.0, "sessions": 1}
    assert (ann["cpu_hours"], ann["gpu_hours"], ann["sessions"]) == (2.5, 1.0, 2)
    assert s["users"]["bob"]["cpu_hours"] == 2.0 and s["users"]["bob"]["gpu_hours"] == 1.0  # open: up to now
    assert list(summarise(ivs, now=1800, user="bob")["users"]) == ["bob"]


class FakeSnapshotStore:
    """A named fake of the inventory snapshot file (the real one is exercised below)."""

    def __init__(self):
        self.data = {"updated": 0, "sessions": []}

    def read(self):
        return self.data


def test_recorder_persists_intervals_and_ends_them_at_release(tmp_path):
    store, book = FakeSnapshotStore(), UsageBook(tmp_path)
    sess = {"user": "ann", "server_name": "", "site": "a", "cpus": 2, "gpu_ids": [0], "since": 10.0,
            "status": "running"}
    store.data = {"updated": 11.0, "sessions": [sess]}
    assert UsageRecorder(store, book).poll() == 1
    store.data = {"updated": 70.0, "sessions": [],  # later writes do not move the end: the release's stamp
                  "released": [{"user": "ann", "server_name": "", "since": 10.0, "ended": 64.5}]}
    rec = UsageRecorder(store, book)  # a restarted service picks up the open interval from disk
    assert rec.poll() == 1 and rec.poll() == 0
    [got] = book.intervals()
    assert (got.start, got.end, got.cpus, got.gpus) == (10.0, 64.5, 2.0, 1)
    with book.path.open("a") as f:
        f.write('{"event": "st')  # a torn line is ignored
    assert len(book.intervals()) == 1


@pytest.mark.hub
def test_usage_matches_real_sessions(hub_factory):
    hub = hub_factory(args=("--no-mlflow", "--admin", "acc-boss")).start()
    toks = {u: hub.create_user(u) for u in ("acc-ann", "acc-bob", "acc-boss")}
    assert hub.api("GET", "/users/acc-boss").json()["admin"] is True
    seen = {}
    for user, opts in (("acc-ann", {"cpus": 2, "gpus": 1, "gpu_type": "a100"}), ("acc-bob", {})):
        t0 = time.time()
        r = hub.spawn(user, **opts)
        assert r.status_code in (201, 202), r.text
        hub.wait_ready(user)
        t1 = time.time()
        seen[user] = [t0, t1]
    # the API service polls the hub's snapshot every 2 s: wait until it has seen both sessions
    wait_for(lambda: len(hub.fedhub_api("/usage", toks["acc-boss"]).json()["intervals"]) == 2,
             timeout=30, what="both sessions in /usage")
    for user in seen:
        t2 = time.time()
        hub.stop_server(user)
        seen[user] += [t2, time.time()]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ivs = hub.fedhub_api("/usage", toks["acc-boss"]).json()["intervals"]
        if len(ivs) == 2 and all(x["end"] is not None for x in ivs):
            break
        time.sleep(0.5)
    mine = hub.fedhub_api("/usage", toks["acc-ann"]).json()
    assert list(mine["users"]) == ["acc-ann"]
    [ann] = mine["intervals"]
    t0, t1, t2, t3 = seen["acc-ann"]
    assert t0 <= ann["start"] <= t1 and t2 <= ann["end"] <= t3, (ann, seen)
    secs = ann["end"] - ann["start"]
    u = mine["users"]["acc-ann"]
    assert (ann["cpus"], ann["gpus"]) == (2.0, 1)
    assert u["cpu_hours"] == pytest.approx(2 * secs / 3600, rel=1e-9)
    assert u["gpu_hours"] == pytest.approx(secs / 3600, rel=1e-9)
    assert list(u["sites"]) == [ann["site"]]

    r = hub.fedhub_api("/usage?user=acc-ann", toks["acc-bob"])
    assert r.status_code == 403 and "only admins" in r.json()["message"]
    every = hub.fedhub_api("/usage", toks["acc-boss"]).json()
    assert set(every["users"]) == {"acc-ann", "acc-bob"}
    bob = every["users"]["acc-bob"]
    [bob_iv] = [x for x in every["intervals"] if x["user"] == "acc-bob"]
    assert bob["gpu_hours"] == 0 and bob["cpu_hours"] == pytest.approx(
        bob_iv["cpus"] * (bob_iv["end"] - bob_iv["start"]) / 3600, rel=1e-9)
    assert list(hub.fedhub_api("/usage?user=acc-bob", toks["acc-boss"]).json()["users"]) == ["acc-bob"]

    out = subprocess.run([sys.executable, "-m", "fedhub.server_ext.cli", "--hub", hub.url, "--token",
                          toks["acc-ann"], "usage"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"{u['cpu_hours']:.4f}" in out.stdout and ann["site"] in out.stdout
    out = subprocess.run([sys.executable, "-m", "fedhub.server_ext.cli", "--hub", hub.url, "--token",
                          toks["acc-bob"], "usage", "--user", "acc-ann"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "403" in out.stderr
    assert json.loads(subprocess.run([sys.executable, "-m", "fedhub.server_ext.cli", "--hub", hub.url, "--token",
                                      toks["acc-boss"], "usage", "--json"], capture_output=True, text=True,
                                     timeout=60).stdout)["users"].keys() == {"acc-ann", "acc-bob"}
