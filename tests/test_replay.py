"""Tests for transforms.replay: the schedule's invariants and ReadEvents on real runners."""

import argparse
import collections
import math
import os
import time
import tracemalloc

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_stream import ElementEvent, ProcessingTimeEvent, WatermarkEvent
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import trigger
from apache_beam.transforms.window import FixedWindows, GlobalWindows
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP, Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms import replay, sources
from transforms.records import SourceRecord
from transforms.replay import (
    ReadEvents,
    ReplayConfig,
    ReplayPace,
    add_replay_options,
    build_test_stream,
    choose_replay_mode,
    iter_replay,
    record_timestamp,
    replay_config_from_args,
    replay_length,
    replay_schedule,
)
from transforms.sources import SourceConfig, read_source_records, resolve_source_config
from transforms.timestamps import MIN_WATERMARK_SECONDS

# 2024-01-01T00:00:00Z
NEW_YEAR = 1704067200.0

DATA_DIR = os.path.join(os.path.dirname(__file__), "data")

SEA_SOURCE = SourceConfig(dataset="sea", max_events=300)
# Disorder beyond the out-of-orderness bound and held-back records, so some
# records arrive behind the watermark. Event times are whole seconds, so the
# half-second bound keeps every watermark off the minute-window boundaries.
DISORDERED = ReplayConfig(
    max_out_of_orderness=5.5,
    disorder_fraction=0.1,
    max_disorder=20,
    late_fraction=0.1,
    late_delay=30,
    records_per_watermark_update=10,
    seed=3,
)


def make_records(times, watermarks=None):
    """SourceRecords in file order with the given event times (None: unparsed) and watermarks."""
    watermarks = watermarks or [MIN_WATERMARK_SECONDS] * len(times)
    return [
        SourceRecord(
            row={"id": f"r{index}"},
            event_time=time,
            arrival=index,
            watermark=watermark,
            timestamp_error=None if time is not None else "missing timestamp",
        )
        for index, (time, watermark) in enumerate(zip(times, watermarks))
    ]


def ids(schedule):
    return [record.row["id"] for record in schedule]


def test_schedule_known_watermarks():
    records = make_records([NEW_YEAR + second for second in range(10)])
    config = ReplayConfig(max_out_of_orderness=1, records_per_watermark_update=3)

    schedule = replay_schedule(records, config)

    assert ids(schedule) == [f"r{index}" for index in range(10)]
    assert [record.arrival for record in schedule] == list(range(10))
    assert [record.watermark for record in schedule] == [MIN_WATERMARK_SECONDS] * 3 + [
        NEW_YEAR + 1
    ] * 3 + [NEW_YEAR + 4] * 3 + [NEW_YEAR + 7]


def test_schedule_no_disorder_keeps_order():
    times = [NEW_YEAR + 0.5 * index for index in range(500)]

    schedule = replay_schedule(make_records(times), ReplayConfig(seed=9))

    assert [record.event_time for record in schedule] == times
    assert all(record.event_time >= record.watermark for record in schedule)


def test_schedule_watermark_updates_per_chunk():
    times = [NEW_YEAR + index for index in range(95)]
    config = ReplayConfig(disorder_fraction=0.3, max_disorder=8, records_per_watermark_update=7)

    schedule = replay_schedule(make_records(times), config)

    changes = [
        record.arrival
        for previous, record in zip(schedule, schedule[1:])
        if record.watermark != previous.watermark
    ]
    assert changes
    assert all(arrival % 7 == 0 for arrival in changes)


def test_schedule_same_seed_same_order():
    records = make_records([NEW_YEAR + index for index in range(300)])
    config = ReplayConfig(disorder_fraction=0.2, max_disorder=15, late_fraction=0.1, late_delay=5, seed=4)

    first = replay_schedule(records, config)
    again = replay_schedule(records, config)
    other = replay_schedule(records, ReplayConfig(**{**config.__dict__, "seed": 5}))

    assert first == again
    assert ids(first) != ids(other)


def test_schedule_disorder_bounded():
    times = [NEW_YEAR + index for index in range(400)]
    config = ReplayConfig(disorder_fraction=0.25, max_disorder=12, seed=2)

    schedule = replay_schedule(make_records(times), config)

    inversions = sum(
        1
        for position, record in enumerate(schedule)
        if any(earlier.event_time > record.event_time for earlier in schedule[max(0, position - 15):position])
    )
    assert inversions > 0
    # No record arrives after one that is max_disorder or more younger.
    for position, record in enumerate(schedule):
        assert all(earlier.event_time < record.event_time + 12 for earlier in schedule[:position])


def test_schedule_late_records_behind_watermark():
    times = [NEW_YEAR + index for index in range(1000)]
    config = ReplayConfig(
        max_out_of_orderness=3, late_fraction=0.05, late_delay=40, records_per_watermark_update=10, seed=8
    )

    schedule = replay_schedule(make_records(times), config)

    behind = [record for record in schedule if record.watermark - record.event_time >= 40]
    # Records at least bound + late_delay before the last event time can be late.
    eligible = sum(1 for time in times if times[-1] - 3 - time >= 40)
    assert len(behind) == round(0.05 * eligible)
    # Without disorder, no other record is behind the watermark at all.
    assert sum(1 for record in schedule if record.event_time < record.watermark) == len(behind)


def test_schedule_unparsed_records_keep_file_order():
    times = [NEW_YEAR + index if index % 7 else None for index in range(200)]
    config = ReplayConfig(disorder_fraction=0.3, max_disorder=10, late_fraction=0.1, late_delay=5, seed=1)

    schedule = replay_schedule(make_records(times), config)

    unparsed = [record.row["id"] for record in schedule if record.event_time is None]
    assert unparsed == [f"r{index}" for index in range(0, 200, 7)]


def test_schedule_late_at_end_flushes_watermark():
    # Few records and a large chunk: the watermark would never update on a
    # chunk boundary, so the held-back record comes after a final update.
    records = make_records([NEW_YEAR + index for index in range(10)])
    config = ReplayConfig(late_fraction=1.0, late_delay=4, records_per_watermark_update=100)

    schedule = replay_schedule(records, config)

    late = [record for record in schedule if record.event_time < record.watermark]
    assert ids(late) == ["r0", "r1", "r2", "r3", "r4", "r5"]
    assert all(record.watermark == NEW_YEAR + 9 for record in late)


time_lists = st.lists(
    st.one_of(st.none(), st.integers(min_value=0, max_value=500).map(lambda second: NEW_YEAR + second)),
    max_size=120,
)


@settings(max_examples=60, deadline=None)
@given(
    times=time_lists,
    bound=st.sampled_from([0.0, 2.0, 10.0]),
    disorder=st.sampled_from([0.0, 0.2, 1.0]),
    late=st.sampled_from([0.0, 0.1, 0.5]),
    per_update=st.integers(min_value=1, max_value=20),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_schedule_invariants(times, bound, disorder, late, per_update, seed):
    config = ReplayConfig(
        max_out_of_orderness=bound,
        disorder_fraction=disorder,
        max_disorder=25.0,
        late_fraction=late,
        late_delay=7.0,
        records_per_watermark_update=per_update,
        seed=seed,
    )
    records = make_records(times)

    schedule = replay_schedule(records, config)

    assert sorted(ids(schedule)) == sorted(ids(records))
    assert [record.arrival for record in schedule] == list(range(len(records)))
    watermarks = [record.watermark for record in schedule]
    assert watermarks == sorted(watermarks)
    assert replay_schedule(records, config) == schedule

    valid = [time for time in times if time is not None]
    if valid:
        eligible = sum(1 for time in valid if max(valid) - bound - time >= 7.0)
        behind = sum(1 for record in schedule if record.event_time is not None and record.watermark - record.event_time >= 7.0)
        assert behind >= round(late * eligible)


MALFORMED_SOURCE = SourceConfig(input=os.path.join(DATA_DIR, "events.csv"), timestamp_column="event_time")
LATE_ONLY = ReplayConfig(max_out_of_orderness=2.0, late_fraction=0.2, late_delay=15, records_per_watermark_update=7, seed=4)


@pytest.mark.parametrize("source", [SEA_SOURCE, MALFORMED_SOURCE], ids=["sea", "malformed"])
@pytest.mark.parametrize("config", [ReplayConfig(records_per_watermark_update=7), DISORDERED, LATE_ONLY],
                         ids=["file_order", "disordered", "late"])
def test_iter_replay_equals_schedule(source, config):
    expected = replay_schedule(read_source_records(source), config)

    assert list(iter_replay(source, config)) == expected
    assert replay_length(resolve_source_config(source), config) == len(expected)
    for start in (1, len(expected) // 2, len(expected)):
        assert list(iter_replay(source, config, start=start)) == expected[start:]


def test_iter_replay_file_order_memory(monkeypatch):
    # Small chunks, so that the reader's own buffer stays well below the bound.
    monkeypatch.setattr(sources, "CHUNK_ROWS", 1_000)
    source = SourceConfig(dataset="sea", max_events=20_000)
    config = ReplayConfig(records_per_watermark_update=7)

    tracemalloc.start()
    try:
        replayed = sum(1 for _ in iter_replay(source, config))
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # A list of all 20,000 replayed sea records takes about 15 MB.
    assert replayed == 20_000
    assert peak_bytes < 3_000_000


def test_sdf_reads_source_once_per_pass(monkeypatch):
    opened = []

    def counting_read(config):
        opened.append(config)
        return read_source_records(config)

    monkeypatch.setattr(replay, "read_source_records", counting_read)
    # A seed no other test uses, so the process-wide caches start empty.
    config = ReplayConfig(records_per_watermark_update=5, seed=77)

    _run_observe(FnApiRunner(), [], SEA_SOURCE, config, "sdf")

    # One pass sizes the restriction and one emits the records, although the
    # splittable DoFn checkpoints 60 times on the way.
    assert len(opened) == 2


def test_sdf_tracker_rejects_dynamic_splits():
    from apache_beam.io.restriction_trackers import OffsetRange

    tracker = replay._ReplayRestrictionProvider().create_tracker(OffsetRange(0, 100))
    assert tracker.try_claim(10)

    assert tracker.try_split(0.5) is None
    assert tracker.current_restriction() == OffsetRange(0, 100)
    primary, residual = tracker.try_split(0)
    assert (primary, residual) == (OffsetRange(0, 11), OffsetRange(11, 100))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_out_of_orderness": -1}, r"Invalid --max_out_of_orderness -1: expected a finite number of seconds >= 0"),
        ({"max_disorder": math.inf}, r"Invalid --max_disorder inf"),
        ({"late_delay": "5"}, r"Invalid --late_delay '5': expected seconds"),
        ({"disorder_fraction": 1.5}, r"Invalid --disorder_fraction 1.5: expected a fraction between 0 and 1"),
        ({"late_fraction": -0.1}, r"Invalid --late_fraction -0.1"),
        ({"disorder_fraction": 0.1}, r"--disorder_fraction 0.1 needs a positive --max_disorder"),
        ({"late_fraction": 0.1}, r"--late_fraction 0.1 needs a positive --late_delay"),
        ({"records_per_watermark_update": 0}, r"Invalid --records_per_watermark_update 0"),
        ({"seed": -3}, r"Invalid --seed -3: expected a non-negative integer"),
        ({"rate": -1}, r"Invalid --replay_rate -1: expected records per second >= 0"),
        ({"rate": math.nan}, r"Invalid --replay_rate nan"),
    ],
)
def test_replay_config_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReplayConfig(**kwargs)


def test_replay_flags():
    parser = argparse.ArgumentParser()
    add_replay_options(parser)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(
        ["--max_out_of_orderness=5", "--late_fraction=0.1", "--late_delay=30", "--seed=2", "--replay_rate=250"]
    )

    config = replay_config_from_args(args)

    assert config == ReplayConfig(max_out_of_orderness=5, late_fraction=0.1, late_delay=30, seed=2, rate=250)


def test_replay_pace_delays():
    now = [10.0]
    pace = ReplayPace(100, start=50, clock=lambda: now[0])

    assert pace.delay_s(50) == 0
    assert pace.delay_s(60) == pytest.approx(0.1)
    now[0] = 10.04
    assert pace.delay_s(60) == pytest.approx(0.06)
    # Behind its pace, a replay catches up without waiting.
    now[0] = 12.0
    assert pace.delay_s(150) == 0
    assert pace.delay_s(300) == pytest.approx(0.5)


def test_replay_pace_needs_a_rate():
    with pytest.raises(ValueError, match="needs a positive rate"):
        ReplayPace(0, start=0)


def test_record_timestamp_without_event_time():
    with_time = make_records([NEW_YEAR + 1.5])[0]
    without = make_records([None])[0]._replace(watermark=NEW_YEAR)

    assert record_timestamp(with_time) == Timestamp(micros=1704067201500000)
    assert record_timestamp(without) == Timestamp(NEW_YEAR)
    assert record_timestamp(make_records([None])[0]) == MIN_TIMESTAMP


def test_test_stream_events():
    records = make_records([NEW_YEAR + index for index in range(6)])
    schedule = replay_schedule(records, ReplayConfig(records_per_watermark_update=2))

    events = build_test_stream(schedule)._events

    kinds = [type(event).__name__ for event in events]
    assert kinds == [
        "ElementEvent", "ProcessingTimeEvent", "WatermarkEvent",
        "ElementEvent", "ProcessingTimeEvent", "WatermarkEvent",
        "ElementEvent", "ProcessingTimeEvent", "WatermarkEvent", "WatermarkEvent",
    ]
    # The last batch is followed by a stop at the newest event time.
    assert [event.new_watermark for event in events if isinstance(event, WatermarkEvent)] == [
        Timestamp(NEW_YEAR + 1), Timestamp(NEW_YEAR + 3), Timestamp(NEW_YEAR + 5), MAX_TIMESTAMP,
    ]
    # Processing time follows the growth of the largest event time seen.
    assert [event.advance_by for event in events if isinstance(event, ProcessingTimeEvent)] == [1.0, 2.0, 2.0]
    first = [value.value.row["id"] for value in events[0].timestamped_values]
    assert first == ["r0", "r1"]
    assert isinstance(events[3], ElementEvent)


class _PaneArrivals(beam.DoFn):
    def process(self, keyed_arrivals):
        arrivals = sorted(keyed_arrivals[1])
        yield arrivals[0], arrivals[-1], len(arrivals)


def test_processing_time_trigger_panes():
    # 100 events one second apart, 10 per watermark update: processing time
    # advances 9 s after the first batch and 10 s after each later one. A
    # pane fires 30 s of processing time after its first element arrived.
    source = SourceConfig(dataset="sea", max_events=100)
    replay = ReplayConfig(records_per_watermark_update=10)

    with beam.Pipeline(runner="DirectRunner", options=PipelineOptions(["--streaming"])) as pipeline:
        panes = (
            pipeline
            | "ReadEvents" >> ReadEvents(source, replay, "teststream")
            | "Window" >> beam.WindowInto(
                GlobalWindows(),
                trigger=trigger.Repeatedly(trigger.AfterProcessingTime(30)),
                accumulation_mode=trigger.AccumulationMode.DISCARDING,
            )
            | "KeyArrival" >> beam.Map(lambda record: ("all", record.arrival))
            | "Group" >> beam.GroupByKey()
            | "PaneArrivals" >> beam.ParDo(_PaneArrivals())
        )
        assert_that(panes, equal_to([(0, 39, 40), (40, 69, 30), (70, 99, 30)]))


@pytest.mark.parametrize(
    "flags, mode",
    [
        ([], "batch"),
        (["--streaming"], "teststream"),
        (["--runner=DirectRunner", "--streaming"], "teststream"),
        (["--runner=BundleBasedDirectRunner", "--streaming"], "teststream"),
        (["--runner=PortableRunner", "--streaming"], "batch"),
        (["--runner=FnApiRunner"], "batch"),
        (["--runner=PrismRunner"], "batch"),
        (["--runner=PrismRunner", "--streaming"], "sdf"),
        (["--runner=FlinkRunner", "--streaming"], "sdf"),
        (["--runner=apache_beam.runners.dataflow.dataflow_runner.DataflowRunner", "--streaming"], "sdf"),
        (["--runner=DataflowRunner"], "batch"),
    ],
)
def test_choose_replay_mode(flags, mode):
    assert choose_replay_mode(PipelineOptions(flags)) == mode


def test_choose_replay_mode_unknown_runner():
    with pytest.raises(ValueError, match=r"Unknown --runner 'SparkRunner' for the replay"):
        choose_replay_mode(PipelineOptions(["--runner=SparkRunner"]))


def test_read_events_rejects_mode():
    with pytest.raises(ValueError, match=r"Invalid replay mode 'stream': expected one of batch, teststream, sdf"):
        ReadEvents(SEA_SOURCE, DISORDERED, mode="stream")


@pytest.mark.parametrize("mode", ["batch", "teststream"])
def test_read_events_rejects_rate_outside_sdf(mode):
    with pytest.raises(ValueError, match=rf"--replay_rate=100 paces only the streaming replay.*mode '{mode}'"):
        ReadEvents(SEA_SOURCE, ReplayConfig(rate=100), mode=mode)


def test_sdf_paced_same_records():
    started = time.monotonic()
    _run_observe(FnApiRunner(), [], SEA_SOURCE, ReplayConfig(records_per_watermark_update=7, rate=300), "sdf")

    # The last of the 300 records is due 299/300 s after the first. The
    # FnApiRunner resumes a delayed checkpoint at once (about 400 of them in
    # this run), so the replay checkpoints again until each record is due.
    assert time.monotonic() - started >= 299 / 300


class _Observe(beam.DoFn):
    """Emit (id, element timestamp in seconds, watermark field)."""

    def process(self, record, timestamp=beam.DoFn.TimestampParam):
        yield record.row.get("id", record.row.get("_raw")), timestamp.micros / 1e6, record.watermark


def _expected_observations(source, replay):
    return [
        (
            record.row.get("id", record.row.get("_raw")),
            record_timestamp(record).micros / 1e6,
            record.watermark,
        )
        for record in replay_schedule(read_source_records(source), replay)
    ]


def _run_observe(runner, flags, source, replay, mode):
    with beam.Pipeline(runner=runner, options=PipelineOptions(flags)) as pipeline:
        observed = (
            pipeline
            | "ReadEvents" >> ReadEvents(source, replay, mode)
            | "Observe" >> beam.ParDo(_Observe())
        )
        assert_that(observed, equal_to(_expected_observations(source, replay)))


@pytest.mark.parametrize(
    "runner, flags, mode",
    [
        (FnApiRunner, [], "batch"),
        ("BundleBasedDirectRunner", [], "batch"),
        ("DirectRunner", ["--streaming"], "teststream"),
        (FnApiRunner, [], "sdf"),
    ],
)
def test_read_events_same_records(runner, flags, mode):
    runner = runner() if callable(runner) else runner
    _run_observe(runner, flags, SEA_SOURCE, DISORDERED, mode)


@pytest.mark.parametrize("mode", ["batch", "teststream"])
def test_read_events_malformed_file(mode):
    source = MALFORMED_SOURCE
    replay = ReplayConfig(records_per_watermark_update=3)
    runner, flags = ("DirectRunner", ["--streaming"]) if mode == "teststream" else (FnApiRunner(), [])

    expected = _expected_observations(source, replay)
    _run_observe(runner, flags, source, replay, mode)

    # Malformed and unparsed records take their watermark as timestamp:
    # MIN_TIMESTAMP in the first chunk of 3 arrivals, then the first update.
    assert [timestamp for _, timestamp, _ in expected] == [
        NEW_YEAR, NEW_YEAR + 30, MIN_TIMESTAMP.micros / 1e6, NEW_YEAR + 30, NEW_YEAR + 30, NEW_YEAR + 125,
    ]


WINDOW_SECONDS = 60


class _WindowCount(beam.DoFn):
    def process(self, count, window=beam.DoFn.WindowParam):
        yield int(window.start.micros // 1_000_000), count


def _windowed_counts(pipeline, source, replay, mode):
    return (
        pipeline
        | "ReadEvents" >> ReadEvents(source, replay, mode)
        | "FixedWindows" >> beam.WindowInto(FixedWindows(WINDOW_SECONDS))
        | "Count" >> beam.CombineGlobally(beam.combiners.CountCombineFn()).without_defaults()
        | "WindowStart" >> beam.ParDo(_WindowCount())
    )


def _predicted_counts(schedule, drop_late):
    """Count per window start, leaving out records whose window had closed."""
    counts = collections.Counter()
    for record in schedule:
        start = math.floor(record.event_time / WINDOW_SECONDS) * WINDOW_SECONDS
        # Beam's trigger driver drops an element when the input watermark is
        # past its window's end (allowed lateness 0).
        if drop_late and record.watermark > start + WINDOW_SECONDS:
            continue
        counts[start] += 1
    return sorted(counts.items())


def test_windowed_counts_drop_late():
    schedule = list(iter_replay(SEA_SOURCE, DISORDERED))
    predicted = _predicted_counts(schedule, drop_late=True)
    dropped = len(schedule) - sum(count for _, count in predicted)
    assert 0 < dropped < len(schedule)

    options = PipelineOptions(["--streaming"])
    with beam.Pipeline(runner="DirectRunner", options=options) as pipeline:
        counts = _windowed_counts(pipeline, SEA_SOURCE, DISORDERED, "teststream")
        assert_that(counts, equal_to(predicted))


def test_windowed_counts_batch_keep_all():
    schedule = list(iter_replay(SEA_SOURCE, DISORDERED))

    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        counts = _windowed_counts(pipeline, SEA_SOURCE, DISORDERED, "batch")
        assert_that(counts, equal_to(_predicted_counts(schedule, drop_late=False)))
