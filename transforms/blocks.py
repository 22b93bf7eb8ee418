"""Cut a replayed stream into blocks of events that share their windows.

A block may hold only records whose events land in the same training
window(s) and the same serving window, so windowing the block by its
timestamp is exact. :class:`BlockConfig` stores those window periods. It
cuts the arrival-ordered schedule wherever the slot changes, the block is
full, or (for the streaming replays) the watermark moves, so that a runner
gets every block at the point of the schedule where its records arrived.

Session windows depend on the gaps between events, which are unknown when a
block is cut, and count triggers would count blocks instead of events. The
default block size falls back to one event per element under them, and an
explicit one raises ValueError.
"""

import dataclasses
import logging
import math
from typing import Iterable, Iterator, List, Optional, Tuple

from apache_beam.utils.timestamp import Timestamp

from transforms.records import SourceRecord

_LOGGER = logging.getLogger(__name__)

# A slot that no other record shares: a record without an event time.
_ALONE = object()


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """How many records a block may hold, and the window periods that cut it.

    ``periods_micros`` are the lengths (in microseconds) of the grids that
    decide window membership: the fixed window size or the sliding period,
    and the serving window. Events whose timestamps fall in the same cell of
    every grid share all their windows.
    """

    size: int
    periods_micros: Tuple[int, ...] = ()

    def __post_init__(self):
        if self.size < 1:
            raise ValueError(f"Block size must be at least 1 event, got {self.size}; for example 256.")
        for period in self.periods_micros:
            if period < 1:
                raise ValueError(f"Block window periods must be positive microseconds, got {self.periods_micros}.")

    def slot(self, event_time: Optional[float]):
        """Return the grid cell of ``event_time``; records in one cell share their windows."""
        if event_time is None:
            return _ALONE
        # Beam timestamps an element at Timestamp.of(event_time), so the cell
        # uses the same conversion to agree with Beam's window assignment.
        micros = Timestamp.of(event_time).micros
        return tuple(micros // period for period in self.periods_micros)

    def cut(self, records: Iterable[SourceRecord], on_watermark: bool) -> Iterator[List[SourceRecord]]:
        """Yield consecutive runs of ``records`` that may travel as one block."""
        block: List[SourceRecord] = []
        block_slot = None
        for record in records:
            slot = self.slot(record.event_time)
            if block and (
                len(block) >= self.size
                or slot is _ALONE
                or slot != block_slot
                or (on_watermark and record.watermark != block[0].watermark)
            ):
                yield block
                block = []
            block.append(record)
            block_slot = slot
        if block:
            yield block


DEFAULT_BLOCK_SIZE = 256


def block_mode_problem(windowing_config) -> Optional[str]:
    """Return why blocks cannot carry events under ``windowing_config``, or None when they can."""
    window = windowing_config.window
    if window.kind == "session":
        return (f"session windows ({window}) end at gaps between events, which are unknown when a block is cut")
    trigger = windowing_config.trigger
    firings = [trigger.repeated, trigger.early, trigger.late]
    if any(firing is not None and firing.kind == "count" for firing in firings):
        return f"the count trigger {str(trigger)!r} would count blocks instead of events"
    return None


def block_config(size: Optional[int], windowing_config, serving_window_s: float) -> Optional[BlockConfig]:
    """Return the BlockConfig for ``--block_size`` and the job's windows, or None for one event per element.

    ``size`` None picks :data:`DEFAULT_BLOCK_SIZE` where the windowing allows
    blocks and one event per element where it does not. An explicit size
    raises ValueError for session windows and count triggers, under which a
    block cannot stand for its events.
    """
    problem = block_mode_problem(windowing_config)
    if size is None:
        if problem is not None:
            _LOGGER.info("Carrying one event per element because %s.", problem)
            return None
        size = DEFAULT_BLOCK_SIZE
    if size == 0:
        return None
    if size < 0:
        raise ValueError(f"--block_size must be 0 (one event per element) or positive, got {size}; for example 256.")
    if problem is not None:
        raise ValueError(
            f"--block_size={size} cannot be used here: {problem}. Use --block_size=0, or a fixed, sliding or "
            "global window with a watermark or processing-time trigger."
        )

    periods = [_micros(serving_window_s)]
    window = windowing_config.window
    if window.kind == "fixed":
        periods.append(_micros(window.size))
    elif window.kind == "sliding":
        # An event's set of sliding windows changes where a window starts (a
        # multiple of the period) or ends (a start plus the size), and both
        # lie on the grid of their greatest common divisor.
        periods.append(math.gcd(_micros(window.size), _micros(window.period)))
    return BlockConfig(size=size, periods_micros=tuple(periods))


def _micros(seconds: float) -> int:
    return Timestamp.of(seconds).micros

