"""Plan a bounded replay as event-time segments, one pipeline run each.

The DirectRunner's engines keep a job's data in memory. In batch the
FnApiRunner runs a pipeline stage by stage and keeps each stage's output
until the next stage has read it. In streaming the legacy engine's
TestStream keeps every replayed element. So a job's memory grows with its
stream. Run as consecutive pipelines over segments of the replay, each
resuming from the model store's newest version, the job needs memory for
one segment instead of the whole stream.

A segment boundary is an event time where a training window and a serving
window both start. Every such window, with its panes and its output
files, then lies within one segment, and the trainer has trained on every
pane of a segment when the segment's pipeline ends. The
next segment starts from the version trained through its first event
time, the version that the single pipeline serves there too. Its
checkpoint holds the weights, the optimizer, the batch-order generator and
the drift state, so the segments give the versions, predictions and dead
letters of one pipeline over the whole stream. A late record's dead letter
takes the watermark as its timestamp, which can lie in a later segment, so
each segment names its dead-letter files with its own prefix.
"""

import logging
import math
from typing import Iterable, List, NamedTuple, Optional

from transforms.dead_letter import FILE_PREFIX
from transforms.records import SourceRecord
from transforms.replay import ReplaySegment, record_timestamp

_LOGGER = logging.getLogger(__name__)

# About 300 MiB of the FnApiRunner's stage outputs for the online_train job
# in blocks (1.5 KiB per event), and few enough pipeline starts that their
# cost stays small next to the segment's run.
DEFAULT_SEGMENT_EVENTS = 200_000


class Segment(NamedTuple):
    """A planned segment: its replay range, its records and its newest event time (-inf without any)."""

    replay: ReplaySegment
    records: int
    newest_event_time: float


class _Unit:
    """The records of one cut period: how many, where they arrive, and their newest event time."""

    __slots__ = ("records", "first_arrival", "last_arrival", "newest_event_time")

    def __init__(self, arrival: int):
        self.records = 0
        self.first_arrival = arrival
        self.last_arrival = arrival
        self.newest_event_time = -math.inf

    def add(self, record: SourceRecord) -> None:
        self.records += 1
        self.first_arrival = min(self.first_arrival, record.arrival)
        self.last_arrival = max(self.last_arrival, record.arrival)
        if record.event_time is not None:
            self.newest_event_time = max(self.newest_event_time, record.event_time)


def cut_period_micros(window_spec, serving_window_s: float) -> int:
    """Return the period, in microseconds, of the event times where training and serving windows start.

    Raises ValueError unless the training windows are fixed: sliding,
    session and global windows span any boundary.
    """
    if window_spec.kind != "fixed":
        raise ValueError(
            f"--window={window_spec} cannot be cut into segments: only fixed training windows end where "
            "the next segment starts. Pass --segment_events=0 to run one pipeline, or use fixed windows."
        )
    return math.lcm(round(window_spec.size * 1e6), round(serving_window_s * 1e6))


def plan_segments(records: Iterable[SourceRecord], period_micros: int, events_per_segment: int) -> List[Segment]:
    """Cut a replay into segments of whole periods, of about ``events_per_segment`` records each.

    ``records`` is the replay (each with ``arrival`` and ``watermark``). The
    number of segments is the record count over ``events_per_segment``,
    rounded up. The cuts split the records about evenly, but a period with
    more records than a segment's share stays whole. The first segment is open below
    and the last open above, so every record belongs to exactly one.
    """
    if events_per_segment < 1:
        raise ValueError(f"Invalid events_per_segment {events_per_segment!r}: expected at least 1, for example 200000.")

    units = {}
    for record in records:
        index = record_timestamp(record).micros // period_micros
        unit = units.get(index)
        if unit is None:
            unit = units[index] = _Unit(record.arrival)
        unit.add(record)
    total = sum(unit.records for unit in units.values())
    if total == 0:
        return []

    target = total / math.ceil(total / events_per_segment)
    groups, group, counted = [], [], 0
    for index in sorted(units):
        if group and counted >= target * (len(groups) + 1):
            groups.append(group)
            group = []
        group.append(index)
        counted += units[index].records
    groups.append(group)
    return [_segment(group, units, period_micros, position, len(groups)) for position, group in enumerate(groups)]


def _segment(indexes: List[int], units: dict, period_micros: int, position: int, count: int) -> Segment:
    chosen = [units[index] for index in indexes]
    replay = ReplaySegment(
        start_micros=None if position == 0 else indexes[0] * period_micros,
        end_micros=None if position == count - 1 else (indexes[-1] + 1) * period_micros,
        first_arrival=min(unit.first_arrival for unit in chosen),
        last_arrival=max(unit.last_arrival for unit in chosen),
    )
    return Segment(
        replay=replay,
        records=sum(unit.records for unit in chosen),
        newest_event_time=max(unit.newest_event_time for unit in chosen),
    )


def dead_letter_prefix(position: int) -> str:
    """Return the dead-letter file prefix of the segment at ``position`` (from 1)."""
    return f"{FILE_PREFIX}-segment-{position:05d}"


def events_per_segment(flag: Optional[int], on_direct_runner: bool, replay_mode: str, model_selection: str) -> int:
    """Return the records per segment for ``--segment_events`` (None: automatic); 0 runs one pipeline.

    Automatic segments apply on the DirectRunner only, whose engines were
    measured keeping the job's data in memory; other batch runners take an
    explicit value. The streaming replay on Prism, Flink and Dataflow (a
    splittable DoFn, mode ``"sdf"``) cannot be cut.
    """
    if flag is not None and (isinstance(flag, bool) or flag < 0):
        raise ValueError(f"--segment_events must be 0 (one pipeline) or more, got {flag}; for example 200000.")
    per_segment = flag
    if per_segment is None:
        per_segment = DEFAULT_SEGMENT_EVENTS if on_direct_runner else 0
    if per_segment == 0:
        return 0

    reason = None
    if replay_mode == "sdf":
        reason = "the splittable DoFn replay of a streaming runner runs as one pipeline"
    elif model_selection != "as_of":
        reason = (f"--model_selection={model_selection} serves the newest version published anywhere in the "
                  "pipeline, which a segment cannot see")
    if reason is None:
        return per_segment
    if flag is None:
        _LOGGER.info("Running one pipeline: %s.", reason)
        return 0
    raise ValueError(f"--segment_events={flag} cannot be used here: {reason}. Pass --segment_events=0.")
