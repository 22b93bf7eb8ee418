"""Tests for transforms.sources and transforms.datasets on real files and River data."""

import argparse
import gzip
import itertools
import os
import shutil
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from transforms import datasets
from transforms.sources import (
    RAW_FIELD,
    SourceConfig,
    add_source_options,
    file_format,
    malformed_reason,
    read_source_records,
    resolve_source_config,
    sample_rows,
    source_config_from_args,
)
from transforms.timestamps import MIN_WATERMARK_SECONDS

DATA_DIR = os.path.join(os.path.dirname(__file__), "data")
EVENTS_CSV = os.path.join(DATA_DIR, "events.csv")
EVENTS_JSONL = os.path.join(DATA_DIR, "events.jsonl")

# 2024-01-01T00:00:00Z
NEW_YEAR = 1704067200.0


def read(**kwargs):
    return list(read_source_records(SourceConfig(**kwargs)))


def test_csv_rows_and_malformed_lines():
    records = read(input=EVENTS_CSV, timestamp_column="event_time", label_column="label")

    assert [record.arrival for record in records] == [0, 1, 2, 3, 4, 5]
    assert [record.event_time for record in records] == [
        NEW_YEAR, NEW_YEAR + 30, None, None, None, NEW_YEAR + 125,
    ]
    assert records[0].row == {"id": "events-0", "event_time": "2024-01-01T00:00:00Z", "x": 0.5, "label": 1}
    assert records[5].row["id"] == "events-5"
    assert all(record.watermark == MIN_WATERMARK_SECONDS for record in records)


def test_csv_wrong_column_count():
    records = read(input=EVENTS_CSV, timestamp_column="event_time")
    short, long = records[2], records[4]

    assert short.row == {RAW_FIELD: "2024-01-01T00:01:10Z,2.5"}
    assert short.timestamp_error == (
        f"wrong number of CSV columns ({EVENTS_CSV}:4): expected 3, got 2"
    )
    assert long.row == {RAW_FIELD: "2024-01-01T01:02:00+01:00,4.5,0,extra"}
    assert malformed_reason(long) == (
        f"wrong number of CSV columns ({EVENTS_CSV}:7): expected 3, got 4"
    )


def test_csv_bad_timestamp_row():
    record = read(input=EVENTS_CSV, timestamp_column="event_time")[3]

    assert record.row["id"] == "events-3"
    assert record.event_time is None
    assert record.timestamp_error == (
        "invalid timestamp 'not-a-time': expected an ISO-8601 date or date-time"
    )
    assert malformed_reason(record) is None


def test_csv_invalid_utf8_line(tmp_path):
    path = tmp_path / "bytes.csv"
    path.write_bytes(b"t,x\n1704067200,1\n\xff\xfe,2\n1704067202,3\n")

    records = read(input=str(path), timestamp_column="t")

    assert [record.event_time for record in records] == [NEW_YEAR, None, NEW_YEAR + 2]
    assert records[1].row == {RAW_FIELD: "\ufffd\ufffd,2"}
    assert records[1].timestamp_error.startswith(f"unparseable CSV line ({path}:3): ")
    assert records[2].row == {"id": "bytes-2", "t": "1704067202", "x": 3}


def test_jsonl_rows_and_malformed_lines():
    records = read(input=EVENTS_JSONL, timestamp_column="event_time")

    assert [record.event_time for record in records] == [
        NEW_YEAR, NEW_YEAR + 30, None, None, None, None, NEW_YEAR + 125,
    ]
    assert records[0].row == {"id": "events-0", "event_time": 1704067200000, "x": 0.5, "label": 1}
    assert records[2].row == {RAW_FIELD: '{"event_time": 17040672'}
    assert records[2].timestamp_error == (
        f"unparseable JSON line ({EVENTS_JSONL}:3): "
        "Expecting ',' delimiter: line 1 column 24 (char 23)"
    )
    assert records[3].row == {RAW_FIELD: "[1, 2, 3]"}
    assert records[3].timestamp_error == f"JSON line is not an object ({EVENTS_JSONL}:4): got list"


def test_jsonl_missing_and_bad_timestamps():
    records = read(input=EVENTS_JSONL, timestamp_column="event_time")

    assert records[4].row == {"id": "events-4", "x": 4.5, "label": 1}
    assert records[4].timestamp_error == "missing timestamp"
    # The column is read in milliseconds, decided by its numeric majority.
    assert records[5].timestamp_error == (
        "invalid timestamp 'soon': expected a number of milliseconds since the Unix epoch"
    )
    assert malformed_reason(records[5]) is None


def test_parquet_timestamp_column(tmp_path):
    path = tmp_path / "typed.parquet"
    table = pa.table(
        {
            "ts": pa.array([1704067200000, 1704067260000, None], pa.timestamp("ms", "UTC")),
            "x": [1.0, 2.0, 3.0],
            "key": ["a", "b", "c"],
        }
    )
    pq.write_table(table, path)

    records = read(input=str(path), timestamp_column="ts", id_column="key")

    assert [record.event_time for record in records] == [NEW_YEAR, NEW_YEAR + 60, None]
    assert [record.row["key"] for record in records] == ["a", "b", "c"]
    assert "id" not in records[0].row
    assert records[2].timestamp_error == "missing timestamp"


def test_gzip_csv(tmp_path):
    path = tmp_path / "clicks.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("t,x\n1704067200000,1\n1704067201000,2\n")

    records = read(input=str(path), timestamp_column="t", timestamp_unit="ms")

    assert [record.event_time for record in records] == [NEW_YEAR, NEW_YEAR + 1]
    assert [record.row["id"] for record in records] == ["clicks-0", "clicks-1"]


def test_glob_reads_files_in_path_order(tmp_path):
    shutil.copy(EVENTS_CSV, tmp_path / "b.csv")
    shutil.copy(EVENTS_CSV, tmp_path / "a.csv")

    records = read(input=str(tmp_path / "*.csv"), timestamp_column="event_time")

    assert [record.arrival for record in records] == list(range(12))
    assert records[0].row["id"] == "a-0"
    assert records[6].row["id"] == "b-0"
    assert records[11].row["id"] == "b-5"


def test_jsonl_keeps_own_ids(tmp_path):
    path = tmp_path / "ids.jsonl"
    path.write_text('{"id": "first", "t": 1704067200}\n{"t": 1704067201}\n')

    records = read(input=str(path), timestamp_column="t")

    assert [record.row["id"] for record in records] == ["first", "ids-1"]


def test_max_events_stops_reading():
    records = read(input=EVENTS_CSV, timestamp_column="event_time", max_events=3)

    assert len(records) == 3
    assert records[2].row == {RAW_FIELD: "2024-01-01T00:01:10Z,2.5"}


def test_sample_rows_skips_malformed():
    rows = sample_rows(SourceConfig(input=EVENTS_CSV, timestamp_column="event_time"), 4)

    assert [row["id"] for row in rows] == ["events-0", "events-1", "events-3"]


@pytest.mark.parametrize(
    "path, expected",
    [
        ("a/b.csv", "csv"),
        ("gs://bucket/b.CSV.gz", "csv"),
        ("b.jsonl", "jsonl"),
        ("b.ndjson.bz2", "jsonl"),
        ("b.json", "jsonl"),
        ("b.parquet", "parquet"),
        ("b.pq", "parquet"),
    ],
)
def test_format_from_extension(path, expected):
    assert file_format(path) == expected


def test_format_unknown_extension():
    with pytest.raises(ValueError, match=r"cannot tell the format of 'data\.txt'.*--input_format=csv"):
        file_format("data.txt")
    assert file_format("data.txt", "jsonl") == "jsonl"


def test_explicit_format_overrides_extension(tmp_path):
    path = tmp_path / "events.log"
    shutil.copy(EVENTS_JSONL, path)

    records = read(input=str(path), format="jsonl", timestamp_column="event_time")

    assert len(records) == 7


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"format": "xml"}, r"Invalid --input_format 'xml': expected one of auto, csv, jsonl, parquet"),
        ({"timestamp_unit": "sec"}, r"Invalid --timestamp_unit 'sec'.*--timestamp_unit=ms"),
        ({"max_events": 0}, r"Invalid --max_events 0: expected a positive integer"),
        ({"seed": -1}, r"Invalid --seed -1: expected a non-negative integer"),
        ({"dataset": "iris"}, r"Unknown --dataset 'iris': expected one of phishing, agrawal,"),
        ({"dataset": "sea", "input": "a.csv"}, r"Set either --dataset or --input, not both"),
        (
            {"dataset": "sea", "label_column": "y"},
            r"--label_column 'y' does not apply to --dataset=sea, whose column is 'label'",
        ),
        (
            {"dataset": "sp500", "timestamp_unit": "s"},
            r"--timestamp_unit 's' does not apply to --dataset=sp500, whose unit is 'iso'",
        ),
    ],
)
def test_config_rejects_bad_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SourceConfig(**kwargs)


def test_missing_timestamp_column_lists_columns():
    with pytest.raises(
        ValueError, match=r"--timestamp_column 'time' not found in .*events\.csv; columns found: event_time, x, label"
    ):
        read(input=EVENTS_CSV, timestamp_column="time")


def test_timestamp_column_required_for_files():
    with pytest.raises(
        ValueError, match=r"--timestamp_column is required with --input; columns found in .*: event_time, x, label"
    ):
        read(input=EVENTS_CSV)


def test_missing_label_and_id_columns():
    with pytest.raises(ValueError, match=r"--label_column 'y' not found in .*events\.jsonl; columns found: event_time, x, label"):
        read(input=EVENTS_JSONL, timestamp_column="event_time", label_column="y")
    with pytest.raises(ValueError, match=r"--id_column 'key' not found"):
        read(input=EVENTS_JSONL, timestamp_column="event_time", id_column="key")


def test_unmatched_input():
    with pytest.raises(ValueError, match=r"--input '.*nothing-\*\.csv' matched no files"):
        read(input=os.path.join(DATA_DIR, "nothing-*.csv"), timestamp_column="t")


def test_resolve_is_idempotent():
    for config in (SourceConfig(), SourceConfig(input=EVENTS_CSV, timestamp_column="event_time")):
        resolved = resolve_source_config(config)
        assert resolve_source_config(resolved) == resolved

    resolved = resolve_source_config(SourceConfig())
    assert resolved.dataset == "phishing"
    assert resolved.label_column == "is_phishing"
    assert resolved.id_column == "id"
    assert resolved.timestamp_unit == "s"


def test_flags_build_config():
    parser = argparse.ArgumentParser()
    add_source_options(parser)
    args = parser.parse_args(
        [
            f"--input={EVENTS_CSV}",
            "--input_format=csv",
            "--timestamp_column=event_time",
            "--timestamp_unit=iso",
            "--label_column=label",
            "--max_events=4",
            "--seed=7",
        ]
    )

    config = source_config_from_args(args)

    assert config == SourceConfig(
        input=EVENTS_CSV,
        format="csv",
        timestamp_column="event_time",
        timestamp_unit="iso",
        label_column="label",
        id_column="id",
        max_events=4,
        seed=7,
    )


def test_flags_default_dataset():
    parser = argparse.ArgumentParser()
    add_source_options(parser)

    config = source_config_from_args(parser.parse_args([]))

    assert config.dataset == "phishing"
    assert config.timestamp_column == "event_time"


def test_phishing_default_dataset():
    records = list(read_source_records(SourceConfig()))

    assert len(records) == 1250
    assert records[0].row["id"] == "phishing-0"
    assert records[1249].row["id"] == "phishing-1249"
    # 2020-01-01T00:00:00Z plus one minute per row.
    assert [record.event_time for record in records[:3]] == [1577836800.0, 1577836860.0, 1577836920.0]
    assert records[1249].event_time == 1577836800.0 + 1249 * 60
    assert all(record.timestamp_error is None for record in records)
    assert {record.row["is_phishing"] for record in records} == {0, 1}
    spec = datasets.get_dataset("phishing")
    assert set(spec.feature_columns) | {"id", "event_time", "is_phishing"} == set(records[0].row)


def test_sp500_dates():
    records = list(read_source_records(SourceConfig(dataset="sp500")))

    assert len(records) == 1257
    assert records[0].row["date"] == "2013-02-11"
    assert records[0].event_time == 1360540800.0
    assert records[-1].row["date"] == "2018-02-06"
    times = [record.event_time for record in records]
    assert times == sorted(times)


@pytest.mark.parametrize("name", datasets.dataset_names())
def test_dataset_columns(name):
    spec = datasets.get_dataset(name)

    records = list(read_source_records(SourceConfig(dataset=name, max_events=20)))

    assert len(records) == 20
    for record in records:
        assert set(record.row) == {spec.id_column, spec.timestamp_column, spec.label_column, *spec.feature_columns}
        assert record.timestamp_error is None
    assert spec.task in (datasets.CLASSIFICATION, datasets.REGRESSION)


@pytest.mark.parametrize("name", [name for name in datasets.dataset_names() if datasets.get_dataset(name).synthetic])
def test_synthetic_seeded(name):
    first = read(dataset=name, max_events=50, seed=3)
    again = read(dataset=name, max_events=50, seed=3)
    other = read(dataset=name, max_events=50, seed=4)

    assert first == again
    assert [record.row for record in first] != [record.row for record in other]
    # 2024-01-01T00:00:00Z plus one second per event.
    assert [record.event_time for record in first[:3]] == [NEW_YEAR, NEW_YEAR + 1, NEW_YEAR + 2]
    assert first[49].row["id"] == f"{name}-49"


def test_synthetic_default_length():
    spec = datasets.get_dataset("sea")

    assert sum(1 for _ in spec.rows()) == 10_000


def test_synthetic_lazy_limit():
    start = time.perf_counter()
    rows = datasets.get_dataset("concept_drift_sea").rows(seed=1, max_events=10**6)
    first = list(itertools.islice(rows, 5))
    elapsed = time.perf_counter() - start

    assert [row["id"] for row in first] == [f"concept_drift_sea-{index}" for index in range(5)]
    # Materialising 10^6 rows would take seconds; a lazy generator takes
    # milliseconds.
    assert elapsed < 1.0


def _matches_threshold(row, threshold):
    return (row["x0"] + row["x1"] > threshold) == bool(row["label"])


def test_sea_concepts_switch_at_drifts():
    spec = datasets.get_dataset("sea")
    rows = list(spec.rows(seed=5))

    assert spec.drift_positions() == (2500, 5000, 7500)
    for block, threshold in enumerate((8, 9, 7, 9.5)):
        concept = rows[block * 2500:(block + 1) * 2500]
        assert all(_matches_threshold(row, threshold) for row in concept)


def test_concept_drift_sea_position():
    spec = datasets.get_dataset("concept_drift_sea")
    rows = list(spec.rows(seed=5))

    assert spec.drift_positions() == (5000,)
    assert spec.drift_width == 50
    assert all(_matches_threshold(row, 8) for row in rows[:4800])
    assert all(_matches_threshold(row, 9.5) for row in rows[5200:])
    # Around the centre both concepts are mixed.
    middle = rows[4950:5050]
    assert not all(_matches_threshold(row, 8) for row in middle)
    assert not all(_matches_threshold(row, 9.5) for row in middle)


def test_drift_positions_follow_length():
    spec = datasets.get_dataset("agrawal")

    assert spec.drift_positions(12_000) == (2500, 5000, 7500, 10000)
    assert spec.drift_positions(2000) == ()
    assert datasets.get_dataset("hyperplane").drift_positions() == ()


def test_csv_unbalanced_quote_loses_no_line(tmp_path):
    path = tmp_path / "quotes.csv"
    path.write_text('id,ts,x,y\na,1700000000,1.0,0\n"b,1700000060,2.0,1\nc,1700000120,3.0,0\nd,1700000180,4.0,1\n')
    config = resolve_source_config(SourceConfig(
        input=str(path), timestamp_column="ts", label_column="y", id_column="id"))

    records = list(read_source_records(config))

    assert len(records) == 4
    assert [record.row.get("id") for record in records] == ["a", None, "c", "d"]
    assert "unbalanced quote" in malformed_reason(records[1])
