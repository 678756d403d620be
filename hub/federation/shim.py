"""The runtime shim that prepare_app() puts around an unmodified Flower app.

- :class:`ShimClientApp` wraps the user's ClientApp with one mod: it decodes what the
  server sent (full weights, or a delta against the model this node already holds) and
  encodes the reply (int8 weights, or for top-k the *update* against what it received,
  with error feedback kept in ``Context.state``).
- :class:`ShimServerApp` wraps the user's ServerApp so that the Grid its strategy gets
  (:class:`CodecGrid`) encodes outgoing and decodes incoming messages, rebuilding full
  weights from each node's delta. The strategy sees plain ArrayRecords throughout.
- Every reply the Grid sees becomes a per-round event (JSON lines, :class:`EventLog`):
  round, phase, per-node metrics and ArrayRecord bytes, weighted aggregates. Events are
  best effort: a failure to write them never breaks the run.

The server decides the codec and tells the client in the header of each packed blob
("how": full or delta, and the uplink options), so the ClientApp side needs no
configuration and no extra record travels with the arrays. Like compression.py, this file
is copied into the prepared app and imports nothing of fedhub.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from . import compression as codec

VIEW_PREFIX = "fedhub.view."          # Context.state: the model this node holds
RESIDUAL_PREFIX = "fedhub.residual."  # Context.state: error feedback of the uplink
EVENTS_ENV = "FEDHUB_FL_EVENTS"
log = logging.getLogger("fedhub.shim")


# ----------------------------------------------------------------------------- helpers
def _crc(arrays: dict[str, np.ndarray]) -> int:
    crc = 0
    for name in sorted(arrays):
        crc = zlib.crc32(np.ascontiguousarray(arrays[name]).tobytes(), zlib.crc32(name.encode(), crc))
    return crc


def _add(base: dict[str, np.ndarray], delta: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """base + delta per tensor, in float64 then back to base's dtype (same on both sides)."""
    out = {}
    for name, value in base.items():
        if name in delta and value.dtype.kind == "f":
            out[name] = (value.astype(np.float64) + delta[name].astype(np.float64)).astype(value.dtype)
        else:
            out[name] = delta.get(name, value)
    return out


def _same_layout(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a)


def _array_bytes(content: RecordDict) -> int:
    return sum(record.count_bytes() for record in content.array_records.values())


def _state_arrays(context: Context, key: str) -> dict[str, np.ndarray] | None:
    record = context.state.array_records.get(key) if key in context.state else None
    return None if record is None else {k: a.numpy() for k, a in record.items()}


def _store_arrays(context: Context, key: str, arrays: dict[str, np.ndarray]) -> None:
    context.state[key] = codec.numpy_record(arrays)


# ----------------------------------------------------------------------------- client side
def client_codec_mod(msg: Message, context: Context, call_next) -> Message:
    """Decode the incoming message, run the user's ClientApp, encode its reply."""
    if not msg.has_content() or not any(codec.is_packed(r) for r in msg.content.array_records.values()):
        return call_next(msg, context)
    received: dict[str, dict[str, np.ndarray]] = {}
    options: dict = {}
    content = RecordDict()
    for key, record in msg.content.items():
        if not (isinstance(record, ArrayRecord) and codec.is_packed(record)):
            content[key] = record
            continue
        blob, passthrough = codec.record_blob(record)
        info, arrays = codec.unpack_info(blob), codec.unpack(blob)
        options = info
        if info.get("how") == "delta":
            view = _state_arrays(context, VIEW_PREFIX + key)
            if view is None or not _same_layout(view, arrays):
                raise RuntimeError("fedhub shim: got a model delta but hold no model to apply it to")
            arrays = _add(view, arrays)
        _store_arrays(context, VIEW_PREFIX + key, arrays)
        received[key] = arrays
        content[key] = codec.numpy_record(arrays, passthrough)
    msg.content = content

    reply = call_next(msg, context)
    uplink = str(options.get("uplink", "none"))
    if reply.has_error() or not reply.has_content() or uplink == "none":
        return reply
    fraction, bits = float(options.get("fraction", 0.1)), int(options.get("value-bits", 32))
    # lets the server check it still knows which model this node holds
    view_crc = _crc({f"{k}/{n}": v for k, arrays in received.items() for n, v in arrays.items()})
    for key, record in list(reply.content.array_records.items()):
        arrays, passthrough = codec.record_to_numpy(record)
        base = received.get(key)
        if uplink == "topk" and base is not None and _same_layout(base, arrays):
            update = {n: (arrays[n].astype(np.float64) - base[n].astype(np.float64)).astype(arrays[n].dtype)
                      if arrays[n].dtype.kind == "f" else arrays[n] for n in arrays}
            feedback = codec.ErrorFeedback(fraction, bits, _state_arrays(context, RESIDUAL_PREFIX + key))
            blob, _ = feedback.compress(update, info={"how": "delta", "view-crc": view_crc})
            _store_arrays(context, RESIDUAL_PREFIX + key, feedback.residual)
        else:
            blob = codec.pack(arrays, "int8", info={"how": "full", "view-crc": view_crc})
        reply.content[key] = codec.blob_record(blob, passthrough)
    return reply


class ShimClientApp(ClientApp):
    """The user's ClientApp behind the codec mod."""

    def __init__(self, inner: ClientApp):
        super().__init__()
        self._inner = inner

    def __call__(self, message: Message, context: Context) -> Message:
        return client_codec_mod(message, context, self._inner)


# ----------------------------------------------------------------------------- events
class EventLog:
    """Append-only JSON lines, each tagged with the run id; never raises.

    Events must not break a run; several runs may share one file (one SuperLink).
    """

    def __init__(self, path: str | None, run_id: str | None = None):
        self.path, self.run_id = path or None, run_id
        self._failed = False

    def write(self, event: dict) -> None:
        if not self.path or self._failed:
            return
        try:
            with open(self.path, "a", encoding="utf-8") as out:
                line = {"time": time.time(), "run_id": self.run_id, **event}
                out.write(json.dumps(line, default=_jsonable) + "\n")
        except Exception as exc:  # noqa: BLE001 - best effort by design
            self._failed = True
            log.warning("fedhub shim: cannot write events to %s: %s", self.path, exc)


def _jsonable(value):
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _metrics(content: RecordDict) -> dict:
    out: dict = {}
    for record in content.metric_records.values():
        out.update({k: v for k, v in record.items()})
    return out


def weighted_aggregate(per_node: list[dict], weight_key: str = "num-examples") -> dict:
    """FedAvg-style aggregate of scalar metrics: weighted by num-examples when present."""
    totals: dict[str, float] = {}
    weights: dict[str, float] = {}
    for metrics in per_node:
        weight = float(metrics.get(weight_key, 1) or 0)
        for name, value in metrics.items():
            if name == weight_key or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            totals[name] = totals.get(name, 0.0) + weight * float(value)
            weights[name] = weights.get(name, 0.0) + weight
    out = {name: totals[name] / weights[name] for name in totals if weights[name] > 0}
    if any(weight_key in m for m in per_node):
        out[weight_key] = sum(int(m.get(weight_key, 0)) for m in per_node)
    return out


class ServerEvaluationCapture(logging.Handler):
    """Turns the strategy's centralized-evaluation log lines into events.

    Flower's built-in strategies log ``[ROUND r/n]`` and, after ``evaluate_fn``, the
    MetricRecord itself as the log record's argument; nothing else exposes it to a
    wrapper of an unmodified app.
    """

    def __init__(self, events: EventLog):
        super().__init__(logging.INFO)
        self.events, self.round, self._expect = events, 0, False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg, args = str(record.msg), record.args or ()
            # logging unpacks a lone Mapping argument (a MetricRecord is one) into .args
            value = args if isinstance(args, Mapping) else (args[0] if args else None)
            if msg.startswith("[ROUND") and args:
                self.round = int(args[0])
            elif msg.startswith("Initial global evaluation results"):
                self._write(0, value)
            elif msg == "Global evaluation":
                self._expect = True
            elif self._expect and "MetricRecord" in msg:
                self._expect = False
                self._write(self.round, value)
        except Exception:  # noqa: BLE001 - best effort
            pass

    def _write(self, server_round: int, metrics) -> None:
        if isinstance(metrics, MetricRecord):
            self.events.write({"event": "round", "round": server_round, "phase": "server-evaluate",
                               "aggregate": dict(metrics)})


# ----------------------------------------------------------------------------- server side
@dataclass
class _Outgoing:
    node_id: int
    phase: str
    round: int | None
    originals: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    bytes_sent: int = 0
    raw_bytes_sent: int = 0


def _round_of(content: RecordDict, group_id: str) -> int | None:
    for record in content.config_records.values():
        if "server-round" in record:
            return int(record["server-round"])
    return int(group_id) if str(group_id).isdigit() else None


class CodecGrid(Grid):
    """A Grid that compresses what the strategy sends and decompresses what it gets."""

    def __init__(self, inner: Grid, spec: dict, events: EventLog):
        self._inner, self.spec, self.events = inner, spec, events
        self.mode = spec.get("compression", "none")
        self.downlink = spec.get("downlink") or self.mode  # both directions unless told
        self.fraction = float(spec.get("topk_fraction", 0.1))
        self.value_bits = int(spec.get("topk_value_bits", 32))
        self._sent: dict[str, _Outgoing] = {}
        self._views: dict[int, dict[str, dict[str, np.ndarray]]] = {}  # what each node holds
        self._phases = 0

    # -- delegation
    def set_run(self, run) -> None:
        self._inner.set_run(run)

    @property
    def run(self):
        return self._inner.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return self._inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._inner.get_node_ids()

    def get_nodes(self):
        return self._inner.get_nodes()

    # -- encoding
    def _encode(self, msg: Message, cache: dict) -> _Outgoing:
        meta = msg.metadata
        out = _Outgoing(meta.dst_node_id, meta.message_type.split(".")[0], None)
        if not msg.has_content():
            return out
        original = msg.content
        out.round = _round_of(original, meta.group_id)
        out.raw_bytes_sent = _array_bytes(original)
        if self.mode == "none":
            out.bytes_sent = out.raw_bytes_sent
            return out
        content = RecordDict()
        for key, record in original.items():
            if not isinstance(record, ArrayRecord):
                content[key] = record
                continue
            arrays, passthrough = codec.record_to_numpy(record)
            out.originals[key] = arrays
            content[key] = self._encode_downlink(meta.dst_node_id, key, record, arrays, passthrough, cache)
        msg.content = content
        out.bytes_sent = _array_bytes(content)
        return out

    def _encode_downlink(self, node_id, key, record, arrays, passthrough, cache):
        view = self._views.get(node_id, {}).get(key)
        options = {"uplink": self.mode, "fraction": self.fraction, "value-bits": self.value_bits}
        if self.downlink == "topk" and view is not None and _same_layout(view, arrays):
            delta = {n: (arrays[n].astype(np.float64) - view[n].astype(np.float64)).astype(arrays[n].dtype)
                     if arrays[n].dtype.kind == "f" else arrays[n] for n in arrays}
            blob = codec.pack(delta, "topk", fraction=self.fraction, value_bits=self.value_bits,
                              info={**options, "how": "delta"})
            self._views[node_id][key] = _add(view, codec.unpack(blob))
            return codec.blob_record(blob, passthrough)
        # full weights, identical for every node: encode once per record
        if id(record) not in cache:
            cache[id(record)] = codec.pack(arrays, "int8" if self.downlink != "none" else "none",
                                           info={**options, "how": "full"})
        blob = cache[id(record)]
        self._views.setdefault(node_id, {})[key] = codec.unpack(blob)
        return codec.blob_record(blob, passthrough)

    # -- decoding
    def _decode(self, reply: Message) -> tuple[Message, dict]:
        meta = reply.metadata
        out = self._sent.pop(meta.reply_to_message_id, None)
        node = {"node_id": meta.src_node_id, "bytes_sent": out.bytes_sent if out else None,
                "raw_bytes_sent": out.raw_bytes_sent if out else None}
        if reply.has_error():
            self._views.pop(meta.src_node_id, None)  # its state may not have been kept
            node["error"] = reply.error.reason
            return reply, node
        content = reply.content
        node["bytes_received"] = _array_bytes(content)
        crcs = []
        for key, record in list(content.array_records.items()):
            if not codec.is_packed(record):
                continue
            blob, passthrough = codec.record_blob(record)
            info, arrays = codec.unpack_info(blob), codec.unpack(blob)
            if info.get("how") == "delta":
                base = (out.originals if out else {}).get(key)
                if base is None:
                    raise RuntimeError(f"fedhub shim: node {meta.src_node_id} sent a delta for an "
                                       f"unknown message {meta.reply_to_message_id}")
                arrays = _add(base, arrays)  # the exact global it was sent + its update
            content[key] = codec.numpy_record(arrays, passthrough)
            crcs.append(info.get("view-crc"))
        held = self._views.get(meta.src_node_id, {})
        sent = [k for k in (out.originals if out else {}) if k in held]
        mine = _crc({f"{k}/{n}": v for k in sent for n, v in held[k].items()})
        if any(crc is not None and int(crc) != mine for crc in crcs):
            self._views.pop(meta.src_node_id, None)  # out of step: send full weights next
        node["raw_bytes_received"] = _array_bytes(content)
        node["metrics"] = _metrics(content)
        return reply, node

    # -- the Grid API the strategy uses
    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        outs = self._encode_all(messages)
        ids = list(self._inner.push_messages(messages))
        self._remember(ids, outs)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        pending = {mid: self._sent.get(mid) for mid in message_ids}
        replies, nodes = self._decode_all(self._inner.pull_messages(message_ids))
        if replies:
            self._emit([o for o in pending.values() if o], nodes)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):
        messages = list(messages)
        outs = self._encode_all(messages)
        replies = self._inner.send_and_receive(messages, timeout=timeout)
        self._remember([m.metadata.message_id for m in messages], outs)
        decoded, nodes = self._decode_all(replies)
        self._emit(outs, nodes)
        return decoded

    def _encode_all(self, messages: list[Message]) -> list[_Outgoing]:
        cache: dict = {}
        return [self._encode(m, cache) for m in messages]

    def _remember(self, ids: list[str], outs: list[_Outgoing]) -> None:
        for message_id, out in zip(ids, outs):
            if message_id:
                self._sent[message_id] = out

    def _decode_all(self, replies) -> tuple[list[Message], list[dict]]:
        decoded, nodes = [], []
        for reply in replies:
            message, node = self._decode(reply)
            decoded.append(message)
            nodes.append(node)
        return decoded, nodes

    def _emit(self, outs: list[_Outgoing], nodes: list[dict]) -> None:
        try:
            self._phases += 1
            phase = outs[0].phase if outs else "unknown"
            rounds = [o.round for o in outs if o.round is not None]
            ok = [n for n in nodes if "error" not in n]

            def total(key, items):
                return sum(int(i.get(key) or 0) for i in items)

            self.events.write({
                "event": "round", "round": rounds[0] if rounds else self._phases, "phase": phase,
                "compression": self.mode, "nodes": nodes, "sent_to": [o.node_id for o in outs],
                "failures": len(nodes) - len(ok) + max(0, len(outs) - len(nodes)),
                "aggregate": weighted_aggregate([n["metrics"] for n in ok if n.get("metrics")]),
                "bytes_sent": sum(o.bytes_sent for o in outs),
                "raw_bytes_sent": sum(o.raw_bytes_sent for o in outs),
                "bytes_received": total("bytes_received", ok),
                "raw_bytes_received": total("raw_bytes_received", ok),
            })
        except Exception as exc:  # noqa: BLE001 - events never break the run
            log.warning("fedhub shim: could not record a round event: %s", exc)


class ShimServerApp(ServerApp):
    """The user's ServerApp, given a CodecGrid and watched for per-round events."""

    def __init__(self, inner: ServerApp, spec: dict):
        super().__init__()
        self._inner, self._spec = inner, spec

    def __call__(self, grid: Grid, context: Context) -> None:
        events = EventLog(self._spec.get("events_path") or os.environ.get(EVENTS_ENV),
                          str(context.run_id))  # as `flwr ls` prints it (uint64)
        capture = ServerEvaluationCapture(events)
        flwr_logger = logging.getLogger("flwr")
        flwr_logger.addHandler(capture)
        events.write({"event": "start", "spec": self._spec,
                      "run_config": dict(context.run_config)})
        try:
            self._inner(grid=CodecGrid(grid, self._spec, events), context=context)
        except BaseException as exc:
            events.write({"event": "end", "ok": False, "error": f"{type(exc).__name__}: {exc}"})
            raise
        else:
            events.write({"event": "end", "ok": True})
        finally:
            flwr_logger.removeHandler(capture)
