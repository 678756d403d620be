"""The example Flower app under a real Flower deployment (SuperLink + 2 SuperNodes + flwr run).

One deployment serves the whole module: SuperNodes idle-poll every 3 s and every message
starts a ClientApp process, so each run costs tens of seconds; few rounds keep it short.
"""

from __future__ import annotations

import re

import pytest

from fedhub.hub.federation import example_app
from flower_harness import FlowerDeployment, partitions


@pytest.fixture(scope="module")
def flower(tmp_path_factory):
    with FlowerDeployment(tmp_path_factory.mktemp("flower"), node_configs=partitions(2)) as dep:
        yield dep


def _server_accuracies(logs: str) -> list[float]:
    """Centralized accuracies the ServerApp logged: before round 1, then after each round."""
    initial = re.findall(r"Initial global evaluation results: \{[^}]*'accuracy': ([0-9.]+)", logs)
    after = re.findall(r"Global evaluation\s*\n.*?MetricRecord: \{[^}]*'accuracy': ([0-9.]+)", logs)
    return [float(a) for a in initial + after]


def test_digits_app_runs_unmodified_under_plain_flower(flower):
    run = flower.run(example_app("digits"), run_config={"num-server-rounds": 2})
    assert run.status == "finished:completed", run.logs[-3000:]
    # both sites trained and evaluated in both rounds
    assert run.logs.count("aggregate_train: Received 2 results and 0 failures") == 2, run.logs
    assert run.logs.count("aggregate_evaluate: Received 2 results and 0 failures") == 2
    final = re.search(r"digits: final test accuracy ([0-9.]+) after round 2", run.logs)
    assert final, run.logs[-3000:]
    assert float(final.group(1)) >= 0.88
    # the untrained model is at chance; the global model improves with the rounds
    accuracies = _server_accuracies(run.logs)
    assert len(accuracies) == 3 and accuracies[0] < 0.3 < accuracies[1] <= accuracies[2] + 0.02
    traffic = flower.traffic(run.run_id)
    assert traffic["total-bytes"] == traffic["inbound-bytes"] + traffic["outbound-bytes"] > 0
