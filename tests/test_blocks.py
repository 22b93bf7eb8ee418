"""Tests for block mode: cutting blocks, their window slots, and job outputs with and without blocks.

Block mode must change how events travel, never what the job computes, so
most tests run the same input once per event and once in blocks and compare.
"""

import collections
import contextlib
import logging
import os
import re
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window as beam_window
from apache_beam.utils.timestamp import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines import online_train
from pipelines.report import read_manifest, read_parquet_dir
from transforms import schema as schema_lib
from transforms import validate
from transforms.blocks import DEFAULT_BLOCK_SIZE, BlockConfig, block_config
from transforms.dead_letter import read_dead_letters
from transforms.records import Block, DeadLetter, Event, SourceRecord, unblock
from transforms.replay import ReadEvents, iter_replay, record_timestamp
from transforms.sources import SourceConfig, resolve_source_config
from transforms.windowing import WindowingConfig

from tests.test_replay import DISORDERED, SEA_SOURCE, make_records

# 2024-01-01T00:00:00Z
NEW_YEAR = 1704067200.0
DATA_DIR = os.path.join(os.path.dirname(__file__), "data")
SECOND = 1_000_000


def arrivals(blocks):
    return [[record.arrival for record in block] for block in blocks]


# --- BlockConfig.cut --------------------------------------------------------

# Ten-second slots. Arrivals 0-3 share slot 0 (a size cut after three),
# 4 and 6-8 share slot 1, 5 has no event time, and the watermark moves
# between arrivals 6 and 7.
CUT_TIMES = [NEW_YEAR, NEW_YEAR + 1, NEW_YEAR + 2, NEW_YEAR + 3, NEW_YEAR + 12, None,
             NEW_YEAR + 13, NEW_YEAR + 14, NEW_YEAR + 15, NEW_YEAR + 25]
CUT_WATERMARKS = [NEW_YEAR - 5] * 7 + [NEW_YEAR + 5] * 3


def test_cut_known_blocks():
    config = BlockConfig(size=3, periods_micros=(10 * SECOND,))
    records = make_records(CUT_TIMES, CUT_WATERMARKS)

    assert arrivals(config.cut(records, on_watermark=False)) == [[0, 1, 2], [3], [4], [5], [6, 7, 8], [9]]
    assert arrivals(config.cut(records, on_watermark=True)) == [[0, 1, 2], [3], [4], [5], [6], [7, 8], [9]]


def test_cut_record_without_event_time_alone():
    config = BlockConfig(size=10, periods_micros=(3600 * SECOND,))
    records = make_records([NEW_YEAR, None, None, NEW_YEAR + 1, NEW_YEAR + 2, None])

    assert arrivals(config.cut(records, on_watermark=False)) == [[0], [1], [2], [3, 4], [5]]


def test_cut_empty():
    assert list(BlockConfig(size=4).cut([], on_watermark=True)) == []


@st.composite
def schedules(draw):
    """Arrival-ordered records: event times that mostly move forward in small steps, or None.

    Small steps give long runs of records in one slot, and the backward
    steps add disorder.
    """
    steps = draw(st.lists(st.one_of(st.none(), st.sampled_from([0.0, 0.5, 1.0, 2.5, 7.0, -12.0])), max_size=60))
    times, time = [], NEW_YEAR - 40
    for step in steps:
        if step is not None:
            time += step
        times.append(None if step is None else time)
    moves = draw(st.lists(st.sampled_from([0, 0, 0, 1]), min_size=len(times), max_size=len(times)))
    watermarks = [NEW_YEAR + 10.0 * moved for moved in np.cumsum(moves)]
    return make_records(times, watermarks)


@settings(max_examples=100, deadline=None)
@given(
    records=schedules(),
    size=st.integers(min_value=1, max_value=8),
    period=st.sampled_from([5 * SECOND, 10 * SECOND, 30 * SECOND]),
    on_watermark=st.booleans(),
)
def test_cut_invariants(records, size, period, on_watermark):
    config = BlockConfig(size=size, periods_micros=(period,))

    blocks = list(config.cut(records, on_watermark))

    assert [record for block in blocks for record in block] == records
    for block in blocks:
        assert 1 <= len(block) <= size
        assert len({config.slot(record.event_time) for record in block}) == 1
        if len(block) > 1:
            assert all(record.event_time is not None for record in block)
        if on_watermark:
            assert len({record.watermark for record in block}) == 1
    # Every cut has a reason: a full block, a new slot, a record without
    # event time, or (on_watermark only) a new watermark.
    for block, following in zip(blocks, blocks[1:]):
        last, first = block[-1], following[0]
        assert (
            len(block) == size
            or first.event_time is None
            or last.event_time is None
            or config.slot(first.event_time) != config.slot(last.event_time)
            or (on_watermark and first.watermark != last.watermark)
        )


# --- BlockConfig.slot against Beam's window assignment ---------------------


def _assigned(window_fn, event_time):
    return frozenset(window_fn.assign(beam_window.WindowFn.AssignContext(Timestamp.of(event_time))))


def _same_windows(window_fn, serving_window_s, first, second):
    serving = beam_window.FixedWindows(serving_window_s)
    return (_assigned(window_fn, first) == _assigned(window_fn, second)
            and _assigned(serving, first) == _assigned(serving, second))


event_times = st.one_of(
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
    # Quarter seconds land on window boundaries often.
    st.integers(min_value=-4_000, max_value=4_000).map(lambda quarter: quarter / 4),
    st.floats(min_value=NEW_YEAR - 1e4, max_value=NEW_YEAR + 1e4),
)


@pytest.mark.parametrize(
    "window, serving_window_s",
    [
        ("fixed:60s", 60.0),
        ("fixed:60s", 90.0),
        ("fixed:1500ms", 0.25),
        ("sliding:300s/60s", 60.0),
        ("sliding:300s/60s", 45.0),
        ("sliding:90s/30s", 7.5),
        ("global", 30.0),
    ],
)
@settings(max_examples=150, deadline=None)
@given(first=event_times, offset=st.one_of(
    st.floats(min_value=-120, max_value=120, allow_nan=False), st.integers(min_value=-8, max_value=8)))
def test_slot_matches_beam_windows(window, serving_window_s, first, offset):
    windowing_config = WindowingConfig.from_specs(window)
    config = block_config(8, windowing_config, serving_window_s)
    second = first + offset

    same_slot = config.slot(first) == config.slot(second)

    assert same_slot == _same_windows(windowing_config.window_fn, serving_window_s, first, second)


def test_slot_sliding_size_not_multiple_of_period():
    windowing_config = WindowingConfig.from_specs("sliding:100s/70s")
    config = block_config(8, windowing_config, 70.0)

    # 0 s is in [-70, 30) and [0, 100); 50 s only in [0, 100).
    assert not _same_windows(windowing_config.window_fn, 70.0, 0.0, 50.0)
    assert config.slot(0.0) != config.slot(50.0)


def test_slot_known_cells():
    config = BlockConfig(size=4, periods_micros=(10 * SECOND,))

    assert config.slot(0.0) == config.slot(9.999999) == (0,)
    assert config.slot(10.0) == (1,)
    assert config.slot(-0.5) == config.slot(-9.5) == (-1,)
    # Timestamp.of truncates toward zero, as Beam does for the element.
    assert config.slot(-0.0000004) == (0,)


# --- block_config ------------------------------------------------------------


def test_block_config_zero_is_off():
    assert block_config(0, WindowingConfig.from_specs("session:60s"), 60.0) is None
    assert block_config(0, WindowingConfig.from_specs("fixed:60s"), 60.0) is None


@pytest.mark.parametrize(
    "window, trigger, expected_size",
    [("fixed:60s", "watermark", DEFAULT_BLOCK_SIZE), ("session:60s", "watermark", None),
     ("fixed:60s", "count:5", None)],
)
def test_block_config_default_size(window, trigger, expected_size):
    config = block_config(None, WindowingConfig.from_specs(window, trigger), 60.0)

    if expected_size is None:
        assert config is None
    else:
        assert config.size == expected_size


def test_block_config_fixed_periods():
    config = block_config(256, WindowingConfig.from_specs("fixed:5m"), 60.0)

    assert config == BlockConfig(size=256, periods_micros=(60 * SECOND, 300 * SECOND))


@pytest.mark.parametrize(
    "size, window, trigger, lateness, message",
    [
        (-1, "fixed:60s", "watermark", "0s",
         r"--block_size must be 0 \(one event per element\) or positive, got -1; for example 256"),
        (64, "session:60s", "watermark", "0s",
         r"--block_size=64 cannot be used here: session windows \(session:1m\) end at gaps.*Use --block_size=0"),
        (64, "fixed:60s", "count:5", "0s",
         r"--block_size=64 cannot be used here: the count trigger 'count:5' would count blocks instead of events"),
        (64, "fixed:60s", "watermark+early=count:5", "0s",
         r"the count trigger 'watermark\+early=count:5' would count blocks"),
        (64, "fixed:60s", "watermark+late=count:5", "30s",
         r"the count trigger 'watermark\+late=count:5' would count blocks"),
        (8, "sliding:60s/20s", "watermark+early=time:10s+late=count:1", "30s",
         r"the count trigger 'watermark\+early=time:10s\+late=count:1' would count blocks"),
    ],
    ids=["negative", "session", "repeated_count", "early_count", "late_count", "late_count_with_time"],
)
def test_block_config_rejects(size, window, trigger, lateness, message):
    windowing_config = WindowingConfig.from_specs(window, trigger, lateness)

    with pytest.raises(ValueError, match=message):
        block_config(size, windowing_config, 60.0)


@pytest.mark.parametrize(
    "trigger, lateness",
    [("time:30s", "0s"), ("watermark+early=time:30s", "0s"), ("watermark+early=time:10s+late=time:1m", "5m")],
)
def test_block_config_accepts_processing_time(trigger, lateness):
    config = block_config(32, WindowingConfig.from_specs("fixed:60s", trigger, lateness), 60.0)

    assert config.size == 32


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"size": 0}, r"Block size must be at least 1 event, got 0; for example 256"),
        ({"size": 4, "periods_micros": (SECOND, 0)}, r"Block window periods must be positive microseconds"),
    ],
)
def test_block_config_class_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BlockConfig(**kwargs)


# --- ReadEvents with blocks --------------------------------------------------

CSV_SOURCE = SourceConfig(input=os.path.join(DATA_DIR, "events.csv"), timestamp_column="event_time")
# Sea has one event per second, so its 30 s cells cut blocks by size and by
# slot. The few records of events.csv need hour cells to share one.
SEA_BLOCKS = block_config(16, WindowingConfig.from_specs("fixed:60s"), 30.0)
CSV_BLOCKS = block_config(16, WindowingConfig.from_specs("fixed:1h"), 3600.0)


class _DescribeBlock(beam.DoFn):
    """Emit (element timestamp in micros, the block's records)."""

    def process(self, block, timestamp=beam.DoFn.TimestampParam):
        assert isinstance(block, Block), block
        yield timestamp.micros, block.items


def _check_blocks(expected, config, one_watermark):
    """Return an assert_that matcher for the described blocks of the ``expected`` schedule."""

    def matcher(described):
        records = sorted(unblock(Block(items) for _, items in described), key=lambda record: record.arrival)
        assert records == list(expected)

        for timestamp_micros, items in described:
            assert 1 <= len(items) <= config.size
            assert len({config.slot(record.event_time) for record in items}) == 1, items
            assert timestamp_micros == min(record_timestamp(record).micros for record in items)
            if one_watermark:
                assert len({record.watermark for record in items}) == 1, items
        assert max(len(items) for _, items in described) > 1

    return matcher


def _run_read_events(runner, flags, source, config, mode):
    expected = list(iter_replay(resolve_source_config(source), DISORDERED))
    with beam.Pipeline(runner=runner, options=PipelineOptions(flags)) as pipeline:
        described = (
            pipeline
            | "ReadEvents" >> ReadEvents(source, DISORDERED, mode, blocks=config)
            | "DescribeBlocks" >> beam.ParDo(_DescribeBlock())
        )
        assert_that(described, _check_blocks(expected, config, one_watermark=mode != "batch"))


@pytest.mark.parametrize(
    "runner, flags, mode",
    [
        (FnApiRunner, [], "batch"),
        ("DirectRunner", ["--streaming"], "teststream"),
        (FnApiRunner, [], "sdf"),
    ],
)
def test_read_events_blocks_same_records(runner, flags, mode):
    _run_read_events(runner() if callable(runner) else runner, flags, SEA_SOURCE, SEA_BLOCKS, mode)


@pytest.mark.parametrize("mode", ["batch", "teststream"])
def test_read_events_blocks_malformed_file(mode):
    runner, flags = ("DirectRunner", ["--streaming"]) if mode == "teststream" else (FnApiRunner(), [])
    _run_read_events(runner, flags, CSV_SOURCE, CSV_BLOCKS, mode)


def test_batch_blocks_span_watermarks():
    # Batch runners ignore the watermark schedule, so a batch block may span
    # watermark updates; the streaming replays cut there.
    schedule = list(iter_replay(resolve_source_config(SEA_SOURCE), DISORDERED))

    batch = list(SEA_BLOCKS.cut(schedule, on_watermark=False))
    streaming = list(SEA_BLOCKS.cut(schedule, on_watermark=True))

    assert any(len({record.watermark for record in block}) > 1 for block in batch)
    assert any(len(block) == SEA_BLOCKS.size for block in batch)
    assert len(streaming) > len(batch)


# --- ValidateRecords on Blocks -----------------------------------------------

TRAINING_ROWS = [
    {"id": "r1", "ts": "t", "temp": 0.0, "city": "oslo", "label": "cold"},
    {"id": "r2", "ts": "t", "temp": 40.0, "city": "lima", "label": "warm"},
]
SCHEMA = schema_lib.infer_schema(TRAINING_ROWS, "label", "ts", "id")
VALIDATE_WINDOWING = WindowingConfig.from_specs("fixed:60s", allowed_lateness="10s")
LATENESS = VALIDATE_WINDOWING.lateness_rule()
# Arrivals 45-47 share a slot and a watermark, and all three are bad.
ALL_BAD = range(45, 48)


def _validation_records():
    """Sixty records 7 s apart in 20 s watermark steps, bad in five ways."""
    records = []
    for index in range(60):
        event_time = NEW_YEAR + 7 * index
        watermark = NEW_YEAR + 20 * (index // 3) - 30
        row = {"id": f"e{index}", "ts": "t", "temp": float(index % 40), "city": ("oslo", "lima")[index % 2],
               "label": ("cold", "warm")[index % 3 == 0]}
        error = None
        if index % 11 == 3 or index in ALL_BAD:
            row["temp"] = "hot"
        elif index % 11 == 5:
            row["label"] = "mild"
        elif index % 11 == 7:
            row["extra"] = 1
        elif index % 13 == 9:
            event_time, error = None, "bad timestamp"
        elif index % 17 == 10:
            # Its window ends at most 60 s after it, so with 10 s of allowed
            # lateness this watermark makes it droppable.
            watermark = event_time + 200
        records.append(SourceRecord(row, event_time, index, watermark, error))
    return records


def _valid_events(element, timestamp=beam.DoFn.TimestampParam):
    """Emit the events of an element, checking its timestamp: each event's own, or a block's earliest."""
    events = element.items if isinstance(element, Block) else (element,)
    assert timestamp == Timestamp.of(min(event.event_time for event in events)), element
    return events


def _describe_dead_letter(letter, timestamp=beam.DoFn.TimestampParam):
    yield letter.record["id"], letter.reason_code, letter.reason, letter.field, timestamp.micros


def _counters_by_step(result):
    query = result.metrics().query(MetricsFilter().with_namespace(validate.METRICS_NAMESPACE))
    totals = collections.defaultdict(collections.Counter)
    for counter in query["counters"]:
        branch = "blocks" if "ValidateBlocks" in counter.key.step else "single"
        totals[branch][counter.key.metric.name] += counter.committed
    return totals


def test_validate_blocks_same_as_single_records():
    records = _validation_records()
    blocks = [Block(part) for part in block_config(4, VALIDATE_WINDOWING, 60.0).cut(records, on_watermark=True)]
    results = [validate.validate_record(record, SCHEMA, lateness=LATENESS) for record in records]
    expected_valid = [result for result in results if isinstance(result, Event)]
    expected_dead = [
        (record.row["id"], result.reason_code, result.reason, result.field,
         validate.dead_letter_timestamp(record).micros)
        for record, result in zip(records, results) if isinstance(result, DeadLetter)
    ]

    pipeline = beam.Pipeline(runner=FnApiRunner())
    for label, elements in (("Single", records), ("Blocks", blocks)):
        validated = (
            pipeline
            | f"Create{label}" >> beam.Create(elements)
            | f"Validate{label}" >> validate.ValidateRecords(SCHEMA, lateness=LATENESS)
        )
        events = validated.valid | f"Unblock{label}" >> beam.FlatMap(_valid_events)
        dead = validated.dead_letter | f"DescribeDeadLetters{label}" >> beam.FlatMap(_describe_dead_letter)
        assert_that(events, equal_to(expected_valid), label=f"CheckValid{label}")
        assert_that(dead, equal_to(expected_dead), label=f"CheckDeadLetters{label}")
    result = pipeline.run()
    result.wait_until_finish()

    counters = _counters_by_step(result)
    reasons = collections.Counter(letter[1] for letter in expected_dead)
    assert set(reasons) == {"wrong_type", "unknown_label_class", "extra_field", "unparseable_timestamp",
                            "late_record"}
    assert counters["blocks"] == counters["single"]
    assert counters["blocks"]["records_read"] == 60
    assert counters["blocks"]["records_valid"] == len(expected_valid)
    assert counters["blocks"]["records_invalid"] == len(expected_dead)
    for reason, count in reasons.items():
        assert counters["blocks"][f"records_invalid_{reason}"] == count, reason
    assert Block(records[45:48]) in blocks


# --- The job, with and without blocks ----------------------------------------

BLOCK_SIZE = 64
SEA = ["--dataset=sea", "--max_events=3000", "--no_report"]
SEA_STREAMING = ["--dataset=sea", "--max_events=1500", "--no_report"]
# Late records: those behind the watermark by less than the allowed lateness
# are trained in late panes, the others become late_record dead letters.
LATE = [
    "--max_out_of_orderness=10", "--disorder_fraction=0.1", "--max_disorder=60",
    "--late_fraction=0.05", "--late_delay=300", "--records_per_watermark_update=50",
    "--allowed_lateness=2m", "--trigger=watermark+late=time:10s",
]
MODEL_NAME = "sea-mlp"


class JobOutputs(NamedTuple):
    predictions: dict
    metrics: list
    versions: list
    dead_letters: collections.Counter
    summary: dict
    log: str


@contextlib.contextmanager
def _captured_log(name):
    """Collect the INFO messages of logger ``name``."""
    messages = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _run_job(output_dir, block_size, args):
    with _captured_log(online_train.__name__) as messages:
        summary = online_train.run([f"--output_dir={output_dir}", f"--block_size={block_size}", *args])
    predictions = {row["id"]: row for row in read_parquet_dir(os.path.join(output_dir, "predictions")).to_pylist()}
    metrics = sorted(read_parquet_dir(os.path.join(output_dir, "metrics")).to_pylist(),
                     key=lambda row: row["window_start"])
    dead_letters = collections.Counter(
        (letter["record"].get("id"), letter["reason_code"]) for letter in read_dead_letters(output_dir))
    return JobOutputs(predictions, metrics, read_manifest(os.path.join(output_dir, "models"), MODEL_NAME),
                      dead_letters, summary, "\n".join(messages))


def _run_pair(tmp_path_factory, name, args):
    """Run the job once per event and once in blocks, and return both outputs keyed by block size."""
    return {
        block_size: _run_job(str(tmp_path_factory.mktemp(f"{name}{block_size}")), block_size, args)
        for block_size in (0, BLOCK_SIZE)
    }


def _published(versions):
    """What each published version was trained on, without its publication time."""
    return [
        (version["version"], version["training_watermark"], version["metadata"].get("examples_trained"),
         version["metadata"].get("pane_timing"), version["metadata"].get("pane_window_start"))
        for version in versions
    ]


def _assert_same_training(single, blocks):
    assert blocks.log.count(f"blocks of up to {BLOCK_SIZE} events") == 1
    assert "one event per element" in single.log
    assert _published(blocks.versions) == _published(single.versions)
    np.testing.assert_allclose([version["metadata"]["loss"] or 0.0 for version in blocks.versions],
                               [version["metadata"]["loss"] or 0.0 for version in single.versions], rtol=1e-6)
    assert blocks.dead_letters == single.dead_letters
    assert blocks.predictions.keys() == single.predictions.keys()


# Float32 model outputs may differ in the last bit, because per event the
# inference batches are sized by measured latency (BatchElements and the
# batch-size controller), so two runs per event can already differ there.
# Versions and everything else must be equal.
EXACT_PREDICTION_FIELDS = ("event_time", "label", "model_version", "training_watermark", "predicted_class")
EXACT_METRICS_FIELDS = ("window_start", "window_end", "events", "labelled_events",
                        "min_model_version", "max_model_version")


def _assert_same_outputs(single, blocks):
    _assert_same_training(single, blocks)
    for event_id, expected in single.predictions.items():
        actual = blocks.predictions[event_id]
        assert {field: actual[field] for field in EXACT_PREDICTION_FIELDS} == {
            field: expected[field] for field in EXACT_PREDICTION_FIELDS}, event_id
        for field in ("prediction", "baseline_prediction"):
            np.testing.assert_allclose(actual[field], expected[field], rtol=1e-6, atol=1e-7, err_msg=event_id)

    assert len(blocks.metrics) == len(single.metrics)
    for expected, actual in zip(single.metrics, blocks.metrics):
        assert {field: actual[field] for field in EXACT_METRICS_FIELDS} == {
            field: expected[field] for field in EXACT_METRICS_FIELDS}
        for field in set(expected) - set(EXACT_METRICS_FIELDS):
            assert actual[field] == pytest.approx(expected[field], rel=1e-6), field


@pytest.fixture(scope="module")
def batch_pair(tmp_path_factory):
    return _run_pair(tmp_path_factory, "batch", ["--runner=DirectRunner", *SEA, *LATE])


@pytest.fixture(scope="module")
def streaming_pair(tmp_path_factory):
    return _run_pair(tmp_path_factory, "streaming", ["--runner=DirectRunner", "--streaming", *SEA_STREAMING])


def test_job_batch_same_outputs(batch_pair):
    single, blocks = batch_pair[0], batch_pair[BLOCK_SIZE]

    _assert_same_outputs(single, blocks)
    assert blocks.summary["engine"].startswith("FnApiRunner")
    assert len(single.predictions) + sum(single.dead_letters.values()) == 3000
    for name in ("records_read", "records_valid", "records_invalid"):
        assert blocks.summary[name] == single.summary[name], name


def test_job_batch_late_records(batch_pair):
    single, blocks = batch_pair[0], batch_pair[BLOCK_SIZE]

    late = {event_id for event_id, reason in single.dead_letters if reason == "late_record"}
    assert late == {event_id for event_id, reason in blocks.dead_letters if reason == "late_record"}
    assert late and not late & blocks.predictions.keys()


def test_job_streaming_same_outputs(streaming_pair):
    single, blocks = streaming_pair[0], streaming_pair[BLOCK_SIZE]

    _assert_same_outputs(single, blocks)
    assert len(blocks.predictions) == 1500
    assert blocks.summary["engine"].startswith("BundleBasedDirectRunner")


def test_job_sliding_same_outputs(tmp_path_factory):
    # A 5 min window slides every 2 min, so an event in the first minute of
    # a period is in three windows and one in the second minute in two.
    pair = _run_pair(tmp_path_factory, "sliding", ["--runner=DirectRunner", *SEA, "--window=sliding:5m/2m"])

    _assert_same_outputs(pair[0], pair[BLOCK_SIZE])


def test_job_session_window_rejected(tmp_path):
    with pytest.raises(ValueError, match=re.escape("--block_size=64 cannot be used here: session windows")):
        online_train.run([f"--output_dir={tmp_path}", "--dataset=sea", "--max_events=100",
                          "--block_size=64", "--window=session:60s"])

    assert not os.path.exists(os.path.join(tmp_path, "predictions"))


@pytest.fixture(scope="module")
def prism_args(prism_location):
    from runners.prism import prism_pipeline_args

    return prism_pipeline_args(prism_location)


@pytest.mark.prism
def test_job_prism_batch_same_outputs(prism_args, tmp_path_factory):
    pair = _run_pair(tmp_path_factory, "prism_batch", [*prism_args, *SEA])

    _assert_same_outputs(pair[0], pair[BLOCK_SIZE])


@pytest.mark.prism
def test_job_prism_streaming_same_outputs(prism_args, tmp_path_factory):
    pair = _run_pair(tmp_path_factory, "prism_streaming", [*prism_args, "--streaming", *SEA_STREAMING])

    _assert_same_outputs(pair[0], pair[BLOCK_SIZE])


@pytest.mark.prism
def test_job_prism_streaming_late_data(prism_args, tmp_path_factory):
    # NOTE: the legacy DirectRunner (Beam 2.77) fails on this replay with or
    # without blocks. Its side-input window mapping raises AttributeError on a
    # bundle without elements, and the job then hangs, so this runs on Prism.
    pair = _run_pair(tmp_path_factory, "prism_late", [*prism_args, "--streaming", *SEA_STREAMING, *LATE])
    single, blocks = pair[0], pair[BLOCK_SIZE]

    _assert_same_training(single, blocks)
    assert any(key[1] == "late_record" for key in single.dead_letters)
    assert any(version["metadata"].get("pane_timing") == "late" for version in single.versions)
    # A late pane's version serves from the first serving window whose timer
    # fires after the pane arrives, which depends on the runner's timing with
    # or without blocks, so the served versions are not compared here.
    assert [(row["window_start"], row["events"]) for row in blocks.metrics] == [
        (row["window_start"], row["events"]) for row in single.metrics]
    for name in ("records_read", "records_valid", "records_invalid"):
        assert blocks.summary[name] == single.summary[name], name
