"""Deterministic event-time replay of a source, with disorder and late data.

The replay decides, from a seed, the order in which records arrive and the
event-time watermark in force at each arrival. One arrival plan decides
both, :func:`replay_schedule` applies it to a list of records and
:func:`iter_replay` to a source read as it goes, and every mode of
:class:`ReadEvents` replays it, so a record's ``arrival`` and ``watermark``
fields are the same on every runner.

The schedule:

1. Records keep file order, except a ``disorder_fraction`` of them, each
   moved later by a delay drawn uniformly from [0, max_disorder) seconds. A
   moved record with event time t arrives just before the first record, in
   file order, whose running maximum event time exceeds t + delay.
2. A ``late_fraction`` of the records is held back until the watermark has
   passed its event time by at least ``late_delay`` seconds.
3. Arrivals are counted in chunks of ``records_per_watermark_update``. After
   each chunk the watermark becomes the maximum event time seen so far minus
   ``max_out_of_orderness``. It never decreases, and it starts at Beam's
   MIN_TIMESTAMP.

Records without an event time (their timestamp failed to parse, or the row
was malformed) are never moved or held back.

The schedule sets no processing time. In mode ``"sdf"`` a ``rate`` paces
the replay to that many records per second, like a live stream. Prism has
no backpressure, so a source that outruns the rest of the job leaves its
backlog in Prism's memory, which then grows with the stream. A rate below
the job's throughput keeps that backlog, and the memory, bounded.
"""

import argparse
import collections
import dataclasses
import functools
import itertools
import logging
import math
import threading
import time
from typing import Any, Deque, Iterable, Iterator, List, NamedTuple, Optional, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from transforms.blocks import BlockConfig
from transforms.records import Block, SourceRecord
from transforms.sources import SourceConfig, read_source_records, resolve_source_config
from transforms.timestamps import MIN_WATERMARK_SECONDS, to_beam_timestamp

_LOGGER = logging.getLogger(__name__)

MODES = ("batch", "teststream", "sdf")

_METRICS_NAMESPACE = "replay"


@dataclasses.dataclass(frozen=True)
class ReplayConfig:
    """Replay settings. Durations are in seconds of event time.

    ``rate`` is in records per second of processing time, and only the
    splittable DoFn (mode ``"sdf"``) follows it; 0 emits the records as fast
    as the runner takes them.

    ``late_fraction`` is a fraction of the records that can become late: those
    whose event time is at least ``max_out_of_orderness + late_delay`` before
    the largest event time of the input. Records near the end of the input
    cannot fall behind the final watermark by ``late_delay``.
    """

    max_out_of_orderness: float = 0.0
    disorder_fraction: float = 0.0
    max_disorder: float = 0.0
    late_fraction: float = 0.0
    late_delay: float = 0.0
    records_per_watermark_update: int = 100
    seed: int = 0
    rate: float = 0.0

    def __post_init__(self):
        for name in ("max_out_of_orderness", "max_disorder", "late_delay"):
            _check_duration(name, getattr(self, name))
        _check_rate(self.rate)
        for name in ("disorder_fraction", "late_fraction"):
            _check_fraction(name, getattr(self, name))

        if self.disorder_fraction > 0 and self.max_disorder == 0:
            raise ValueError(
                f"--disorder_fraction {self.disorder_fraction} needs a positive "
                "--max_disorder, for example --max_disorder=30."
            )
        if self.late_fraction > 0 and self.late_delay == 0:
            raise ValueError(
                f"--late_fraction {self.late_fraction} needs a positive --late_delay, "
                "for example --late_delay=60."
            )
        per_update = self.records_per_watermark_update
        if isinstance(per_update, bool) or not isinstance(per_update, int) or per_update < 1:
            raise ValueError(
                f"Invalid --records_per_watermark_update {per_update!r}: expected a "
                "positive integer, for example --records_per_watermark_update=100."
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(
                f"Invalid --seed {self.seed!r}: expected a non-negative integer, "
                "for example --seed=0."
            )


def _check_duration(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Invalid --{name} {value!r}: expected seconds, for example --{name}=5.")
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"Invalid --{name} {value!r}: expected a finite number of seconds >= 0, "
            f"for example --{name}=5."
        )


def _check_rate(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(
            f"Invalid --replay_rate {value!r}: expected records per second >= 0 (0 replays as fast "
            "as the runner takes the records), for example --replay_rate=1000."
        )


def _check_fraction(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(
            f"Invalid --{name} {value!r}: expected a fraction between 0 and 1, "
            f"for example --{name}=0.05."
        )


def add_replay_options(parser: argparse.ArgumentParser) -> None:
    """Add the replay flags to an argparse parser or a PipelineOptions parser.

    The replay seed is the source's ``--seed``, added by add_source_options.
    """
    group = parser.add_argument_group("replay")
    group.add_argument(
        "--max_out_of_orderness",
        type=float,
        default=0.0,
        help="Seconds the watermark trails the largest event time seen.",
    )
    group.add_argument(
        "--disorder_fraction",
        type=float,
        default=0.0,
        help="Fraction of records delivered later than their position in the input.",
    )
    group.add_argument(
        "--max_disorder",
        type=float,
        default=0.0,
        help="Largest delay, in seconds of event time, of a disordered record.",
    )
    group.add_argument(
        "--late_fraction",
        type=float,
        default=0.0,
        help="Fraction of records delivered after the watermark has passed them.",
    )
    group.add_argument(
        "--late_delay",
        type=float,
        default=0.0,
        help="Seconds by which the watermark has passed a late record when it arrives.",
    )
    group.add_argument(
        "--records_per_watermark_update",
        type=int,
        default=100,
        help="Arrivals between two watermark updates.",
    )
    group.add_argument(
        "--replay_rate",
        type=float,
        default=0.0,
        help="Records per second of processing time, like a live stream; 0 (the default) replays as fast as "
             "the runner takes them. Only the streaming replay (--streaming on Prism, Flink or Dataflow) "
             "follows it. On Prism, which has no backpressure, a rate below the job's throughput keeps its "
             "memory bounded.",
    )


def replay_config_from_args(args: Any) -> ReplayConfig:
    """Build a ReplayConfig from parsed flags (an argparse Namespace or PipelineOptions)."""
    return ReplayConfig(
        max_out_of_orderness=getattr(args, "max_out_of_orderness", 0.0),
        disorder_fraction=getattr(args, "disorder_fraction", 0.0),
        max_disorder=getattr(args, "max_disorder", 0.0),
        late_fraction=getattr(args, "late_fraction", 0.0),
        late_delay=getattr(args, "late_delay", 0.0),
        records_per_watermark_update=getattr(args, "records_per_watermark_update", 100),
        seed=getattr(args, "seed", 0),
        rate=getattr(args, "replay_rate", 0.0),
    )


def replay_schedule(records: Iterable[SourceRecord], config: ReplayConfig) -> list:
    """Return the records in arrival order with ``arrival`` and ``watermark`` set.

    The result depends only on the records (in file order) and the config.
    A record chosen as late arrives with ``watermark - event_time >=
    late_delay``. :func:`iter_replay` yields the same records from a source
    without holding them all.
    """
    records = list(records)
    plan = _plan_arrivals(np.array([_event_time(record) for record in records], dtype=np.float64), config)
    order = np.empty_like(plan.positions)
    order[plan.positions] = np.arange(len(order))
    return [
        records[index]._replace(arrival=position, watermark=watermark)
        for position, (index, watermark) in enumerate(zip(order.tolist(), plan.watermarks.tolist()))
    ]


class _WatermarkClock:
    """The replay's watermark, moved after every ``records_per_watermark_update`` arrivals."""

    def __init__(self, config: ReplayConfig):
        self._per_update = config.records_per_watermark_update
        self._bound = config.max_out_of_orderness
        self._max_seen = -math.inf
        self._arrived = 0
        self.watermark = MIN_WATERMARK_SECONDS

    def arrive(self, event_time: float) -> float:
        """Count one arrival (``event_time`` NaN when unknown); return the watermark it arrived under."""
        watermark = self.watermark
        if event_time > self._max_seen:
            self._max_seen = event_time
        self._arrived += 1
        if self._arrived % self._per_update == 0:
            self.catch_up()
        return watermark

    def catch_up(self) -> None:
        """Move the watermark to the newest event time seen, minus the out-of-orderness bound."""
        self.watermark = max(self.watermark, self._max_seen - self._bound)


class _ArrivalPlan(NamedTuple):
    """The arrival of every record, in 16 bytes per record.

    ``positions[i]`` is the arrival position of the i-th record in file
    order, and ``watermarks[p]`` the watermark in force at arrival position p.
    """

    positions: np.ndarray
    watermarks: np.ndarray


def _plan_arrivals(times: np.ndarray, config: ReplayConfig) -> _ArrivalPlan:
    """Return the arrival plan of records with event ``times`` (NaN where unknown), in file order."""
    late = _choose_late(times, config)
    base_order = _disordered_order(times, late, config)

    # Stable sort by event time, so held-back records are released in the
    # order the watermark passes them.
    late_indices = np.flatnonzero(late)
    late_order = late_indices[np.argsort(times[late_indices], kind="stable")].tolist()

    positions = np.empty(len(times), dtype=np.int64)
    watermarks = np.empty(len(times), dtype=np.float64)
    event_times = times.tolist()
    clock = _WatermarkClock(config)
    arrived = 0

    def arrive(index: int) -> None:
        nonlocal arrived
        positions[index] = arrived
        watermarks[arrived] = clock.arrive(event_times[index])
        arrived += 1

    next_late = 0
    for index in base_order.tolist():
        while next_late < len(late_order) and clock.watermark - event_times[late_order[next_late]] >= config.late_delay:
            arrive(late_order[next_late])
            next_late += 1
        arrive(index)

    if next_late < len(late_order):
        # The input ended before the watermark passed these records. Update it
        # now, without waiting for a full chunk: at the final watermark every
        # record chosen as late is far enough behind it.
        clock.catch_up()
        for index in late_order[next_late:]:
            arrive(index)

    _LOGGER.info(
        "Replay plan: %d records, %d held back as late, %d behind the watermark on arrival.",
        len(times), len(late_order), int(np.count_nonzero(times < watermarks[positions])),
    )
    return _ArrivalPlan(positions, watermarks)


def _event_time(record: SourceRecord) -> float:
    return math.nan if record.event_time is None else record.event_time


def _choose_late(times: np.ndarray, config: ReplayConfig) -> np.ndarray:
    late = np.zeros(len(times), dtype=bool)
    valid = ~np.isnan(times)
    if config.late_fraction == 0 or not valid.any():
        return late

    final_watermark = np.nanmax(times) - config.max_out_of_orderness
    with np.errstate(invalid="ignore"):
        eligible = valid & (final_watermark - times >= config.late_delay)
    candidates = np.flatnonzero(eligible)
    count = round(config.late_fraction * len(candidates))
    rng = np.random.default_rng([config.seed, 1])
    late[rng.choice(candidates, size=count, replace=False)] = True
    return late


def _disordered_order(times: np.ndarray, late: np.ndarray, config: ReplayConfig) -> np.ndarray:
    """Return the indices of the records that are not late, in arrival order."""
    valid = ~np.isnan(times)
    base = np.flatnonzero(~late)
    slot = np.arange(len(times))
    after_rows = np.ones(len(times))
    target = np.zeros(len(times))

    candidates = np.flatnonzero(valid & ~late)
    count = round(config.disorder_fraction * len(candidates))
    if count:
        rng = np.random.default_rng([config.seed, 2])
        moved = np.sort(rng.choice(candidates, size=count, replace=False))
        delays = rng.uniform(0.0, config.max_disorder, size=count)
        target[moved] = times[moved] + delays

        # The running maximum is non-decreasing, so a binary search finds the
        # first record in file order that is past the moved record's target.
        running_max = np.fmax.accumulate(np.where(valid, times, -np.inf))
        first_past = np.searchsorted(running_max, target[moved], side="right")
        slot[moved] = np.maximum(moved + 1, first_past)
        after_rows[moved] = 0

    # np.lexsort sorts by its last key first: slot, then moved records before
    # the record that owns the slot, then by target, then by file index.
    order = np.lexsort((base, target[base], after_rows[base], slot[base]))
    return base[order]


def record_timestamp(record: SourceRecord) -> Timestamp:
    """Return the element timestamp of a replayed record.

    A record without an event time gets its watermark, so it is never late.
    Before the first watermark update that is Beam's MIN_TIMESTAMP.
    """
    seconds = record.watermark if record.event_time is None else record.event_time
    return to_beam_timestamp(seconds)


class ReplaySegment(NamedTuple):
    """The records of a replay whose timestamps fall in [start, end).

    Bounds are Beam timestamps in microseconds, compared with
    :func:`record_timestamp`; None leaves that side open. A bounded job can
    run as one pipeline per segment. ``first_arrival`` and ``last_arrival``
    bound the arrival positions of the segment's records, so its replay
    skips the records before them and stops reading after the last.
    """

    start_micros: Optional[int]
    end_micros: Optional[int]
    first_arrival: int
    last_arrival: int

    def contains(self, record: SourceRecord) -> bool:
        micros = record_timestamp(record).micros
        if self.start_micros is not None and micros < self.start_micros:
            return False
        return self.end_micros is None or micros < self.end_micros


def iter_segment(source_config: SourceConfig, replay_config: ReplayConfig,
                 segment: ReplaySegment) -> Iterator[SourceRecord]:
    """Yield the records of :func:`iter_replay` that belong to ``segment``, in arrival order."""
    # TODO: skip source chunks before first_arrival instead of reading the source again from its start.
    for record in iter_replay(source_config, replay_config, start=segment.first_arrival):
        if record.arrival > segment.last_arrival:
            return
        if segment.contains(record):
            yield record


def iter_replay(source_config: SourceConfig, replay_config: ReplayConfig, start: int = 0) -> Iterator[SourceRecord]:
    """Yield the replay of a source from arrival position ``start`` on, reading the source as it goes.

    The records equal :func:`replay_schedule` of the whole source. In file
    order (no disorder and no late data) the replay holds one record at a
    time. Otherwise it keeps the source's arrival plan, 16 bytes per record
    computed from one pass over the event times, and the records that
    arrive after some record that follows them in the file.
    """
    records = read_source_records(source_config)
    if _keeps_file_order(replay_config):
        clock = _WatermarkClock(replay_config)
        for record in records:
            watermark = clock.arrive(_event_time(record))
            if record.arrival >= start:
                yield record._replace(watermark=watermark)
        return

    plan = _cached_plan(source_config, replay_config)
    waiting = {}
    position = 0
    for index, record in enumerate(records):
        waiting[int(plan.positions[index])] = record
        while position in waiting:
            record = waiting.pop(position)
            if position >= start:
                yield record._replace(arrival=position, watermark=float(plan.watermarks[position]))
            position += 1


@functools.lru_cache(maxsize=8)
def replay_length(source_config: SourceConfig, replay_config: ReplayConfig) -> int:
    """Return how many records the replay of a source has, cached per process."""
    if _keeps_file_order(replay_config):
        return sum(1 for _ in read_source_records(source_config))
    return len(_cached_plan(source_config, replay_config).positions)


def _keeps_file_order(config: ReplayConfig) -> bool:
    return config.disorder_fraction == 0 and config.late_fraction == 0


@functools.lru_cache(maxsize=2)
def _cached_plan(source_config: SourceConfig, replay_config: ReplayConfig) -> _ArrivalPlan:
    # Cached so that a splittable DoFn can size and resume its restriction
    # without reading the event times again.
    times = np.fromiter((_event_time(record) for record in read_source_records(source_config)), dtype=np.float64)
    return _plan_arrivals(times, replay_config)


def block_element(records: List[SourceRecord]) -> TimestampedValue:
    """Return a block of replayed records, timestamped at its earliest record."""
    return TimestampedValue(Block(records), min(record_timestamp(record) for record in records))


def build_test_stream(schedule: Iterable[SourceRecord], blocks: Optional[BlockConfig] = None) -> TestStream:
    """Build a TestStream that replays a schedule.

    Records with the same watermark are added as one batch (of
    :class:`Block`s when ``blocks`` is set). After each batch,
    processing time moves forward by the growth of the largest event time
    seen since the previous batch, so one second of event time is one second
    of processing time. Then the watermark advances to the next record's
    ``watermark``, and after the last batch to the newest event time, then
    to infinity.
    """
    stream = TestStream()
    batch = []
    current = to_beam_timestamp(MIN_WATERMARK_SECONDS)
    clock = None
    max_seen = -math.inf

    def flush() -> None:
        nonlocal clock
        if blocks is None:
            stream.add_elements([TimestampedValue(record, record_timestamp(record)) for record in batch])
        else:
            stream.add_elements([block_element(part) for part in blocks.cut(batch, on_watermark=True)])
        batch.clear()
        if clock is not None and max_seen > clock:
            stream.advance_processing_time(max_seen - clock)
            clock = max_seen

    for record in schedule:
        watermark = to_beam_timestamp(record.watermark)
        if watermark > current:
            if batch:
                flush()
            stream.advance_watermark_to(watermark)
            current = watermark

        batch.append(record)
        if record.event_time is not None:
            max_seen = max(max_seen, record.event_time)
            if clock is None:
                clock = record.event_time

    if batch:
        flush()

    # The legacy DirectRunner (Beam 2.77) treats every side-input window as
    # ready once the watermark jumps to infinity, before the timers behind
    # that jump have fired. Stopping at the newest event time first lets the
    # trainer publish the last serving window's version in time.
    if max_seen > -math.inf and to_beam_timestamp(max_seen) > current:
        stream.advance_watermark_to(to_beam_timestamp(max_seen))
    return stream.advance_watermark_to_infinity()


class _ReplayMetrics:
    def __init__(self):
        self.replayed = Metrics.counter(_METRICS_NAMESPACE, "records_replayed")
        self.behind = Metrics.counter(_METRICS_NAMESPACE, "records_behind_watermark")
        self.no_time = Metrics.counter(_METRICS_NAMESPACE, "records_without_event_time")

    def count(self, record: SourceRecord) -> None:
        self.replayed.inc()
        if record.event_time is None:
            self.no_time.inc()
        elif record.event_time < record.watermark:
            self.behind.inc()


class _ReplayRecordsFn(beam.DoFn):
    """Emit the whole replay from one impulse, for bounded pipelines."""

    def __init__(self, source_config: SourceConfig, replay_config: ReplayConfig,
                 blocks: Optional[BlockConfig] = None, segment: Optional[ReplaySegment] = None):
        self._source_config = source_config
        self._replay_config = replay_config
        self._blocks = blocks
        self._segment = segment

    def setup(self):
        self._metrics = _ReplayMetrics()

    def process(self, unused_impulse):
        if self._segment is None:
            records = iter_replay(self._source_config, self._replay_config)
        else:
            records = iter_segment(self._source_config, self._replay_config, self._segment)
        if self._blocks is None:
            for record in records:
                self._metrics.count(record)
                yield TimestampedValue(record, record_timestamp(record))
            return
        # Batch runners ignore the watermark schedule, so blocks are cut by
        # window slot and size only. Each record keeps its own watermark field.
        for part in self._blocks.cut(records, on_watermark=False):
            for record in part:
                self._metrics.count(record)
            yield block_element(part)


class _CheckpointOnlyTracker(OffsetRestrictionTracker):
    """An offset tracker that checkpoints but rejects dynamic splits.

    A runner may split a running restriction to process its residual in
    parallel. Prism (Beam 2.77) does so in streaming. The residual then
    replays later arrivals at once, and its watermark runs ahead of the
    records the primary has yet to emit, which a GroupByKey downstream
    drops as late. A checkpoint (a split at fraction 0) keeps the order.
    """

    def try_split(self, fraction_of_remainder):
        if fraction_of_remainder > 0:
            return None
        return super().try_split(fraction_of_remainder)


class _ReplayRestrictionProvider(RestrictionProvider):
    """Offset ranges over arrival positions of the (source, replay) element."""

    def initial_restriction(self, element):
        return OffsetRange(0, replay_length(*element))

    def create_tracker(self, restriction):
        return _CheckpointOnlyTracker(restriction)

    def restriction_size(self, element, restriction):
        return restriction.size()

    def split(self, element, restriction):
        # One restriction keeps arrival order. Parallel parts would each
        # deliver their records on their own schedule.
        yield restriction


class ReplayPace:
    """The processing time at which each record of a replay paced at ``rate`` records per second is due.

    The pace starts at arrival position ``start`` when it is created.
    ``clock`` returns seconds; tests pass a fake one.
    """

    def __init__(self, rate: float, start: int, clock=time.monotonic):
        _check_rate(rate)
        if rate == 0:
            raise ValueError("A ReplayPace needs a positive rate; a rate of 0 means an unpaced replay.")
        self.rate = rate
        self._start = start
        self._clock = clock
        self._started_s = clock()

    def delay_s(self, position: int) -> float:
        """Return the seconds until the record at arrival ``position`` is due, 0 when it is due now."""
        due_s = (position - self._start) / self.rate
        return max(0.0, due_s - (self._clock() - self._started_s))


class _ReplayCursor:
    """An open replay of one (source, replay) element at an arrival position, with look-ahead."""

    def __init__(self, element: tuple, start: int):
        self.element = element
        self.position = start
        rate = element[1].rate
        # A cursor outlives checkpoints (see _IDLE_CURSORS), so the pace does too.
        self.pace = ReplayPace(rate, start) if rate else None
        self._records = iter_replay(*element, start=start)
        self._ahead: Deque[SourceRecord] = collections.deque()

    def peek(self, count: int) -> List[SourceRecord]:
        """Return up to ``count`` records from the position on, without moving past them."""
        while len(self._ahead) < count:
            record = next(self._records, None)
            if record is None:
                break
            self._ahead.append(record)
        return list(itertools.islice(self._ahead, count))

    def advance(self, count: int) -> None:
        for _ in range(count):
            self._ahead.popleft()
        self.position += count


# A splittable DoFn checkpoints before every watermark advance of the
# schedule. Resuming from a cursor left at that position avoids reading the
# source again from its start, which would make a replay quadratic.
_IDLE_CURSORS: "collections.OrderedDict[tuple, _ReplayCursor]" = collections.OrderedDict()
_IDLE_CURSORS_LOCK = threading.Lock()
_MAX_IDLE_CURSORS = 4


def _take_cursor(element: tuple, start: int) -> _ReplayCursor:
    with _IDLE_CURSORS_LOCK:
        cursor = _IDLE_CURSORS.pop((element, start), None)
    if cursor is None:
        if start:
            _LOGGER.info("Reopening the replay at arrival position %d.", start)
        cursor = _ReplayCursor(element, start)
    return cursor


def _keep_cursor(cursor: _ReplayCursor) -> None:
    with _IDLE_CURSORS_LOCK:
        _IDLE_CURSORS[(cursor.element, cursor.position)] = cursor
        while len(_IDLE_CURSORS) > _MAX_IDLE_CURSORS:
            _IDLE_CURSORS.popitem(last=False)


# A paced replay goes on emitting while it is less than this ahead of its
# pace, so that a bundle can carry more than a few records.
_MIN_PACE_DELAY_S = 0.05


class _ReplaySplittableFn(beam.DoFn):
    """Emit the replay from a splittable DoFn that reports its watermark.

    The DoFn checkpoints before each scheduled watermark advance, so that a
    streaming runner commits one batch of records and can move the output
    watermark before the next batch.
    """

    # NOTE: tested on the FnApiRunner in batch and on Prism in streaming.
    # How closely Flink and Dataflow follow the schedule has not been measured.

    def __init__(self, blocks: Optional[BlockConfig] = None):
        self._blocks = blocks

    def setup(self):
        self._metrics = _ReplayMetrics()

    def process(
        self,
        element,
        tracker=beam.DoFn.RestrictionParam(_ReplayRestrictionProvider()),
        watermark_estimator=beam.DoFn.WatermarkEstimatorParam(
            ManualWatermarkEstimator.default_provider()
        ),
    ):
        cursor = _take_cursor(tuple(element), tracker.current_restriction().start)
        try:
            yield from self._emit(cursor, tracker, watermark_estimator)
        finally:
            _keep_cursor(cursor)

    def _emit(self, cursor: _ReplayCursor, tracker, watermark_estimator):
        while True:
            delay_s = cursor.pace.delay_s(cursor.position) if cursor.pace else 0.0
            if delay_s > _MIN_PACE_DELAY_S:
                # A delayed checkpoint frees the worker for the rest of the
                # job while the replay waits, which a sleep would not.
                tracker.defer_remainder(Duration.of(delay_s))
                return

            claimed, complete = self._claim(cursor, tracker)
            if claimed:
                record = claimed[-1]
                _advance_watermark(watermark_estimator, record.watermark)
                for claimed_record in claimed:
                    self._metrics.count(claimed_record)
                if self._blocks is None:
                    yield TimestampedValue(record, record_timestamp(record))
                else:
                    yield block_element(claimed)
            if not complete:
                return

            following = cursor.peek(1)
            if following and following[0].watermark > record.watermark:
                tracker.defer_remainder()
                return

    def _claim(self, cursor: _ReplayCursor, tracker) -> Tuple[List[SourceRecord], bool]:
        """Claim the next record, or the records of the next block, and move the cursor past them.

        Returns the claimed records and whether all of them could be claimed;
        a failed claim means the restriction ends there.
        """
        start = cursor.position
        if self._blocks is None:
            part = cursor.peek(1)
        else:
            part = next(self._blocks.cut(cursor.peek(self._blocks.size), on_watermark=True), [])
        claimed = []
        for offset, record in enumerate(part):
            if not tracker.try_claim(start + offset):
                break
            claimed.append(record)
        cursor.advance(len(claimed))
        if not part:
            # A claim past the end marks the restriction as done for the tracker.
            tracker.try_claim(start)
            return claimed, False
        return claimed, len(claimed) == len(part)


def _advance_watermark(estimator: ManualWatermarkEstimator, seconds: float) -> None:
    watermark = to_beam_timestamp(seconds)
    current = estimator.current_watermark()
    if current is None or watermark > current:
        estimator.set_watermark(watermark)


class ReadEvents(beam.PTransform):
    """Read a source and replay it in event time, as SourceRecord elements.

    Each output element is timestamped with its event time (records without
    one: their watermark) and carries ``arrival`` and ``watermark`` from
    :func:`replay_schedule`.

    Modes:

    * ``"batch"``: one DoFn emits every record from an Impulse. Bounded, for
      the FnApiRunner, PortableRunner with an embedded job server, Prism,
      Flink and Dataflow in batch. The watermark schedule shows only in the
      ``watermark`` fields.
    * ``"teststream"``: a TestStream built at pipeline construction, for the
      legacy DirectRunner in streaming mode. The runner's watermark follows
      the schedule, so late records are dropped downstream.
    * ``"sdf"``: a splittable DoFn over arrival positions whose watermark
      estimator follows the schedule, for Prism, Flink and Dataflow in
      streaming. It also runs in batch.

    With ``blocks`` set, the elements are :class:`Block`s of SourceRecords cut
    by :meth:`BlockConfig.cut`, each timestamped at its earliest record.
    With ``segment`` set (modes ``"batch"`` and ``"teststream"``), only the
    records of that :class:`ReplaySegment` are emitted.
    """

    def __init__(
        self,
        source_config: SourceConfig,
        replay_config: Optional[ReplayConfig] = None,
        mode: str = "batch",
        blocks: Optional[BlockConfig] = None,
        segment: Optional[ReplaySegment] = None,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(
                f"Invalid replay mode {mode!r}: expected one of {', '.join(MODES)}, "
                "for example mode='batch'."
            )
        replay_config = replay_config or ReplayConfig()
        if replay_config.rate and mode != "sdf":
            raise ValueError(
                f"--replay_rate={replay_config.rate:g} paces only the streaming replay, which runs on Prism, "
                f"Flink or Dataflow with --streaming; this runner replays in mode {mode!r}, which emits every "
                "record at once. Add --streaming on one of those runners, or drop --replay_rate."
            )
        if segment is not None and mode == "sdf":
            raise ValueError(
                f"A replay segment needs the batch or TestStream replay, but this runner replays in mode {mode!r}; "
                "pass --segment_events=0."
            )
        self._source_config = source_config
        self._replay_config = replay_config
        self._mode = mode
        self._blocks = blocks
        self._segment = segment

    def expand(self, pbegin):
        # Resolving reads file headers, so a bad column name fails here, at
        # pipeline construction, instead of on a worker.
        source_config = resolve_source_config(self._source_config)
        replay_config = self._replay_config

        if self._mode == "teststream":
            if self._segment is None:
                records = iter_replay(source_config, replay_config)
            else:
                records = iter_segment(source_config, replay_config, self._segment)
            return pbegin | "ReplayTestStream" >> build_test_stream(records, self._blocks)

        impulse = pbegin | "Impulse" >> beam.Impulse()
        if self._mode == "batch":
            return impulse | "ReplayRecords" >> beam.ParDo(
                _ReplayRecordsFn(source_config, replay_config, self._blocks, self._segment)
            )
        return (
            impulse
            | "AttachConfig" >> beam.Map(lambda _: (source_config, replay_config))
            | "ReplaySplittable" >> beam.ParDo(_ReplaySplittableFn(self._blocks))
        )


_BATCH_ONLY_RUNNERS = ("portable", "fnapi")
_DIRECT_RUNNERS = ("direct", "switchingdirect", "bundlebaseddirect")
_STREAMING_RUNNERS = ("prism", "flink", "dataflow", "testdataflow")


def choose_replay_mode(options: Any) -> str:
    """Return the ReadEvents mode for the runner and ``--streaming`` in options.

    ``options`` is a PipelineOptions or an argparse Namespace with ``runner``
    and ``streaming``. No runner means the DirectRunner.
    """
    if hasattr(options, "view_as"):
        standard = options.view_as(StandardOptions)
        runner, streaming = standard.runner, standard.streaming
    else:
        runner, streaming = getattr(options, "runner", None), getattr(options, "streaming", False)

    if runner is None:
        runner = "DirectRunner"
    name = runner if isinstance(runner, str) else type(runner).__name__
    key = name.rsplit(".", 1)[-1].lower()
    if key.endswith("runner"):
        key = key[: -len("runner")]

    if key in _DIRECT_RUNNERS:
        return "teststream" if streaming else "batch"
    if key in _BATCH_ONLY_RUNNERS:
        return "batch"
    if key in _STREAMING_RUNNERS:
        return "sdf" if streaming else "batch"
    raise ValueError(
        f"Unknown --runner {name!r} for the replay: expected one of DirectRunner, "
        "BundleBasedDirectRunner, PortableRunner, FnApiRunner, PrismRunner, FlinkRunner "
        "or DataflowRunner, for example --runner=DirectRunner."
    )
