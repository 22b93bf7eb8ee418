"""Property-based fuzzing of the CSV, JSON Lines and Parquet sources.

Each hypothesis example writes one file of thousands of fuzzed lines or
rows, reads it with ``read_source_records`` and validates every record.
The invariants: the reader and the validator never raise, and every
non-blank line (every Parquet row) comes out exactly once and in order. A
line that cannot be parsed keeps its text, and the validation outcomes add
up to the records read. One pipeline test checks the same sum in the DirectRunner's
``ValidateRecords`` metrics.
"""

import csv
import io
import json
import math
import os
import random
import tempfile

import apache_beam as beam
import pyarrow as pa
import pytest
import pyarrow.parquet as pq
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to
from hypothesis import Phase
from hypothesis import example
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies

from tests.test_fuzz_validate import DEFECTS
from tests.test_fuzz_validate import EVENT_TIME
from tests.test_fuzz_validate import FIELDS
from tests.test_fuzz_validate import NASTY_NUMBERS
from tests.test_fuzz_validate import NASTY_STRINGS
from tests.test_fuzz_validate import SCHEMA
from tests.test_fuzz_validate import corrupt_row
from tests.test_fuzz_validate import good_row
from tests.test_fuzz_validate import validate_all
from transforms import replay
from transforms import sources
from transforms import validate

MALFORMED_PREFIXES = (
    sources.MALFORMED_JSON,
    sources.MALFORMED_JSON_TYPE,
    sources.MALFORMED_CSV_COLUMNS,
    sources.MALFORMED_CSV,
    sources.MALFORMED_SURROGATE,
)
BLANK_LINES = (b"", b"   ", b"\t", b" \r")
LINE_DEFECTS = ("row", "row", "row", "blank", "truncated", "bom", "invalid_utf8",
                "not_object", "duplicate_key", "huge_int", "surrogate", "crlf")
# Records come from a drawn seed, so shrinking cannot simplify them. A failure
# prints the seed instead.
SETTINGS = settings(
    max_examples=6, deadline=None, derandomize=True, database=None,
    phases=(Phase.explicit, Phase.generate))


SEEDS = strategies.integers(0, 2**32 - 1)


def write(directory: str, name: str, data: bytes) -> str:
    path = os.path.join(directory, name)
    with open(path, "wb") as file:
        file.write(data)
    return path


def read_all(path: str, **config) -> list:
    config = sources.SourceConfig(input=path, timestamp_column="ts", label_column="y", **config)
    return list(sources.read_source_records(config))


def check_records(records: list, expected_lines: list) -> None:
    """Check one record per expected line, in order, and validate them all."""
    assert len(records) == len(expected_lines)
    assert [record.arrival for record in records] == list(range(len(records)))
    for record, line in zip(records, expected_lines):
        reason = sources.malformed_reason(record)
        if reason is not None:
            text = line.rstrip(b"\r\n").decode("utf-8", errors="replace")
            assert record.row == {sources.RAW_FIELD: text}
            assert reason.startswith(MALFORMED_PREFIXES), reason
            assert record.event_time is None
    validate_all(records)


def jsonl_line(rng: random.Random, index: int) -> tuple:
    """Return (line bytes, defect, whether it must parse as a row)."""
    defect = rng.choice(LINE_DEFECTS)
    row = corrupt_row(rng, good_row(rng, index), rng.choice(DEFECTS[:7]))
    text = json.dumps(row, ensure_ascii=rng.random() < 0.5)
    # A string with an unpaired surrogate makes the whole line malformed.
    unicode_ok = "\\ud" not in json.dumps(row).lower()
    if defect == "blank":
        return rng.choice(BLANK_LINES), defect, False
    if defect == "truncated":
        return text[:rng.randrange(1, len(text))].encode("utf-8", "surrogatepass"), defect, False
    if defect == "bom":
        return b"\xef\xbb\xbf" + text.encode("utf-8", "surrogatepass"), defect, False
    if defect == "invalid_utf8":
        return b'{"id": "\xff\xfe", "ts": 1}', defect, False
    if defect == "not_object":
        return rng.choice((b"[1, 2]", b'"text"', b"null", b"42", b"NaN")), defect, False
    if defect == "duplicate_key":
        return text[:-1].encode("utf-8", "surrogatepass") + b', "y": 1, "y": 0}', defect, unicode_ok
    if defect == "huge_int":
        return b'{"id": "h", "ts": 1, "x": ' + b"9" * 5000 + b"}", defect, False
    if defect == "surrogate":
        return b'{"id": "s\\ud800", "ts": 1}', defect, False
    if defect == "crlf":
        return text.encode("utf-8", "surrogatepass") + b"\r", defect, unicode_ok
    return text.encode("utf-8", "surrogatepass"), defect, unicode_ok


@SETTINGS
@given(SEEDS, strategies.integers(6000, 8000))
def test_jsonl_fuzzed_lines(seed, size):
    rng = random.Random(seed)
    first = json.dumps(good_row(rng, 0)).encode()
    lines = [(first, "row", True)] + [jsonl_line(rng, index) for index in range(1, size)]

    with tempfile.TemporaryDirectory() as directory:
        path = write(directory, "fuzz.jsonl", b"\n".join(line for line, _, _ in lines) + b"\n")
        records = read_all(path)

    kept = [(line, defect, must_parse) for line, defect, must_parse in lines if defect != "blank"]
    check_records(records, [line for line, _, _ in kept])
    for record, (line, defect, must_parse) in zip(records, kept):
        if must_parse:
            expected = json.loads(line)
            # A row without an id gets "<file stem>-<row index>".
            expected.setdefault("id", f"fuzz-{record.arrival}")
            assert repr(sorted(record.row.items())) == repr(sorted(expected.items()))
        if defect in ("huge_int", "surrogate", "not_object", "invalid_utf8"):
            assert sources.malformed_reason(record) is not None, line


CSV_DEFECTS = ("row", "row", "row", "blank", "columns", "truncated", "quote", "nasty")


def csv_line(rng: random.Random, index: int, defects: tuple) -> tuple:
    """Return (line bytes, defect, whether it must parse as a row)."""
    defect = rng.choice(defects)
    row = good_row(rng, index)
    values = [row.get(field, "") for field in FIELDS]
    if defect == "blank":
        return rng.choice(BLANK_LINES), defect, False
    if defect == "columns":
        values = values[:-2] if rng.random() < 0.5 else values + [1, 2]
        return ",".join(str(value) for value in values).encode(), defect, False
    if defect == "invalid_utf8":
        return b"r,\xff\xfe," + b"1,2,red,,1", defect, False
    if defect == "nasty":
        for position in rng.sample(range(len(values)), rng.randint(1, 3)):
            value = rng.choice(NASTY_STRINGS + NASTY_NUMBERS)
            values[position] = str(value).replace("\n", " ").replace("\r", " ")
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(values)
    text = buffer.getvalue().encode("utf-8", "surrogatepass")
    if defect == "truncated":
        return text[:rng.randrange(1, len(text))], defect, False
    if defect == "quote":
        return b'"' + text, defect, False
    return text, defect, defect == "row"


# pyarrow cannot decode an invalid UTF-8 row for its invalid-row handler and
# prints the error before the reader falls back to parsing line by line.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@SETTINGS
@given(SEEDS, strategies.integers(4000, 6000), strategies.booleans(), strategies.booleans())
# A line opening a quote that never closed once swallowed the lines after it.
@example(seed=7919, size=4614, bom=False, invalid_utf8=False)
def test_csv_fuzzed_lines(seed, size, bom, invalid_utf8):
    rng = random.Random(seed)
    header = (b"\xef\xbb\xbf" if bom else b"") + ",".join(FIELDS).encode()
    # One invalid UTF-8 line makes the reader parse its whole chunk line by
    # line, which is slow, so only some examples have them, and fewer lines.
    defects = CSV_DEFECTS + ("invalid_utf8",) if invalid_utf8 else CSV_DEFECTS
    if invalid_utf8:
        size //= 4
    lines = [csv_line(rng, index, defects) for index in range(size)]

    with tempfile.TemporaryDirectory() as directory:
        data = header + b"\n" + b"\n".join(line for line, _, _ in lines) + b"\n"
        records = read_all(write(directory, "fuzz.csv", data))

    kept = [(line, defect, must_parse) for line, defect, must_parse in lines if defect != "blank"]
    check_records(records, [line for line, _, _ in kept])
    for record, (line, defect, must_parse) in zip(records, kept):
        if must_parse:
            assert sources.malformed_reason(record) is None, line
            assert set(record.row) == set(FIELDS)
        if defect in ("columns", "invalid_utf8"):
            assert sources.malformed_reason(record) is not None, line


PARQUET_TIME_TYPES = ("int64", "float64", "string", "timestamp")


def parquet_column(rng: random.Random, name: str, size: int, time_type: str) -> pa.Array:
    """Build one typed column with nulls and extreme values mixed in."""
    def pick(good, nasty):
        values = []
        for i in range(size):
            draw = rng.random()
            if draw < 0.05:
                values.append(None)
            elif draw < 0.25:
                values.append(rng.choice(nasty))
            else:
                values.append(good(i))
        return values

    if name == "ts":
        if time_type == "string":
            return pa.array(pick(lambda i: f"2024-01-01T00:{i % 60:02d}:00Z", NASTY_STRINGS[:-3]),
                            pa.string())
        if time_type == "timestamp":
            return pa.array(pick(lambda i: int(EVENT_TIME + i) * 10**6, (0, -2**62, 2**62, 1)),
                            pa.timestamp("us"))
        extremes = (0, -2**63, 2**63 - 1, 10**18, -1) if time_type == "int64" else (
            math.nan, math.inf, -math.inf, 1e300, -1e300, 0.0)
        return pa.array(pick(lambda i: int(EVENT_TIME) + i, extremes), pa.from_numpy_dtype(time_type))
    if name in ("x", "f"):
        return pa.array(pick(lambda i: rng.uniform(-5, 5), (math.nan, math.inf, -math.inf, 1e308, -0.0)),
                        pa.float64())
    if name in ("n", "y"):
        return pa.array(pick(lambda i: rng.randint(0, 1), (-2**63, 2**63 - 1, 101, -1)), pa.int64())
    return pa.array(pick(lambda i: f"r{i}" if name == "id" else rng.choice(("red", "blue")),
                         NASTY_STRINGS[:-3]), pa.string())


@SETTINGS
@given(SEEDS, strategies.integers(4000, 6000), strategies.sampled_from(PARQUET_TIME_TYPES))
def test_parquet_fuzzed_rows(seed, size, time_type):
    rng = random.Random(seed)
    table = pa.table({name: parquet_column(rng, name, size, time_type) for name in FIELDS})

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "fuzz.parquet")
        pq.write_table(table, path, row_group_size=rng.randint(100, 5000))
        records = read_all(path)

    check_records(records, [b""] * size)
    for record, row in zip(records, table.to_pylist()):
        assert sources.malformed_reason(record) is None
        assert repr(record.row) == repr(row)


def test_pipeline_counts_fuzzed_file(tmp_path):
    rng = random.Random(7)
    lines = [json.dumps(good_row(rng, 0)).encode()] + [jsonl_line(rng, i)[0] for i in range(1, 1500)]
    path = write(str(tmp_path), "fuzz.jsonl", b"\n".join(lines) + b"\n")
    config = sources.SourceConfig(input=path, timestamp_column="ts", label_column="y")
    expected = sum(1 for line in lines if line.strip())

    pipeline = beam.Pipeline("DirectRunner")
    validated = (
        pipeline
        | "ReadEvents" >> replay.ReadEvents(config, replay.ReplayConfig(), "batch")
        | "ValidateRecords" >> validate.ValidateRecords(SCHEMA))
    outcomes = (
        (validated.valid, validated.dead_letter)
        | "Merge" >> beam.Flatten()
        | "Count" >> beam.combiners.Count.Globally())
    assert_that(outcomes, equal_to([expected]))
    result = pipeline.run()
    result.wait_until_finish()

    counters = {
        entry.key.metric.name: entry.committed
        for entry in result.metrics().query(MetricsFilter().with_namespace("ValidateRecords"))["counters"]
    }
    assert counters["records_read"] == expected
    assert counters["records_read"] == counters["records_valid"] + counters["records_invalid"]
    assert counters["records_invalid"] > 0


CORPUS = os.path.join(os.path.dirname(__file__), "fuzz_corpus")
# The outcome of every record of the regression corpus, keyed by the row's
# id, or by "line<arrival>" for a line that could not be parsed.
CORPUS_OUTCOMES = {
    "nasty.jsonl": [
        ("g1", "valid"), ("big", "wrong_type"), ("line2", "unparseable_record"),
        ("line3", "unparseable_record"), ("line4", "unparseable_record"),
        ("nan", "non_finite_value"), ("inf", "wrong_type"), ("dup", "unknown_label_class"),
        ("bom", "valid"), ("line9", "unparseable_record"), ("line10", "unparseable_record"),
        ("line11", "unparseable_record"), ("code", "unknown_category"),
        ("maxint", "unparseable_timestamp"), ("neg", "unparseable_timestamp"),
        ("isots", "unparseable_timestamp"), ("nested", "wrong_type"), ("bool", "wrong_type"),
    ],
    # The invalid UTF-8 line makes the reader infer column types line by
    # line, so the ids "nan" and "inf" arrive as None and a float.
    "nasty.csv": [
        ("g1", "valid"), ("line1", "unparseable_record"), ("line2", "unparseable_record"),
        ("line3", "unparseable_record"), ("line4", "unparseable_record"),
        (None, "missing_required_field"), (math.inf, "non_finite_value"),
        ("hugeint", "value_out_of_range"), ("oddtime", "unparseable_timestamp"), ("g2", "valid"),
    ],
}


def corpus_outcomes(name: str) -> list:
    records = read_all(os.path.join(CORPUS, name))
    validator = validate.RecordValidator(SCHEMA)
    outcomes = []
    for record in records:
        result = validator.validate(record)
        key = record.row.get("id") if sources.malformed_reason(record) is None else f"line{record.arrival}"
        outcomes.append((key, getattr(result, "reason_code", "valid")))
        assert getattr(result, "record", record.row) is record.row
    return outcomes


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("name", sorted(CORPUS_OUTCOMES))
def test_corpus_outcomes(name):
    assert corpus_outcomes(name) == CORPUS_OUTCOMES[name]
