"""The replay schedule of one recorded stream, and its Beam TestStream.

The lab replays a stream as a fixed list of steps, one step per arriving
element. Step ``i`` does three things in this order:

1. advance the TestStream's processing-time clock to element ``i``'s
   ``processing_time``, which fires due processing-time triggers;
2. advance the watermark to element ``i``'s ``watermark``, which fires
   on-time panes of windows that end at or before it;
3. add element ``i``, which may fire element-count triggers.

After the last step the watermark jumps to infinity, closing every window
at the last step's processing time. Because the schedule is plain data,
the processing time of every trigger firing can be derived from it after
the run (see ``firing.py``) instead of being read from a wall clock.

All times are float seconds. TestStream encodes watermarks, clock advances
and element timestamps in whole milliseconds, so every time here is floored
to a millisecond on construction.
"""

import math
from typing import Iterable, List, NamedTuple, Sequence

import apache_beam as beam
from apache_beam.testing.test_stream import TestStream
from apache_beam.utils.timestamp import Duration, Timestamp

from transforms.timestamps import MIN_WATERMARK_SECONDS

STREAM_KEY = "stream"

_MICROS_PER_MILLI = 1000


class LabElement(NamedTuple):
    """One event as the lab replays it.

    ``arrival`` is the element's position in the replayed arrival order.
    ``processing_time`` is the TestStream clock when the element arrives, in
    seconds since the replay started (the clock starts at 0).
    ``watermark`` is the event-time watermark in force when the element
    arrives (seconds since the Unix epoch, or -inf before the first
    advance), so a GroupByKey drops the element from any window that ends
    more than the allowed lateness before it.
    """

    id: str
    event_time: float
    arrival: int
    processing_time: float
    watermark: float


def floor_millis(seconds: float) -> float:
    """Floor ``seconds`` to a whole millisecond; infinities pass through."""
    if not math.isfinite(seconds):
        return seconds
    return math.floor(round(seconds * 1000, 6)) / 1000


def to_timestamp(seconds: float) -> Timestamp:
    """Convert millisecond-aligned seconds to an exact Beam Timestamp."""
    return Timestamp(micros=round(seconds * 1000) * _MICROS_PER_MILLI)


def head_processing_times(event_times: Sequence[float]) -> List[float]:
    """Derive each arrival's processing time from the stream's head.

    The clock of arrival ``i`` is the latest event time among arrivals
    ``0..i`` minus the first arrival's event time. So the replay runs at the
    speed of event time, and an element delayed by disorder or lateness
    arrives when the stream's head has moved past it. Times are seconds
    from the start of the replay.
    """
    times = []
    if not event_times:
        return times

    start = event_times[0]
    head = start
    for event_time in event_times:
        head = max(head, event_time)
        times.append(floor_millis(head - start))
    return times


def _watermark_seconds(watermark: float) -> float:
    if watermark <= MIN_WATERMARK_SECONDS:
        return -math.inf
    return floor_millis(watermark)


def make_elements(
        ids: Sequence[str],
        event_times: Sequence[float],
        watermarks: Sequence[float],
        processing_times: Sequence[float] = None) -> List[LabElement]:
    """Build the replay schedule from columns given in arrival order.

    ``watermarks[i]`` is the watermark in force when element ``i`` arrives;
    Beam's MIN_TIMESTAMP and anything below it mean no watermark yet.
    ``processing_times`` defaults to ``head_processing_times(event_times)``.

    Raises ValueError when the columns differ in length, when a watermark or
    processing time moves backwards, or when an event time is not after the
    last processing time (see ``check_elements``).
    """
    if processing_times is None:
        processing_times = head_processing_times(event_times)

    lengths = {len(ids), len(event_times), len(watermarks), len(processing_times)}
    if len(lengths) != 1:
        raise ValueError(
            f"ids, event_times, watermarks and processing_times must have the"
            f" same length, got {len(ids)}, {len(event_times)}, {len(watermarks)}"
            f" and {len(processing_times)}.")

    elements = [
        LabElement(
            id=str(event_id),
            event_time=floor_millis(event_time),
            arrival=arrival,
            processing_time=floor_millis(processing_time),
            watermark=_watermark_seconds(watermark))
        for arrival, (event_id, event_time, watermark, processing_time)
        in enumerate(zip(ids, event_times, watermarks, processing_times))
    ]
    check_elements(elements)
    return elements


def check_elements(elements: Sequence[LabElement]) -> None:
    """Raise ValueError unless ``elements`` form a schedule TestStream can replay.

    Arrival positions must be 0, 1, 2, ...; processing times and watermarks
    must never decrease. Event times must be later than the last processing
    time. Beam 2.77's Python trigger driver labels a pane fired by a
    processing-time timer by comparing the timer's clock time with the
    window end. A clock that reaches the event times, as in a toy stream
    where both count from 0, turns early panes into late ones.
    """
    previous = None
    for position, element in enumerate(elements):
        if element.arrival != position:
            raise ValueError(
                f"Element {element.id!r} has arrival {element.arrival}, expected"
                f" {position}: pass elements in arrival order, numbered from 0.")
        if previous is not None and element.processing_time < previous.processing_time:
            raise ValueError(
                f"Processing time moves backwards at arrival {position}: "
                f"{element.processing_time} after {previous.processing_time}.")
        if previous is not None and element.watermark < previous.watermark:
            raise ValueError(
                f"Watermark moves backwards at arrival {position}: "
                f"{element.watermark} after {previous.watermark}; a watermark"
                " never decreases.")
        previous = element

    if elements:
        last_clock = elements[-1].processing_time
        earliest = min(element.event_time for element in elements)
        if earliest <= last_clock:
            raise ValueError(
                f"Event time {earliest} is not after the last processing time"
                f" {last_clock}; use event times in seconds since the Unix epoch,"
                " for example 1.7e9 and later.")


def build_test_stream(
        elements: Iterable[LabElement],
        drain_seconds: float = 0.0,
        key: str = STREAM_KEY) -> TestStream:
    """Build the TestStream that replays ``elements`` as described above.

    Each output element is ``(key, LabElement)`` with the event time as its
    timestamp. One key keeps one trigger state per window, so every element
    of a window counts towards the same panes.
    """
    test_stream = TestStream()
    clock = 0.0
    watermark = -math.inf

    for element in elements:
        if element.processing_time > clock:
            advance_millis = round((element.processing_time - clock) * 1000)
            test_stream.advance_processing_time(
                Duration(micros=advance_millis * _MICROS_PER_MILLI))
            clock = element.processing_time

        if element.watermark > watermark:
            test_stream.advance_watermark_to(to_timestamp(element.watermark))
            watermark = element.watermark

        test_stream.add_elements([
            beam.window.TimestampedValue(
                (key, element), to_timestamp(element.event_time))
        ])

    drain_millis = round(drain_seconds * 1000)
    if drain_millis > 0:
        test_stream.advance_processing_time(
            Duration(micros=drain_millis * _MICROS_PER_MILLI))
    return test_stream.advance_watermark_to_infinity()
