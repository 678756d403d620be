"""ServerApp: FedAvg over the sites, with centralized evaluation on the holdout."""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from digits_app import task

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run `num-server-rounds` rounds of FedAvg and print the final test accuracy."""
    cfg = context.run_config
    params = task.init_params(int(cfg["hidden-units"]), int(cfg["seed"]))
    initial = ArrayRecord({name: Array(value) for name, value in params.items()})
    x_test, y_test = task.load_test_set()

    def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        loss, accuracy = task.evaluate(task.arrays_to_params(arrays), x_test, y_test)
        return MetricRecord({"loss": loss, "accuracy": accuracy})

    min_nodes = int(cfg["min-nodes"])
    strategy = FedAvg(fraction_train=float(cfg["fraction-train"]),
                      min_train_nodes=min_nodes, min_evaluate_nodes=min_nodes,
                      min_available_nodes=min_nodes)
    result = strategy.start(grid=grid, initial_arrays=initial,
                            num_rounds=int(cfg["num-server-rounds"]),
                            evaluate_fn=central_evaluate)
    rounds = sorted(result.evaluate_metrics_serverapp)
    if rounds:
        final = result.evaluate_metrics_serverapp[rounds[-1]]
        print(f"digits: final test accuracy {final['accuracy']:.4f} after round {rounds[-1]}")
