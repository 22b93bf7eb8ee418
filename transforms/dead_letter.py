"""Write dead letters as JSON Lines files, in batch and streaming pipelines.

Each dead letter becomes one JSON object with the original record, the
reason code, the reason sentence, the offending field, the stage that
rejected it and the element timestamp. Files go to ``<output_dir>/dead_letter/``
and are named by event-time window, pane index and shard, so a late firing
of a window adds a file instead of overwriting one.
"""

import base64
import datetime
import decimal
import json
import logging
import math
import uuid
import zlib
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms import trigger
from apache_beam.transforms import window as beam_window
from apache_beam.utils.timestamp import Duration
from apache_beam.utils.timestamp import Timestamp

from transforms.records import DeadLetter
from transforms.records import SourceRecord

_LOGGER = logging.getLogger(__name__)

DEAD_LETTER_DIRECTORY = "dead_letter"
FILE_PREFIX = "dead-letter"
FILE_SUFFIX = ".jsonl"
DEFAULT_WINDOW_SIZE = 60.0
DEFAULT_ALLOWED_LATENESS = 24 * 3600.0
DEFAULT_NUM_SHARDS = 1


def to_json_value(value: Any) -> Any:
    """Convert a value to one that ``json.dumps(allow_nan=False)`` accepts.

    JSON values pass through. Everything else becomes a faithful string:
    non-finite floats become ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``,
    bytes become ``"base64:<data>"``, datetimes and Beam timestamps ISO 8601
    strings, and unknown objects their ``repr``. Named tuples become
    objects, other tuples and sets become lists, and dict keys become
    strings.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return _float_to_json(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "base64:" + base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, Timestamp):
        return value.to_rfc3339()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dict):
        return {_json_key(key): to_json_value(item) for key, item in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return to_json_value(value._asdict())
    if isinstance(value, (list, tuple)):
        return [to_json_value(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted((to_json_value(item) for item in value), key=repr)
    if hasattr(value, "tolist"):
        # NumPy scalars and arrays, and torch tensors.
        return to_json_value(value.tolist())
    return repr(value)


def _float_to_json(value: float) -> Any:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _json_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    converted = to_json_value(key)
    return converted if isinstance(converted, str) else json.dumps(converted)


def dumps(value: Any) -> str:
    """Serialise a value as compact strict JSON, converting what JSON lacks.

    Tries plain ``json.dumps`` first, because most records are plain JSON
    and converting them would only cost time.
    """
    try:
        return json.dumps(
            value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return json.dumps(
            to_json_value(value),
            ensure_ascii=False,
            allow_nan=False,
            separators=(",", ":"))


def dead_letter_to_dict(dead_letter: DeadLetter, element_timestamp=None) -> dict:
    """Build the JSON object written for one dead letter.

    ``element_timestamp`` (a Beam Timestamp) is the dead letter's event
    timestamp in the pipeline, written as seconds. A record that is a
    ``SourceRecord`` is unpacked into its row and its ``event_time``,
    ``arrival``, ``watermark`` and ``timestamp_error``.
    """
    record = dead_letter.record
    entry = {}
    if isinstance(record, SourceRecord):
        entry["record"] = to_json_value(record.row)
        entry["event_time"] = to_json_value(record.event_time)
        entry["arrival"] = record.arrival
        entry["watermark"] = to_json_value(record.watermark)
        entry["timestamp_error"] = record.timestamp_error
    else:
        entry["record"] = to_json_value(record)

    entry["reason_code"] = dead_letter.reason_code
    entry["reason"] = dead_letter.reason
    entry["field"] = dead_letter.field
    entry["stage"] = dead_letter.stage
    if element_timestamp is not None:
        entry["element_timestamp"] = _float_to_json(
            Timestamp.of(element_timestamp).micros / 1e6)
    return entry


def _format_window_bound(timestamp: Timestamp) -> str:
    try:
        moment = timestamp.to_utc_datetime()
    except (OverflowError, ValueError):
        # Bounds outside datetime's years 1 to 9999, such as the minimum
        # Beam timestamp, are written as microseconds since the epoch.
        return f"{timestamp.micros}us"

    text = moment.strftime("%Y%m%dT%H%M%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}"
    return text + "Z"


def window_file_name(window, pane_index: int, shard: int, num_shards: int,
                     prefix: str = FILE_PREFIX, suffix: str = FILE_SUFFIX) -> str:
    """Return the file name for one shard of one pane of one window."""
    if isinstance(window, beam_window.GlobalWindow):
        window_part = "global"
    else:
        window_part = (
            f"{_format_window_bound(window.start)}-"
            f"{_format_window_bound(window.end)}")
    return (
        f"{prefix}-{window_part}-pane-{pane_index:05d}-"
        f"{shard:05d}-of-{num_shards:05d}{suffix}")


def write_file_atomically(directory: str, name: str, data: bytes) -> str:
    """Write ``data`` to ``directory/name`` through a temporary file; return the path.

    Readers never see a partial file, and writing the same name again
    replaces the file, so a retried bundle does not duplicate output.
    """
    path = FileSystems.join(directory, name)
    # The temporary name starts with a dot and ends with .tmp, so a reader
    # matching the final suffix never picks up a partial file.
    temporary_path = FileSystems.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")
    with FileSystems.create(temporary_path) as file:
        file.write(data)

    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([temporary_path], [path])
    return path


def make_directory(directory: str) -> None:
    """Create ``directory`` unless it exists or the file system has no directories."""
    try:
        FileSystems.mkdirs(directory)
    except IOError:
        pass


class _ToJsonLineFn(beam.DoFn):
    """Serialise a dead letter, keyed by shard for the grouping step."""

    def __init__(self, num_shards: int):
        self._num_shards = num_shards

    def setup(self):
        self._written = beam.metrics.Metrics.counter(
            "WriteDeadLetters", "dead_letters_written")

    def process(self, dead_letter, timestamp=beam.DoFn.TimestampParam):
        line = dumps(dead_letter_to_dict(dead_letter, timestamp))

        # A hash of the content, not a random number, picks the shard so that
        # a retried bundle sends each line to the same file again.
        shard = zlib.crc32(line.encode("utf-8")) % self._num_shards
        self._written.inc()
        yield shard, (timestamp.micros, line)


class _WriteWindowFileFn(beam.DoFn):
    """Write one grouped shard of one window pane to its own file.

    The file is written under a temporary name and then renamed, so readers
    never see a partial file. Its name depends only on the window, pane and
    shard, so a retried bundle overwrites the file instead of duplicating it.
    """

    def __init__(self, directory: str, num_shards: int, prefix: str = FILE_PREFIX):
        self._directory = directory
        self._num_shards = num_shards
        self._prefix = prefix

    def setup(self):
        make_directory(self._directory)

    def process(
            self,
            element,
            window=beam.DoFn.WindowParam,
            pane_info=beam.DoFn.PaneInfoParam):
        shard, timestamped_lines = element
        lines = [line for _, line in sorted(timestamped_lines)]
        name = window_file_name(window, pane_info.index, shard, self._num_shards, prefix=self._prefix)
        data = b"".join(line.encode("utf-8") + b"\n" for line in lines)
        path = write_file_atomically(self._directory, name, data)
        _LOGGER.info("Wrote %d dead letters to %s", len(lines), path)
        yield path


class WriteDeadLetters(beam.PTransform):
    """Write a PCollection of ``DeadLetter`` to ``<output_dir>/dead_letter/``.

    Dead letters are windowed into event-time fixed windows of
    ``window_size`` seconds on their own timestamps. A window fires when the
    watermark passes its end. It fires again for every dead letter that
    arrives up to ``allowed_lateness`` seconds later, and each firing writes
    its own files. This works the same in batch and streaming pipelines.
    File names start with ``prefix``; pipelines that write dead letters of
    the same windows to one directory need different prefixes. The output
    is the PCollection of written file paths.
    """

    def __init__(
            self,
            output_dir: str,
            window_size: float = DEFAULT_WINDOW_SIZE,
            allowed_lateness: float = DEFAULT_ALLOWED_LATENESS,
            num_shards: int = DEFAULT_NUM_SHARDS,
            prefix: str = FILE_PREFIX):
        super().__init__()
        if not output_dir:
            raise ValueError(
                f"Invalid output_dir {output_dir!r}: pass the directory that"
                " should hold the dead_letter folder.")
        if not window_size > 0:
            raise ValueError(
                f"Invalid window_size {window_size!r}: expected seconds"
                " greater than 0, for example 60.")
        if not allowed_lateness >= 0:
            raise ValueError(
                f"Invalid allowed_lateness {allowed_lateness!r}: expected"
                " seconds of at least 0, for example 3600.")
        if not isinstance(num_shards, int) or num_shards < 1:
            raise ValueError(
                f"Invalid num_shards {num_shards!r}: expected a whole number"
                " of at least 1.")

        self._directory = FileSystems.join(output_dir, DEAD_LETTER_DIRECTORY)
        self._window_size = window_size
        self._allowed_lateness = allowed_lateness
        self._num_shards = num_shards
        self._prefix = prefix

    def expand(self, dead_letters):
        windowing = beam.WindowInto(
            beam_window.FixedWindows(self._window_size),
            trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
            accumulation_mode=trigger.AccumulationMode.DISCARDING,
            allowed_lateness=Duration.of(self._allowed_lateness))

        return (
            dead_letters
            | "ToJsonLines" >> beam.ParDo(_ToJsonLineFn(self._num_shards))
            | "WindowIntoFixed" >> windowing
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteFiles" >> beam.ParDo(
                _WriteWindowFileFn(self._directory, self._num_shards, self._prefix)))


def read_dead_letters(output_dir: str) -> list:
    """Read every dead letter under ``<output_dir>/dead_letter/`` as dicts.

    Files are read in name order, which sorts windows by start time for
    years 1000 to 9999, and lines in file order, which is timestamp order.
    """
    pattern = FileSystems.join(output_dir, DEAD_LETTER_DIRECTORY, "*" + FILE_SUFFIX)
    match_results = FileSystems.match([pattern])
    paths = sorted(metadata.path for metadata in match_results[0].metadata_list)

    dead_letters = []
    for path in paths:
        with FileSystems.open(path) as file:
            for line in file.read().decode("utf-8").splitlines():
                if line:
                    dead_letters.append(json.loads(line))
    return dead_letters
