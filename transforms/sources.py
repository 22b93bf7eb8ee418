"""Read raw records from a named dataset or from CSV, JSON Lines or Parquet files.

:func:`read_source_records` yields :class:`~transforms.records.SourceRecord`
values in file order, with ``arrival`` set to the read position and
``watermark`` set to MIN_WATERMARK_SECONDS until the replay assigns both.

A row that cannot be read at all does not stop the reader. A JSON Lines line
that is not a JSON object, or a CSV line with the wrong number of columns,
becomes a record with ``row={"_raw": <the line as text>}``,
``event_time=None`` and ``timestamp_error`` set to the reason. The reason
starts with one of the MALFORMED_* constants followed by
``(<path>:<line number>)``. The replay delivers such records in file order,
and validation turns them into dead letters.
"""

import argparse
import dataclasses
import io
import itertools
import json
import logging
import posixpath
import re
from typing import Any, Iterator, NamedTuple, Optional

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from transforms import datasets
from transforms.records import SourceRecord
from transforms.timestamps import MIN_WATERMARK_SECONDS, TIMESTAMP_UNITS, parse_timestamps

_LOGGER = logging.getLogger(__name__)

FORMATS = ("auto", "csv", "jsonl", "parquet")
_FORMAT_BY_EXTENSION = {
    "csv": "csv",
    "jsonl": "jsonl",
    "ndjson": "jsonl",
    "json": "jsonl",
    "parquet": "parquet",
    "pq": "parquet",
}
# Extensions that apache_beam.io.filesystem.CompressionTypes.AUTO detects.
_COMPRESSION_EXTENSIONS = ("gz", "bz2", "deflate", "zst", "zstd", "lzma", "xz", "snappy")

# Default id column. Rows of a file that lack it get a generated id there.
GENERATED_ID_COLUMN = "id"

# The only field of a malformed record's row: the line it was read from.
RAW_FIELD = "_raw"

MALFORMED_JSON = "unparseable JSON line"
MALFORMED_JSON_TYPE = "JSON line is not an object"
MALFORMED_CSV_COLUMNS = "wrong number of CSV columns"
MALFORMED_CSV = "unparseable CSV line"
MALFORMED_SURROGATE = "JSON line has an unpaired surrogate escape"

# A \uD800-\uDFFF escape, or the same code point encoded as bytes, which
# json.loads decodes with "surrogatepass". An unpaired one becomes a string
# that cannot be encoded as UTF-8, so every later writer would fail on it.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")

# Rows per timestamp-parsing chunk. The unit of an "auto" timestamp column is
# decided by the first chunk that has a value, then kept for the whole input.
CHUNK_ROWS = 65_536


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """Source settings: the dataset or files to read and the meaning of their columns.

    Set ``dataset`` or ``input``, not both. With neither, the default dataset
    (phishing) is read. For a dataset the column fields come from its spec.
    For files ``timestamp_column`` is required and ``id_column`` defaults to
    ``"id"``. A row without an ``"id"`` field gets ``"<file stem>-<row
    index>"`` there, with row indices counted from 0 in each file, malformed
    rows included. ``max_events`` caps the number of records, malformed ones
    included. ``seed`` seeds synthetic datasets.
    """

    dataset: Optional[str] = None
    input: Optional[str] = None
    format: str = "auto"
    timestamp_column: Optional[str] = None
    timestamp_unit: str = "auto"
    label_column: Optional[str] = None
    id_column: Optional[str] = None
    max_events: Optional[int] = None
    seed: int = 0

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(
                f"Invalid --input_format {self.format!r}: expected one of "
                f"{', '.join(FORMATS)}, for example --input_format=csv."
            )
        if self.timestamp_unit not in TIMESTAMP_UNITS:
            raise ValueError(
                f"Invalid --timestamp_unit {self.timestamp_unit!r}: expected one of "
                f"{', '.join(TIMESTAMP_UNITS)}, for example --timestamp_unit=ms."
            )
        if self.max_events is not None and (
            isinstance(self.max_events, bool)
            or not isinstance(self.max_events, int)
            or self.max_events < 1
        ):
            raise ValueError(
                f"Invalid --max_events {self.max_events!r}: expected a positive "
                "integer, for example --max_events=1000."
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(
                f"Invalid --seed {self.seed!r}: expected a non-negative integer, "
                "for example --seed=0."
            )
        if self.dataset is not None and self.input is not None:
            raise ValueError(
                f"Set either --dataset or --input, not both: got --dataset={self.dataset} "
                f"and --input={self.input}."
            )
        if self.dataset is not None:
            self._check_dataset_columns(datasets.get_dataset(self.dataset))

    def _check_dataset_columns(self, spec: datasets.DatasetSpec) -> None:
        fixed = (
            ("--timestamp_column", self.timestamp_column, spec.timestamp_column),
            ("--label_column", self.label_column, spec.label_column),
            ("--id_column", self.id_column, spec.id_column),
        )
        for flag, value, expected in fixed:
            if value is not None and value != expected:
                raise ValueError(
                    f"{flag} {value!r} does not apply to --dataset={spec.name}, whose "
                    f"column is {expected!r}; drop {flag} or read a file with --input."
                )
        if self.timestamp_unit not in ("auto", spec.timestamp_unit):
            raise ValueError(
                f"--timestamp_unit {self.timestamp_unit!r} does not apply to "
                f"--dataset={spec.name}, whose unit is {spec.timestamp_unit!r}; drop "
                "--timestamp_unit."
            )


def add_source_options(parser: argparse.ArgumentParser) -> None:
    """Add the source flags to an argparse parser or a PipelineOptions parser."""
    group = parser.add_argument_group("source")
    group.add_argument(
        "--dataset",
        default=None,
        help=(
            "Named dataset to read: one of "
            f"{', '.join(datasets.dataset_names())}. Default: "
            f"{datasets.DEFAULT_DATASET} unless --input is set."
        ),
    )
    group.add_argument(
        "--input",
        default=None,
        help="File path or glob to read, on any Beam filesystem (local, gs://).",
    )
    group.add_argument(
        "--input_format",
        default="auto",
        help="File format: auto (by extension), csv, jsonl or parquet.",
    )
    group.add_argument(
        "--timestamp_column",
        default=None,
        help="Column holding the event time. Required with --input.",
    )
    group.add_argument(
        "--timestamp_unit",
        default="auto",
        help=(
            "Unit of the event-time column: auto, s, ms, us (epoch seconds, "
            "milliseconds, microseconds) or iso (ISO-8601 strings)."
        ),
    )
    group.add_argument("--label_column", default=None, help="Column holding the label, if any.")
    group.add_argument(
        "--id_column",
        default=None,
        help=(
            "Column holding record ids. Default: id, generated as "
            "'<file stem>-<row index>' for rows without one."
        ),
    )
    group.add_argument(
        "--max_events", type=int, default=None, help="Read at most this many records."
    )
    group.add_argument(
        "--seed", type=int, default=0, help="Seed for synthetic datasets and for the replay."
    )


def source_config_from_args(args: Any) -> SourceConfig:
    """Build a resolved SourceConfig from parsed flags.

    ``args`` is an argparse Namespace or PipelineOptions. The result has
    every column filled in, see :func:`resolve_source_config`.
    """
    config = SourceConfig(
        dataset=getattr(args, "dataset", None),
        input=getattr(args, "input", None),
        format=getattr(args, "input_format", "auto"),
        timestamp_column=getattr(args, "timestamp_column", None),
        timestamp_unit=getattr(args, "timestamp_unit", "auto"),
        label_column=getattr(args, "label_column", None),
        id_column=getattr(args, "id_column", None),
        max_events=getattr(args, "max_events", None),
        seed=getattr(args, "seed", 0),
    )
    return resolve_source_config(config)


def resolve_source_config(config: SourceConfig) -> SourceConfig:
    """Fill in defaults and check the columns against the data.

    A dataset config gets its columns and unit from the dataset spec. A file
    config gets ``id_column="id"`` when it has none, and is checked against
    the columns of the first matched file (for JSON Lines, the keys of its
    first CHUNK_ROWS lines). Raises ValueError for a missing column, naming
    the columns found. Resolving a resolved config returns it unchanged.
    """
    if config.input is None:
        spec = datasets.get_dataset(config.dataset or datasets.DEFAULT_DATASET)
        return dataclasses.replace(
            config,
            dataset=spec.name,
            timestamp_column=spec.timestamp_column,
            timestamp_unit=spec.timestamp_unit,
            label_column=spec.label_column,
            id_column=spec.id_column,
        )

    paths = match_input(config.input)
    for path in paths:
        file_format(path, config.format)
    if config.id_column is None:
        config = dataclasses.replace(config, id_column=GENERATED_ID_COLUMN)
    _check_columns(config, paths[0], read_columns(paths[0], file_format(paths[0], config.format)))
    return config


def match_input(pattern: str) -> list:
    """Return the files that ``pattern`` matches, sorted by path."""
    metadata = FileSystems.match([pattern])[0].metadata_list
    paths = sorted(entry.path for entry in metadata)
    if not paths:
        raise ValueError(
            f"--input {pattern!r} matched no files; pass an existing path or glob, "
            "for example --input=data/events-*.csv."
        )
    return paths


def file_format(path: str, format_name: str = "auto") -> str:
    """Return the format of ``path``: ``format_name`` unless it is "auto"."""
    if format_name != "auto":
        return format_name
    parts = posixpath.basename(path).lower().split(".")
    if len(parts) > 1 and parts[-1] in _COMPRESSION_EXTENSIONS:
        parts = parts[:-1]
    if len(parts) > 1 and parts[-1] in _FORMAT_BY_EXTENSION:
        return _FORMAT_BY_EXTENSION[parts[-1]]
    raise ValueError(
        f"--input_format auto cannot tell the format of {path!r} from its extension; "
        "pass --input_format=csv, jsonl or parquet."
    )


def read_columns(path: str, format_name: str) -> list:
    """Return the column names of one file (JSON Lines: keys of its first lines)."""
    with FileSystems.open(path) as handle:
        if format_name == "parquet":
            return list(pq.read_schema(handle).names)
        if format_name == "csv":
            header = _read_header(handle)
            return [] if header is None else header[0]

        keys = {}
        for _, text in itertools.islice(_non_empty_lines(handle), CHUNK_ROWS):
            try:
                fields = json.loads(text)
            except ValueError:
                continue
            if isinstance(fields, dict):
                keys.update(dict.fromkeys(fields))
        return list(keys)


def malformed_reason(record: SourceRecord) -> Optional[str]:
    """Return why a record could not be read as a row, or None for a row."""
    if isinstance(record.row, dict) and set(record.row) == {RAW_FIELD}:
        return record.timestamp_error
    return None


def sample_rows(config: SourceConfig, count: int) -> list:
    """Return the rows of the first ``count`` records, malformed ones left out.

    Meant for schema inference, so rows whose timestamp failed are kept.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"Invalid count {count!r}: expected a positive number of rows, for example 1000.")
    limit = count if config.max_events is None else min(count, config.max_events)
    sample = dataclasses.replace(config, max_events=limit)
    return [record.row for record in read_source_records(sample) if malformed_reason(record) is None]


def read_source_records(config: SourceConfig) -> Iterator[SourceRecord]:
    """Yield the records of a dataset or of the matched files, in file order.

    Files are read in path order. Timestamps are parsed per chunk of
    CHUNK_ROWS rows with :func:`parse_timestamps`, and rows whose timestamp
    fails get ``event_time=None`` and the reason in ``timestamp_error``.
    """
    resolved = resolve_source_config(config)
    if resolved.input is None:
        spec = datasets.get_dataset(resolved.dataset)
        chunks = _dataset_chunks(spec, resolved)
    else:
        chunks = _file_chunks(resolved)

    unit = resolved.timestamp_unit
    arrival = 0
    for chunk in chunks:
        parsed = parse_timestamps(chunk.timestamps, unit)
        unit = parsed.unit
        for record in _chunk_records(chunk, parsed, arrival):
            yield record
            arrival += 1
            if resolved.max_events is not None and arrival >= resolved.max_events:
                return


class _Malformed(NamedTuple):
    """A record that could not be read, at ``index`` among its chunk's records."""

    index: int
    raw: str
    reason: str


class _Chunk(NamedTuple):
    """Records read together, with their timestamp values.

    Each ``malformed`` entry sits at its ``index`` among all
    ``len(rows) + len(malformed)`` records, and the rows fill the other
    slots in order. ``timestamps`` has one value per row.
    """

    rows: list
    timestamps: Any
    malformed: list


def _chunk_records(chunk: _Chunk, parsed, first_arrival: int) -> Iterator[SourceRecord]:
    malformed = {entry.index: entry for entry in chunk.malformed}
    rows = iter(zip(chunk.rows, parsed.seconds, parsed.errors))
    for offset in range(len(chunk.rows) + len(chunk.malformed)):
        arrival = first_arrival + offset
        entry = malformed.get(offset)
        if entry is not None:
            row = {RAW_FIELD: entry.raw}
            yield SourceRecord(row, None, arrival, MIN_WATERMARK_SECONDS, entry.reason)
            continue
        row, seconds, error = next(rows)
        yield SourceRecord(row, seconds, arrival, MIN_WATERMARK_SECONDS, error)


def _dataset_chunks(spec: datasets.DatasetSpec, config: SourceConfig) -> Iterator[_Chunk]:
    rows = spec.rows(seed=config.seed, max_events=config.max_events)
    while True:
        batch = list(itertools.islice(rows, _chunk_size(config)))
        if not batch:
            return
        timestamps = [row.get(spec.timestamp_column) for row in batch]
        yield _Chunk(batch, timestamps, [])


def _check_columns(config: SourceConfig, path: str, columns: list) -> None:
    found = ", ".join(columns) or "none"
    if config.timestamp_column is None:
        raise ValueError(
            f"--timestamp_column is required with --input; columns found in {path}: "
            f"{found}. For example --timestamp_column={columns[0] if columns else 'event_time'}."
        )
    for flag, column in (
        ("--timestamp_column", config.timestamp_column),
        ("--label_column", config.label_column),
        ("--id_column", config.id_column),
    ):
        if column is None or column in columns:
            continue
        if flag == "--id_column" and column == GENERATED_ID_COLUMN:
            continue
        raise ValueError(f"{flag} {column!r} not found in {path}; columns found: {found}.")


def _file_chunks(config: SourceConfig) -> Iterator[_Chunk]:
    for path in match_input(config.input):
        format_name = file_format(path, config.format)
        _LOGGER.info("Reading %s as %s.", path, format_name)
        readers = {"csv": _csv_chunks, "jsonl": _jsonl_chunks, "parquet": _parquet_chunks}
        stem = _file_stem(path)
        row_index = 0
        for chunk in readers[format_name](path, config):
            if config.id_column == GENERATED_ID_COLUMN:
                chunk = _with_generated_ids(chunk, stem, row_index)
            row_index += len(chunk.rows) + len(chunk.malformed)
            yield chunk


def _with_generated_ids(chunk: _Chunk, stem: str, first_index: int) -> _Chunk:
    """Put "<stem>-<row index>" first in every row that has no id field."""
    malformed_indices = {entry.index for entry in chunk.malformed}
    total = len(chunk.rows) + len(chunk.malformed)
    row_indices = [offset for offset in range(total) if offset not in malformed_indices]

    rows = []
    for offset, row in zip(row_indices, chunk.rows):
        if GENERATED_ID_COLUMN not in row:
            row = {GENERATED_ID_COLUMN: f"{stem}-{first_index + offset}", **row}
        rows.append(row)
    return _Chunk(rows, chunk.timestamps, chunk.malformed)


def _chunk_size(config: SourceConfig) -> int:
    if config.max_events is None:
        return CHUNK_ROWS
    return min(CHUNK_ROWS, config.max_events)


def _file_stem(path: str) -> str:
    parts = posixpath.basename(path).split(".")
    if len(parts) > 1 and parts[-1].lower() in _COMPRESSION_EXTENSIONS:
        parts = parts[:-1]
    if len(parts) > 1 and parts[-1].lower() in _FORMAT_BY_EXTENSION:
        parts = parts[:-1]
    return ".".join(parts)


def _non_empty_lines(handle) -> Iterator[tuple]:
    """Yield (1-based line number, line without its newline) for non-blank lines.

    Lines stay bytes; Beam's compressed file objects have readline but are
    not iterable.
    """
    number = 0
    while True:
        line = handle.readline()
        if not line:
            return
        number += 1
        text = line.rstrip(b"\r\n")
        if text.strip():
            yield number, text


def _decode(line: bytes) -> str:
    return line.decode("utf-8", errors="replace")


def _jsonl_chunks(path: str, config: SourceConfig) -> Iterator[_Chunk]:
    # Each line is decoded with json.loads rather than pyarrow.json, because
    # pyarrow.json rejects a whole block for one bad line and widens ints to
    # floats across a column, so rows would depend on their neighbours.
    with FileSystems.open(path) as handle:
        lines = _non_empty_lines(handle)
        while True:
            batch = list(itertools.islice(lines, _chunk_size(config)))
            if not batch:
                return
            yield _parse_jsonl_batch(path, batch, config.timestamp_column)


def _parse_jsonl_batch(path: str, batch: list, timestamp_column: str) -> _Chunk:
    rows, timestamps, malformed = [], [], []
    for index, (number, line) in enumerate(batch):
        try:
            fields = json.loads(line)
        except ValueError as error:
            # UnicodeDecodeError is a ValueError too.
            reason = f"{MALFORMED_JSON} ({path}:{number}): {error}"
            malformed.append(_Malformed(index, _decode(line), reason))
            continue
        if not isinstance(fields, dict):
            reason = f"{MALFORMED_JSON_TYPE} ({path}:{number}): got {type(fields).__name__}"
            malformed.append(_Malformed(index, _decode(line), reason))
            continue
        if _SURROGATE_ESCAPE.search(line) and not _is_valid_unicode(fields):
            reason = f"{MALFORMED_SURROGATE} ({path}:{number})"
            malformed.append(_Malformed(index, _decode(line), reason))
            continue
        rows.append(fields)
        timestamps.append(fields.get(timestamp_column))
    return _Chunk(rows, timestamps, malformed)


def _is_valid_unicode(fields: dict) -> bool:
    try:
        json.dumps(fields, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parquet_chunks(path: str, config: SourceConfig) -> Iterator[_Chunk]:
    with FileSystems.open(path) as handle:
        parquet_file = pq.ParquetFile(handle)
        if config.timestamp_column not in parquet_file.schema_arrow.names:
            raise ValueError(
                f"--timestamp_column {config.timestamp_column!r} not found in {path}; "
                f"columns found: {', '.join(parquet_file.schema_arrow.names)}."
            )
        for batch in parquet_file.iter_batches(batch_size=_chunk_size(config)):
            yield _Chunk(batch.to_pylist(), batch.column(config.timestamp_column), [])


def _read_header(handle) -> Optional[tuple]:
    """Return (column names, header line number) from the first non-blank line."""
    for number, line in _non_empty_lines(handle):
        table = pa_csv.read_csv(io.BytesIO(line + b"\n"))
        return table.column_names, number
    return None


def _csv_chunks(path: str, config: SourceConfig) -> Iterator[_Chunk]:
    # NOTE: records are split on newlines before pyarrow parses them, so a
    # quoted value that contains a newline is read as malformed lines.
    with FileSystems.open(path) as handle:
        header = _read_header(handle)
        if header is None:
            return
        columns = header[0]
        if config.timestamp_column not in columns:
            raise ValueError(
                f"--timestamp_column {config.timestamp_column!r} not found in {path}; "
                f"columns found: {', '.join(columns)}."
            )
        lines = _non_empty_lines(handle)
        while True:
            batch = list(itertools.islice(lines, _chunk_size(config)))
            if not batch:
                return
            # The header was consumed before, so line numbers restart at 1;
            # shift them back to file line numbers.
            batch = [(number + header[1], line) for number, line in batch]
            yield _parse_csv_batch(path, batch, columns, config.timestamp_column)


def _csv_options(columns: list, timestamp_column: str, size: int, invalid: list):
    def handle_invalid_row(row) -> str:
        invalid.append(row)
        return "skip"

    # One block for the whole batch, so column types are inferred from all of
    # its rows. The timestamp column stays text for parse_timestamps.
    read_options = pa_csv.ReadOptions(
        column_names=columns, use_threads=False, block_size=max(size + 1, 1 << 16)
    )
    parse_options = pa_csv.ParseOptions(invalid_row_handler=handle_invalid_row)
    convert_options = pa_csv.ConvertOptions(column_types={timestamp_column: pa.string()})
    return {
        "read_options": read_options,
        "parse_options": parse_options,
        "convert_options": convert_options,
    }


def _parse_csv_batch(path: str, batch: list, columns: list, timestamp_column: str) -> _Chunk:
    # A line with an odd number of quote characters opens a quoted value that
    # never closes on that line, so pyarrow would read the following lines
    # into it. Such a line is malformed on its own.
    unbalanced = []
    balanced = []
    for index, (number, line) in enumerate(batch):
        if line.count(b'"') % 2:
            reason = f"{MALFORMED_CSV} ({path}:{number}): unbalanced quote"
            unbalanced.append(_Malformed(index, _decode(line), reason))
        else:
            balanced.append(index)

    chunk = _parse_balanced_csv(path, [batch[index] for index in balanced], columns, timestamp_column)
    malformed = [entry._replace(index=balanced[entry.index]) for entry in chunk.malformed]
    return _Chunk(chunk.rows, chunk.timestamps, sorted(unbalanced + malformed))


def _parse_balanced_csv(path: str, batch: list, columns: list, timestamp_column: str) -> _Chunk:
    if not batch:
        return _Chunk([], [], [])
    data = b"\n".join(line for _, line in batch) + b"\n"
    invalid = []
    try:
        table = pa_csv.read_csv(
            io.BytesIO(data), **_csv_options(columns, timestamp_column, len(data), invalid)
        )
    except pa.ArrowInvalid as error:
        # One line pyarrow cannot convert (such as invalid UTF-8 in the
        # timestamp column) fails the whole batch, so parse line by line.
        _LOGGER.info(
            "Parsing lines %d to %d of %s one at a time: %s", batch[0][0], batch[-1][0], path, error
        )
        return _parse_csv_lines(path, batch, columns, timestamp_column)

    if table.num_rows + len(invalid) != len(batch):
        # Every line must come out as a row or a malformed record. If pyarrow
        # merged or dropped lines, parse one line at a time instead.
        _LOGGER.info(
            "pyarrow read %d rows and %d invalid rows from %d lines %d to %d of %s; parsing one at a time.",
            table.num_rows, len(invalid), len(batch), batch[0][0], batch[-1][0], path,
        )
        return _parse_csv_lines(path, batch, columns, timestamp_column)

    malformed = [_malformed_csv_row(path, batch, row) for row in invalid]
    return _Chunk(table.to_pylist(), table.column(timestamp_column), malformed)


def _malformed_csv_row(path: str, batch: list, row) -> _Malformed:
    # row.number is the 1-based line number within the batch data.
    index = row.number - 1
    number, line = batch[index]
    reason = (
        f"{MALFORMED_CSV_COLUMNS} ({path}:{number}): expected {row.expected_columns}, "
        f"got {row.actual_columns}"
    )
    return _Malformed(index, _decode(line), reason)


def _parse_csv_lines(path: str, batch: list, columns: list, timestamp_column: str) -> _Chunk:
    rows, timestamps, malformed = [], [], []
    for index, (number, line) in enumerate(batch):
        data = line + b"\n"
        invalid = []
        try:
            table = pa_csv.read_csv(
                io.BytesIO(data), **_csv_options(columns, timestamp_column, len(data), invalid)
            )
        except pa.ArrowInvalid as error:
            reason = f"{MALFORMED_CSV} ({path}:{number}): {error}"
            malformed.append(_Malformed(index, _decode(line), reason))
            continue
        if invalid:
            malformed.append(_malformed_csv_row(path, [(number, line)], invalid[0])._replace(index=index))
            continue
        row = table.to_pylist()[0]
        rows.append(row)
        timestamps.append(row[timestamp_column])
    return _Chunk(rows, timestamps, malformed)
