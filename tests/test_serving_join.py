"""Tests for transforms.serving_join: events paired with their serving window's version."""

import math

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_stream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import FixedWindows, GlobalWindows, Sessions, SlidingWindows, TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming

from ml.store import PublishedVersion
from tests.fake_state import FakeTimer, FakeValueState
from transforms.records import Block, Event
from transforms.serving_join import (
    _EVENT,
    _RECORD,
    JoinServingRecords,
    _ServeWindowPanes,
    pair_with_version,
    serving_window_key,
)
from transforms.training import ServingRecord
from transforms.windowing import LatenessRule

WINDOW_S = 60.0
LATENESS_S = 120.0

V0 = PublishedVersion("m", 0, "m/v0", -math.inf, {})
V1 = PublishedVersion("m", 1, "m/v1", 600.0, {})
V2 = PublishedVersion("m", 2, "m/v2", 700.0, {})


def _event(event_id: str, event_time: float) -> Event:
    return Event(event_id, event_time, (0.0,), 1)


def _stamp(item):
    return TimestampedValue(item, item.event_time if isinstance(item, Event) else item.window_start)


def _stamped(items):
    return [_stamp(item) for item in items]


# Arrival order with watermark steps. Window [600, 660) gets its record after
# two of its events, [660, 720) never gets one, and [720, 780) gets it first.
# e615 and e690 arrive after their windows ended, within the lateness.
SCENARIO = [
    ("watermark", 600),
    ("add", [_event("e610", 610), _event("e620", 620)]),
    ("add", [ServingRecord(600.0, V1)]),
    ("add", [_event("e630", 630), _event("e670", 670), _event("e680", 680)]),
    ("watermark", 700),
    ("add", [ServingRecord(720.0, V2), _event("e725", 725)]),
    ("watermark", 750),
    ("add", [_event("e615", 615), _event("e690", 690)]),
]

EXPECTED_VERSIONS = {"e610": 1, "e620": 1, "e630": 1, "e615": 1, "e670": 0, "e680": 0, "e690": 0, "e725": 2}


def _test_stream():
    stream = test_stream.TestStream()
    for step, value in SCENARIO:
        if step == "watermark":
            stream = stream.advance_watermark_to(value)
        else:
            stream = stream.add_elements(_stamped(value))
    return stream.advance_watermark_to_infinity()


def _scenario_items():
    return [item for step, value in SCENARIO if step == "add" for item in value]


class _Describe(beam.DoFn):
    """Key each served event's (id, version, window start, timestamp) for a GroupByKey."""

    def process(self, pair, window=beam.DoFn.WindowParam, timestamp=beam.DoFn.TimestampParam):
        version, event = pair
        yield "served", (event.id, version.version, float(window.start), float(timestamp))


class _PaneTimings(beam.DoFn):
    def process(self, element, pane_info=beam.DoFn.PaneInfoParam):
        _, served = element
        for event_id, _version, _start, _timestamp in served:
            yield event_id, pane_info.timing


def _split(pipeline_input):
    events = pipeline_input | "Events" >> beam.Filter(lambda item: isinstance(item, Event))
    records = pipeline_input | "Records" >> beam.Filter(lambda item: isinstance(item, ServingRecord))
    return events, records


def _run_scenario(pipeline_args, streaming_source: bool):
    """Build the join over SCENARIO with a check of each event's version, window and timestamp.

    Returns the pipeline, not yet run, and each event's pane timing after a GroupByKey.
    """
    pipeline = beam.Pipeline(options=PipelineOptions(pipeline_args))
    if streaming_source:
        items = pipeline | "Stream" >> _test_stream()
    else:
        items = pipeline | "Create" >> beam.Create(_scenario_items()) | "Stamp" >> beam.Map(_stamp)
    events, records = _split(items)

    pairs = events | "Join" >> JoinServingRecords(WINDOW_S, V0, records, allowed_lateness_s=LATENESS_S)
    grouped = pairs | "Describe" >> beam.ParDo(_Describe()) | "GroupByWindow" >> beam.GroupByKey()
    served = grouped | "Ungroup" >> beam.FlatMap(lambda element: element[1])
    timings = grouped | "PaneTimings" >> beam.ParDo(_PaneTimings())

    expected = [
        (event.id, EXPECTED_VERSIONS[event.id], event.event_time // WINDOW_S * WINDOW_S, event.event_time)
        for event in _scenario_items() if isinstance(event, Event)
    ]
    assert_that(served, equal_to(expected), label="CheckServed")
    return pipeline, timings


def _check_pane_timings(timings):
    # Events leave the join's GroupByKey with their window's on-time pane, so
    # they make the on-time pane downstream too, and only the events that
    # arrived after their window ended make late panes.
    late = {"e615", "e690"}
    on_time = timings | "OnTime" >> beam.Filter(lambda item: item[1] == PaneInfoTiming.ON_TIME)
    late_panes = timings | "Late" >> beam.Filter(lambda item: item[1] == PaneInfoTiming.LATE)
    assert_that(on_time | "OnTimeIds" >> beam.Keys(),
                equal_to(sorted(set(EXPECTED_VERSIONS) - late)), label="CheckOnTime")
    assert_that(late_panes | "LateIds" >> beam.Keys(), equal_to(sorted(late)), label="CheckLate")


@pytest.mark.prism
def test_join_streaming_prism(prism_location):
    from runners.prism import prism_pipeline_args

    pipeline, timings = _run_scenario(prism_pipeline_args(prism_location) + ["--streaming"], streaming_source=True)
    _check_pane_timings(timings)

    pipeline.run().wait_until_finish()


def test_join_batch_fnapi_runner():
    pipeline, _ = _run_scenario([], streaming_source=False)

    pipeline.run().wait_until_finish()


def test_join_shards_fan_out_records():
    events = [_event(f"e{second}", second) for second in range(600, 780, 7)]
    records = [ServingRecord(600.0, V1), ServingRecord(720.0, V2)]

    with beam.Pipeline() as pipeline:
        event_pc = pipeline | "Events" >> beam.Create(events) | "StampEvents" >> beam.Map(_stamp)
        record_pc = pipeline | "Records" >> beam.Create(records) | "StampRecords" >> beam.Map(_stamp)
        pairs = event_pc | JoinServingRecords(WINDOW_S, V0, record_pc, shards=3)
        versions = pairs | beam.Map(lambda pair: (pair[1].id, pair[0].version))

        expected = [(event.id, {600: 1, 660: 0, 720: 2}[int(event.event_time // 60 * 60)]) for event in events]
        assert_that(versions, equal_to(expected))


def test_join_blocks_keep_timestamp():
    block = Block([_event("e601", 601), _event("e602", 602)])

    with beam.Pipeline() as pipeline:
        blocks = pipeline | "Blocks" >> beam.Create([block]) | "StampBlocks" >> beam.Map(TimestampedValue, 601)
        records = pipeline | "Records" >> beam.Create([ServingRecord(600.0, V1)]) | "Stamp" >> beam.Map(_stamp)
        pairs = blocks | JoinServingRecords(WINDOW_S, V0, records)
        described = pairs | beam.Map(
            lambda pair, timestamp=beam.DoFn.TimestampParam: (pair[0].version, len(pair[1]), float(timestamp)))

        assert_that(described, equal_to([(1, 2, 601.0)]))


def test_pair_with_version_splits_block():
    record = ServingRecord(600.0, PublishedVersion("m", 1, "m/v1", 615.0, {}))
    block = Block([_event("a", 610), _event("b", 620), _event("c", 612)])

    pairs = list(pair_with_version(block, record, V0))

    assert [(version.version, [event.id for event in item]) for version, item in pairs] == [
        (0, ["a", "c"]), (1, ["b"])]


def test_pair_with_version_keeps_whole_block():
    block = Block([_event("a", 610), _event("b", 620)])

    pairs = list(pair_with_version(block, ServingRecord(600.0, V1), V0))

    assert len(pairs) == 1
    assert pairs[0][0] == V1
    assert pairs[0][1] is block


def test_pair_with_version_without_record():
    event = _event("a", 610)

    assert list(pair_with_version(event, None, V0)) == [(V0, event)]


def test_serving_window_key_matches_fixed_windows():
    size = Duration.of(WINDOW_S).micros
    for seconds in (0.0, 59.999999, 60.0, 1234.5, 1_700_000_000.25):
        timestamp = Timestamp.of(seconds)
        [window] = FixedWindows(WINDOW_S).assign(beam.window.WindowFn.AssignContext(timestamp))

        assert serving_window_key(timestamp, size) == window.start.micros


@pytest.mark.parametrize("kwargs, message", [
    ({"allowed_lateness_s": -1.0}, "allowed_lateness_s must be 0 or more seconds, got -1.0"),
    ({"shards": 0}, "shards must be at least 1, got 0"),
])
def test_join_rejects_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        JoinServingRecords(WINDOW_S, V0, None, **kwargs)


@pytest.mark.parametrize("window_fn, lateness, expected", [
    (FixedWindows(300), 60.0, 360.0),
    (SlidingWindows(300, 60), 0.0, 300.0),
    (Sessions(120), 30.0, 150.0),
    (GlobalWindows(), 0.0, math.inf),
])
def test_lateness_rule_max_delay(window_fn, lateness, expected):
    assert LatenessRule(window_fn, lateness).max_delay_s() == expected


def _serve_pane(do_fn, state, timer, tagged):
    key = (Duration.of(600).micros, 0)
    return [pair.value for pair in do_fn.process((key, tagged), record_state=state, expire=timer)]


def test_serve_panes_keeps_record_for_late_pane():
    do_fn = _ServeWindowPanes(Duration.of(WINDOW_S).micros, V0, Duration.of(LATENESS_S).micros)
    state, timer = FakeValueState(), FakeTimer()
    on_time = [(_EVENT, _event("a", 610)), (_RECORD, ServingRecord(600.0, V1))]

    served = _serve_pane(do_fn, state, timer, on_time)
    late = _serve_pane(do_fn, state, timer, [(_EVENT, _event("b", 615))])

    assert [(version.version, event.id) for version, event in served] == [(1, "a")]
    assert [(version.version, event.id) for version, event in late] == [(1, "b")]
    assert timer.times == [Timestamp.of(600 + WINDOW_S + LATENESS_S)]


def test_serve_panes_window_without_record():
    do_fn = _ServeWindowPanes(Duration.of(WINDOW_S).micros, V0, 0)
    state, timer = FakeValueState(), FakeTimer()

    served = _serve_pane(do_fn, state, timer, [(_EVENT, _event("a", 610))])

    assert [(version.version, event.id) for version, event in served] == [(0, "a")]
    assert state.value == ServingRecord(600.0, V0)


def test_serve_panes_warns_on_late_record(caplog):
    do_fn = _ServeWindowPanes(Duration.of(WINDOW_S).micros, V0, 0)
    state, timer = FakeValueState(), FakeTimer()
    _serve_pane(do_fn, state, timer, [(_EVENT, _event("a", 610))])

    with caplog.at_level("WARNING", logger="transforms.serving_join"):
        served = _serve_pane(do_fn, state, timer, [(_RECORD, ServingRecord(600.0, V1)), (_EVENT, _event("b", 620))])

    assert [(version.version, event.id) for version, event in served] == [(1, "b")]
    assert "arrived after events of that window were served with version 0" in caplog.text
