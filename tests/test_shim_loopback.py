"""The shim's codec logic in one process, without a Flower transport.

`LoopbackGrid` is a test double of Flower's Grid (named as such): it hands each message
straight to the shim's ClientApp in this process and returns the reply, so paths the real
deployment tests (test_flower_app.py) do not reach quickly can be checked in milliseconds:
the push/pull API, a node that lost its state, reconstruction of full weights from deltas.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedhub.hub.federation.shim import CodecGrid, EventLog, ShimClientApp


class LoopbackGrid(Grid):
    """Test double: delivers messages to an in-process ClientApp per node."""

    def __init__(self, client_app, nodes=(11, 22)):
        self.client_app = client_app
        self.contexts = {n: Context(1, n, {}, RecordDict(), {}) for n in nodes}
        self._ids = itertools.count()
        self._replies: dict[str, Message] = {}

    def set_run(self, run):
        pass

    @property
    def run(self):
        return None

    def create_message(self, *args, **kwargs):
        raise NotImplementedError

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = message_id = f"m{next(self._ids)}"
            try:
                reply = self.client_app(msg, self.contexts[msg.metadata.dst_node_id])
            except Exception as exc:  # what a SuperNode does: an error reply, state not kept
                from flwr.app import Error
                reply = Message(Error(code=0, reason=str(exc)), reply_to=msg)
            reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
            reply.metadata.__dict__["_reply_to_message_id"] = message_id
            self._replies[message_id] = reply
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids):
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages, *, timeout=None):
        return self.pull_messages(self.push_messages(messages))


def _user_client_app(step: float):
    """A user ClientApp: adds `step` to every float weight (ints untouched)."""
    app = ClientApp()

    @app.train()
    def train(msg, context):
        arrays = {k: a.numpy() for k, a in msg.content["arrays"].items()}
        trained = {k: (v + step).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in arrays.items()}
        return Message(RecordDict({
            "arrays": ArrayRecord({k: Array(v) for k, v in trained.items()}),
            "metrics": MetricRecord({"num-examples": 10, "loss": 1.0}),
        }), reply_to=msg)

    return app


def _train_messages(grid, weights, server_round):
    record = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in weights.items()}),
                         "config": ConfigRecord({"server-round": server_round})})
    return [Message(content=record, message_type="train", dst_node_id=n) for n in grid.get_node_ids()]


def _arrays(message):
    return {k: a.numpy() for k, a in message.content["arrays"].items()}


@pytest.fixture(autouse=True)
def task_identity():
    """Message() reads the process's task identity (set by Flower's runtimes); restored after."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.mark.parametrize("spec, atol", [
    ({"compression": "int8"}, 0.02),                      # 8-bit weights both ways
    ({"compression": "topk", "topk_fraction": 1.0}, 1e-5),  # keeps everything: exact deltas
])
def test_push_pull_api_gives_the_strategy_full_weights(tmp_path, spec, atol):
    rng = np.random.default_rng(0)
    weights = {"w": rng.standard_normal((40, 10)).astype(np.float32), "b": np.zeros(10, np.float32),
               "steps": np.arange(3, dtype=np.int64)}
    inner = LoopbackGrid(ShimClientApp(_user_client_app(step=0.5)))
    grid = CodecGrid(inner, spec, EventLog(str(tmp_path / "events.jsonl"), "1"))
    for server_round in (1, 2, 3):
        ids = grid.push_messages(_train_messages(grid, weights, server_round))
        replies = list(grid.pull_messages(ids))
        assert len(replies) == 2 and not any(r.has_error() for r in replies)
        for reply in replies:
            got = _arrays(reply)
            assert {k: (v.dtype, v.shape) for k, v in got.items()} == \
                {k: (v.dtype, v.shape) for k, v in weights.items()}
            np.testing.assert_array_equal(got["steps"], weights["steps"])
            np.testing.assert_allclose(got["w"], weights["w"] + 0.5, atol=atol)
            np.testing.assert_allclose(got["b"], weights["b"] + 0.5, atol=atol)
        weights = _arrays(replies[0])
    events = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["round"] for e in events] == [1, 2, 3] and all(e["phase"] == "train" for e in events)
    assert all(e["aggregate"] == {"loss": 1.0, "num-examples": 20} for e in events)


def test_topk_deltas_with_error_feedback_deliver_the_whole_update_over_rounds(tmp_path):
    """Each round the user adds 0.5 everywhere; with 10 % top-k both ways an entry is sent
    about every 10th round, carrying what piled up. Error feedback keeps that lag bounded
    (about step / fraction) instead of growing: plain top-k would never move 90 % of the
    entries (error 0.5 * rounds)."""
    rng = np.random.default_rng(1)
    start = rng.standard_normal(200).astype(np.float32)
    inner = LoopbackGrid(ShimClientApp(_user_client_app(step=0.5)), nodes=(11,))
    grid = CodecGrid(inner, {"compression": "topk", "topk_fraction": 0.1}, EventLog(None))
    weights, lag = {"w": start}, {}
    for server_round in range(1, 61):
        (reply,) = grid.send_and_receive(_train_messages(grid, weights, server_round))
        weights = _arrays(reply)
        lag[server_round] = np.abs(weights["w"] - (start + 0.5 * server_round))
    assert lag[60].max() <= 0.5 / 0.1 + 1e-3  # bounded by step / fraction
    assert lag[60].mean() <= lag[30].mean() + 0.5  # not growing with the rounds
    assert lag[60].mean() < 0.1 * (0.5 * 60)  # plain top-k: 0.9 * 30 on average


def test_a_node_that_lost_its_model_gets_full_weights_again(tmp_path):
    rng = np.random.default_rng(2)
    weights = {"w": rng.standard_normal(100).astype(np.float32)}
    inner = LoopbackGrid(ShimClientApp(_user_client_app(step=0.0)), nodes=(11,))
    grid = CodecGrid(inner, {"compression": "topk", "topk_fraction": 0.2},
                     EventLog(str(tmp_path / "events.jsonl"), "1"))
    (reply,) = grid.send_and_receive(_train_messages(grid, weights, 1))
    assert not reply.has_error()
    inner.contexts[11].state = RecordDict()  # e.g. the SuperNode restarted
    (reply,) = grid.send_and_receive(_train_messages(grid, weights, 2))
    assert reply.has_error() and "hold no model" in reply.error.reason
    (reply,) = grid.send_and_receive(_train_messages(grid, weights, 3))  # full weights again
    assert not reply.has_error()
    np.testing.assert_allclose(_arrays(reply)["w"], weights["w"], atol=0.03)
    events = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["failures"] for e in events] == [0, 1, 0]
    assert "hold no model" in events[1]["nodes"][0]["error"]


def test_shim_server_app_runs_the_users_main_even_when_events_cannot_be_written(tmp_path):
    """No compression, an unwritable events file: the user's ServerApp runs as is."""
    from flwr.serverapp import ServerApp

    from fedhub.hub.federation.shim import ShimServerApp

    seen = {}
    user = ServerApp()

    @user.main()
    def main(grid, context):
        weights = {"w": np.arange(6, dtype=np.float32)}
        (reply,) = grid.send_and_receive(_train_messages(grid, weights, 1))
        seen["reply"] = _arrays(reply)
        seen["grid"] = type(grid).__name__

    inner = LoopbackGrid(_user_client_app(step=1.0), nodes=(11,))  # the user's own ClientApp
    app = ShimServerApp(user, {"compression": "none", "events_path": "/dev/null/events.jsonl"})
    app(inner, Context(7, 0, {}, RecordDict(), {}))
    assert seen["grid"] == "CodecGrid"
    np.testing.assert_array_equal(seen["reply"]["w"], np.arange(6, dtype=np.float32) + 1.0)
