"""Tests for transforms.sinks.WriteRows: one file per window pane, on the FnApiRunner."""

import glob
import json
import os

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.transforms.window import FixedWindows, Sessions, TimestampedValue

from transforms.records import Block
from transforms.sinks import WriteRows

SCHEMA = pa.schema([("id", pa.string()), ("value", pa.int64())])


def _write(tmp_path, rows, window_fn, file_format="jsonl", to_row=None):
    directory = str(tmp_path / "rows")
    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        _ = (
            pipeline
            | "Create" >> beam.Create(rows)
            | "Timestamp" >> beam.Map(lambda item: TimestampedValue(item[1], item[0]))
            | "Window" >> beam.WindowInto(window_fn)
            | "WriteRows" >> WriteRows(directory, file_format, SCHEMA if file_format == "parquet" else None, to_row)
        )
    return directory


def _jsonl_files(directory):
    files = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.jsonl"))):
        with open(path) as file:
            files[os.path.basename(path)] = sorted(json.loads(line)["id"] for line in file)
    return files


def test_write_rows_file_per_fixed_window(tmp_path):
    rows = [(second, {"id": f"e{second}", "value": second}) for second in (5, 59, 60, 130, 175)]

    directory = _write(tmp_path, rows, FixedWindows(60))

    files = _jsonl_files(directory)
    assert list(files.values()) == [["e5", "e59"], ["e60"], ["e130", "e175"]]
    assert all("-pane-00000-00000-of-00001.jsonl" in name for name in files)


def test_write_rows_merges_sessions(tmp_path):
    # A 30 s gap: 0, 20 and 45 form one session, 200 another.
    rows = [(second, {"id": f"e{second}", "value": second}) for second in (0, 20, 45, 200)]

    directory = _write(tmp_path, rows, Sessions(30))

    assert list(_jsonl_files(directory).values()) == [["e0", "e20", "e45"], ["e200"]]


def test_write_rows_blocks_to_parquet(tmp_path):
    rows = [(10, Block([1, 2])), (12, Block([3])), (70, Block([4]))]

    directory = _write(tmp_path, rows, FixedWindows(60), "parquet",
                       to_row=lambda item: {"id": f"e{item}", "value": item})

    tables = [pq.read_table(path).to_pylist() for path in sorted(glob.glob(os.path.join(directory, "*.parquet")))]
    assert [sorted(row["value"] for row in table) for table in tables] == [[1, 2, 3], [4]]
