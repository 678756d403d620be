"""Compression codecs (pure numpy) and their Flower ArrayRecord encoding."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedhub.hub.federation import compression as c


@pytest.fixture
def rng():
    return np.random.default_rng(7)


# ----------------------------------------------------------------------------- int8
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_int8_round_trip_error_is_at_most_half_a_step(rng, dtype):
    x = (rng.standard_normal((64, 33)) * 3 + 1).astype(dtype)
    out = c.unpack(c.pack({"w": x}, "int8"))["w"]
    assert out.dtype == x.dtype and out.shape == x.shape
    step = (float(x.max()) - float(x.min())) / 255
    err = np.abs(out.astype(np.float64) - x.astype(np.float64)).max()
    # half a quantisation step, plus the rounding of the dtype itself
    assert err <= step / 2 + np.finfo(dtype).eps * np.abs(x).max() * 4
    assert err > 0  # it really was quantised
    # extremes are exact: lo maps to 0 and hi to 255
    assert out.astype(np.float64).min() == pytest.approx(float(x.min()), rel=1e-3)
    assert out.astype(np.float64).max() == pytest.approx(float(x.max()), rel=1e-3)


def test_int8_payload_is_one_byte_per_element(rng):
    x = rng.standard_normal(10_000).astype(np.float32)
    blob = c.pack({"w": x}, "int8")
    assert 10_000 <= len(blob) < 10_000 + 200
    assert len(c.pack({"w": x}, "none")) >= 40_000


def test_int8_constant_zero_and_empty_tensors():
    arrays = {"zeros": np.zeros((3, 4), np.float32), "const": np.full(5, 2.5, np.float64),
              "empty": np.zeros((0, 3), np.float32), "scalar": np.float32(1.25) * np.ones(()),
              "one": np.array([-7.0], np.float32)}
    out = c.unpack(c.pack(arrays, "int8"))
    for name, x in arrays.items():
        assert out[name].dtype == x.dtype and out[name].shape == x.shape, name
        np.testing.assert_array_equal(out[name], x)


def test_non_float_arrays_pass_through_bit_exact(rng):
    arrays = {"counts": rng.integers(-1000, 1000, (7, 3)).astype(np.int64),
              "mask": rng.random(11) > 0.5, "bytes": np.arange(9, dtype=np.uint8)}
    for codec in ("int8", "topk", "none"):
        out = c.unpack(c.pack(arrays, codec, fraction=0.1))
        for name, x in arrays.items():
            assert out[name].dtype == x.dtype and out[name].shape == x.shape
            np.testing.assert_array_equal(out[name], x)


# ----------------------------------------------------------------------------- top-k
def test_topk_keeps_exactly_the_largest_values_at_their_indices(rng):
    x = rng.standard_normal((20, 50)).astype(np.float32)
    out = c.unpack(c.pack({"w": x}, "topk", fraction=0.1))["w"]
    assert out.dtype == np.float32 and out.shape == x.shape
    k = 100
    expected_idx = np.sort(np.argsort(np.abs(x).reshape(-1))[-k:])
    kept = np.flatnonzero(out.reshape(-1))
    np.testing.assert_array_equal(kept, expected_idx)
    np.testing.assert_array_equal(out.reshape(-1)[kept], x.reshape(-1)[kept])  # exact values
    # everything not kept is zero, and is no larger than the smallest kept value
    assert np.abs(x.reshape(-1)[np.setdiff1d(np.arange(x.size), kept)]).max() <= np.abs(x.reshape(-1)[kept]).min()


def test_topk_payload_size_uses_narrow_indices(rng):
    x = rng.standard_normal(10_000).astype(np.float32)
    blob = c.pack({"w": x}, "topk", fraction=0.1)
    assert 1000 * (2 + 4) <= len(blob) < 1000 * 6 + 200  # uint16 index + float32 value
    blob8 = c.pack({"w": x}, "topk", fraction=0.1, value_bits=8)
    assert 1000 * 3 <= len(blob8) < 1000 * 3 + 250
    big = rng.standard_normal(70_000).astype(np.float32)  # needs 32-bit indices
    assert len(c.pack({"w": big}, "topk", fraction=0.01)) >= 700 * 8


def test_topk_tiny_and_zero_tensors():
    out = c.unpack(c.pack({"one": np.array([3.0], np.float32), "zeros": np.zeros(10, np.float64),
                           "two": np.array([[1.0, -5.0]], np.float32)}, "topk", fraction=0.1))
    np.testing.assert_array_equal(out["one"], [3.0])  # k is at least 1
    np.testing.assert_array_equal(out["zeros"], np.zeros(10))
    np.testing.assert_array_equal(out["two"], [[0.0, -5.0]])
    assert out["two"].shape == (1, 2) and out["zeros"].dtype == np.float64


def test_error_feedback_delivers_everything_that_was_dropped(rng):
    """Sum of what was sent + final residual == sum of updates; sent sum converges to it."""
    feedback = c.ErrorFeedback(fraction=0.05)
    updates = [rng.standard_normal((30, 20)).astype(np.float64) for _ in range(6)]
    sent_total = np.zeros((30, 20))
    for update in updates:
        blob, sent = feedback.compress({"w": update})
        np.testing.assert_array_equal(c.unpack(blob)["w"], sent["w"])  # receiver sees `sent`
        assert np.count_nonzero(sent["w"]) == 30  # 5 % of 600
        sent_total += sent["w"]
    np.testing.assert_allclose(sent_total + feedback.residual["w"], sum(updates), atol=1e-9)
    # a constant signal with no new updates: the residual drains to zero
    for _ in range(60):
        _, sent = feedback.compress({"w": np.zeros((30, 20))})
        sent_total += sent["w"]
    np.testing.assert_allclose(sent_total, sum(updates), atol=1e-9)
    assert np.abs(feedback.residual["w"]).max() < 1e-9


def test_error_feedback_beats_plain_topk_on_a_repeated_update(rng):
    direction = rng.standard_normal(400)
    plain = sum(c.unpack(c.pack({"w": direction}, "topk", fraction=0.1))["w"] for _ in range(10))
    feedback = c.ErrorFeedback(fraction=0.1)
    with_ef = sum(feedback.compress({"w": direction})[1]["w"] for _ in range(10))
    target = direction * 10
    assert np.linalg.norm(with_ef - target) < 0.5 * np.linalg.norm(plain - target)


def test_error_feedback_with_8_bit_values_still_tracks_the_sum(rng):
    feedback = c.ErrorFeedback(fraction=0.2, value_bits=8)
    updates = [rng.standard_normal(500).astype(np.float32) for _ in range(5)]
    sent_total = sum(feedback.compress({"w": u})[1]["w"].astype(np.float64) for u in updates)
    np.testing.assert_allclose(sent_total + feedback.residual["w"], sum(u.astype(np.float64) for u in updates),
                               atol=1e-4)


@pytest.mark.parametrize("codec, kwargs, message", [
    ("gzip", {}, "codec must be one of"),
    ("topk", {"fraction": 0.0}, "fraction must be in"),
    ("topk", {"fraction": 1.5}, "fraction must be in"),
    ("topk", {"value_bits": 4}, "value_bits must be 8 or 32"),
])
def test_bad_options_are_rejected(codec, kwargs, message):
    with pytest.raises(ValueError, match=message):
        c.pack({"w": np.ones(3, np.float32)}, codec, **kwargs)


def test_unpack_rejects_foreign_bytes():
    with pytest.raises(ValueError, match="not a fedhub packed blob"):
        c.unpack(b"\x93NUMPY" + b"\0" * 20)


# ----------------------------------------------------------------------------- ArrayRecord
def test_array_record_round_trip_and_passthrough(rng):
    w = rng.standard_normal((64, 16)).astype(np.float32)
    steps = np.arange(4, dtype=np.int32)
    odd = Array(dtype="float32", shape=(2,), stype="custom.format", data=b"12345678")
    record = ArrayRecord({"w": Array(w), "steps": Array(steps), "odd": odd})
    packed = c.compress_record(record, "int8")
    assert c.is_packed(packed) and set(packed) == {c.PACKED_KEY, "odd"}
    assert packed["odd"] == odd  # arrays of unknown serialisation are not touched
    assert packed.count_bytes() < record.count_bytes() / 2
    restored = c.decompress_record(packed, order=["w", "steps", "odd"])
    assert list(restored) == ["w", "steps", "odd"]
    np.testing.assert_allclose(restored["w"].numpy(), w, atol=(w.max() - w.min()) / 255)
    np.testing.assert_array_equal(restored["steps"].numpy(), steps)
    assert restored["odd"].data == b"12345678"
    assert c.decompress_record(record) is record  # plain records pass unchanged


def test_blob_header_carries_the_senders_info(rng):
    x = rng.standard_normal(50).astype(np.float32)
    blob = c.pack({"w": x}, "int8", info={"how": "delta", "view-crc": 12345})
    assert c.unpack_info(blob) == {"how": "delta", "view-crc": 12345}
    assert c.unpack_info(c.pack({"w": x}, "none")) == {}
    np.testing.assert_array_equal(c.unpack(c.pack({"w": x}, "none"))["w"], x)
