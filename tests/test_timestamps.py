"""Tests for transforms.timestamps: units, auto detection and per-row errors."""

import datetime
import time

import numpy as np
import pyarrow as pa
import pytest
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP, Timestamp

from transforms.timestamps import (
    MIN_WATERMARK_SECONDS,
    detect_numeric_unit,
    format_timestamp,
    parse_timestamp,
    parse_timestamps,
    to_beam_timestamp,
)

# 2024-01-01T00:00:00Z
NEW_YEAR = 1704067200.0


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2024-01-01", NEW_YEAR),
        ("2024-01-01T00:00:00", NEW_YEAR),
        ("2024-01-01 00:00:30", NEW_YEAR + 30),
        ("2024-01-01T00:00:00.25", NEW_YEAR + 0.25),
        ("2024-01-01T00:00:00Z", NEW_YEAR),
        ("2024-01-01T02:00:00+02:00", NEW_YEAR),
        ("2024-01-01T02:00:00+0200", NEW_YEAR),
        ("2023-12-31T19:00:00-05:00", NEW_YEAR),
        ("  2024-01-01T00:01:00Z ", NEW_YEAR + 60),
    ],
)
def test_iso_string(text, expected):
    assert parse_timestamp(text, "iso") == (expected, None)
    assert parse_timestamp(text) == (expected, None)


def test_iso_column_mixes_zones():
    parsed = parse_timestamps(["2024-01-01T00:00:00Z", "2024-01-01T00:00:10", "2024-01-01"])

    assert parsed.seconds == [NEW_YEAR, NEW_YEAR + 10, NEW_YEAR]
    assert parsed.errors == [None, None, None]
    assert parsed.unit == "iso"


def test_iso_bad_row_keeps_others():
    # One bad string makes Arrow's cast fail for the whole array, so the
    # parser falls back to row-by-row parsing for it.
    values = [f"2024-01-01T00:00:{second:02d}" for second in range(50)]
    values[17] = "2024-13-01T00:00:00"

    parsed = parse_timestamps(values)

    assert parsed.seconds[16] == NEW_YEAR + 16
    assert parsed.seconds[17] is None
    assert parsed.seconds[18] == NEW_YEAR + 18
    assert parsed.errors[17] == (
        "invalid timestamp '2024-13-01T00:00:00': expected an ISO-8601 date or date-time"
    )
    assert parsed.errors.count(None) == 49


@pytest.mark.parametrize(
    "values, unit",
    [
        ([1704067200, 1704067260], "s"),
        ([1704067200000, 1704067260000], "ms"),
        ([1704067200000000, 1704067260000000], "us"),
        ([1704067200.0, 1704067260.0], "s"),
    ],
)
def test_epoch_unit_explicit(values, unit):
    parsed = parse_timestamps(values, unit)

    assert parsed.seconds == [NEW_YEAR, NEW_YEAR + 60]
    assert parsed.unit == unit


@pytest.mark.parametrize(
    "values, unit",
    [
        ([1704067200, 1704067260], "s"),
        ([1704067200000, 1704067260000], "ms"),
        ([1704067200000000, 1704067260000000], "us"),
        (["1704067200", "1704067260"], "s"),
        (["1704067200000", "1704067260000.0"], "ms"),
    ],
)
def test_epoch_unit_auto(values, unit):
    parsed = parse_timestamps(values)

    assert parsed.seconds == [NEW_YEAR, NEW_YEAR + 60]
    assert parsed.unit == unit


def test_auto_unit_thresholds():
    assert detect_numeric_unit(np.array([99_999_999_999.0])) == "s"
    assert detect_numeric_unit(np.array([100_000_000_000.0])) == "ms"
    assert detect_numeric_unit(np.array([99_999_999_999_999.0])) == "ms"
    assert detect_numeric_unit(np.array([100_000_000_000_000.0])) == "us"
    assert detect_numeric_unit(np.array([-1704067200000.0])) == "ms"


def test_auto_unit_median_ignores_outlier():
    # One millisecond value among seconds must not turn the column into
    # milliseconds: it is read as seconds and rejected as out of range.
    values = [NEW_YEAR, NEW_YEAR + 1, NEW_YEAR + 2, 1704067203000.0]

    parsed = parse_timestamps(values)

    assert parsed.unit == "s"
    assert parsed.seconds[:3] == [NEW_YEAR, NEW_YEAR + 1, NEW_YEAR + 2]
    assert parsed.errors[3] == (
        "invalid timestamp 1704067203000.0: outside the years 1 to 9999 when read as seconds"
    )


def test_auto_unit_kept_across_chunks():
    first = parse_timestamps([1704067200000, 1704067201000])
    # A later chunk of small numbers stays in the unit of the first chunk.
    second = parse_timestamps([5000, 6000], first.unit)

    assert first.unit == "ms"
    assert second.unit == "ms"
    assert second.seconds == [5.0, 6.0]


def test_string_column_majority_numeric():
    parsed = parse_timestamps(["1704067200", "soon", "1704067201"])

    assert parsed.unit == "s"
    assert parsed.seconds == [NEW_YEAR, None, NEW_YEAR + 1]
    assert parsed.errors[1] == (
        "invalid timestamp 'soon': expected a number of seconds since the Unix epoch"
    )


def test_string_column_majority_iso():
    parsed = parse_timestamps(["2024-01-01", "1704067200", "2024-01-01T00:00:01Z"])

    assert parsed.unit == "iso"
    assert parsed.seconds == [NEW_YEAR, None, NEW_YEAR + 1]
    assert parsed.errors[1] == (
        "invalid timestamp '1704067200': expected an ISO-8601 date or date-time"
    )


def test_mixed_python_types():
    # pyarrow cannot type this list, so it is compared as text.
    parsed = parse_timestamps([1704067200, "1704067260", 1704067320.5])

    assert parsed.seconds == [NEW_YEAR, NEW_YEAR + 60, NEW_YEAR + 120.5]
    assert parsed.unit == "s"


@pytest.mark.parametrize(
    "value, unit, error",
    [
        (None, "auto", "missing timestamp"),
        ("", "auto", "missing timestamp"),
        ("   ", "iso", "missing timestamp"),
        ("yesterday", "auto", "invalid timestamp 'yesterday': expected an ISO-8601 date or date-time"),
        ("12:30", "iso", "invalid timestamp '12:30': expected an ISO-8601 date or date-time"),
        (
            "abc",
            "ms",
            "invalid timestamp 'abc': expected a number of milliseconds since the Unix epoch",
        ),
        (float("nan"), "s", "invalid timestamp nan: not a finite number"),
        (float("inf"), "auto", "invalid timestamp inf: not a finite number"),
        (
            1e300,
            "s",
            "invalid timestamp 1e+300: outside the years 1 to 9999 when read as seconds",
        ),
        (1704067200, "iso", "invalid timestamp 1704067200: expected an ISO-8601 string, got a number"),
        (True, "auto", "invalid timestamp True: unsupported type bool"),
    ],
)
def test_bad_value_error(value, unit, error):
    assert parse_timestamp(value, unit) == (None, error)


def test_bad_values_do_not_raise():
    parsed = parse_timestamps([None, "x", 1704067200, float("nan")], "s")

    assert parsed.seconds == [None, None, NEW_YEAR, None]
    assert [error is None for error in parsed.errors] == [False, False, True, False]


def test_arrow_timestamp_types():
    paris_ms = pa.array([0, 60_000], pa.timestamp("ms", "Europe/Paris"))
    naive_ns = pa.array([1_704_067_200_000_000_000, None], pa.timestamp("ns"))
    # Nothing in the unit applies to typed columns.
    assert parse_timestamps(paris_ms, "us").seconds == [0.0, 60.0]
    assert parse_timestamps(naive_ns).seconds == [NEW_YEAR, None]
    assert parse_timestamps(naive_ns).errors == [None, "missing timestamp"]


def test_arrow_date_types():
    assert parse_timestamps(pa.array([19723], pa.date32())).seconds == [NEW_YEAR]
    assert parse_timestamps(pa.array([1704067200000], pa.date64())).seconds == [NEW_YEAR]
    dates = [datetime.date(2024, 1, 1), datetime.datetime(2024, 1, 1, 0, 0, 5)]
    assert parse_timestamps(dates).seconds == [NEW_YEAR, NEW_YEAR + 5]


def test_chunked_array_input():
    chunked = pa.chunked_array([[1704067200000], [1704067201000]])

    assert parse_timestamps(chunked).seconds == [NEW_YEAR, NEW_YEAR + 1]


def test_all_missing_column_keeps_auto():
    parsed = parse_timestamps([None, None])

    assert parsed.unit == "auto"
    assert parsed.errors == ["missing timestamp", "missing timestamp"]


def test_invalid_unit_raises():
    with pytest.raises(ValueError, match=r"Invalid unit 'sec': expected one of auto, s, ms, us, iso"):
        parse_timestamps([1], "sec")


def test_million_rows_parse_in_seconds():
    count = 1_000_000
    millis = pa.array(np.arange(count, dtype=np.int64) * 1000 + 1704067200000)
    texts = pa.array([f"2024-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z" for i in range(count)])

    start = time.perf_counter()
    parsed_millis = parse_timestamps(millis)
    parsed_texts = parse_timestamps(texts)
    elapsed = time.perf_counter() - start

    assert parsed_millis.seconds[-1] == NEW_YEAR + count - 1
    assert parsed_texts.seconds[61] == NEW_YEAR + 61
    # Measured at about 0.5 s on a 2-core machine; the bound leaves room for
    # a loaded machine.
    assert elapsed < 15


def test_to_beam_timestamp_clamps():
    assert to_beam_timestamp(NEW_YEAR + 0.5) == Timestamp(micros=1704067200500000)
    assert to_beam_timestamp(MIN_WATERMARK_SECONDS) == MIN_TIMESTAMP
    assert to_beam_timestamp(float("-inf")) == MIN_TIMESTAMP
    assert to_beam_timestamp(float("inf")) == MAX_TIMESTAMP


def test_format_timestamp_iso():
    assert format_timestamp(NEW_YEAR) == "2024-01-01T00:00:00Z"
    assert format_timestamp(NEW_YEAR + 0.5) == "2024-01-01T00:00:00.500000Z"
