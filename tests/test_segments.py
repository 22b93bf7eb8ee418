"""Segmented runs: the plan of cuts, and outputs equal to one pipeline's."""

import hashlib
import json
import logging
import math
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines import online_train, segments
from pipelines.report import read_drift_events, read_manifest, read_parquet_dir
from transforms import replay, sources
from transforms.dead_letter import read_dead_letters
from transforms.records import SourceRecord
from transforms.timestamps import MIN_WATERMARK_SECONDS
from transforms.windowing import parse_window_spec

MINUTE_MICROS = 60_000_000


def _record(arrival, event_time, watermark=MIN_WATERMARK_SECONDS):
    return SourceRecord(row={}, arrival=arrival, event_time=event_time, watermark=watermark)


@pytest.mark.parametrize("window, serving_s, expected_micros", [
    ("fixed:5m", 300.0, 5 * MINUTE_MICROS),
    ("fixed:1h", 300.0, 60 * MINUTE_MICROS),
    ("fixed:10m", 900.0, 30 * MINUTE_MICROS),
    ("fixed:1500ms", 2.0, 6_000_000),
])
def test_cut_period_known_answers(window, serving_s, expected_micros):
    assert segments.cut_period_micros(parse_window_spec(window), serving_s) == expected_micros


@pytest.mark.parametrize("window", ["sliding:10m/5m", "session:5m", "global"])
def test_cut_period_rejects_unfixed_windows(window):
    with pytest.raises(ValueError, match=r"--window=.*--segment_events=0"):
        segments.cut_period_micros(parse_window_spec(window), 300.0)


def test_plan_cuts_whole_periods_evenly():
    # Ten records at 0..900 s, one per 100 s period, the first without an
    # event time (timestamped at the watermark, MIN_TIMESTAMP).
    records = [_record(0, None)] + [_record(arrival, arrival * 100.0) for arrival in range(1, 10)]

    planned = segments.plan_segments(records, period_micros=100_000_000, events_per_segment=4)

    # Three segments of 10/3 records each: cuts after 4 and after 7 records.
    assert [segment.records for segment in planned] == [4, 3, 3]
    assert [segment.replay.start_micros for segment in planned] == [None, 400_000_000, 700_000_000]
    assert [segment.replay.end_micros for segment in planned] == [400_000_000, 700_000_000, None]
    assert [(s.replay.first_arrival, s.replay.last_arrival) for s in planned] == [(0, 3), (4, 6), (7, 9)]
    assert [segment.newest_event_time for segment in planned] == [300.0, 600.0, 900.0]


def test_plan_keeps_a_period_whole():
    records = [_record(arrival, 10.0 + arrival) for arrival in range(8)]

    planned = segments.plan_segments(records, period_micros=100_000_000, events_per_segment=2)

    assert len(planned) == 1
    assert planned[0].replay == replay.ReplaySegment(None, None, 0, 7)


def test_plan_of_nothing_is_empty():
    assert segments.plan_segments([], period_micros=1, events_per_segment=1) == []


@settings(max_examples=200, deadline=None)
@given(
    times=st.lists(st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False)), max_size=60),
    period_s=st.sampled_from([0.5, 7.0, 60.0, 3600.0]),
    per_segment=st.integers(1, 20),
)
def test_plan_covers_every_record_once(times, period_s, per_segment):
    records = [_record(arrival, time, watermark=float(arrival)) for arrival, time in enumerate(times)]
    period_micros = round(period_s * 1e6)

    planned = segments.plan_segments(records, period_micros, per_segment)

    for record in records:
        owners = [segment for segment in planned if segment.replay.contains(record)]
        assert len(owners) == 1
        assert owners[0].replay.first_arrival <= record.arrival <= owners[0].replay.last_arrival
    assert sum(segment.records for segment in planned) == len(records)
    for segment in planned:
        for bound in (segment.replay.start_micros, segment.replay.end_micros):
            assert bound is None or bound % period_micros == 0
    if records:
        assert len(planned) <= math.ceil(len(records) / per_segment)


def test_segments_replay_whole_stream():
    source_config = sources.resolve_source_config(sources.SourceConfig(dataset="sea", max_events=3000))
    replay_config = replay.ReplayConfig(
        disorder_fraction=0.3, max_disorder=600.0, late_fraction=0.05, late_delay=900.0, seed=3
    )
    whole = list(replay.iter_replay(source_config, replay_config))

    planned = segments.plan_segments(whole, period_micros=5 * MINUTE_MICROS, events_per_segment=700)
    parts = [list(replay.iter_segment(source_config, replay_config, segment.replay)) for segment in planned]

    assert len(planned) == 5
    assert [len(part) for part in parts] == [segment.records for segment in planned]
    assert sorted(record.arrival for part in parts for record in part) == list(range(3000))
    for part in parts:
        assert [record.arrival for record in part] == sorted(record.arrival for record in part)
    merged = sorted((record for part in parts for record in part), key=lambda record: record.arrival)
    assert merged == whole


@pytest.mark.parametrize("flag, on_direct_runner, mode, selection, expected", [
    (None, True, "batch", "as_of", segments.DEFAULT_SEGMENT_EVENTS),
    (None, True, "teststream", "as_of", segments.DEFAULT_SEGMENT_EVENTS),
    (None, False, "batch", "as_of", 0),
    (None, False, "sdf", "as_of", 0),
    (None, True, "batch", "latest", 0),
    (5000, False, "batch", "as_of", 5000),
    (5000, True, "teststream", "as_of", 5000),
    (0, True, "batch", "as_of", 0),
    (0, False, "sdf", "latest", 0),
])
def test_events_per_segment(flag, on_direct_runner, mode, selection, expected):
    assert segments.events_per_segment(flag, on_direct_runner, mode, selection) == expected


@pytest.mark.parametrize("flag, mode, selection, message", [
    (-1, "batch", "as_of", r"--segment_events must be 0 \(one pipeline\) or more, got -1"),
    (5000, "sdf", "as_of", r"--segment_events=5000 cannot be used here: the splittable DoFn replay of a "
                           r"streaming runner runs as one pipeline"),
    (5000, "batch", "latest", r"--model_selection=latest serves the newest version"),
])
def test_events_per_segment_rejects(flag, mode, selection, message):
    with pytest.raises(ValueError, match=message):
        segments.events_per_segment(flag, True, mode, selection)


def test_job_rejects_sliding_window_segments(tmp_path):
    with pytest.raises(ValueError, match=r"--window=sliding:2h/1h cannot be cut into segments"):
        online_train.run([f"--output_dir={tmp_path}", "--window=sliding:2h/1h", "--segment_events=100"])


def test_replay_segment_rejects_sdf_mode():
    with pytest.raises(ValueError, match="A replay segment needs the batch or TestStream replay"):
        replay.ReadEvents(sources.SourceConfig(), mode="sdf", segment=replay.ReplaySegment(None, None, 0, 0))


def _outputs(output_dir, model_name):
    """Return every output of a run, in a form that does not depend on how it was cut."""
    rows = read_parquet_dir(os.path.join(output_dir, "predictions")).to_pylist()
    predictions = {
        row["id"]: (row["model_version"], row["training_watermark"], row["prediction"], row["baseline_prediction"])
        for row in rows
    }
    metrics = sorted(
        (row["window_start"], row["events"], row["min_model_version"], row["max_model_version"],
         round(row["online_accuracy"], 9), round(row["baseline_accuracy"], 9))
        for row in read_parquet_dir(os.path.join(output_dir, "metrics")).to_pylist()
    )
    versions = [
        (entry["version"], entry["training_watermark"], _digest(entry["path"]))
        for entry in read_manifest(os.path.join(output_dir, "models"), model_name)
    ]
    dead_letters = sorted(json.dumps(letter, sort_keys=True) for letter in read_dead_letters(output_dir))
    drift = [json.dumps(event, sort_keys=True) for event in read_drift_events(os.path.join(output_dir, "drift"))]
    return predictions, metrics, versions, dead_letters, drift


def _digest(version_dir):
    with open(os.path.join(version_dir, "model.safetensors"), "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()


def _assert_same_predictions(whole, cut):
    assert whole.keys() == cut.keys()
    for event_id, (version, watermark, prediction, baseline) in whole.items():
        assert cut[event_id][:2] == (version, watermark), event_id
        # Batches can be cut differently, which moves float rounding only.
        assert cut[event_id][2] == pytest.approx(prediction, abs=1e-6), event_id
        assert cut[event_id][3] == pytest.approx(baseline, abs=1e-6), event_id


def _run_whole_and_cut(tmp_path, per_segment: int, *args) -> tuple:
    summaries, outputs = [], []
    for name, flag in (("whole", 0), ("cut", per_segment)):
        output_dir = str(tmp_path / name)
        summaries.append(online_train.run([
            f"--output_dir={output_dir}", "--runner=DirectRunner", f"--segment_events={flag}", *args
        ]))
        outputs.append(output_dir)
    return summaries, outputs


def test_segments_match_one_pipeline(tmp_path):
    # Disorder, late records, drift handling with replay and EWC: every part
    # of the trainer's state has to cross the segment boundaries.
    args = [
        "--dataset=sea", "--max_events=3000", "--window=fixed:5m", "--seed=4",
        "--disorder_fraction=0.2", "--max_disorder=120", "--late_fraction=0.02", "--late_delay=600",
        "--drift_detector=adwin", '--drift_params={"delta": 0.5}', "--drift_reaction=boost_lr", "--replay_size=200",
        "--ewc_lambda=1", "--ewc_every_panes=3",
    ]
    (whole_summary, cut_summary), (whole_dir, cut_dir) = _run_whole_and_cut(tmp_path, 700, *args)
    whole, cut = _outputs(whole_dir, "sea-mlp"), _outputs(cut_dir, "sea-mlp")

    _assert_same_predictions(whole[0], cut[0])
    assert cut[1:] == whole[1:]
    assert len(whole[2]) > 8
    assert len(whole[3]) > 20
    for counter in ("records_read", "records_valid", "records_invalid", "drifts_detected", "dead_letters"):
        assert cut_summary[counter] == whole_summary[counter], counter
    assert cut_summary["records_read"] == 3000
    assert cut_summary["drifts_detected"] >= 1
    assert len(cut[4]) == cut_summary["drifts_detected"]
    # One file prefix per segment: a late record's dead letter can fall in a later segment's windows.
    prefixes = {name.split("-2024")[0] for name in os.listdir(os.path.join(cut_dir, "dead_letter"))}
    assert prefixes == {segments.dead_letter_prefix(position) for position in range(1, 6)}


def test_segments_keep_every_bad_record(tmp_path):
    rows = [{"ts": 1_700_000_000 + i * 60, "x": float(i % 7), "y": i % 2, "id": f"r{i}"} for i in range(120)]
    lines = [json.dumps(row) for row in rows[:50]]
    lines += ['{"ts": "not a time", "x": 1.0, "y": 0, "id": "bad-time"}', '{"ts": 1700003100, "x": 1.0']
    lines += [json.dumps(row) for row in rows[50:]]
    lines += ['{"ts": 1700000030, "x": 1.0, "y": 0, "id": "late"}']
    input_path = tmp_path / "events.jsonl"
    input_path.write_text("\n".join(lines) + "\n")
    args = [f"--input={input_path}", "--timestamp_column=ts", "--label_column=y", "--id_column=id",
            "--window=fixed:30m", "--schema_sample_rows=120"]

    (whole_summary, cut_summary), (whole_dir, cut_dir) = _run_whole_and_cut(tmp_path, 30, *args)
    whole, cut = _outputs(whole_dir, "input-mlp"), _outputs(cut_dir, "input-mlp")

    _assert_same_predictions(whole[0], cut[0])
    assert cut[1:] == whole[1:]
    assert len(whole[0]) == 120
    assert {json.loads(letter)["reason_code"] for letter in cut[3]} == {
        "unparseable_timestamp", "unparseable_record", "late_record",
    }
    assert cut_summary["records_read"] == whole_summary["records_read"] == 123
    assert cut_summary["dead_letters"] == whole_summary["dead_letters"] == 3


def test_segments_on_streaming_engine(tmp_path, caplog):
    # The legacy streaming DirectRunner replays each segment from its own TestStream.
    caplog.set_level(logging.INFO, logger=online_train.__name__)
    args = ["--streaming", "--max_events=800", "--seed=2"]
    (whole_summary, cut_summary), (whole_dir, cut_dir) = _run_whole_and_cut(tmp_path, 200, *args)
    started = [record.getMessage() for record in caplog.records if record.getMessage().startswith("Segment ")]
    whole, cut = _outputs(whole_dir, "phishing-mlp"), _outputs(cut_dir, "phishing-mlp")

    _assert_same_predictions(whole[0], cut[0])
    assert cut[1:] == whole[1:]
    assert len(whole[0]) == 800
    assert cut_summary["engine"].startswith("BundleBasedDirectRunner")
    assert [message.split(":")[0] for message in started] == [f"Segment {k} of 4" for k in range(1, 5)]
    assert cut_summary["versions_published"] == whole_summary["versions_published"]
