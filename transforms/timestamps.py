"""Parse event timestamps into float seconds since the Unix epoch (UTC).

Sources hand over a whole column (or a chunk of one) at a time, so parsing is
vectorised with ``pyarrow.compute`` and the unit of a numeric column is decided
once for the column. A value that cannot be parsed does not raise: its slot in
the result contains an error string that names the value, and the row later
becomes a dead letter.

Accepted values:

* ISO-8601 strings, with or without a zone offset (``Z``, ``+02:00``,
  ``+0200``). A string without an offset is read as UTC, and a date without a
  time is midnight UTC.
* Numbers or numeric strings counting seconds, milliseconds or microseconds
  since the Unix epoch.
* pyarrow ``timestamp`` and ``date`` columns, which carry their own unit. A
  ``timestamp`` without a time zone is read as UTC.
"""

import datetime
import logging
from typing import Any, NamedTuple, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP, Timestamp

_LOGGER = logging.getLogger(__name__)

TIMESTAMP_UNITS = ("auto", "s", "ms", "us", "iso")

# Epoch numbers whose median magnitude is at least MILLIS_THRESHOLD are read
# as milliseconds, and at least MICROS_THRESHOLD as microseconds. 1e11 seconds
# is the year 5138 while 1e11 milliseconds is March 1973, so the ranges do not
# overlap for event times between 1973 and 5138.
MILLIS_THRESHOLD = 1e11
MICROS_THRESHOLD = 1e14

_SECONDS_PER_UNIT = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
_UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds"}
_ARROW_TIME_UNIT_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}

# The range of datetime.datetime (years 1 to 9999), so every parsed time can
# also be written back as an ISO-8601 string.
_MIN_SECONDS = -62135596800.0
_MAX_SECONDS = 253402300800.0

_NUMBER_PATTERN = r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$"
# A zone offset after a time of day. A date alone ("2024-01-31") must not
# match, although its last characters look like an offset.
_ZONE_PATTERN = r"([Zz]|[T ][0-9:.,]+[+-]\d{2}(:?\d{2})?)$"

_MISSING = "missing timestamp"

# Beam's MIN_TIMESTAMP in float seconds: the watermark before any data.
MIN_WATERMARK_SECONDS = MIN_TIMESTAMP.micros / 1e6


class ParsedTimestamps(NamedTuple):
    """Result of parsing one column of timestamps.

    ``seconds[i]`` is None exactly when ``errors[i]`` is set. ``unit`` is the
    unit the column was read in ("s", "ms", "us" or "iso"), or "auto" when no
    value decided it. Pass ``unit`` back to :func:`parse_timestamps` for the
    next chunk of the same column so that a column never mixes units.
    """

    seconds: list
    errors: list
    unit: str


def validate_timestamp_unit(unit: str, name: str = "unit") -> str:
    """Raise ValueError unless ``unit`` is one of TIMESTAMP_UNITS."""
    if unit not in TIMESTAMP_UNITS:
        raise ValueError(
            f"Invalid {name} {unit!r}: expected one of "
            f"{', '.join(TIMESTAMP_UNITS)}, for example 'auto'."
        )
    return unit


def detect_numeric_unit(magnitudes: np.ndarray) -> str:
    """Choose "s", "ms" or "us" from the median of absolute epoch numbers.

    The median, not the maximum, decides, so a few corrupt values cannot
    switch the unit of a whole column.
    """
    median = float(np.median(np.abs(magnitudes)))
    if median >= MICROS_THRESHOLD:
        return "us"
    if median >= MILLIS_THRESHOLD:
        return "ms"
    return "s"


def parse_timestamps(values: Any, unit: str = "auto") -> ParsedTimestamps:
    """Parse a column of timestamps into float seconds since the epoch (UTC).

    Args:
      values: a pyarrow Array or ChunkedArray, or a Python sequence. A
        sequence that pyarrow cannot type as one column (numbers mixed with
        strings) is read as strings.
      unit: "auto", "s", "ms", "us" or "iso". "auto" reads a numeric column
        in the unit chosen by :func:`detect_numeric_unit`, and a string column
        as numbers when more than half of its non-empty values are numbers,
        otherwise as ISO-8601. The unit applies to numbers and strings only:
        pyarrow timestamp and date columns carry their own.

    Returns:
      A ParsedTimestamps. Invalid values give an error string, never an
      exception.
    """
    validate_timestamp_unit(unit)
    array = _to_arrow(values)
    kind = array.type

    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        return _parse_temporal(array, unit)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return _parse_numeric(array, unit)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return _parse_strings(array, unit)
    if pa.types.is_null(kind):
        return ParsedTimestamps([None] * len(array), [_MISSING] * len(array), unit)
    return _reject_all(array, unit, f"unsupported type {kind}")


def parse_timestamp(value: Any, unit: str = "auto") -> tuple:
    """Parse one timestamp. Returns ``(seconds, None)`` or ``(None, error)``.

    With unit "auto" the magnitude of this value alone decides its unit. Use
    :func:`parse_timestamps` for a column, so that all rows share one unit.
    """
    parsed = parse_timestamps([value], unit)
    return parsed.seconds[0], parsed.errors[0]


def to_beam_timestamp(seconds: float) -> Timestamp:
    """Convert epoch seconds to a Beam Timestamp, clamped to Beam's range.

    The clamp lets ``-inf`` or the float form of MIN_TIMESTAMP, which rounds
    below it, stand for "no watermark yet".
    """
    if seconds <= MIN_TIMESTAMP.micros / 1e6:
        return MIN_TIMESTAMP
    if seconds >= MAX_TIMESTAMP.micros / 1e6:
        return MAX_TIMESTAMP
    return Timestamp(micros=round(seconds * 1e6))


def format_timestamp(seconds: float) -> str:
    """Format epoch seconds as an ISO-8601 UTC string ending in "Z"."""
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return moment.isoformat().replace("+00:00", "Z")


def _to_arrow(values: Any) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    if isinstance(values, pa.Array):
        return values

    values = list(values)
    try:
        array = pa.array(values)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        # Mixed Python types (numbers and strings in one column, or ints past
        # int64) are compared as text, which both parse paths accept.
        return _to_text_array(values)

    # pyarrow types a list of dates and datetimes as date32 and drops the
    # times of day, so such a list is compared as text too.
    if pa.types.is_date(array.type) and any(
        isinstance(value, datetime.datetime) for value in values
    ):
        return _to_text_array(values)
    return array


def _to_text_array(values: list) -> pa.Array:
    return pa.array([_to_text(value) for value in values], pa.string())


def _to_text(value: Any) -> Optional[str]:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _parse_temporal(array: pa.Array, unit: str) -> ParsedTimestamps:
    kind = array.type
    if pa.types.is_timestamp(kind):
        # The stored integer counts kind.unit since the epoch in UTC, whether
        # or not the type has a time zone.
        scale = _ARROW_TIME_UNIT_SECONDS[kind.unit]
        raw = array.cast(pa.int64())
    elif pa.types.is_date32(kind):
        scale = 86400.0
        raw = array.cast(pa.int32()).cast(pa.int64())
    else:
        scale = 1e-3
        raw = array.cast(pa.int64())

    seconds = raw.to_numpy(zero_copy_only=False).astype(np.float64) * scale
    missing = array.is_null().to_numpy(zero_copy_only=False)
    return _finish(array, seconds, unit, missing, np.zeros(len(array), dtype=bool))


def _parse_numeric(array: pa.Array, unit: str) -> ParsedTimestamps:
    if unit == "iso":
        return _reject_all(array, unit, "expected an ISO-8601 string, got a number")

    # An unsafe cast: integers past 2**53 round instead of failing the whole
    # chunk, and the range check in _finish rejects the absurd ones.
    numbers = array.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False)
    missing = array.is_null().to_numpy(zero_copy_only=False)
    return _scale_numbers(array, numbers, missing, unit)


def _scale_numbers(array, numbers, missing, unit) -> ParsedTimestamps:
    finite = np.isfinite(numbers) & ~missing
    if unit == "auto" and finite.any():
        unit = detect_numeric_unit(numbers[finite])
        _LOGGER.debug("Read epoch numbers as %s.", _UNIT_NAMES[unit])

    # With no finite value the unit stays "auto" and every present row is
    # rejected as not finite, so the factor does not matter.
    factor = _SECONDS_PER_UNIT.get(unit, 1.0)
    with np.errstate(invalid="ignore", over="ignore"):
        seconds = numbers * factor
    not_finite = ~np.isfinite(numbers) & ~missing
    return _finish(array, seconds, unit, missing, not_finite, "not a finite number")


def _parse_strings(array: pa.Array, unit: str) -> ParsedTimestamps:
    trimmed = pc.utf8_trim_whitespace(array)
    empty = pc.equal(pc.utf8_length(trimmed), 0).fill_null(False)
    missing_array = pc.or_(array.is_null(), empty)
    missing = missing_array.to_numpy(zero_copy_only=False)
    numeric = (
        pc.match_substring_regex(trimmed, _NUMBER_PATTERN)
        .fill_null(False)
        .to_numpy(zero_copy_only=False)
    )

    if unit == "auto":
        present = int((~missing).sum())
        if present == 0:
            nothing = np.zeros(len(array), dtype=bool)
            return _finish(array, np.full(len(array), np.nan), unit, missing, nothing)
        unit = "auto-number" if numeric.sum() * 2 > present else "iso"

    if unit == "iso":
        seconds, invalid = _parse_iso(trimmed, missing)
        reason = "expected an ISO-8601 date or date-time"
        return _finish(array, seconds, unit, missing, invalid, reason)

    numbers = (
        pc.if_else(pa.array(numeric), trimmed, pa.scalar(None, pa.string()))
        .cast(pa.float64())
        .to_numpy(zero_copy_only=False)
    )
    number_unit = "auto" if unit == "auto-number" else unit
    parsed = _scale_numbers(array, numbers, missing | ~numeric, number_unit)
    # Rows that are present but not numeric were passed as missing above;
    # give them their real reason.
    not_numeric = np.flatnonzero(~missing & ~numeric)
    errors = parsed.errors
    unit_name = _UNIT_NAMES.get(parsed.unit, "seconds, milliseconds or microseconds")
    for index in not_numeric:
        errors[index] = _invalid(
            array[int(index)].as_py(), f"expected a number of {unit_name} since the Unix epoch"
        )
    return ParsedTimestamps(parsed.seconds, errors, parsed.unit)


def _parse_iso(trimmed: pa.Array, missing: np.ndarray) -> tuple:
    """Parse ISO-8601 strings. Returns (seconds, invalid mask)."""
    seconds = np.full(len(trimmed), np.nan)
    invalid = np.zeros(len(trimmed), dtype=bool)
    zoned = pc.match_substring_regex(trimmed, _ZONE_PATTERN).fill_null(False)
    zoned = zoned.to_numpy(zero_copy_only=False)

    for mask, target in ((zoned, pa.timestamp("us", "UTC")), (~zoned, pa.timestamp("us"))):
        indices = np.flatnonzero(mask & ~missing)
        if len(indices) == 0:
            continue
        subset = trimmed.take(pa.array(indices))
        try:
            micros = subset.cast(target).cast(pa.int64()).to_numpy(zero_copy_only=False)
            seconds[indices] = micros / 1e6
        except pa.ArrowInvalid:
            # Arrow's cast rejects the whole array for one bad string, so this
            # subset falls back to one string at a time.
            for index, text in zip(indices, subset.to_pylist()):
                value = _parse_iso_text(text)
                if value is None:
                    invalid[index] = True
                else:
                    seconds[index] = value
    return seconds, invalid


def _parse_iso_text(text: str) -> Optional[float]:
    if text[-1:] in "Zz":
        # datetime.fromisoformat accepts "Z" only from Python 3.11.
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def _finish(array, seconds, unit, missing, invalid, reason="") -> ParsedTimestamps:
    """Turn seconds plus masks into lists, with one error per bad row.

    ``invalid`` marks present values that failed for ``reason``. Every NaN in
    ``seconds`` must be missing or invalid.
    """
    values = seconds.tolist()
    errors = [None] * len(values)
    with np.errstate(invalid="ignore"):
        outside = (seconds < _MIN_SECONDS) | (seconds >= _MAX_SECONDS)
    out_of_range = np.isfinite(seconds) & outside & ~missing & ~invalid

    for index in np.flatnonzero(missing | invalid | out_of_range):
        index = int(index)
        values[index] = None
        if missing[index]:
            errors[index] = _MISSING
        elif invalid[index]:
            errors[index] = _invalid(array[index].as_py(), reason)
        else:
            label = _UNIT_NAMES.get(unit, "ISO-8601")
            errors[index] = _invalid(
                array[index].as_py(), f"outside the years 1 to 9999 when read as {label}"
            )
    return ParsedTimestamps(values, errors, unit)


def _reject_all(array: pa.Array, unit: str, reason: str) -> ParsedTimestamps:
    errors = [
        _MISSING if value is None else _invalid(value, reason) for value in array.to_pylist()
    ]
    return ParsedTimestamps([None] * len(array), errors, unit)


def _invalid(value: Any, reason: str) -> str:
    return f"invalid timestamp {value!r}: {reason}"
