"""End-to-end runs of the main job on the engines available here."""

import json
import os
import time

import numpy as np
import pytest

from pipelines import online_train
from pipelines.report import read_manifest, read_parquet_dir

SMALL = ["--max_events=300"]


def _run(output_dir, *args):
    return online_train.run([f"--output_dir={output_dir}", *args])


def _versions_by_id(output_dir):
    table = read_parquet_dir(os.path.join(output_dir, "predictions"))
    return dict(zip(table.column("id").to_pylist(), table.column("model_version").to_pylist()))


def _predictions_by_id(output_dir):
    rows = read_parquet_dir(os.path.join(output_dir, "predictions")).to_pylist()
    return {row["id"]: row for row in rows}


@pytest.fixture(scope="module")
def batch_output(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("batch"))
    summary = _run(output_dir, "--runner=DirectRunner", *SMALL)
    return output_dir, summary


@pytest.fixture(scope="module")
def streaming_output(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("streaming"))
    summary = _run(output_dir, "--runner=DirectRunner", "--streaming", *SMALL)
    return output_dir, summary


def test_default_job_writes_every_output(batch_output):
    output_dir, summary = batch_output

    predictions = read_parquet_dir(os.path.join(output_dir, "predictions"))
    assert predictions.num_rows == 300
    assert read_parquet_dir(os.path.join(output_dir, "metrics")).num_rows == 5
    metric_lines = [
        line
        for name in os.listdir(os.path.join(output_dir, "metrics")) if name.endswith(".jsonl")
        for line in open(os.path.join(output_dir, "metrics", name))
    ]
    assert len(metric_lines) == 5
    assert [v["version"] for v in read_manifest(os.path.join(output_dir, "models"), "phishing-mlp")] == list(range(6))
    assert os.path.isdir(os.path.join(output_dir, "dead_letter"))
    for name in ("report.md", "schema.pbtxt", "plots/metrics_over_event_time.png", "plots/freshness.png"):
        assert os.path.getsize(os.path.join(output_dir, name)) > 0, name
    assert summary["engine"].startswith("FnApiRunner")


def test_default_job_learns_the_real_data(batch_output):
    _, summary = batch_output
    assert summary["online_accuracy"] > summary["baseline_accuracy"] + 0.1


def test_no_prediction_uses_a_later_model(batch_output):
    output_dir, _ = batch_output
    table = read_parquet_dir(os.path.join(output_dir, "predictions"))
    watermarks = table.column("training_watermark").to_numpy()
    event_times = table.column("event_time").to_numpy()
    assert np.all(watermarks <= event_times)


def test_streaming_engine_gives_same_versions(batch_output, streaming_output):
    assert _versions_by_id(streaming_output[0]) == _versions_by_id(batch_output[0])
    assert streaming_output[1]["engine"].startswith("BundleBasedDirectRunner")


def test_streaming_engine_gives_same_metrics(batch_output, streaming_output):
    for key in ("online_accuracy", "online_log_loss", "baseline_accuracy"):
        assert streaming_output[1][key] == pytest.approx(batch_output[1][key], rel=1e-6), key


def test_same_seed_same_result(batch_output, tmp_path):
    _run(str(tmp_path), "--runner=DirectRunner", *SMALL)
    first, second = _predictions_by_id(batch_output[0]), _predictions_by_id(str(tmp_path))
    for key, row in first.items():
        assert second[key]["model_version"] == row["model_version"]
        np.testing.assert_allclose(second[key]["prediction"], row["prediction"], rtol=1e-6)


def test_online_model_beats_frozen_on_drifting_stream(tmp_path):
    summary = _run(str(tmp_path), "--runner=DirectRunner", "--dataset=sine", "--max_events=4000",
                   "--window=fixed:5m", "--learning_rate=0.02", "--steps_per_pane=2")
    assert summary["online_accuracy"] > summary["baseline_accuracy"] + 0.2


def test_bad_input_goes_to_dead_letters(tmp_path):
    rows = [
        {"ts": 1_700_000_000 + i * 60, "x": float(i % 7), "y": i % 2, "id": f"r{i}"} for i in range(120)
    ]
    lines = [json.dumps(row) for row in rows]
    lines += [
        '{"ts": "not a time", "x": 1.0, "y": 0, "id": "bad-time"}',
        '{"ts": 1700007200, "x": "abc", "y": 1, "id": "bad-type"}',
        '{"ts": 1700007260, "x": 1.0, "y": 7, "id": "bad-label"}',
        '{"ts": 1700007320, "x": 1.0, "y": 0',
        '{"ts": 1700000030, "x": 1.0, "y": 0, "id": "late"}',
    ]
    input_path = tmp_path / "events.jsonl"
    input_path.write_text("\n".join(lines) + "\n")
    output_dir = tmp_path / "out"

    summary = _run(str(output_dir), "--runner=DirectRunner", f"--input={input_path}",
                   "--timestamp_column=ts", "--label_column=y", "--id_column=id",
                   "--window=fixed:30m", "--schema_sample_rows=120")

    assert summary["events_served"] == 120
    assert summary["dead_letters"] == 5
    assert summary["records_read"] == 125
    assert summary["records_read"] == summary["records_valid"] + summary["records_invalid"]
    from transforms.dead_letter import read_dead_letters
    reasons = {letter["reason_code"] for letter in read_dead_letters(str(output_dir))}
    assert reasons == {
        "unparseable_timestamp", "wrong_type", "unknown_label_class", "unparseable_record", "late_record",
    }


def test_portable_runner_embedded(batch_output, tmp_path):
    _run(str(tmp_path), "--runner=PortableRunner", "--job_endpoint=embed",
         "--environment_type=LOOPBACK", *SMALL)
    assert _versions_by_id(str(tmp_path)) == _versions_by_id(batch_output[0])


@pytest.mark.prism
@pytest.mark.parametrize("streaming", [False, True], ids=["batch", "streaming"])
def test_prism_matches_direct_runner(batch_output, prism_location, tmp_path, streaming):
    from runners.prism import prism_pipeline_args

    args = prism_pipeline_args(prism_location) + (["--streaming"] if streaming else [])
    summary = _run(str(tmp_path), *args, *SMALL)

    # In streaming, Prism may read these 300 events in one go, so the
    # trainer can receive the panes of several windows at once, in any order.
    assert _versions_by_id(str(tmp_path)) == _versions_by_id(batch_output[0])
    for key in ("online_accuracy", "online_log_loss"):
        assert summary[key] == pytest.approx(batch_output[1][key], rel=1e-6), key


@pytest.mark.prism
def test_prism_streaming_paced_replay(batch_output, prism_location, tmp_path):
    from runners.prism import prism_pipeline_args

    started = time.monotonic()
    _run(str(tmp_path), *prism_pipeline_args(prism_location), "--streaming", "--replay_rate=30", *SMALL)
    seconds = time.monotonic() - started

    # The last of the 300 events is due 10 s after the first; unpaced, the
    # whole job takes about 5 s here.
    assert seconds >= 299 / 30
    assert _versions_by_id(str(tmp_path)) == _versions_by_id(batch_output[0])


def test_paced_replay_needs_streaming(tmp_path):
    with pytest.raises(ValueError, match=r"--replay_rate=30 paces only the streaming replay"):
        _run(str(tmp_path), "--runner=DirectRunner", "--replay_rate=30", *SMALL)


def test_drift_detection_writes_events(tmp_path):
    summary = _run(str(tmp_path), "--runner=DirectRunner", "--dataset=agrawal", "--max_events=5000",
                   "--window=fixed:5m", "--drift_detector=adwin", "--drift_reaction=boost_lr")

    drift_dir = tmp_path / "drift"
    lines = [line for path in drift_dir.glob("*.jsonl") for line in path.read_text().splitlines() if line]
    assert summary["drift_events"] == len(lines)
    assert len(lines) >= 1
    first = json.loads(lines[0])
    assert first["detector"] == "adwin"
    assert "Detected drift" in (tmp_path / "report.md").read_text()


def test_late_replay_on_legacy_streaming_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"--late_fraction=0\.05 cannot run with --streaming on the DirectRunner"):
        _run(str(tmp_path), "--runner=DirectRunner", "--streaming", "--late_fraction=0.05", "--late_delay=300",
             *SMALL)


@pytest.mark.parametrize("oldest, newest, expected", [
    (0.0, 3599.0, 12),
    (299.0, 300.0, 2),
    (600.0, 600.0, 1),
    (float("inf"), float("-inf"), 0),
])
def test_serving_window_count(oldest, newest, expected):
    scan = online_train.SourceScan(sample=[], oldest_event_time=oldest, newest_event_time=newest)

    assert online_train.serving_window_count(scan, 300.0) == expected
