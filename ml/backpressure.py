"""Batch-size control by additive increase / multiplicative decrease (AIMD).

The controller reads three signals after every step: the step latency
against a target, the fraction of device memory in use, and out-of-memory
events. It grows the batch size by a fixed step while all signals are
healthy and cuts it by a factor when one is not, the congestion-control rule
TCP uses for its window. Signal sources and the clock are injected, so the
controller itself never touches a device.
"""

import collections
import logging
import os
import resource
import sys
import threading
import time
from typing import Callable, NamedTuple, Optional

_LOGGER = logging.getLogger(__name__)

INITIAL = "initial"
INCREASE = "increase"
LATENCY = "latency"
MEMORY = "memory"
OOM = "oom"

MemoryProbe = Callable[[], float]


class BatchSizeChange(NamedTuple):
    """One change of the batch size.

    ``time`` is a reading of the controller's clock in seconds, ``reason`` one
    of ``initial``, ``increase``, ``latency``, ``memory`` or ``oom``.
    """

    time: float
    batch_size: int
    reason: str


class BatchSizeController:
    """Choose the next batch size from measured latency, memory and OOMs.

    After a step that used the full current batch size and met every target,
    the size grows by ``additive_step`` (or doubles while ``slow_start`` is on,
    until the first decrease). A step slower than ``target_latency_ms``, a
    memory reading at or above ``memory_high_fraction``, or an out-of-memory
    error multiplies the size by ``decrease_factor``. Latency and
    out-of-memory decreases are computed from the batch size the step ran
    with, so late reports about an older, larger size do not compound.

    The smallest batch size that ran out of memory becomes a ceiling for the
    controller's lifetime: the size never grows back to it. For ``cooldown_s``
    seconds after a decrease the controller ignores latency and memory signals
    and does not grow. Out-of-memory errors always act.

    Methods are thread-safe.
    """

    def __init__(
        self,
        initial: int,
        *,
        min_size: int = 1,
        max_size: int = 1024,
        additive_step: int = 1,
        decrease_factor: float = 0.5,
        target_latency_ms: Optional[float] = None,
        memory_high_fraction: float = 0.9,
        cooldown_s: float = 0.0,
        slow_start: bool = False,
        clock: Callable[[], float] = time.monotonic,
        memory_probe: Optional[MemoryProbe] = None,
        history_size: int = 1024,
    ):
        _validate_sizes(initial, min_size, max_size, additive_step)
        _validate_signals(
            decrease_factor, target_latency_ms, memory_high_fraction, cooldown_s
        )
        _validate_sources(clock, memory_probe, history_size)

        self.min_size = min_size
        self.max_size = max_size
        self.additive_step = additive_step
        self.decrease_factor = decrease_factor
        self.target_latency_ms = target_latency_ms
        self.memory_high_fraction = memory_high_fraction
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._memory_probe = memory_probe

        self._lock = threading.Lock()
        self._batch_size = initial
        self._slow_start = slow_start
        self._oom_ceiling: Optional[int] = None
        self._last_decrease_time: Optional[float] = None
        self._last_memory_fraction: Optional[float] = None
        self._history = collections.deque(maxlen=history_size)
        self._history.append(BatchSizeChange(clock(), initial, INITIAL))

    @property
    def batch_size(self) -> int:
        """The batch size the next step should use."""
        with self._lock:
            return self._batch_size

    @property
    def oom_ceiling(self) -> Optional[int]:
        """The smallest batch size that ran out of memory, or None."""
        with self._lock:
            return self._oom_ceiling

    @property
    def last_memory_fraction(self) -> Optional[float]:
        """The latest memory probe reading (fraction in use), or None."""
        with self._lock:
            return self._last_memory_fraction

    @property
    def history(self) -> list:
        """The latest ``history_size`` changes, oldest first."""
        with self._lock:
            return list(self._history)

    def record_step(self, batch_size: int, latency_ms: float) -> int:
        """Update the batch size after a step and return the new size.

        ``batch_size`` is the number of elements the step processed and
        ``latency_ms`` its wall-clock duration in milliseconds. A step smaller
        than the current size (for example the tail of a bundle) can trigger a
        decrease but never an increase, because it does not show whether
        the current size is safe.
        """
        _require_positive_int("batch_size", batch_size)
        if not latency_ms >= 0:
            raise ValueError(
                f"latency_ms must be a non-negative number of milliseconds, "
                f"got {latency_ms!r}; pass the measured step duration."
            )

        memory_fraction = self._memory_probe() if self._memory_probe else None
        with self._lock:
            self._last_memory_fraction = memory_fraction
            now = self._clock()
            if self._in_cooldown(now):
                return self._batch_size

            if memory_fraction is not None and memory_fraction >= self.memory_high_fraction:
                # Memory in use is a reading of the device, not of this step,
                # so the cut applies to the current size.
                self._decrease(now, self._batch_size, MEMORY)
            elif self.target_latency_ms is not None and latency_ms > self.target_latency_ms:
                self._decrease(now, batch_size, LATENCY)
            elif batch_size >= self._batch_size:
                self._increase(now)
            return self._batch_size

    def record_oom(self, batch_size: int) -> int:
        """Cut the batch size after an out-of-memory error and return it.

        ``batch_size`` is the size of the batch that failed. It also lowers
        the ceiling that later increases stay below.
        """
        _require_positive_int("batch_size", batch_size)
        with self._lock:
            now = self._clock()
            if self._oom_ceiling is None or batch_size < self._oom_ceiling:
                self._oom_ceiling = batch_size
            self._decrease(now, batch_size, OOM)
            return self._batch_size

    def _in_cooldown(self, now: float) -> bool:
        if self._last_decrease_time is None:
            return False
        return now - self._last_decrease_time < self.cooldown_s

    def _decrease(self, now: float, basis_size: int, reason: str) -> None:
        self._slow_start = False
        self._last_decrease_time = now
        reduced = max(self.min_size, int(basis_size * self.decrease_factor))
        new_size = min(self._batch_size, reduced)
        _LOGGER.debug(
            "Batch size %d -> %d (%s at batch size %d).",
            self._batch_size, new_size, reason, basis_size,
        )
        self._set(now, new_size, reason)

    def _increase(self, now: float) -> None:
        if self._slow_start:
            grown = self._batch_size * 2
        else:
            grown = self._batch_size + self.additive_step

        limit = self.max_size
        if self._oom_ceiling is not None:
            limit = min(limit, max(self.min_size, self._oom_ceiling - 1))
        self._set(now, min(grown, limit), INCREASE)

    def _set(self, now: float, new_size: int, reason: str) -> None:
        if new_size == self._batch_size:
            return
        self._batch_size = new_size
        self._history.append(BatchSizeChange(now, new_size, reason))


def cuda_memory_probe(device=None, *, cuda_api=None) -> MemoryProbe:
    """Return a probe of the fraction of a CUDA device's memory in use.

    The reading is ``(total - free - reserved + peak_allocated) / total``.
    Memory that PyTorch's caching allocator has reserved but not handed out
    counts as free, because this process can reuse it without a new
    allocation. This process's share is the peak allocation since the
    previous reading, because activations are already freed when a step
    returns. Memory held by other processes counts as used.

    Each reading resets the device's peak-memory statistics
    (``torch.cuda.reset_peak_memory_stats``), so other readers of those
    statistics get only the interval since the last probe. ``cuda_api``
    replaces ``torch.cuda`` in tests.
    """
    if cuda_api is None:
        import torch  # Deferred so the controller imports without PyTorch.

        cuda_api = torch.cuda

    def probe() -> float:
        free_bytes, total_bytes = cuda_api.mem_get_info(device)
        reserved_bytes = cuda_api.memory_reserved(device)
        peak_bytes = cuda_api.max_memory_allocated(device)
        cuda_api.reset_peak_memory_stats(device)
        used_bytes = total_bytes - free_bytes - reserved_bytes + peak_bytes
        return used_bytes / total_bytes

    return probe


def rss_memory_probe(limit_bytes: int, *, statm_path: str = "/proc/self/statm") -> MemoryProbe:
    """Return a probe of this process's resident set size as a fraction of ``limit_bytes``.

    The resident size comes from ``statm_path`` (Linux). Where that file does
    not exist the probe falls back to ``resource.getrusage``'s peak resident
    size, which never decreases, so there the controller can only shrink the
    batch size.
    """
    _require_positive_int("limit_bytes", limit_bytes)
    page_bytes = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def probe() -> float:
        try:
            with open(statm_path, encoding="ascii") as statm:
                resident_pages = int(statm.read().split()[1])
            return resident_pages * page_bytes / limit_bytes
        except FileNotFoundError:
            return _peak_rss_bytes() / limit_bytes

    return probe


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # getrusage reports kibibytes on Linux and bytes on macOS.
    return peak if sys.platform == "darwin" else peak * 1024


def _require_positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _validate_sizes(initial, min_size, max_size, additive_step) -> None:
    _require_positive_int("min_size", min_size)
    _require_positive_int("max_size", max_size)
    _require_positive_int("additive_step", additive_step)
    _require_positive_int("initial", initial)
    if max_size < min_size:
        raise ValueError(
            f"max_size must be at least min_size ({min_size}), got {max_size}; "
            f"raise max_size or lower min_size."
        )
    if not min_size <= initial <= max_size:
        raise ValueError(
            f"initial must lie in [min_size, max_size] = [{min_size}, {max_size}], "
            f"got {initial}; pick a starting batch size inside that range."
        )


def _validate_signals(decrease_factor, target_latency_ms, memory_high_fraction, cooldown_s) -> None:
    if not 0 < decrease_factor < 1:
        raise ValueError(
            f"decrease_factor must lie strictly between 0 and 1, got {decrease_factor!r}; "
            f"0.5 halves the batch size on each decrease."
        )
    if target_latency_ms is not None and not target_latency_ms > 0:
        raise ValueError(
            f"target_latency_ms must be a positive number of milliseconds or None, "
            f"got {target_latency_ms!r}; pass None to ignore latency."
        )
    if not 0 < memory_high_fraction <= 1:
        raise ValueError(
            f"memory_high_fraction must lie in (0, 1], got {memory_high_fraction!r}; "
            f"0.9 decreases the batch size when 90% of memory is in use."
        )
    if not cooldown_s >= 0:
        raise ValueError(
            f"cooldown_s must be a non-negative number of seconds, got {cooldown_s!r}; "
            f"pass 0 to react to every step."
        )


def _validate_sources(clock, memory_probe, history_size) -> None:
    if not callable(clock):
        raise ValueError(
            f"clock must be a callable returning seconds, got {clock!r}; "
            f"pass time.monotonic."
        )
    if memory_probe is not None and not callable(memory_probe):
        raise ValueError(
            f"memory_probe must be a callable returning the fraction of memory in use, "
            f"or None, got {memory_probe!r}; see cuda_memory_probe and rss_memory_probe."
        )
    _require_positive_int("history_size", history_size)
