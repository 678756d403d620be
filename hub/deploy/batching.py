"""Scheduling requests onto a model: Triton's dynamic batcher, or one request at a time.

With `dynamic_batching` in config.pbtxt, requests wait in a queue; a batch is dispatched when
it reaches max_batch_size rows or the largest preferred_batch_size, when a preferred size is
reached and nothing more is queued, or when the oldest request has waited
max_queue_delay_microseconds. While every instance is busy, requests keep queueing, so the
next batch takes them all. Each instance_group instance runs one batch at a time, in the
server's worker threads, so the event loop keeps serving; an ONNX model measured to execute in
well under a thread hand-off (INLINE_BUDGET) runs on the event loop instead, which for small
models costs less than the hop itself.
"""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import Executor

from .inference import InferRequest
from .model_config import ModelConfig, instance_count
from .tensors import InferenceServerError, Unavailable

# Expected execution time below which a batch runs on the event loop rather than in a worker
# thread: a hop through the thread pool costs 0.1-0.3 ms of GIL hand-offs on a busy machine.
INLINE_BUDGET = 0.0003


class Statistics:
    """Counts in the spirit of Triton's model statistics (inference vs execution counts)."""

    def __init__(self):
        self.inference_count = 0   # rows inferred
        self.execution_count = 0   # backend executions (batches)
        self.success_count = 0
        self.fail_count = 0
        self.batch_sizes: collections.Counter = collections.Counter()  # rows per execution -> count

    def as_dict(self) -> dict:
        return {"inference_count": self.inference_count, "execution_count": self.execution_count,
                "success_count": self.success_count, "fail_count": self.fail_count,
                "batch_sizes": dict(sorted(self.batch_sizes.items()))}


class Scheduler:
    def __init__(self, config: ModelConfig, backend, executor: Executor):
        self.config, self.backend, self.executor = config, backend, executor
        self.stats = Statistics()
        self.instances = instance_count(config)
        self.batching = config.HasField("dynamic_batching") and config.max_batch_size > 0
        db = config.dynamic_batching
        self.max_rows = config.max_batch_size
        self.preferred = sorted(set(db.preferred_batch_size))
        self.delay = db.max_queue_delay_microseconds / 1e6
        self._queue: collections.deque = collections.deque()
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(self.instances)
        self._workers: list[asyncio.Task] = []
        self._closed = False
        self._seconds_per_row: float | None = None  # moving average of measured executions
        self._running = 0  # executions in progress
        self._forming: list = []  # the batch being gathered (already off the queue)
        self.inline_allowed = getattr(backend, "runs_inline", False)

    def start(self) -> None:
        if self.batching and not self._workers:
            self._workers = [asyncio.create_task(self._batch_loop()) for _ in range(self.instances)]

    async def submit(self, request: InferRequest):
        if self._closed:
            raise Unavailable(f"model '{request.model_name}' is being unloaded")
        if not self.batching:
            async with self._slots:
                if self._closed:  # unloaded while this request waited for an instance
                    raise Unavailable(f"model '{request.model_name}' is being unloaded")
                result = (await self._execute([request]))[0]
        elif not self._queue and not self._running and self.delay == 0 and self._runs_inline(request):
            # nothing to batch with and nothing running: the batcher would dispatch this request
            # alone right away; run it here and skip two trips through the event loop
            result = (await self._execute([request]))[0]
        else:
            future = asyncio.get_running_loop().create_future()
            self._queue.append((request, future))
            self._arrived.set()
            result = await future
        if isinstance(result, Exception):
            raise result
        return result

    def pending(self) -> int:
        """Requests waiting for a batch to be dispatched."""
        return len(self._queue) + len(self._forming)

    async def close(self) -> None:
        """Stop taking requests; let queued and running ones finish (a batch being gathered
        is dispatched at once instead of waiting out its queue delay)."""
        self._closed = True
        self._arrived.set()
        while self.pending() or self._running:
            await asyncio.sleep(0.005)
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    # ---------------------------------------------------------------- internals
    def _rows(self, request: InferRequest) -> int:
        return request.batch_size(self.config.max_batch_size)

    async def _next_batch(self) -> list:
        while not self._queue:
            self._arrived.clear()
            await self._arrived.wait()
        batch = self._forming = [self._queue.popleft()]
        rows = self._rows(batch[0][0])
        deadline = time.monotonic() + self.delay
        target = self.preferred[-1] if self.preferred else self.max_rows
        while rows < target:
            if self._queue:
                next_rows = self._rows(self._queue[0][0])
                if rows + next_rows > self.max_rows:
                    break
                batch.append(self._queue.popleft())
                rows += next_rows
                continue
            if rows in self.preferred or self._closed:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                break
        self._forming = []
        return batch

    async def _batch_loop(self) -> None:
        while True:
            batch = await self._next_batch()
            requests = [request for request, _ in batch]
            try:
                results = await self._execute(requests)
            except asyncio.CancelledError:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(Unavailable("model unloaded"))
                raise
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)

    def _timed_execute(self, requests: list[InferRequest]) -> list:
        start = time.perf_counter()
        results = self.backend.execute(requests)
        per_row = (time.perf_counter() - start) / max(1, sum(self._rows(r) for r in requests))
        average = self._seconds_per_row
        if average is None or per_row < average:  # falls fast (the first run warms up) ...
            self._seconds_per_row = per_row if average is None else 0.5 * (average + per_row)
        else:  # ... and rises slowly: one run stretched by a busy machine is not the model's cost
            self._seconds_per_row = 0.95 * average + 0.05 * min(per_row, 4 * average)
        return results

    def _runs_inline(self, request: InferRequest) -> bool:
        return self._inline_rows(self._rows(request))

    def _inline_rows(self, rows: int) -> bool:
        """Only backends whose cost follows the rows (ONNX) run inline: a Python model may
        sleep or wait on I/O, which must never stall the event loop."""
        return self.inline_allowed and self._seconds_per_row is not None and \
            self._seconds_per_row * rows < INLINE_BUDGET

    async def _execute(self, requests: list[InferRequest]) -> list:
        rows = sum(self._rows(r) for r in requests)
        self._running += 1
        try:
            if self._inline_rows(rows):
                results = self._timed_execute(requests)
            else:
                results = await asyncio.get_running_loop().run_in_executor(
                    self.executor, self._timed_execute, requests)
        except InferenceServerError as exc:
            results = [exc] * len(requests)
        except Exception as exc:  # a backend bug fails this batch, never the server
            results = [InferenceServerError(f"model '{requests[0].model_name}' failed: "
                                            f"{type(exc).__name__}: {exc}")] * len(requests)
        finally:
            self._running -= 1
        self.stats.execution_count += 1
        self.stats.batch_sizes[rows] += 1
        for request, result in zip(requests, results):
            if isinstance(result, Exception):
                self.stats.fail_count += 1
            else:
                self.stats.success_count += 1
                self.stats.inference_count += self._rows(request)
        return results
