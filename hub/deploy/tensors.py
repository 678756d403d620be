"""Tensors on the wire: datatypes, BYTES serialisation, errors shared by HTTP and gRPC.

Triton's BYTES tensors travel as each element's 4-byte little-endian length followed by its
bytes (raw gRPC contents and the HTTP binary data extension alike).
"""

from __future__ import annotations

import struct

import numpy as np

# protocol datatype -> numpy dtype (BYTES -> object arrays of bytes, as in Triton's clients)
NUMPY_DTYPES = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}


class InferenceServerError(Exception):
    """A request the server refuses; `kind` picks the HTTP status and the gRPC code."""

    kind = "invalid"


class InvalidArgument(InferenceServerError):
    kind = "invalid"


class NotFound(InferenceServerError):
    kind = "not_found"


class Unavailable(InferenceServerError):
    kind = "unavailable"


class Unauthenticated(InferenceServerError):
    kind = "unauthenticated"


def numpy_dtype(datatype: str) -> np.dtype:
    try:
        return NUMPY_DTYPES[datatype]
    except KeyError:
        raise InvalidArgument(f"unsupported datatype {datatype!r}") from None


def protocol_dtype(array: np.ndarray) -> str:
    if array.dtype == object or array.dtype.kind in "SU":
        return "BYTES"
    for name, dtype in NUMPY_DTYPES.items():
        if dtype == array.dtype:
            return name
    raise InvalidArgument(f"numpy dtype {array.dtype} has no Triton datatype")


def element_count(shape) -> int:
    count = 1
    for d in shape:
        if d < 0:
            raise InvalidArgument(f"shape {list(shape)} has a negative dimension")
        count *= d
    return count


def serialize_bytes(array: np.ndarray) -> bytes:
    """BYTES tensor -> length-prefixed elements in row-major order."""
    parts = []
    for item in array.ravel(order="C"):
        if isinstance(item, str):
            item = item.encode("utf-8")
        elif not isinstance(item, (bytes, bytearray)):
            item = str(item).encode("utf-8")
        parts.append(struct.pack("<I", len(item)))
        parts.append(bytes(item))
    return b"".join(parts)


def deserialize_bytes(buffer: bytes | memoryview, shape) -> np.ndarray:
    """Length-prefixed elements -> object array of bytes with `shape`."""
    count = element_count(shape)
    items, offset, view = [], 0, memoryview(buffer)
    for _ in range(count):
        if offset + 4 > len(view):
            raise InvalidArgument(f"BYTES data ends after {len(items)} of {count} elements")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidArgument("BYTES element length runs past the end of the data")
        items.append(bytes(view[offset:offset + length]))
        offset += length
    if offset != len(view):
        raise InvalidArgument(f"BYTES data has {len(view) - offset} bytes after {count} elements")
    return np.array(items, dtype=object).reshape(shape) if count else np.empty(shape, object)


def from_raw(buffer: bytes | memoryview, datatype: str, shape) -> np.ndarray:
    """Raw little-endian tensor bytes (gRPC raw contents, HTTP binary data) -> array."""
    if datatype == "BYTES":
        return deserialize_bytes(buffer, shape)
    dtype = numpy_dtype(datatype)
    expected = element_count(shape) * dtype.itemsize
    if len(buffer) != expected:
        raise InvalidArgument(
            f"{len(buffer)} bytes of data for a {datatype} tensor of shape {list(shape)}; "
            f"expected {expected}")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def to_raw(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return serialize_bytes(array)
    return np.ascontiguousarray(array, dtype=NUMPY_DTYPES[datatype]).tobytes()


def from_list(values, datatype: str, shape) -> np.ndarray:
    """JSON `data` (flat or nested list) -> array of `shape`."""
    if datatype == "BYTES":
        flat = np.array([v.encode("utf-8") if isinstance(v, str) else bytes(v)
                         for v in np.asarray(values, dtype=object).ravel()], dtype=object)
    else:
        try:
            flat = np.asarray(values, dtype=numpy_dtype(datatype)).ravel()
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"data does not match datatype {datatype}: {exc}") from None
    if flat.size != element_count(shape):
        raise InvalidArgument(
            f"{flat.size} values of data for shape {list(shape)} ({element_count(shape)} expected)")
    return flat.reshape(shape)


def to_list(array: np.ndarray, datatype: str) -> list:
    if datatype == "BYTES":
        return [item.decode("utf-8", "replace") if isinstance(item, (bytes, bytearray))
                else str(item) for item in array.ravel()]
    return array.ravel().tolist()
