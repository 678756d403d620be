"""ClientApp: train and evaluate the MLP on this node's share of the digits."""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from digits_app import task

app = ClientApp()



@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local SGD from the received global model; replies with the new weights."""
    params = task.arrays_to_params(msg.content["arrays"])
    (x_train, y_train), _ = task.split_train_val(*task.load_node_data(context.node_config))
    cfg = context.run_config
    server_round = int(msg.content["config"].get("server-round", 0))
    new_params = task.train(
        params, x_train, y_train,
        epochs=int(cfg["local-epochs"]), learning_rate=float(cfg["learning-rate"]),
        batch_size=int(cfg["batch-size"]),
        # seeded by the site, not the node id (random per SuperNode start): reproducible runs
        seed=int(cfg["seed"]) * 1000 + server_round * 10
        + int(context.node_config.get("partition-id", context.node_id % 10)))
    loss, accuracy = task.evaluate(new_params, x_train, y_train)
    content = RecordDict({
        "arrays": ArrayRecord({name: Array(new_params[name]) for name in params}),
        "metrics": MetricRecord({"loss": loss, "accuracy": accuracy,
                                 "num-examples": len(y_train)}),
    })
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Loss and accuracy of the received model on this node's validation split."""
    params = task.arrays_to_params(msg.content["arrays"])
    _, (x_val, y_val) = task.split_train_val(*task.load_node_data(context.node_config))
    loss, accuracy = task.evaluate(params, x_val, y_val)
    content = RecordDict({"metrics": MetricRecord(
        {"loss": loss, "accuracy": accuracy, "num-examples": len(y_val)})})
    return Message(content=content, reply_to=msg)
