"""The example Flower app and prepare_app() under a real Flower deployment.

One SuperLink + 2 SuperNodes (Flower's own processes, loopback) serve the module. The
three runs (the unmodified app; the app behind the shim with int8; with top-k + error
feedback) are submitted together and run concurrently: SuperNodes idle-poll every 3 s and
start a ClientApp process per message, so runs cost tens of seconds each.
"""

from __future__ import annotations

import json
import re

import pytest

from fedhub.hub.federation import example_app
from fedhub.hub.federation.apps import prepare_app
from flower_harness import FlowerDeployment, partitions

ROUNDS = 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{name: (FlowerRun, traffic, events)} for plain, int8 and topk, run side by side."""
    root = tmp_path_factory.mktemp("flower")
    shared_events = root / "superlink-events.jsonl"   # via $FEDHUB_FL_EVENTS on the SuperLink
    topk_events = root / "topk-events.jsonl"          # via the spec's events_path
    apps = {
        "plain": example_app("digits"),
        "int8": prepare_app(example_app("digits"), root / "app-int8", {"compression": "int8"}),
        "topk": prepare_app(example_app("digits"), root / "app-topk",
                            {"compression": "topk", "downlink": "topk", "topk_fraction": 0.2,
                             "topk_value_bits": 8, "events_path": str(topk_events)}),
    }
    with FlowerDeployment(root, node_configs=partitions(2),
                          superlink_env={"FEDHUB_FL_EVENTS": str(shared_events)}) as flower:
        ids = {name: flower.submit(app, {"num-server-rounds": ROUNDS}) for name, app in apps.items()}
        results = {name: flower.wait(run_id, timeout=240) for name, run_id in ids.items()}
        traffic = {name: flower.traffic(run_id) for name, run_id in ids.items()}

    def events(path, run_id):
        lines = path.read_text().splitlines() if path.exists() else []
        return [e for e in map(json.loads, lines) if e["run_id"] == str(run_id)]

    return {
        "plain": (results["plain"], traffic["plain"], events(shared_events, ids["plain"])),
        "int8": (results["int8"], traffic["int8"], events(shared_events, ids["int8"])),
        "topk": (results["topk"], traffic["topk"], events(topk_events, ids["topk"])),
    }


def _server_accuracies(logs: str) -> list[float]:
    """Centralized accuracies the ServerApp logged: before round 1, then after each round."""
    initial = re.findall(r"Initial global evaluation results: \{[^}]*'accuracy': ([0-9.]+)", logs)
    after = re.findall(r"Global evaluation\s*\n.*?MetricRecord: \{[^}]*'accuracy': ([0-9.]+)", logs)
    return [float(a) for a in initial + after]


def _final_accuracy(logs: str) -> float:
    final = re.search(rf"digits: final test accuracy ([0-9.]+) after round {ROUNDS}", logs)
    assert final, logs[-3000:]
    return float(final.group(1))


def test_digits_app_runs_unmodified_under_plain_flower(runs):
    run, traffic, events = runs["plain"]
    assert run.status == "finished:completed", run.logs[-3000:]
    # both sites trained and evaluated in every round
    assert run.logs.count("aggregate_train: Received 2 results and 0 failures") == ROUNDS, run.logs
    assert run.logs.count("aggregate_evaluate: Received 2 results and 0 failures") == ROUNDS
    assert _final_accuracy(run.logs) >= 0.88
    # the untrained model is at chance; the global model improves with the rounds
    accuracies = _server_accuracies(run.logs)
    assert len(accuracies) == ROUNDS + 1 and accuracies[0] < 0.3 < accuracies[1] <= accuracies[2] + 0.02
    assert traffic["total-bytes"] == traffic["inbound-bytes"] + traffic["outbound-bytes"] > 0
    assert events == []  # no shim, no events: the app really ran unmodified


@pytest.mark.parametrize("name", ["int8", "topk"])
def test_compressed_runs_complete_with_per_round_events(runs, name):
    run, traffic, events = runs[name]
    assert run.status == "finished:completed", run.logs[-3000:]
    assert run.logs.count("aggregate_train: Received 2 results and 0 failures") == ROUNDS, run.logs
    assert _final_accuracy(run.logs) >= 0.85
    assert events[0]["event"] == "start" and events[0]["spec"]["compression"] == name
    assert events[-1] == {**events[-1], "event": "end", "ok": True}
    rounds = [e for e in events if e["event"] == "round"]
    for r in range(1, ROUNDS + 1):
        train = [e for e in rounds if e["round"] == r and e["phase"] == "train"]
        evaluate = [e for e in rounds if e["round"] == r and e["phase"] == "evaluate"]
        server = [e for e in rounds if e["round"] == r and e["phase"] == "server-evaluate"]
        assert len(train) == len(evaluate) == len(server) == 1, rounds
        train, evaluate = train[0], evaluate[0]
        assert len(train["nodes"]) == 2 and train["failures"] == 0
        for node in train["nodes"]:
            # every node's own metrics and the bytes of its ArrayRecords, both ways
            assert set(node["metrics"]) >= {"loss", "accuracy", "num-examples"}
            assert 0 < node["bytes_sent"] < node["raw_bytes_sent"] / 3
            assert 0 < node["bytes_received"] < node["raw_bytes_received"] / 3
        # FedAvg-style aggregate: weighted by num-examples
        nodes = train["nodes"]
        n = [x["metrics"]["num-examples"] for x in nodes]
        expected = sum(k * x["metrics"]["accuracy"] for k, x in zip(n, nodes)) / sum(n)
        assert train["aggregate"]["accuracy"] == pytest.approx(expected)
        assert train["aggregate"]["num-examples"] == sum(n)
        assert 0.5 < evaluate["aggregate"]["accuracy"] <= 1.0
        assert evaluate["bytes_received"] == 0 < evaluate["bytes_sent"]  # metrics only back
        # the server-side evaluation the app logs is the one in the events
        assert server[0]["aggregate"]["accuracy"] == pytest.approx(_server_accuracies(run.logs)[r])


def test_compression_lowers_the_bytes_flower_counts(runs):
    plain = runs["plain"][1]["total-bytes"]
    for name in ("int8", "topk"):
        assert runs[name][1]["total-bytes"] < plain / 2, (name, runs[name][1], plain)
        # and the payload the shim reports shrinks at least 3x
        rounds = [e for e in runs[name][2] if e.get("phase") in ("train", "evaluate")]
        sent = sum(e["bytes_sent"] + e["bytes_received"] for e in rounds)
        raw = sum(e["raw_bytes_sent"] + e["raw_bytes_received"] for e in rounds)
        assert sent * 3 < raw, (name, sent, raw)
