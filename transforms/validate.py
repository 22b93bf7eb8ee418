"""Validate source records against a schema and route failures to dead letters.

``ValidateRecords`` turns each ``SourceRecord`` into an ``Event`` on the
``valid`` output or a ``DeadLetter`` on the ``dead_letter`` output. The
checks run in a fixed order and the first failure decides the reason code:

1. ``unparseable_record``: the source could not parse the line at all.
2. ``oversized_record``: the row is larger than ``max_record_bytes`` as
   compact UTF-8 JSON.
3. ``unparseable_timestamp``: the source could not parse the event time.
4. ``timestamp_out_of_range``: the event time is outside
   ``[min_timestamp, max_timestamp]``.
5. ``late_record``: a GroupByKey under the ``lateness`` windowing would drop
   the record as late.
6. ``extra_field``: the row has a field the schema lacks.
7. Per field, the id first, then the model inputs in schema order, then the
   label: ``missing_required_field``, ``wrong_type``, ``non_finite_value``
   (NaN or infinity where the domain disallows it), ``value_out_of_range``,
   ``unknown_category`` (a string outside the feature's domain) and
   ``unknown_label_class``.

The pure function ``validate_record`` does the same for one record without
Beam, for unit tests and fuzzing.
"""

import datetime
import logging
import math
from typing import Any, Optional, Union

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import MAX_TIMESTAMP
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.timestamp import Timestamp
from tensorflow_metadata.proto.v0 import schema_pb2

from transforms import dead_letter as dead_letter_io
from transforms import schema as schema_lib
from transforms import windowing
from transforms.records import Block
from transforms.records import DeadLetter
from transforms.records import Event
from transforms.records import SourceRecord

_LOGGER = logging.getLogger(__name__)

METRICS_NAMESPACE = "ValidateRecords"
VALID_TAG = "valid"
DEAD_LETTER_TAG = "dead_letter"
STAGE = "validate"

UNPARSEABLE_RECORD = "unparseable_record"
OVERSIZED_RECORD = "oversized_record"
UNPARSEABLE_TIMESTAMP = "unparseable_timestamp"
TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
LATE_RECORD = "late_record"
EXTRA_FIELD = "extra_field"
MISSING_REQUIRED_FIELD = "missing_required_field"
WRONG_TYPE = "wrong_type"
NON_FINITE_VALUE = "non_finite_value"
VALUE_OUT_OF_RANGE = "value_out_of_range"
UNKNOWN_CATEGORY = "unknown_category"
UNKNOWN_LABEL_CLASS = "unknown_label_class"
REASON_CODES = (
    UNPARSEABLE_RECORD,
    OVERSIZED_RECORD,
    UNPARSEABLE_TIMESTAMP,
    TIMESTAMP_OUT_OF_RANGE,
    LATE_RECORD,
    EXTRA_FIELD,
    MISSING_REQUIRED_FIELD,
    WRONG_TYPE,
    NON_FINITE_VALUE,
    VALUE_OUT_OF_RANGE,
    UNKNOWN_CATEGORY,
    UNKNOWN_LABEL_CLASS,
)

# The key a source uses for the raw text of a line it could not parse.
RAW_FIELD = "_raw"

DEFAULT_MAX_RECORD_BYTES = 65536
# 1970-01-01T00:00:00Z and 2100-01-01T00:00:00Z, in seconds.
DEFAULT_MIN_TIMESTAMP = 0.0
DEFAULT_MAX_TIMESTAMP = 4102444800.0

_KIND_NAMES = {
    schema_lib.FLOAT: "a FLOAT number",
    schema_lib.INT: "an INT",
    schema_lib.BOOL: "a boolean",
    schema_lib.STRING: "a string",
}
_MAX_CLASSES_IN_REASON = 10
_MIN_SECONDS = MIN_TIMESTAMP.micros / 1e6
_MAX_SECONDS = MAX_TIMESTAMP.micros / 1e6


def _format_time(seconds: float) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return f"{seconds!r} s"
    return f"{seconds!r} s ({moment.isoformat().replace('+00:00', 'Z')})"


class _LabelSpec:
    """Precomputed lookups for the label column."""

    def __init__(self, schema: schema_pb2.Schema):
        feature = next(
            feature for feature in schema.feature
            if schema_lib.LABEL_TAG in feature.annotation.tag)
        self.name = feature.name
        self.required = feature.presence.min_fraction >= 1.0
        self.task = schema_lib.task(schema)
        self.integer_classes = feature.type == schema_pb2.INT
        self.classes = tuple(feature.string_domain.value)
        self.class_index = {value: index for index, value in enumerate(self.classes)}


class RecordValidator:
    """Validate ``SourceRecord``s against one schema.

    Builds the per-schema lookups once, so build one validator per DoFn
    instance and call ``validate`` per record.

    ``lateness`` is the ``windowing.LatenessRule`` of the windowed step that
    consumes the events, from ``WindowingConfig.lateness_rule()``. A
    ``WindowingConfig`` or any object with a ``window_fn`` and an
    ``allowed_lateness`` in seconds works too. None turns the lateness
    check off. ``min_timestamp`` and ``max_timestamp`` are event times in
    seconds, and None turns that bound off.
    """

    def __init__(
            self,
            schema: schema_pb2.Schema,
            max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
            min_timestamp: Optional[float] = DEFAULT_MIN_TIMESTAMP,
            max_timestamp: Optional[float] = DEFAULT_MAX_TIMESTAMP,
            allow_extra_fields: bool = False,
            lateness: Optional[Any] = None):
        _check_arguments(schema, max_record_bytes, min_timestamp, max_timestamp)

        self._max_record_bytes = max_record_bytes
        self._min_timestamp = min_timestamp
        self._max_timestamp = max_timestamp
        self._allow_extra_fields = allow_extra_fields
        self._window_fn = lateness.window_fn if lateness is not None else None
        self._allowed_lateness = (
            float(lateness.allowed_lateness) if lateness is not None else 0.0)

        self._features = schema_lib.feature_specs(schema)
        self._label = _LabelSpec(schema)
        self._id_column = schema_lib.id_column(schema)
        self._timestamp_column = schema_lib.timestamp_column(schema)
        self._id_required = self._id_column is not None and any(
            feature.name == self._id_column
            and feature.presence.min_fraction >= 1.0
            for feature in schema.feature)
        self._known_fields = frozenset(feature.name for feature in schema.feature)

    def validate(self, record: SourceRecord) -> Union[Event, DeadLetter]:
        """Return the record as an Event, or a DeadLetter with the first failure."""
        dead_letter = (
            self._check_parsed(record)
            or self._check_size(record.row)
            or self._check_timestamp(record)
            or self._check_lateness(record)
            or self._check_extra_fields(record.row))
        if dead_letter is not None:
            return dead_letter

        row = record.row
        event_id, dead_letter = self._parse_id(record)
        if dead_letter is not None:
            return dead_letter

        features, dead_letter = self._encode_features(row)
        if dead_letter is not None:
            return dead_letter

        label, dead_letter = self._parse_label(row)
        if dead_letter is not None:
            return dead_letter

        return Event(
            id=event_id,
            event_time=float(record.event_time),
            features=features,
            label=label)

    def _check_parsed(self, record: SourceRecord) -> Optional[DeadLetter]:
        row = record.row
        if not isinstance(row, dict):
            return _dead_letter(
                row, UNPARSEABLE_RECORD,
                f"Record is a {type(row).__name__}, not an object of fields.")

        if set(row) == {RAW_FIELD} and record.timestamp_error is not None:
            return _dead_letter(
                row, UNPARSEABLE_RECORD,
                f"Record could not be parsed: {record.timestamp_error}")
        return None

    def _check_size(self, row: dict) -> Optional[DeadLetter]:
        bound = _json_size_bound(row)
        if bound is not None and bound <= self._max_record_bytes:
            return None
        try:
            size = len(dead_letter_io.dumps(row).encode("utf-8"))
        except UnicodeEncodeError as error:
            # An unpaired surrogate: no UTF-8 writer downstream could store it.
            return _dead_letter(
                row, UNPARSEABLE_RECORD,
                f"Record has a string that is not valid Unicode text: {error}.")
        if size <= self._max_record_bytes:
            return None
        return _dead_letter(
            row, OVERSIZED_RECORD,
            f"Record is {size} bytes as JSON, more than"
            f" max_record_bytes={self._max_record_bytes}.")

    def _check_timestamp(self, record: SourceRecord) -> Optional[DeadLetter]:
        row = record.row
        field = self._timestamp_column
        event_time = record.event_time
        if record.timestamp_error is not None or event_time is None:
            value = row.get(field) if field is not None else None
            error = record.timestamp_error or "the source set no event time"
            return _dead_letter(
                row, UNPARSEABLE_TIMESTAMP,
                f"Field {field!r} has the value {value!r}, which could not be"
                f" parsed as a timestamp: {error}",
                field)

        if not math.isfinite(event_time):
            return _dead_letter(
                row, UNPARSEABLE_TIMESTAMP,
                f"Field {field!r} has the event time {event_time!r}, which is"
                " not a finite number of seconds.",
                field)

        # Beam cannot represent times outside its own range in any case.
        low = max(_bound(self._min_timestamp, -math.inf), _MIN_SECONDS)
        high = min(_bound(self._max_timestamp, math.inf), _MAX_SECONDS)
        if low <= event_time <= high:
            return None
        return _dead_letter(
            row, TIMESTAMP_OUT_OF_RANGE,
            f"Field {field!r} has the event time {_format_time(event_time)},"
            f" outside the accepted range {_format_time(low)} to"
            f" {_format_time(high)}.",
            field)

    def _check_lateness(self, record: SourceRecord) -> Optional[DeadLetter]:
        if self._window_fn is None:
            return None
        # Built-in windows end after the timestamps they contain, so a record
        # whose event time plus the allowed lateness is ahead of the
        # watermark cannot be droppable. The margin of 1 ms absorbs rounding
        # to Beam's microseconds.
        if (isinstance(self._window_fn, _WINDOWS_THAT_CONTAIN_THEIR_ELEMENTS)
                and record.watermark < record.event_time + self._allowed_lateness - 1e-3):
            return None
        if not windowing.is_droppable(
                self._window_fn, self._allowed_lateness, record.event_time,
                record.watermark):
            return None

        window_end = windowing.last_window_end(self._window_fn, record.event_time)
        return _dead_letter(
            record.row, LATE_RECORD,
            f"Record with event time {_format_time(record.event_time)} is too"
            " late: its last window ends at"
            f" {_format_time(window_end.micros / 1e6)}, and that plus the allowed"
            f" lateness of {self._allowed_lateness!r} s is at or before the"
            f" watermark {_format_time(record.watermark)}.",
            self._timestamp_column)

    def _check_extra_fields(self, row: dict) -> Optional[DeadLetter]:
        if self._allow_extra_fields:
            return None
        for field, value in row.items():
            if field not in self._known_fields:
                return _dead_letter(
                    row, EXTRA_FIELD,
                    f"Field {field!r} with the value {value!r} is not in the"
                    " schema. Remove it, add it to the schema, or pass"
                    " allow_extra_fields=True.",
                    field)
        return None

    def _parse_id(self, record: SourceRecord):
        row = record.row
        value = row.get(self._id_column) if self._id_column is not None else None
        if not schema_lib.is_missing(value):
            try:
                return schema_lib.category_string(value), None
            except ValueError:
                return None, _dead_letter(
                    row, WRONG_TYPE,
                    f"Field {self._id_column!r} has the value {value!r}, which"
                    " is not a string or number id.",
                    self._id_column)

        if self._id_required:
            return None, _missing(row, self._id_column)
        # Records without an id are named by their arrival position.
        return f"arrival:{record.arrival}", None

    def _encode_features(self, row: dict):
        encoded = []
        for spec in self._features:
            value = row.get(spec.name)
            if schema_lib.is_missing(value):
                if spec.required:
                    return None, _missing(row, spec.name)
                encoded.extend(spec.encode_missing())
                continue

            parsed, dead_letter = _check_value(row, spec, value)
            if dead_letter is not None:
                return None, dead_letter
            encoded.extend(spec.encode(parsed))
        return tuple(encoded), None

    def _parse_label(self, row: dict):
        label = self._label
        value = row.get(label.name)
        if schema_lib.is_missing(value):
            if label.required:
                return None, _missing(row, label.name)
            return None, None

        if label.task == schema_lib.REGRESSION:
            return _parse_regression_target(row, label.name, value)
        return _parse_class_index(row, label, value)


_WINDOWS_THAT_CONTAIN_THEIR_ELEMENTS = (
    beam.window.FixedWindows,
    beam.window.SlidingWindows,
    beam.window.Sessions,
    beam.window.GlobalWindows,
)

# Longest JSON text of a finite float (repr, e.g. -2.2250738585072014e-308)
# and of an int below 2**53 in magnitude.
_MAX_FLOAT_JSON_CHARS = 24
_MAX_SAFE_INT = 2**53
_MAX_SAFE_INT_JSON_CHARS = 17


def _json_size_bound(row: dict) -> Optional[int]:
    """Return an upper bound on the row's size in bytes as compact JSON, or None.

    Only flat rows of ASCII strings, finite floats, ints below 2**53, bools
    and None get a bound; others return None and must be serialised. An
    ASCII character takes at most 6 bytes in JSON (a control character
    becomes \\u00XX), so the bound costs one pass over the row instead of
    ``json.dumps``.
    """
    size = 2
    for key, value in row.items():
        if type(key) is not str or not key.isascii():
            return None
        # The quoted key, the colon and the separating comma.
        size += 6 * len(key) + 4
        value_type = type(value)
        if value is None or value_type is bool:
            size += 5
        elif value_type is float:
            if not math.isfinite(value):
                return None
            size += _MAX_FLOAT_JSON_CHARS
        elif value_type is int:
            if abs(value) >= _MAX_SAFE_INT:
                return None
            size += _MAX_SAFE_INT_JSON_CHARS
        elif value_type is str and value.isascii():
            size += 6 * len(value) + 2
        else:
            return None
    return size


def _bound(value: Optional[float], default: float) -> float:
    return default if value is None else value


def _check_arguments(schema, max_record_bytes, min_timestamp, max_timestamp):
    if not isinstance(schema, schema_pb2.Schema):
        raise ValueError(
            f"Invalid schema of type {type(schema).__name__}: pass a"
            " tensorflow_metadata schema_pb2.Schema, for example from"
            " schema.load_schema(path).")
    if schema_lib.label_column(schema) is None:
        raise ValueError(
            "Invalid schema: no feature has the annotation tag"
            f" {schema_lib.LABEL_TAG!r}. Infer the schema with"
            " schema.infer_schema(rows, label_column=...).")
    if not isinstance(max_record_bytes, int) or max_record_bytes < 1:
        raise ValueError(
            f"Invalid max_record_bytes {max_record_bytes!r}: expected a whole"
            " number of bytes of at least 1, for example 65536.")
    if (min_timestamp is not None and max_timestamp is not None
            and min_timestamp > max_timestamp):
        raise ValueError(
            f"Invalid timestamp range: min_timestamp={min_timestamp!r} is after"
            f" max_timestamp={max_timestamp!r}. Swap them.")


def _dead_letter(
        row: Any, reason_code: str, reason: str,
        field: Optional[str] = None) -> DeadLetter:
    return DeadLetter(
        record=row, reason_code=reason_code, reason=reason, field=field,
        stage=STAGE)


def _missing(row: dict, field: str) -> DeadLetter:
    return _dead_letter(
        row, MISSING_REQUIRED_FIELD, f"Required field {field!r} is missing.",
        field)


def _check_value(row: dict, spec: schema_lib.FeatureSpec, value: Any):
    """Parse one present model input value and check it against its domain."""
    try:
        parsed = spec.parse(value)
    except ValueError:
        return None, _dead_letter(
            row, WRONG_TYPE,
            f"Field {spec.name!r} has the value {value!r}, which is not"
            f" {_KIND_NAMES[spec.kind]}.",
            spec.name)

    if spec.kind == schema_lib.STRING:
        if parsed in spec.category_index:
            return parsed, None
        return None, _dead_letter(
            row, UNKNOWN_CATEGORY,
            f"Field {spec.name!r} has the value {value!r}, which is not in its"
            f" string domain of {spec.width} values.",
            spec.name)

    if spec.kind == schema_lib.FLOAT:
        if math.isnan(parsed) and spec.disallow_nan:
            return None, _dead_letter(
                row, NON_FINITE_VALUE,
                f"Field {spec.name!r} has the value {value!r}, but its domain"
                " disallows NaN.",
                spec.name)
        if math.isinf(parsed) and spec.disallow_inf:
            return None, _dead_letter(
                row, NON_FINITE_VALUE,
                f"Field {spec.name!r} has the value {value!r}, but its domain"
                " disallows infinity.",
                spec.name)
        if not math.isfinite(parsed):
            return parsed, None

    too_low = spec.minimum is not None and parsed < spec.minimum
    too_high = spec.maximum is not None and parsed > spec.maximum
    if too_low or too_high:
        return None, _dead_letter(
            row, VALUE_OUT_OF_RANGE,
            f"Field {spec.name!r} has the value {value!r}, outside its domain"
            f" [{_bound(spec.minimum, -math.inf)!r},"
            f" {_bound(spec.maximum, math.inf)!r}].",
            spec.name)
    return parsed, None


def _parse_regression_target(row: dict, name: str, value: Any):
    try:
        target = schema_lib.parse_float(value)
    except ValueError:
        return None, _dead_letter(
            row, WRONG_TYPE,
            f"Label {name!r} has the value {value!r}, which is not a number.",
            name)

    # A NaN or infinite target would poison the loss, whatever the domain.
    if not math.isfinite(target):
        return None, _dead_letter(
            row, NON_FINITE_VALUE,
            f"Label {name!r} has the value {value!r}, but a regression target"
            " must be finite.",
            name)
    return target, None


def _parse_class_index(row: dict, label: _LabelSpec, value: Any):
    try:
        if label.integer_classes:
            key = str(schema_lib.parse_label_int(value))
        else:
            key = schema_lib.category_string(value)
    except ValueError:
        expected = "an integer class" if label.integer_classes else "a string class"
        return None, _dead_letter(
            row, WRONG_TYPE,
            f"Label {label.name!r} has the value {value!r}, which is not"
            f" {expected}.",
            label.name)

    index = label.class_index.get(key)
    if index is not None:
        return index, None

    listed_classes = ", ".join(label.classes[:_MAX_CLASSES_IN_REASON])
    if len(label.classes) > _MAX_CLASSES_IN_REASON:
        listed_classes += ", ..."
    return None, _dead_letter(
        row, UNKNOWN_LABEL_CLASS,
        f"Label {label.name!r} has the value {value!r}, which is not one of the"
        f" schema's label classes [{listed_classes}].",
        label.name)


def validate_record(
        source_record: SourceRecord,
        schema: schema_pb2.Schema,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        min_timestamp: Optional[float] = DEFAULT_MIN_TIMESTAMP,
        max_timestamp: Optional[float] = DEFAULT_MAX_TIMESTAMP,
        allow_extra_fields: bool = False,
        lateness: Optional[Any] = None) -> Union[Event, DeadLetter]:
    """Validate one record, taking the arguments of ``RecordValidator``.

    Builds the schema lookups on every call. Build a ``RecordValidator``
    once to validate many records.
    """
    validator = RecordValidator(
        schema,
        max_record_bytes=max_record_bytes,
        min_timestamp=min_timestamp,
        max_timestamp=max_timestamp,
        allow_extra_fields=allow_extra_fields,
        lateness=lateness)
    return validator.validate(source_record)


def dead_letter_timestamp(record: SourceRecord) -> Timestamp:
    """Return the element timestamp for a record's dead letter.

    This is the record's watermark, clamped into Beam's timestamp range, with
    NaN read as the minimum. A dead letter is never behind the watermark it
    arrived under, so no downstream window drops it as late.
    """
    watermark = record.watermark
    if watermark is None or math.isnan(watermark) or watermark <= _MIN_SECONDS:
        return MIN_TIMESTAMP
    if watermark >= _MAX_SECONDS:
        return MAX_TIMESTAMP
    return Timestamp.of(watermark)


class _ValidateRecordsFn(beam.DoFn):
    """Validate records and count the outcomes in ``ValidateRecords`` metrics."""

    def __init__(self, serialized_schema: bytes, validator_kwargs: dict):
        # The schema travels serialised: protos pickle reliably as bytes.
        self._serialized_schema = serialized_schema
        self._validator_kwargs = validator_kwargs

    def setup(self):
        schema = schema_pb2.Schema.FromString(self._serialized_schema)
        self._validator = RecordValidator(schema, **self._validator_kwargs)
        self._records_read = Metrics.counter(METRICS_NAMESPACE, "records_read")
        self._records_valid = Metrics.counter(METRICS_NAMESPACE, "records_valid")
        self._records_invalid = Metrics.counter(
            METRICS_NAMESPACE, "records_invalid")
        self._invalid_by_reason = {
            code: Metrics.counter(METRICS_NAMESPACE, f"records_invalid_{code}")
            for code in REASON_CODES
        }
        self._logged_reasons = set()

    def process(self, element):
        records = element.items if isinstance(element, Block) else (element,)
        events = []
        for record in records:
            result = self._validator.validate(record)
            if isinstance(result, Event):
                events.append(result)
                continue
            self._invalid_by_reason[result.reason_code].inc()
            self._log_first(result, record)
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER_TAG,
                TimestampedValue(result, dead_letter_timestamp(record)))

        # Counted once per element: a counter update costs about as much as
        # validating a small record.
        self._records_read.inc(len(records))
        self._records_valid.inc(len(events))
        self._records_invalid.inc(len(records) - len(events))
        if not events:
            return
        if isinstance(element, Block):
            # The valid events share the block's windows; they travel on together.
            yield TimestampedValue(Block(events), min(event.event_time for event in events))
        else:
            yield TimestampedValue(events[0], events[0].event_time)

    def _log_first(self, dead_letter: DeadLetter, record: SourceRecord) -> None:
        # One line per reason code and worker: the counters give the totals.
        if dead_letter.reason_code in self._logged_reasons:
            return
        self._logged_reasons.add(dead_letter.reason_code)
        _LOGGER.warning(
            "Rejected record at arrival %s with reason %s: %s",
            record.arrival, dead_letter.reason_code, dead_letter.reason)


class ValidateRecords(beam.PTransform):
    """Validate a PCollection of ``SourceRecord`` against a schema.

    Returns a tagged result: ``result.valid`` contains ``Event``s timestamped
    at their event time, and ``result.dead_letter`` contains ``DeadLetter``s
    with the original row, timestamped at the record's watermark. The
    counters ``records_read``, ``records_valid``, ``records_invalid`` and
    ``records_invalid_<reason_code>`` are in the ``ValidateRecords``
    metrics namespace. See ``RecordValidator`` for the arguments.

    A :class:`Block` of records gives a Block of their valid events,
    timestamped at the earliest one, and a dead letter per invalid record.
    """

    def __init__(
            self,
            schema: schema_pb2.Schema,
            max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
            min_timestamp: Optional[float] = DEFAULT_MIN_TIMESTAMP,
            max_timestamp: Optional[float] = DEFAULT_MAX_TIMESTAMP,
            allow_extra_fields: bool = False,
            lateness: Optional[Any] = None):
        super().__init__()
        _check_arguments(schema, max_record_bytes, min_timestamp, max_timestamp)
        self._serialized_schema = schema.SerializeToString()
        self._validator_kwargs = {
            "max_record_bytes": max_record_bytes,
            "min_timestamp": min_timestamp,
            "max_timestamp": max_timestamp,
            "allow_extra_fields": allow_extra_fields,
            "lateness": lateness,
        }

    def expand(self, records):
        return records | "Validate" >> beam.ParDo(
            _ValidateRecordsFn(self._serialized_schema, self._validator_kwargs)
        ).with_outputs(DEAD_LETTER_TAG, main=VALID_TAG)
