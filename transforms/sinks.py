"""File sinks that work in batch and streaming: Parquet and JSON Lines.

``WriteRows`` groups the rows of each window pane and writes them as one
file named after the window and pane, through a temporary file and a
rename. It works on unbounded input as long as the input is windowed
(every caller here writes event-time windowed data), and a retried bundle
rewrites the same file instead of adding one. Compared with
``fileio.WriteToFiles``, it skips the per-bundle listing of temporary
directories, which grows with the number of files written, and the type
inference of its internal steps at pipeline construction.
"""

import io
import json
import logging
from typing import Any, Callable, List, Optional, Tuple

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.transforms.window import IntervalWindow

from transforms.dead_letter import make_directory, to_json_value, window_file_name, write_file_atomically
from transforms.records import Block, unblock

_LOGGER = logging.getLogger(__name__)

FILE_FORMATS = ("parquet", "jsonl")


def encode_parquet(rows: List[dict], schema: pa.Schema) -> bytes:
    """Encode rows (dicts) as one Parquet file with ``schema``."""
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buffer)
    return buffer.getvalue()


def encode_json_lines(rows: List[Any]) -> bytes:
    """Encode each row as one line of JSON (non-JSON values as faithful strings)."""
    return b"".join(
        json.dumps(to_json_value(row), sort_keys=True).encode("utf-8") + b"\n" for row in rows
    )


def _keyed_rows(element, to_row: Optional[Callable], key_by_window: bool,
                window=beam.DoFn.WindowParam) -> Tuple[int, Any]:
    """Convert an element (or each item of a Block) with ``to_row`` and key it for grouping.

    With ``key_by_window`` the key is the window's start, so that each key
    has one window. Merging windows (sessions) need one key for all.
    """
    if to_row is not None:
        if isinstance(element, Block):
            element = Block([to_row(item) for item in element.items])
        else:
            element = to_row(element)
    # One shard per window pane, because a window's rows fit in one worker's
    # memory. A key per window, not one for all of them, because the
    # FnApiRunner (Beam 2.77) runs the trigger of each key over all its
    # windows together, at a cost that grows faster than the window count.
    if key_by_window and isinstance(window, IntervalWindow):
        return window.start.micros, element
    return 0, element


class _WriteWindowRowsFn(beam.DoFn):
    """Write the grouped rows of one window pane to one file."""

    def __init__(self, directory: str, file_format: str, schema: Optional[pa.Schema], prefix: str):
        self._directory = directory
        self._file_format = file_format
        self._schema = schema
        self._prefix = prefix

    def setup(self):
        make_directory(self._directory)

    def process(self, element, window=beam.DoFn.WindowParam, pane_info=beam.DoFn.PaneInfoParam):
        _, grouped = element
        rows = unblock(grouped)
        if self._file_format == "parquet":
            data = encode_parquet(rows, self._schema)
        else:
            data = encode_json_lines(rows)

        name = window_file_name(window, pane_info.index, 0, 1, prefix=self._prefix, suffix=f".{self._file_format}")
        path = write_file_atomically(self._directory, name, data)
        _LOGGER.debug("Wrote %d rows to %s", len(rows), path)
        yield path


class WriteRows(beam.PTransform):
    """Write windowed rows (dicts) under ``directory`` as Parquet or JSON Lines.

    Each window pane becomes one file, ``<prefix>-<window>-pane-<index>-00000-of-00001.<format>``.
    Elements may be :class:`Block`s; ``to_row`` then converts each item, and
    the rows of a block are written together. The output is the
    PCollection of written file paths.
    """

    def __init__(self, directory: str, file_format: str, schema: Optional[pa.Schema] = None,
                 to_row: Optional[Callable] = None, prefix: str = "part"):
        super().__init__()
        if file_format not in FILE_FORMATS:
            raise ValueError(f"file_format must be 'parquet' or 'jsonl', got {file_format!r}.")
        if file_format == "parquet" and schema is None:
            raise ValueError("a Parquet sink needs a pyarrow schema.")
        self.directory = directory
        self.file_format = file_format
        self.schema = schema
        self.to_row = to_row
        self.prefix = prefix

    def expand(self, records):
        return (
            records
            | "ToKeyedRows" >> beam.Map(_keyed_rows, self.to_row, not records.windowing.windowfn.is_merging())
            | "GroupByWindow" >> beam.GroupByKey()
            | "WriteFiles" >> beam.ParDo(
                _WriteWindowRowsFn(self.directory, self.file_format, self.schema, self.prefix))
        )
