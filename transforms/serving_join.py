"""Join each event with its serving window's record through a GroupByKey.

Versioned inference serves an event in serving window W = [a, a + S) with
the version of W's :class:`ServingRecord`, or with the initial version when
W has none. The trainer emits that record from an event-time timer at a,
and that timer holds the trainer's output watermark at a, so the record is
not late. A side input gives this pairing in batch. In streaming, Prism
(Beam 2.77) holds back a main input whose side input comes from a timer's
output until the source has ended, so every prediction would wait for the
end of the stream. This join needs no side input:

* Events and records are keyed by (window start in microseconds, shard)
  and grouped in the serving windows, with their allowed lateness. A
  record goes to every shard of its window.
* The on-time pane of a window contains its events and its record, if the
  window has one. A late pane contains late events only, so a stateful
  DoFn keeps each window's record, or the initial version where the
  window had none, until the window expires.

The join keeps no events in user state. Prism (Beam 2.77) ran two bundles
of one key of a stateful DoFn at the same time, and events that one of
them added to a bag state were lost.

A record that arrives after events of its window were served, because the
runner did not hold its watermark for the trainer's timer, is counted in
``records_after_serving`` and logged: those events got an older version.
The legacy DirectRunner (Beam 2.77) sets no watermark holds for timers at
all, so :class:`VersionedInference` keeps the side input on that runner.
"""

import logging
import math
import zlib
from typing import Any, Iterator, Optional, Tuple

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.transforms.userstate import TimerSpec
from apache_beam.transforms.userstate import on_timer
from apache_beam.utils.timestamp import Duration, Timestamp

from ml.store import PublishedVersion
from transforms.records import Block
from transforms.training import ServingRecord

_LOGGER = logging.getLogger(__name__)

METRICS_NAMESPACE = "ServingJoin"

_EVENT = 0
_RECORD = 1


def select_as_of(event_time: float, records, fallback: PublishedVersion) -> PublishedVersion:
    """Return the newest version trained on labels at or before ``event_time``."""
    best = fallback
    for record in records:
        version = record.version
        if version.training_watermark <= event_time and version.version > best.version:
            best = version
    return best


def serving_window_key(timestamp: Timestamp, size_micros: int) -> int:
    """Return the start (microseconds) of the fixed window of ``size_micros`` that contains ``timestamp``.

    It is the window that ``beam.window.FixedWindows`` assigns.
    """
    return timestamp.micros - timestamp.micros % size_micros


def window_for_serving(serving_window_s: float, allowed_lateness_s: float) -> beam.WindowInto:
    """Return the WindowInto of served events: fixed serving windows with ``allowed_lateness_s``.

    NOTE: with unbounded lateness (``math.inf``) the windows get none, so a
    GroupByKey downstream drops what arrives after its window ends.
    """
    lateness = Duration.of(_finite_lateness_s(allowed_lateness_s))
    return beam.WindowInto(beam.window.FixedWindows(serving_window_s), allowed_lateness=lateness)


def _finite_lateness_s(allowed_lateness_s: float) -> float:
    return 0.0 if math.isinf(allowed_lateness_s) else allowed_lateness_s


def _shard(item, shards: int) -> int:
    if shards == 1:
        return 0
    event = item.items[0] if isinstance(item, Block) else item
    return zlib.crc32(event.id.encode("utf-8")) % shards


@beam.typehints.with_output_types(Tuple[Tuple[int, int], Tuple[int, Any]])
class _KeyByServingWindow(beam.DoFn):
    """Key events and serving records by (window start in microseconds, shard).

    The KV output type gives runners a KV coder with a deterministic key.
    A record goes to every shard of its window.
    """

    def __init__(self, size_micros: int, shards: int):
        self._size_micros = size_micros
        self._shards = shards

    def process(self, item, timestamp=beam.DoFn.TimestampParam):
        start = serving_window_key(timestamp, self._size_micros)
        if isinstance(item, ServingRecord):
            for shard in range(self._shards):
                yield (start, shard), (_RECORD, item)
            return
        yield (start, _shard(item, self._shards)), (_EVENT, item)


def pair_with_version(item, record: Optional[ServingRecord],
                      initial_version: PublishedVersion) -> Iterator[Tuple[PublishedVersion, object]]:
    """Yield ``(version, item)`` pairs, splitting a Block whose events select different versions."""
    records = () if record is None else (record,)
    if not isinstance(item, Block):
        yield select_as_of(item.event_time, records, initial_version), item
        return

    groups = {}
    for event in item.items:
        version = select_as_of(event.event_time, records, initial_version)
        groups.setdefault(version.version, (version, []))[1].append(event)
    for version, events in groups.values():
        yield version, (item if len(groups) == 1 else Block(events))


class _ServeWindowPanes(beam.DoFn):
    """Pair the events of each pane of a serving window with the window's record.

    Takes the panes of the GroupByKey per (window start, shard), moved to
    the global window. The on-time pane contains the window's record,
    because the trainer's timer holds the watermark for it. A late pane contains only late
    events, so the record, or the initial version where the window had
    none, stays in state until ``allowed_lateness_micros`` after the window
    ends. The state is in the global window because Prism (Beam 2.77)
    dropped a serving window's state before its late panes read it.
    """

    RECORD = ReadModifyWriteStateSpec("serving_record", PickleCoder())
    EXPIRE = TimerSpec("expire", TimeDomain.WATERMARK)

    def __init__(self, size_micros: int, initial_version: PublishedVersion, allowed_lateness_micros: int):
        self._size_micros = size_micros
        self._initial = initial_version
        self._lateness_micros = allowed_lateness_micros
        self.windows_without_record = Metrics.counter(METRICS_NAMESPACE, "windows_without_record")
        self.late_panes = Metrics.counter(METRICS_NAMESPACE, "late_panes")
        self.records_after_serving = Metrics.counter(METRICS_NAMESPACE, "records_after_serving")

    def process(
        self,
        element,
        record_state=beam.DoFn.StateParam(RECORD),
        expire=beam.DoFn.TimerParam(EXPIRE),
    ):
        key, tagged = element
        records = [value for kind, value in tagged if kind == _RECORD]
        events = [value for kind, value in tagged if kind == _EVENT]

        record = self._window_record(key, records, record_state, expire)
        for item in events:
            for pair in pair_with_version(item, record, self._initial):
                yield beam.window.TimestampedValue(pair, _event_timestamp(pair[1]))

    @on_timer(EXPIRE)
    def expire(self, record_state=beam.DoFn.StateParam(RECORD)):
        record_state.clear()

    def _window_record(self, key, records, record_state, expire) -> ServingRecord:
        if records:
            record = max(records, key=lambda candidate: candidate.version.version)
            self._check_not_served(record_state.read(), record)
        else:
            stored = record_state.read()
            if stored is not None:
                self.late_panes.inc()
                return stored
            # No record in the first pane: no trained version existed at the
            # window's start.
            record = ServingRecord(key[0] / 1e6, self._initial)
            if key[1] == 0:
                self.windows_without_record.inc()

        record_state.write(record)
        expire.set(Timestamp(micros=key[0] + self._size_micros + self._lateness_micros))
        return record


    def _check_not_served(self, stored: Optional[ServingRecord], record: ServingRecord) -> None:
        if stored is None or stored.version.version == record.version.version:
            return
        # The record came in a later pane than events of its window, so the
        # runner did not hold its watermark for the trainer's timer.
        self.records_after_serving.inc()
        _LOGGER.warning(
            "The serving record of the window at %s (version %d) arrived after events of that window were "
            "served with version %d, because the runner's watermark passed the window before the record.",
            record.window_start, record.version.version, stored.version.version,
        )


def _event_timestamp(item) -> float:
    if isinstance(item, Block):
        return min(event.event_time for event in item.items)
    return item.event_time


class JoinServingRecords(beam.PTransform):
    """Pair events (or Blocks of them) with their serving window's version.

    Takes timestamped events in any windowing. Returns ``(PublishedVersion,
    item)`` pairs windowed in fixed serving windows of ``serving_window_s``,
    with ``allowed_lateness_s`` of allowed lateness, at the events' times (a
    Block's earliest). A window's events leave when its on-time pane fires.

    Args:
      serving_window_s: the serving window size in seconds.
      initial_version: the version that serves windows without a record.
      serving_records: the trainer's :class:`ServingRecord`s, at most one per
        window, each timestamped at its window's start.
      allowed_lateness_s: how long after its window ends an event may still
        arrive and be served with the window's record. ``math.inf`` counts
        as 0 (see :func:`window_for_serving`).
      shards: keys per serving window. More shards spread one window's
        events over more workers, and each shard costs one record copy,
        one state value and one timer per window.
    """

    def __init__(self, serving_window_s: float, initial_version: PublishedVersion, serving_records,
                 allowed_lateness_s: float = 0.0, shards: int = 1):
        super().__init__()
        if not allowed_lateness_s >= 0:
            raise ValueError(f"allowed_lateness_s must be 0 or more seconds, got {allowed_lateness_s}.")
        if shards < 1:
            raise ValueError(f"shards must be at least 1, got {shards}.")
        self.serving_window_s = serving_window_s
        self.initial_version = initial_version
        self.serving_records = serving_records
        self.allowed_lateness_s = allowed_lateness_s
        self.shards = shards

    def expand(self, events):
        size_micros = Duration.of(self.serving_window_s).micros
        keyed = (
            (
                events | "EventsToGlobalWindow" >> beam.WindowInto(beam.window.GlobalWindows()),
                self.serving_records | "RecordsToGlobalWindow" >> beam.WindowInto(beam.window.GlobalWindows()),
            )
            | "FlattenEventsAndRecords" >> beam.Flatten()
            | "KeyByServingWindow" >> beam.ParDo(_KeyByServingWindow(size_micros, self.shards))
        )
        panes = (
            keyed
            | "WindowForServing" >> window_for_serving(self.serving_window_s, self.allowed_lateness_s)
            | "GroupByServingWindow" >> beam.GroupByKey()
            | "PanesToGlobalWindow" >> beam.WindowInto(beam.window.GlobalWindows())
        )
        lateness_micros = Duration.of(_finite_lateness_s(self.allowed_lateness_s)).micros
        return (
            panes
            | "ServeWindowPanes" >> beam.ParDo(_ServeWindowPanes(size_micros, self.initial_version, lateness_micros))
            | "WindowServed" >> window_for_serving(self.serving_window_s, self.allowed_lateness_s)
        )
