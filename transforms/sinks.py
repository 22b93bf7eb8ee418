"""File sinks that work in batch and streaming: Parquet and JSON Lines.

Both go through ``fileio.WriteToFiles``, which writes one set of shards
per window and pane, so they work on unbounded input as long as the input
is windowed (every caller here writes event-time windowed data).
"""

import json
from typing import Callable, Optional

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import fileio

from transforms.dead_letter import to_json_value


class ParquetSink(fileio.FileSink):
    """Buffer rows and write them as one Parquet file per shard.

    Parquet needs the whole row group before writing, so rows are buffered
    in memory per open file; WriteToFiles opens one file per window and
    shard, which bounds the buffer by a window's rows.
    """

    def __init__(self, schema: pa.Schema):
        self._schema = schema
        self._rows = []
        self._file = None

    def open(self, fh):
        self._file = fh
        self._rows = []

    def write(self, record):
        self._rows.append(record)

    def flush(self):
        table = pa.Table.from_pylist(self._rows, schema=self._schema)
        pq.write_table(table, self._file)
        self._rows = []


class JsonLinesSink(fileio.TextSink):
    """Write each record as one line of JSON (non-JSON values as faithful strings)."""

    def write(self, record):
        self._fh.write(json.dumps(to_json_value(record), sort_keys=True).encode("utf-8"))
        self._fh.write(b"\n")


class WriteRows(beam.PTransform):
    """Write windowed rows (dicts) under ``directory`` as Parquet or JSON Lines."""

    def __init__(self, directory: str, file_format: str, schema: Optional[pa.Schema] = None,
                 to_row: Optional[Callable] = None, prefix: str = "part"):
        super().__init__()
        if file_format not in ("parquet", "jsonl"):
            raise ValueError(f"file_format must be 'parquet' or 'jsonl', got {file_format!r}.")
        if file_format == "parquet" and schema is None:
            raise ValueError("a Parquet sink needs a pyarrow schema.")
        self.directory = directory
        self.file_format = file_format
        self.schema = schema
        self.to_row = to_row
        self.prefix = prefix

    def expand(self, records):
        rows = records
        if self.to_row is not None:
            rows = records | "ToRow" >> beam.Map(self.to_row)

        schema = self.schema
        sink = (lambda _: ParquetSink(schema)) if self.file_format == "parquet" else (lambda _: JsonLinesSink())
        return rows | "WriteFiles" >> fileio.WriteToFiles(
            path=self.directory,
            sink=sink,
            file_naming=fileio.default_file_naming(self.prefix, f".{self.file_format}"),
            shards=1,
        )
