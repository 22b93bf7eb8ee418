"""A bounded, prefetching loader between a data source and a training loop.

A producer thread pulls items from the source into a queue while the
consumer trains on earlier ones. The producer pauses when the queue depth
reaches the high watermark and resumes once the depth falls below the low
watermark. A slow consumer therefore bounds the memory in the queue instead
of letting it grow with the stream.
"""

import collections
import logging
import threading
import time
from typing import Any, Iterable, NamedTuple, Optional, Union

import torch

_LOGGER = logging.getLogger(__name__)


class LoaderStats(NamedTuple):
    """A snapshot of a :class:`StreamingLoader`'s counters.

    ``depth`` and ``max_depth`` count items in the queue now and at most.
    ``producer_blocked_s`` is the time in seconds the producer waited for
    the queue to drain below the low watermark, and ``consumer_blocked_s``
    the time the consumer waited on an empty queue.
    """

    depth: int
    max_depth: int
    produced: int
    consumed: int
    producer_blocked_s: float
    consumer_blocked_s: float


class StreamingLoader:
    """Iterate over ``source`` through a bounded queue filled by a producer thread.

    Items arrive in source order. When ``device`` is a CUDA device, the
    tensors in each item (alone or inside tuples, lists and dicts) are copied
    there by the consumer. With ``pin_memory`` the producer first pins them
    in page-locked host memory, so the copy is issued with
    ``non_blocking=True`` and overlaps with computation. For any other device
    the tensors are moved with a plain ``.to(device)``, and with
    ``device=None`` items pass through unchanged.

    An exception raised by the source is raised to the consumer after the
    items produced before it. Use the loader as a context manager, or call
    :meth:`close`, to stop the producer.
    """

    def __init__(
        self,
        source: Iterable,
        *,
        high_watermark: int = 8,
        low_watermark: Optional[int] = None,
        device: Union[str, torch.device, None] = None,
        pin_memory: bool = False,
        join_timeout_s: float = 5.0,
    ):
        if low_watermark is None:
            low_watermark = max(1, high_watermark // 2)
        _validate_watermarks(high_watermark, low_watermark)
        if not join_timeout_s >= 0:
            raise ValueError(
                f"join_timeout_s must be a non-negative number of seconds, "
                f"got {join_timeout_s!r}; close() waits this long for the producer."
            )

        self.high_watermark = high_watermark
        self.low_watermark = low_watermark
        self.device = torch.device(device) if device is not None else None
        self.join_timeout_s = join_timeout_s
        is_cuda = self.device is not None and self.device.type == "cuda"
        self._pin = pin_memory and is_cuda
        self._source = source

        self._condition = threading.Condition()
        self._queue = collections.deque()
        self._paused = False
        self._stopped = False
        self._finished = False
        self._error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None

        self._max_depth = 0
        self._produced = 0
        self._consumed = 0
        self._producer_blocked_s = 0.0
        self._consumer_blocked_s = 0.0

    def start(self) -> "StreamingLoader":
        """Start the producer thread unless it already runs, and return self."""
        with self._condition:
            if self._thread is not None or self._stopped:
                return self
            self._thread = threading.Thread(
                target=self._produce, name="StreamingLoaderProducer", daemon=True
            )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the producer, drop the queued items and wait for the thread to end.

        A producer blocked inside the source's ``next`` cannot be interrupted,
        so after ``join_timeout_s`` seconds the daemon thread is left behind
        with a warning.
        """
        with self._condition:
            self._stopped = True
            self._queue.clear()
            self._condition.notify_all()

        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        thread.join(self.join_timeout_s)
        if thread.is_alive():
            _LOGGER.warning(
                "StreamingLoader producer still blocked in the source after %.1f s; "
                "leaving the daemon thread behind.",
                self.join_timeout_s,
            )

    def stats(self) -> LoaderStats:
        """Return a snapshot of the counters."""
        with self._condition:
            return LoaderStats(
                depth=len(self._queue),
                max_depth=self._max_depth,
                produced=self._produced,
                consumed=self._consumed,
                producer_blocked_s=self._producer_blocked_s,
                consumer_blocked_s=self._consumer_blocked_s,
            )

    def __enter__(self) -> "StreamingLoader":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __iter__(self) -> "StreamingLoader":
        return self.start()

    def __next__(self) -> Any:
        self.start()
        item = self._take()
        if self.device is None:
            return item
        return to_device(item, self.device, non_blocking=self._pin)

    def _take(self) -> Any:
        with self._condition:
            if not self._queue and not self._finished and not self._stopped:
                started = time.monotonic()
                while not self._queue and not self._finished and not self._stopped:
                    self._condition.wait()
                self._consumer_blocked_s += time.monotonic() - started

            if self._queue:
                item = self._queue.popleft()
                self._consumed += 1
                if self._paused and len(self._queue) < self.low_watermark:
                    self._paused = False
                    self._condition.notify_all()
                return item

            if self._error is not None and not self._stopped:
                raise self._error
            raise StopIteration

    def _produce(self) -> None:
        try:
            iterator = iter(self._source)
            while self._wait_until_resumed():
                try:
                    item = next(iterator)
                except StopIteration:
                    break
                if self._pin:
                    item = pin_tensors(item)
                self._put(item)
        except Exception as exc:  # Raised again in the consumer's thread.
            _LOGGER.debug("StreamingLoader source raised %r.", exc)
            with self._condition:
                self._error = exc
        finally:
            with self._condition:
                self._finished = True
                self._condition.notify_all()

    def _wait_until_resumed(self) -> bool:
        """Block while the queue is above the low watermark; return False once stopped."""
        with self._condition:
            if self._paused and not self._stopped:
                started = time.monotonic()
                while self._paused and not self._stopped:
                    self._condition.wait()
                self._producer_blocked_s += time.monotonic() - started
            return not self._stopped

    def _put(self, item: Any) -> None:
        with self._condition:
            if self._stopped:
                return
            self._queue.append(item)
            self._produced += 1
            self._max_depth = max(self._max_depth, len(self._queue))
            if len(self._queue) >= self.high_watermark:
                self._paused = True
            self._condition.notify_all()


def pin_tensors(item: Any) -> Any:
    """Return ``item`` with every tensor in it copied to pinned host memory."""
    return _map_tensors(item, lambda tensor: tensor.pin_memory())


def to_device(item: Any, device: torch.device, *, non_blocking: bool = False) -> Any:
    """Return ``item`` with every tensor in it moved to ``device``.

    ``non_blocking=True`` makes a copy from pinned memory to a CUDA device
    asynchronous. From pageable memory the copy is synchronous either way.
    """
    return _map_tensors(item, lambda tensor: tensor.to(device, non_blocking=non_blocking))


def _map_tensors(item: Any, fn) -> Any:
    if isinstance(item, torch.Tensor):
        return fn(item)
    if isinstance(item, dict):
        return {key: _map_tensors(value, fn) for key, value in item.items()}
    if isinstance(item, tuple) and hasattr(item, "_fields"):
        return type(item)(*(_map_tensors(value, fn) for value in item))
    if isinstance(item, (tuple, list)):
        return type(item)(_map_tensors(value, fn) for value in item)
    return item


def _validate_watermarks(high_watermark, low_watermark) -> None:
    if not isinstance(high_watermark, int) or isinstance(high_watermark, bool) or high_watermark < 1:
        raise ValueError(
            f"high_watermark must be a positive integer, got {high_watermark!r}; "
            f"pass the number of items the queue may hold."
        )
    if (
        not isinstance(low_watermark, int)
        or isinstance(low_watermark, bool)
        or not 1 <= low_watermark <= high_watermark
    ):
        raise ValueError(
            f"low_watermark must be an integer in [1, high_watermark] = [1, {high_watermark}], "
            f"got {low_watermark!r}; the producer resumes once the queue depth falls below it."
        )
