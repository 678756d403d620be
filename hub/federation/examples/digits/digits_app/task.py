"""Model and data for the digits app: a one-hidden-layer MLP in plain numpy.

The data is scikit-learn's bundled 8x8 digits (no download). A fixed 20 % holdout is
the server's test set; the rest is split IID into `num-partitions` parts, one per site.
A site can instead hold its own data as a .npz file with `x` (n, 64 pixel values 0-16)
and `y` (n,) labels, named by the node config `data-path`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

NUM_FEATURES = 64
NUM_CLASSES = 10
TEST_FRACTION = 0.2
SPLIT_SEED = 1234  # the same split on every node and on the server


def _scale(x: np.ndarray) -> np.ndarray:
    return (np.asarray(x, dtype=np.float32) / 16.0).reshape(len(x), NUM_FEATURES)


def _bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits.csv.gz, the data of `load_digits()`.

    Read straight from the installed package: importing sklearn costs seconds in
    every ClientApp process (Flower starts one per message).
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise RuntimeError("the digits app needs scikit-learn installed (its bundled digits)")
    table = np.loadtxt(Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz",
                       delimiter=",", dtype=np.float32)
    return table[:, :-1], table[:, -1].astype(np.int64)


def _shuffled_digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = _bundled_digits()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    return _scale(x[order]), y[order]


def load_test_set() -> tuple[np.ndarray, np.ndarray]:
    """The holdout the server evaluates the global model on."""
    x, y = _shuffled_digits()
    n_test = int(len(y) * TEST_FRACTION)
    return x[:n_test], y[:n_test]


def load_partition(partition_id: int, num_partitions: int) -> tuple[np.ndarray, np.ndarray]:
    """One site's share of the training data (an IID slice)."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"partition-id must be in [0, {num_partitions}), got {partition_id}")
    x, y = _shuffled_digits()
    n_test = int(len(y) * TEST_FRACTION)
    parts = np.array_split(np.arange(n_test, len(y)), num_partitions)
    return x[parts[partition_id]], y[parts[partition_id]]


def load_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    """A site-held data file: arrays `x` (n, 64 pixel values 0-16) and `y` (n,)."""
    with np.load(path, allow_pickle=False) as data:
        if "x" not in data or "y" not in data:
            raise ValueError(f"{path}: expected arrays 'x' and 'y', found {sorted(data)}")
        return _scale(data["x"]), data["y"].astype(np.int64)


def load_node_data(node_config: dict) -> tuple[np.ndarray, np.ndarray]:
    """The data this node trains on, chosen by its node config."""
    if node_config.get("data-path"):
        return load_npz(str(node_config["data-path"]))
    return load_partition(int(node_config.get("partition-id", 0)),
                          int(node_config.get("num-partitions", 1)))


def split_train_val(x: np.ndarray, y: np.ndarray, val_fraction: float = 0.2):
    """A node's local train/validation split (the validation part is for `evaluate`)."""
    n_val = max(1, int(len(y) * val_fraction))
    return (x[n_val:], y[n_val:]), (x[:n_val], y[:n_val])


# ----------------------------------------------------------------------------- model
PARAM_NAMES = ("hidden.weight", "hidden.bias", "output.weight", "output.bias")


def init_params(hidden_units: int, seed: int) -> dict[str, np.ndarray]:
    """He-initialised weights, float32, named like a torch state dict."""
    rng = np.random.default_rng(seed)
    return {
        "hidden.weight": (rng.standard_normal((NUM_FEATURES, hidden_units))
                          * np.sqrt(2.0 / NUM_FEATURES)).astype(np.float32),
        "hidden.bias": np.zeros(hidden_units, dtype=np.float32),
        "output.weight": (rng.standard_normal((hidden_units, NUM_CLASSES))
                          * np.sqrt(2.0 / hidden_units)).astype(np.float32),
        "output.bias": np.zeros(NUM_CLASSES, dtype=np.float32),
    }


def _forward(params: dict[str, np.ndarray], x: np.ndarray):
    pre = x @ params["hidden.weight"] + params["hidden.bias"]
    hidden = np.maximum(pre, 0.0)
    logits = hidden @ params["output.weight"] + params["output.bias"]
    logits = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    return pre, hidden, probs


def evaluate(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(cross-entropy loss, accuracy) of the model on (x, y)."""
    _, _, probs = _forward(params, x)
    loss = float(-np.log(probs[np.arange(len(y)), y] + 1e-12).mean())
    accuracy = float((probs.argmax(axis=1) == y).mean())
    return loss, accuracy


def train(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, *, epochs: int,
          learning_rate: float, batch_size: int, seed: int) -> dict[str, np.ndarray]:
    """Minibatch SGD on softmax cross-entropy; returns new float32 parameters."""
    params = {k: v.astype(np.float32).copy() for k, v in params.items()}
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for start in range(0, len(y), batch_size):
            idx = order[start:start + batch_size]
            xb, yb = x[idx], y[idx]
            pre, hidden, probs = _forward(params, xb)
            grad_logits = probs
            grad_logits[np.arange(len(yb)), yb] -= 1.0
            grad_logits /= len(yb)
            grad_hidden = (grad_logits @ params["output.weight"].T) * (pre > 0)
            grads = {
                "output.weight": hidden.T @ grad_logits,
                "output.bias": grad_logits.sum(axis=0),
                "hidden.weight": xb.T @ grad_hidden,
                "hidden.bias": grad_hidden.sum(axis=0),
            }
            for name, grad in grads.items():
                params[name] -= np.float32(learning_rate) * grad.astype(np.float32)
    return params


def arrays_to_params(record) -> dict[str, np.ndarray]:
    """A Flower ArrayRecord as a name -> ndarray dict."""
    return {name: array.numpy() for name, array in record.items()}
