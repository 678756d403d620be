"""The example Flower app and prepare_app() under a real Flower deployment.

One SuperLink + 2 SuperNodes (Flower's own processes, loopback) serve the module. The
runs (the unmodified app; the app behind the shim with int8; with top-k + error
feedback) are submitted together and run concurrently: SuperNodes idle-poll every 3 s and
start a ClientApp process per message, so runs cost tens of seconds each.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest

from fedhub.hub.federation import example_app
from fedhub.hub.federation.apps import prepare_app
from flower_harness import FlowerDeployment, partitions

ROUNDS = 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{name: (FlowerRun, traffic, events)} for each run; all run side by side."""
    root = tmp_path_factory.mktemp("flower")
    shared_events = root / "superlink-events.jsonl"   # via $FEDHUB_FL_EVENTS on the SuperLink
    topk_events = root / "topk-events.jsonl"          # via the spec's events_path
    apps = {
        "plain": example_app("digits"),
        "int8": prepare_app(example_app("digits"), root / "app-int8", {"compression": "int8"}),
        "topk": prepare_app(example_app("digits"), root / "app-topk",
                            {"compression": "topk", "topk_fraction": 0.2,  # both directions
                             "topk_value_bits": 8, "events_path": str(topk_events)}),
    }
    with FlowerDeployment(root, node_configs=partitions(2),
                          superlink_env={"FEDHUB_FL_EVENTS": str(shared_events)}) as flower:
        ids = flower.submit_many({name: (app, {"num-server-rounds": ROUNDS}) for name, app in apps.items()})
        finished = flower.wait_all(list(ids.values()), timeout=300)
        results = {name: finished[run_id] for name, run_id in ids.items()}
        traffic = {name: finished[run_id].details["network-traffic"] for name, run_id in ids.items()}

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
        if name == "topk":  # the server sends each node a sparse delta against what it holds
            assert evaluate["bytes_sent"] < evaluate["raw_bytes_sent"] / 5
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


# ----------------------------------------------------------------------------- no deployment
def _tree(path):
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


def test_is_flower_app_accepts_the_example_and_says_why_not_otherwise(tmp_path):
    from fedhub.hub.federation.apps import is_flower_app

    assert is_flower_app(example_app("digits")) == (True, "")
    assert is_flower_app(tmp_path / "missing") == (False, f"{tmp_path / 'missing'}: not a directory")
    ok, reason = is_flower_app(tmp_path)
    assert not ok and "no pyproject.toml" in reason
    cases = {
        "broken = [": "not valid TOML",
        '[project]\nname = "x"\nversion = "1.0"\n': "Missing [tool.flwr.app] section",
        '[project]\nname = "x"\nversion = "1.0"\n[tool.flwr.app]\npublisher = "me"\n':
            "Missing [tool.flwr.app.components] section",
        '[project]\nname = "x"\nversion = "1.0"\n[tool.flwr.app]\npublisher = "me"\n'
        '[tool.flwr.app.components]\nserverapp = "srv:app"\n': 'Property "clientapp" missing',
        '[project]\nname = "x"\nversion = "1.0"\n[tool.flwr.app]\npublisher = "me"\n'
        '[tool.flwr.app.components]\nserverapp = "srv"\nclientapp = "cli:app"\n':
            "serverapp must be 'module:attribute', got 'srv'",
        '[project]\nname = "x"\nversion = "1.0"\n[tool.flwr.app]\npublisher = "me"\n'
        '[tool.flwr.app.components]\nserverapp = "srv:app"\nclientapp = "pkg.cli:app"\n':
            "serverapp = 'srv:app', but its module is not in",
    }
    for text, expected in cases.items():
        (tmp_path / "pyproject.toml").write_text(text)
        ok, reason = is_flower_app(tmp_path)
        assert not ok and expected in reason and str(tmp_path / "pyproject.toml") in reason, (text, reason)


@pytest.mark.parametrize("spec, message", [
    ({"compression": "gzip"}, "spec.compression: expected 'none', 'int8' or 'topk', got 'gzip'"),
    ({"compresion": "int8"}, "spec: unknown key(s) ['compresion']"),
    ({"compression": "topk", "topk_fraction": 0}, "spec.topk_fraction: expected a number in (0, 1], got 0"),
    ({"compression": "topk", "topk_fraction": "0.1"}, "spec.topk_fraction: expected a number in (0, 1]"),
    ({"compression": "topk", "topk_value_bits": 16}, "spec.topk_value_bits: expected 8 or 32, got 16"),
    ({"compression": "int8", "downlink": "zip"}, "spec.downlink: expected 'none', 'int8', 'topk' or null"),
    ({"downlink": "int8"}, "spec.downlink: expected 'none' or null when spec.compression is 'none'"),
    ({"events_path": 3}, "spec.events_path: expected a file path string or null, got 3"),
])
def test_prepare_app_rejects_a_bad_spec_naming_the_key(tmp_path, spec, message):
    with pytest.raises(ValueError) as err:
        prepare_app(example_app("digits"), tmp_path / "out", spec)
    assert message in str(err.value)
    assert not (tmp_path / "out").exists()


def test_prepare_app_copies_the_app_and_only_rewires_its_components(tmp_path):
    import tomllib

    from fedhub.hub.federation.apps import is_flower_app

    src = tmp_path / "app"
    shutil.copytree(example_app("digits"), src)
    # a user who narrowed what goes into the FAB
    text = (src / "pyproject.toml").read_text().replace(
        '[tool.flwr.app]\npublisher = "fedhub"\n',
        '[tool.flwr.app]\npublisher = "fedhub"\nfab-include = ["digits_app/*.py", "pyproject.toml"]\n')
    (src / "pyproject.toml").write_text(text)
    before = _tree(src)

    dest = prepare_app(src, tmp_path / "prepared", {"compression": "topk", "topk_fraction": 0.25})
    assert _tree(src) == before  # the user's app is never edited
    after = _tree(dest)
    for name, data in before.items():
        if name != "pyproject.toml":
            assert after[name] == data, name
    assert {n for n in after if n.startswith("_fedhub_shim/")} == {
        "_fedhub_shim/__init__.py", "_fedhub_shim/compression.py", "_fedhub_shim/shim.py",
        "_fedhub_shim/server.py", "_fedhub_shim/client.py"}
    config = tomllib.loads(after["pyproject.toml"].decode())
    original = tomllib.loads(before["pyproject.toml"].decode())
    app = config["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "_fedhub_shim.server:app",
                                 "clientapp": "_fedhub_shim.client:app"}
    assert app["fab-include"] == ["digits_app/*.py", "pyproject.toml", "_fedhub_shim/*.py"]
    assert app["config"] == original["tool"]["flwr"]["app"]["config"]
    assert config["project"] == original["project"]
    server = after["_fedhub_shim/server.py"].decode()
    assert "'digits_app.server_app:app'" in server and '"topk_fraction": 0.25' in server
    assert "'digits_app.client_app:app'" in after["_fedhub_shim/client.py"].decode()
    assert is_flower_app(dest) == (True, "")
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        prepare_app(src, dest, {})
    with pytest.raises(ValueError, match="already contains _fedhub_shim"):
        prepare_app(dest, tmp_path / "twice", {})


def test_event_log_never_raises(tmp_path):
    from fedhub.hub.federation.shim import EventLog

    log = EventLog(str(tmp_path))  # a directory: every write fails
    log.write({"event": "round"})
    log.write({"event": "round"})
    good = EventLog(str(tmp_path / "e.jsonl"), run_id="42")
    good.write({"event": "round", "round": 1})
    line = json.loads((tmp_path / "e.jsonl").read_text())
    assert line["run_id"] == "42" and line["event"] == "round" and line["round"] == 1
    assert isinstance(line["time"], float)


def test_weighted_aggregate_is_fedavg_style():
    from fedhub.hub.federation.shim import weighted_aggregate

    out = weighted_aggregate([{"accuracy": 0.5, "loss": 1.0, "num-examples": 100},
                              {"accuracy": 1.0, "loss": 3.0, "num-examples": 300}])
    assert out == {"accuracy": pytest.approx(0.875), "loss": pytest.approx(2.5), "num-examples": 400}
    assert weighted_aggregate([{"accuracy": 0.5}, {"accuracy": 1.0}]) == {"accuracy": 0.75}
    assert weighted_aggregate([]) == {}


def test_digits_app_data_comes_from_the_node_config(tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.syspath_prepend(str(example_app("digits")))
    from digits_app import task

    # partition-id / num-partitions: disjoint IID slices of the non-holdout digits
    parts = [task.load_node_data({"partition-id": i, "num-partitions": 3}) for i in range(3)]
    x_test, _ = task.load_test_set()
    assert sum(len(y) for _, y in parts) + len(x_test) == 1797
    rows = {row.tobytes() for x, _ in parts for row in x}
    assert not rows & {row.tobytes() for row in x_test}
    with pytest.raises(ValueError, match=r"partition-id must be in \[0, 2\), got 2"):
        task.load_node_data({"partition-id": 2, "num-partitions": 2})
    # data-path: a site-held .npz with x (pixels 0-16) and y
    x = np.random.default_rng(0).integers(0, 17, (30, 64))
    y = np.arange(30) % 10
    np.savez(tmp_path / "site.npz", x=x, y=y)
    got_x, got_y = task.load_node_data({"data-path": str(tmp_path / "site.npz"), "partition-id": 0})
    np.testing.assert_allclose(got_x, x / 16.0)
    np.testing.assert_array_equal(got_y, y)
    np.savez(tmp_path / "bad.npz", features=x)
    with pytest.raises(ValueError, match="expected arrays 'x' and 'y', found \\['features'\\]"):
        task.load_node_data({"data-path": str(tmp_path / "bad.npz")})
