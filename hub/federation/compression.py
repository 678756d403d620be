"""Compression codecs for federated rounds: 8-bit quantisation and top-k sparsification.

Pure numpy; the Flower glue (ArrayRecord in/out) imports flwr only when called. This
module is also copied verbatim into prepared Flower apps (see apps.py), so it imports
nothing of fedhub and runs wherever the app's ClientApp runs.

A compressed set of tensors is one self-describing blob ("packed"): a small JSON header
(name, dtype, shape, codec and its parameters for each tensor) followed by the payloads.
One blob per ArrayRecord keeps Flower's per-Array overhead (object ids, metadata) to one.

Codecs per tensor:
- ``raw``: the bytes as they are (non-float arrays, and anything we must not touch);
- ``int8``: affine per-tensor quantisation to uint8, ``x ~ lo + q * scale``; the error
  is at most ``scale / 2`` per element;
- ``topk``: the k largest-magnitude entries (k = ceil(fraction * size), at least 1) as
  (flat index, value); values exact (``value_bits=32``, the tensor's own dtype) or
  themselves quantised to 8 bits (``value_bits=8``). Meant for model *updates*, with
  :class:`ErrorFeedback` carrying what was dropped into the next round.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np

CODECS = ("none", "int8", "topk")
PACKED_KEY = "fedhub.packed"         # the ArrayRecord entry that holds the blob
PACKED_STYPE = "fedhub.packed.v1"    # Array.stype of that entry
_MAGIC = b"FHC1"


# ----------------------------------------------------------------------------- int8
def quantize_int8(x: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(q uint8, lo, scale) with x ~ lo + q * scale; a constant tensor gets scale 0."""
    values = np.asarray(x, dtype=np.float64)
    if values.size == 0:
        return np.zeros(values.shape, dtype=np.uint8), 0.0, 0.0
    lo, hi = float(values.min()), float(values.max())
    scale = (hi - lo) / 255.0
    if scale == 0.0 or not math.isfinite(scale):
        return np.zeros(values.shape, dtype=np.uint8), lo, 0.0
    q = np.clip(np.rint((values - lo) / scale), 0, 255).astype(np.uint8)
    return q, lo, scale


def dequantize_int8(q: np.ndarray, lo: float, scale: float, dtype: Any) -> np.ndarray:
    return (lo + q.astype(np.float64) * scale).astype(dtype)


# ----------------------------------------------------------------------------- top-k
def topk_count(size: int, fraction: float) -> int:
    return min(size, max(1, math.ceil(fraction * size))) if size else 0


def topk_select(x: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(flat indices, values) of the k largest-magnitude entries, indices ascending."""
    flat = np.asarray(x).reshape(-1)
    k = topk_count(flat.size, fraction)
    if k == flat.size:
        idx = np.arange(flat.size)
    else:
        idx = np.sort(np.argpartition(np.abs(flat), flat.size - k)[flat.size - k:])
    return idx, flat[idx]


def topk_densify(idx: np.ndarray, values: np.ndarray, shape: tuple, dtype: Any) -> np.ndarray:
    out = np.zeros(int(np.prod(shape, dtype=np.int64)), dtype=dtype)
    out[idx] = values
    return out.reshape(shape)


def _index_dtype(size: int) -> np.dtype:
    return np.dtype(np.uint16) if size <= 0xFFFF else np.dtype(np.uint32)


# ----------------------------------------------------------------------------- packing
def _is_compressible(x: np.ndarray) -> bool:
    return x.dtype.kind == "f" and x.size > 0


def _encode_one(x: np.ndarray, codec: str, fraction: float, value_bits: int) -> tuple[dict, bytes]:
    meta: dict[str, Any] = {"dtype": x.dtype.str, "shape": list(x.shape)}
    if codec == "int8" and _is_compressible(x):
        q, lo, scale = quantize_int8(x)
        meta.update(codec="int8", lo=lo, scale=scale)
        return meta, q.tobytes()
    if codec == "topk" and _is_compressible(x):
        idx, values = topk_select(x, fraction)
        index_dtype = _index_dtype(x.size)
        meta.update(codec="topk", k=int(idx.size), index=index_dtype.str)
        payload = idx.astype(index_dtype).tobytes()
        if value_bits == 8:
            q, lo, scale = quantize_int8(values)
            meta.update(values="int8", lo=lo, scale=scale)
            return meta, payload + q.tobytes()
        meta.update(values="raw")
        return meta, payload + np.ascontiguousarray(values).tobytes()
    meta["codec"] = "raw"
    return meta, np.ascontiguousarray(x).tobytes()


def _decode_one(meta: dict, payload: bytes) -> np.ndarray:
    dtype, shape = np.dtype(meta["dtype"]), tuple(meta["shape"])
    if meta["codec"] == "raw":
        return np.frombuffer(payload, dtype=dtype).reshape(shape).copy()
    if meta["codec"] == "int8":
        q = np.frombuffer(payload, dtype=np.uint8).reshape(shape)
        return dequantize_int8(q, meta["lo"], meta["scale"], dtype)
    if meta["codec"] == "topk":
        index_dtype, k = np.dtype(meta["index"]), meta["k"]
        idx = np.frombuffer(payload[:k * index_dtype.itemsize], dtype=index_dtype)
        rest = payload[k * index_dtype.itemsize:]
        if meta["values"] == "int8":
            values = dequantize_int8(np.frombuffer(rest, dtype=np.uint8), meta["lo"],
                                     meta["scale"], dtype)
        else:
            values = np.frombuffer(rest, dtype=dtype)
        return topk_densify(idx.astype(np.int64), values, shape, dtype)
    raise ValueError(f"unknown codec {meta['codec']!r} in a packed blob")


def check_options(codec: str, fraction: float = 0.1, value_bits: int = 32) -> None:
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"topk fraction must be in (0, 1], got {fraction!r}")
    if value_bits not in (8, 32):
        raise ValueError(f"topk value_bits must be 8 or 32, got {value_bits!r}")


def pack(arrays: dict[str, np.ndarray], codec: str, *, fraction: float = 0.1,
         value_bits: int = 32, info: dict | None = None) -> bytes:
    """Encode named tensors into one blob; non-float tensors are kept raw.

    `info` is a small JSON-able dict carried in the header (see :func:`unpack_info`).
    """
    check_options(codec, fraction, value_bits)
    entries, payloads = [], []
    for name, value in arrays.items():
        x = np.asarray(value)
        meta, payload = _encode_one(x, codec if codec != "none" else "raw", fraction, value_bits)
        meta.update(name=name, nbytes=len(payload))
        entries.append(meta)
        payloads.append(payload)
    header = json.dumps({"t": entries, "i": info or {}}, separators=(",", ":")).encode()
    return _MAGIC + struct.pack("<I", len(header)) + header + b"".join(payloads)


def _header(blob: bytes) -> tuple[dict, int]:
    if blob[:4] != _MAGIC:
        raise ValueError("not a fedhub packed blob")
    (header_len,) = struct.unpack("<I", blob[4:8])
    return json.loads(blob[8:8 + header_len]), 8 + header_len


def unpack_info(blob: bytes) -> dict:
    """The `info` dict :func:`pack` was given."""
    return _header(blob)[0]["i"]


def unpack(blob: bytes) -> dict[str, np.ndarray]:
    """Decode a blob made by :func:`pack` (dtype and shape as they were)."""
    header, offset = _header(blob)
    out = {}
    for meta in header["t"]:
        out[meta["name"]] = _decode_one(meta, blob[offset:offset + meta["nbytes"]])
        offset += meta["nbytes"]
    return out


# ----------------------------------------------------------------------------- error feedback
class ErrorFeedback:
    """Top-k with error feedback: what a round drops is added to the next round's update.

    ``residual`` holds, per tensor, the part of the (update + residual) that was not
    sent. The sum of what was sent over all rounds plus the residual equals the sum of
    the updates exactly (up to float rounding), so nothing is lost, only delayed.
    """

    def __init__(self, fraction: float, value_bits: int = 32,
                 residual: dict[str, np.ndarray] | None = None):
        check_options("topk", fraction, value_bits)
        self.fraction, self.value_bits = fraction, value_bits
        self.residual: dict[str, np.ndarray] = dict(residual or {})

    def compress(self, update: dict[str, np.ndarray],
                 info: dict | None = None) -> tuple[bytes, dict[str, np.ndarray]]:
        """(blob, what the receiver will decode) for this round's update."""
        corrected = {}
        for name, value in update.items():
            x = np.asarray(value)
            previous = self.residual.get(name)
            if _is_compressible(x) and previous is not None and previous.shape == x.shape:
                x = (x.astype(np.float64) + previous).astype(x.dtype)
            corrected[name] = x
        blob = pack(corrected, "topk", fraction=self.fraction, value_bits=self.value_bits, info=info)
        sent = unpack(blob)
        for name, x in corrected.items():
            if _is_compressible(x):
                self.residual[name] = x.astype(np.float64) - sent[name].astype(np.float64)
        return blob, sent


# ----------------------------------------------------------------------------- Flower glue
def record_to_numpy(record) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """An ArrayRecord as ({name: ndarray} for numpy arrays, {name: Array} kept as is)."""
    arrays, passthrough = {}, {}
    for name, array in record.items():
        if array.stype == "numpy.ndarray":
            arrays[name] = array.numpy()
        else:
            passthrough[name] = array
    return arrays, passthrough


def blob_record(blob: bytes, passthrough: dict | None = None):
    """An ArrayRecord carrying a packed blob (plus arrays passed through untouched)."""
    from flwr.app import Array, ArrayRecord

    record = ArrayRecord()
    record[PACKED_KEY] = Array(dtype="uint8", shape=(len(blob),), stype=PACKED_STYPE, data=blob)
    for name, array in (passthrough or {}).items():
        record[name] = array
    return record


def is_packed(record) -> bool:
    return PACKED_KEY in record and record[PACKED_KEY].stype == PACKED_STYPE


def record_blob(record) -> tuple[bytes, dict]:
    """(the packed blob, the other arrays) of a record made by :func:`blob_record`."""
    passthrough = {k: v for k, v in record.items() if k != PACKED_KEY}
    return record[PACKED_KEY].data, passthrough


def numpy_record(arrays: dict[str, np.ndarray], passthrough: dict | None = None, order=None):
    """Back to a plain ArrayRecord of numpy Arrays, in the original key order."""
    from flwr.app import Array, ArrayRecord

    merged = {**{k: Array(v) for k, v in arrays.items()}, **(passthrough or {})}
    record = ArrayRecord()
    for name in (order or list(merged)):
        record[name] = merged[name]
    return record


def compress_record(record, codec: str, *, fraction: float = 0.1, value_bits: int = 32):
    """ArrayRecord -> ArrayRecord with its numpy arrays packed with `codec`."""
    arrays, passthrough = record_to_numpy(record)
    return blob_record(pack(arrays, codec, fraction=fraction, value_bits=value_bits), passthrough)


def decompress_record(record, order=None):
    """Inverse of :func:`compress_record` (plain records are returned unchanged)."""
    if not is_packed(record):
        return record
    blob, passthrough = record_blob(record)
    return numpy_record(unpack(blob), passthrough, order)
