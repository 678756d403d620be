"""Edge: int8 bundle vs the fp32 model it came from (baseline), for the digits classifiers.

For each model (a scikit-learn MLP and a small PyTorch MLP, both trained on sklearn's
bundled digits), builds real signed edge bundles (onnxruntime int8 quantisation, dynamic
and static with calibration on held-out rows)
and prints side by side: model file size, accuracy on the held-out rows, agreement of the
predicted classes, and onnxruntime latency (median of repeated runs, 1 thread, batch 1
and batch 64), with int8/fp32 ratios. Not run in CI.

    .venv/bin/python benchmarks/edge_int8.py [--repeats 300]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier

from fedhub.hub.deploy.edge import manifest as fmt
from fedhub.hub.deploy.edge.bundle import build_bundle, read_manifest
from fedhub.hub.deploy.packaging import Tensor, pytorch_to_onnx, sklearn_to_onnx


def latency_ms(path: Path, X: np.ndarray, repeats: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for _ in range(20):
        session.run(None, {name: X})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {name: X})
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def models(tmp: Path, X: np.ndarray, y: np.ndarray) -> dict[str, Path]:
    out = {}
    mlp = MLPClassifier(hidden_layer_sizes=(128,), max_iter=300, random_state=0).fit(X, y)
    out["sklearn MLP 64-128-10"] = tmp / "sk.onnx"
    out["sklearn MLP 64-128-10"].write_bytes(
        sklearn_to_onnx(mlp, [Tensor("input", "FP32", (-1, 64))]).SerializeToString())
    try:
        import torch
    except ImportError:
        return out
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    Xt, yt = torch.from_numpy(X.astype(np.float32)), torch.from_numpy(y)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(Xt), yt).backward()
        opt.step()
    path = tmp / "torch.onnx"
    pytorch_to_onnx(net.eval(), [Tensor("input", "FP32", (-1, 64))], [Tensor("output", "FP32", (-1, 10))], path)
    out["PyTorch MLP 64-256-10"] = path
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    X_train, y_train, X_test, y_test = X[:1400], y[:1400], X[1400:], y[1400:]
    key = Ed25519PrivateKey.generate()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = []
        for (label, fp32), method in [(m, q) for m in models(tmp, X_train, y_train).items()
                                      for q in ("dynamic", "static")]:
            archive = build_bundle(fp32, tmp / "out", name=fp32.stem, version=method, key=key,
                                   held_out=(X_test, y_test), quantization=method)
            manifest = read_manifest(archive)
            label = f"{label} [{method}]"
            content = fmt.unpack(archive, tmp / f"{fp32.stem}-{method}-content")
            int8 = content / fmt.MODEL
            acc = manifest["accuracy"]
            lat = {}
            for batch in (1, 64):
                sample = X_test[:batch].astype(np.float32)
                lat[batch] = (latency_ms(fp32, sample, args.repeats), latency_ms(int8, sample, args.repeats))
            rows.append((label, manifest["sizes"], acc, lat))
    print(f"edge int8 bundle vs fp32 (baseline); digits held-out rows: {len(y_test)}; "
          f"onnxruntime {ort.__version__}, 1 thread, median of {args.repeats}")
    header = f"{'model':34} {'':6} {'size B':>9} {'accuracy':>9} {'p50 b=1 ms':>11} {'p50 b=64 ms':>12}"
    print(header)
    print("-" * len(header))
    for label, sizes, acc, lat in rows:
        print(f"{label:34} {'fp32':6} {sizes['fp32_bytes']:>9} {acc['fp32']:>9.4f} {lat[1][0]:>11.4f} {lat[64][0]:>12.4f}")
        print(f"{'':34} {'int8':6} {sizes['int8_bytes']:>9} {acc['int8']:>9.4f} {lat[1][1]:>11.4f} {lat[64][1]:>12.4f}")
        print(f"{'':34} {'ratio':6} {sizes['int8_bytes'] / sizes['fp32_bytes']:>9.3f} "
              f"{acc['int8'] - acc['fp32']:>+9.4f} {lat[1][1] / lat[1][0]:>11.2f} {lat[64][1] / lat[64][0]:>12.2f}"
              f"   (agreement {acc['agreement']:.4f}, max |diff| {acc['max_abs_diff']:.4f})")


if __name__ == "__main__":
    main()
