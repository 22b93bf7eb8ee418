"""Infer, save and load the tensorflow_metadata Schema of a tabular data set.

The schema is the contract between the sources, validation and the model.
It lists every column with its type (INT, FLOAT or BYTES), whether it is
required, and its domain: observed min and max for numbers, the sorted
values for strings, and the sorted label classes for classification.

The roles of the special columns live in the schema itself, so a saved
schema is self-contained. The label, id and timestamp columns carry the
feature annotation tags ``label``, ``id`` and ``timestamp``, and the task
is the schema annotation tag ``task:classification`` or
``task:regression``.

This module imports no Beam, so trainers and notebooks can reuse it. Values
may be Python numbers and booleans (JSON Lines) or strings (CSV): the
numeric string ``"2.5"`` counts as a FLOAT, and ``None`` or ``""`` counts
as a missing value.
"""

import math
import os
import re
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

LABEL_TAG = "label"
ID_TAG = "id"
TIMESTAMP_TAG = "timestamp"
TASK_TAG_PREFIX = "task:"
CLASSIFICATION = "classification"
REGRESSION = "regression"
TASKS = (CLASSIFICATION, REGRESSION)

DEFAULT_MAX_LABEL_CLASSES = 20
DEFAULT_MAX_STRING_VALUES = 1000

# Value kinds, from most to least specific.
BOOL = "bool"
INT = "int"
FLOAT = "float"
STRING = "string"

_TRUE_STRINGS = frozenset({"true"})
_FALSE_STRINGS = frozenset({"false"})
_SCHEME_PATTERN = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_missing(value: Any) -> bool:
    """Return whether a cell counts as missing: None or the empty string."""
    return value is None or (isinstance(value, str) and value == "")


def parse_float(value: Any) -> float:
    """Convert a number or numeric string to float, or raise ValueError.

    NaN and infinity pass through, because the caller checks the domain. An
    integer beyond the float range, which JSON can hold, raises ValueError.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is a boolean, not a number")
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            raise ValueError(
                f"integer of {value.bit_length()} bits is outside the float range"
            ) from None
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return float(value.strip())
    raise ValueError(f"{value!r} is a {type(value).__name__}, not a number")


def parse_int(value: Any) -> int:
    """Convert an integer, integral float or integer string to int.

    Raises ValueError for anything else, including NaN and infinity.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is a boolean, not an integer")
    if isinstance(value, int):
        return value

    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            value = float(text)

    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(f"{value!r} is not an integer")


def parse_bool(value: Any) -> bool:
    """Convert True/False, 0/1 or the strings true/false/0/1 to bool."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)

    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE_STRINGS or text == "1":
            return True
        if text in _FALSE_STRINGS or text == "0":
            return False
    raise ValueError(f"{value!r} is not a boolean")


def category_string(value: Any) -> str:
    """Convert a string feature's value to its domain entry.

    Strings stay as they are and numbers become ``str(value)``, so a JSON
    column that mixes ``"a"`` and ``1`` gets the domain ``["1", "a"]``.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return str(value)
    raise ValueError(f"{value!r} is a {type(value).__name__}, not a string")


def parse_label_int(value: Any) -> int:
    """Convert an integer class label to int, reading booleans as 0 and 1."""
    try:
        return parse_int(value)
    except ValueError:
        return int(parse_bool(value))


def _value_kind(value: Any) -> Optional[str]:
    """Return the most specific kind a present value fits, or None if none."""
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return INT
    if isinstance(value, float):
        return FLOAT
    if not isinstance(value, str):
        return None

    text = value.strip()
    if text.lower() in _TRUE_STRINGS or text.lower() in _FALSE_STRINGS:
        return BOOL
    try:
        int(text)
        return INT
    except ValueError:
        pass
    try:
        float(text)
        return FLOAT
    except ValueError:
        return STRING


def _column_kind(kinds: set) -> str:
    if kinds == {BOOL}:
        return BOOL
    if kinds <= {INT}:
        return INT
    if kinds <= {INT, FLOAT}:
        return FLOAT
    return STRING


class _ColumnStats:
    """Single-pass statistics of one column, bounded in memory.

    At most ``max_distinct`` distinct values are kept, which is enough to
    build a domain or to tell that a column has too many values for one.
    ``integers`` contains the distinct values as ints while every number
    seen is integral, for integer class labels.
    """

    def __init__(self, max_distinct: int):
        self.max_distinct = max_distinct
        self.present = 0
        self.kinds = set()
        self.categories = set()
        self.integers = set()
        self.too_many_distinct = False
        self.non_integral = False
        self.minimum = math.inf
        self.maximum = -math.inf
        self.saw_nan = False
        self.saw_inf = False

    def add(self, column: str, value: Any) -> None:
        kind = _value_kind(value)
        if kind is None:
            raise ValueError(
                f"Column {column!r} has the value {value!r} of type"
                f" {type(value).__name__}; only numbers, booleans and strings"
                " are supported. Drop or flatten the column before inference.")

        self.present += 1
        self.kinds.add(kind)

        number = None
        if kind in (INT, FLOAT):
            number = parse_float(value)
            self._add_number(number)

        self._add_distinct(value, kind, number)

    def _add_number(self, number: float) -> None:
        if math.isnan(number):
            self.saw_nan = True
        elif math.isinf(number):
            self.saw_inf = True
        else:
            self.minimum = min(self.minimum, number)
            self.maximum = max(self.maximum, number)

    def _add_distinct(
            self, value: Any, kind: str, number: Optional[float]) -> None:
        if self.too_many_distinct:
            return

        key = category_string(value)
        if key not in self.categories:
            if len(self.categories) >= self.max_distinct:
                self.too_many_distinct = True
                return
            self.categories.add(key)

        if kind == BOOL:
            self.integers.add(int(parse_bool(value)))
        elif kind == INT:
            self.integers.add(parse_int(value))
        elif kind == FLOAT and number.is_integer():
            self.integers.add(int(number))
        else:
            self.non_integral = True


def _collect_stats(rows: Iterable[dict], max_distinct: int):
    stats = {}
    row_count = 0
    for row in rows:
        if not isinstance(row, dict):
            raise ValueError(
                f"Row {row_count} is a {type(row).__name__}, not a dict of"
                " column values.")
        row_count += 1
        for column, value in row.items():
            column_stats = stats.setdefault(column, _ColumnStats(max_distinct))
            if not is_missing(value):
                column_stats.add(column, value)
    return stats, row_count


def _infer_task(
        column: str, stats: _ColumnStats, task: Optional[str],
        max_label_classes: int) -> str:
    kind = _column_kind(stats.kinds)
    if stats.non_integral:
        distinct = len(stats.categories)
    else:
        distinct = len(stats.integers)
    few_values = not stats.too_many_distinct and distinct <= max_label_classes

    # A FLOAT label is a regression target unless the caller says otherwise,
    # even when its values happen to be integral.
    if task is None:
        if kind in (BOOL, STRING) or (kind == INT and few_values):
            task = CLASSIFICATION
        else:
            task = REGRESSION

    if task == CLASSIFICATION and stats.non_integral and kind != STRING:
        raise ValueError(
            f"Label column {column!r} contains non-integer numbers, so it cannot"
            " be a classification label. Pass task='regression', or map the"
            " labels to integers or strings.")
    if task == CLASSIFICATION and not few_values:
        raise ValueError(
            f"Label column {column!r} has more than"
            f" max_label_classes={max_label_classes} distinct values. Raise"
            " max_label_classes, or pass task='regression' for a numeric"
            " label.")
    if task == REGRESSION and kind in (BOOL, STRING):
        raise ValueError(
            f"Label column {column!r} contains {kind} values, so it cannot be a"
            " regression target. Pass task='classification'.")
    return task


def _set_presence(
        feature: schema_pb2.Feature, stats: _ColumnStats, row_count: int):
    feature.presence.min_count = 1
    if stats.present == row_count:
        feature.presence.min_fraction = 1.0


def _float32_at_most(value: float) -> float:
    """Return the largest float32 at or below ``value``.

    FloatDomain bounds are float32, so an observed float64 extreme stored
    as is can round inward and reject the very value it came from.
    """
    rounded = float(np.float32(value))
    return rounded if rounded <= value else float(np.nextafter(np.float32(value), np.float32(-np.inf)))


def _float32_at_least(value: float) -> float:
    """Return the smallest float32 at or above ``value``."""
    rounded = float(np.float32(value))
    return rounded if rounded >= value else float(np.nextafter(np.float32(value), np.float32(np.inf)))


def _set_feature_domain(
        feature: schema_pb2.Feature, column: str, stats: _ColumnStats,
        kind: str, max_string_values: int) -> None:
    if kind == BOOL:
        feature.bool_domain.SetInParent()
        return

    if kind == INT:
        feature.int_domain.min = int(stats.minimum)
        feature.int_domain.max = int(stats.maximum)
        return

    if kind == FLOAT:
        if stats.minimum <= stats.maximum:
            feature.float_domain.min = _float32_at_most(stats.minimum)
            feature.float_domain.max = _float32_at_least(stats.maximum)
        feature.float_domain.disallow_nan = not stats.saw_nan
        feature.float_domain.disallow_inf = not stats.saw_inf
        return

    if stats.too_many_distinct or len(stats.categories) > max_string_values:
        raise ValueError(
            f"String column {column!r} has more than"
            f" max_string_values={max_string_values} distinct values, too many"
            " to one-hot encode. Drop the column before inference, or raise"
            " max_string_values.")
    feature.string_domain.value.extend(sorted(stats.categories))


def _set_label_domain(
        feature: schema_pb2.Feature, stats: _ColumnStats, task: str) -> None:
    # Regression targets get no min/max: a drifting target is still valid.
    if task == REGRESSION:
        return

    # Integral class labels, booleans included, are stored as INT classes.
    if feature.type == schema_pb2.BYTES:
        classes = sorted(stats.categories)
    else:
        feature.type = schema_pb2.INT
        classes = [str(value) for value in sorted(stats.integers)]
    feature.string_domain.value.extend(classes)


_FEATURE_TYPES = {
    BOOL: schema_pb2.INT,
    INT: schema_pb2.INT,
    FLOAT: schema_pb2.FLOAT,
    STRING: schema_pb2.BYTES,
}


def infer_schema(
        rows: Iterable[dict],
        label_column: str,
        timestamp_column: Optional[str],
        id_column: Optional[str],
        task: Optional[str] = None,
        max_label_classes: int = DEFAULT_MAX_LABEL_CLASSES,
        max_string_values: int = DEFAULT_MAX_STRING_VALUES,
) -> schema_pb2.Schema:
    """Infer a schema from row dicts in one pass.

    Columns keep the order in which they first appear. A column that is
    present in every row gets ``presence.min_fraction = 1.0`` and is
    required by validation. Numeric domains hold the observed min and max,
    and a FLOAT domain disallows NaN or infinity unless the rows contain
    one. String columns and classification labels get their sorted values
    as the string domain, which fixes the one-hot and class index order.

    ``task`` is inferred when None: a boolean or string label, or an integer
    label with at most ``max_label_classes`` distinct values, means
    classification. Any other numeric label means regression.

    The label, id and timestamp columns are tagged but only the label gets a
    domain, because ids and timestamps are not model inputs.
    """
    if task is not None and task not in TASKS:
        raise ValueError(
            f"Invalid task {task!r}: expected 'classification', 'regression'"
            " or None to infer it from the label column.")
    if max_label_classes < 2:
        raise ValueError(
            f"Invalid max_label_classes {max_label_classes!r}: a"
            " classification label needs at least 2 classes, so pass 2 or"
            " more.")

    max_distinct = max(max_label_classes, max_string_values) + 1
    stats, row_count = _collect_stats(rows, max_distinct)
    if row_count == 0:
        raise ValueError(
            "Cannot infer a schema from 0 rows. Pass at least one row.")

    for role, column in (
            ("label_column", label_column),
            ("timestamp_column", timestamp_column),
            ("id_column", id_column)):
        if column is not None and column not in stats:
            raise ValueError(
                f"Invalid {role} {column!r}: no row has that column. The"
                f" columns are {sorted(stats)}.")

    schema = schema_pb2.Schema()
    for column, column_stats in stats.items():
        if column_stats.present == 0:
            raise ValueError(
                f"Column {column!r} is missing in all {row_count} rows, so its"
                " type cannot be inferred. Drop the column or infer from more"
                " rows.")

        feature = schema.feature.add()
        feature.name = column
        kind = _column_kind(column_stats.kinds)
        feature.type = _FEATURE_TYPES[kind]
        _set_presence(feature, column_stats, row_count)

        if column == label_column:
            feature.annotation.tag.append(LABEL_TAG)
            task = _infer_task(column, column_stats, task, max_label_classes)
            _set_label_domain(feature, column_stats, task)
        elif column == id_column:
            feature.annotation.tag.append(ID_TAG)
        elif column == timestamp_column:
            feature.annotation.tag.append(TIMESTAMP_TAG)
        else:
            _set_feature_domain(
                feature, column, column_stats, kind, max_string_values)

    schema.annotation.tag.append(TASK_TAG_PREFIX + task)
    return schema


def _has_scheme(path: str) -> bool:
    return bool(_SCHEME_PATTERN.match(path))


def save_schema(schema: schema_pb2.Schema, path: str) -> None:
    """Write a schema as a text proto.

    A local path is written with ``open``, creating parent directories. A
    path with a scheme, such as ``gs://``, goes through Beam's FileSystems,
    which is imported only then.
    """
    text = text_format.MessageToString(schema)
    if _has_scheme(path):
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.create(path) as file:
            file.write(text.encode("utf-8"))
        return

    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)


def load_schema(path: str) -> schema_pb2.Schema:
    """Read a text proto schema written by ``save_schema`` or by hand."""
    if _has_scheme(path):
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.open(path) as file:
            text = file.read().decode("utf-8")
    else:
        with open(path, encoding="utf-8") as file:
            text = file.read()

    return text_format.Parse(text, schema_pb2.Schema())


def _tagged_feature(
        schema: schema_pb2.Schema, tag: str) -> Optional[schema_pb2.Feature]:
    for feature in schema.feature:
        if tag in feature.annotation.tag:
            return feature
    return None


def _tagged_column(schema: schema_pb2.Schema, tag: str) -> Optional[str]:
    feature = _tagged_feature(schema, tag)
    return feature.name if feature is not None else None


def label_column(schema: schema_pb2.Schema) -> Optional[str]:
    """Return the name of the feature tagged ``label``, or None."""
    return _tagged_column(schema, LABEL_TAG)


def id_column(schema: schema_pb2.Schema) -> Optional[str]:
    """Return the name of the feature tagged ``id``, or None."""
    return _tagged_column(schema, ID_TAG)


def timestamp_column(schema: schema_pb2.Schema) -> Optional[str]:
    """Return the name of the feature tagged ``timestamp``, or None."""
    return _tagged_column(schema, TIMESTAMP_TAG)


def task(schema: schema_pb2.Schema) -> str:
    """Return ``classification`` or ``regression`` from the schema's tags."""
    for tag in schema.annotation.tag:
        if tag.startswith(TASK_TAG_PREFIX):
            value = tag[len(TASK_TAG_PREFIX):]
            if value in TASKS:
                return value
    raise ValueError(
        f"Schema has no task annotation. Expected the tag"
        f" '{TASK_TAG_PREFIX}classification' or '{TASK_TAG_PREFIX}regression'"
        " in schema.annotation.tag.")


def _is_model_input(feature: schema_pb2.Feature) -> bool:
    tags = feature.annotation.tag
    return not (LABEL_TAG in tags or ID_TAG in tags or TIMESTAMP_TAG in tags)


def feature_names(schema: schema_pb2.Schema) -> list:
    """Return the model input columns in schema order.

    The label, id and timestamp columns are not model inputs.
    """
    return [
        feature.name for feature in schema.feature if _is_model_input(feature)
    ]


def label_classes(schema: schema_pb2.Schema) -> list:
    """Return the class values in class index order.

    The classes are ints for an INT label and strings otherwise. A
    regression schema has no classes and returns an empty list.
    """
    label = _tagged_feature(schema, LABEL_TAG)
    if label is None or task(schema) != CLASSIFICATION:
        return []
    if label.type == schema_pb2.INT:
        return [int(value) for value in label.string_domain.value]
    return list(label.string_domain.value)


class FeatureSpec:
    """Precomputed lookups for one model input column.

    ``kind`` is ``bool``, ``int``, ``float`` or ``string``. ``width`` is the
    number of model inputs the column encodes to: 1, or the size of the
    string domain for a one-hot encoded string column.
    """

    __slots__ = (
        "name", "kind", "required", "minimum", "maximum", "disallow_nan",
        "disallow_inf", "categories", "category_index", "width")

    def __init__(self, feature: schema_pb2.Feature):
        self.name = feature.name
        self.required = feature.presence.min_fraction >= 1.0
        self.minimum = None
        self.maximum = None
        self.disallow_nan = False
        self.disallow_inf = False
        self.categories = ()
        self.category_index = {}
        self.width = 1
        self.kind = _feature_kind(feature)

        if feature.HasField("int_domain"):
            domain = feature.int_domain
            self.minimum = domain.min if domain.HasField("min") else None
            self.maximum = domain.max if domain.HasField("max") else None
        elif feature.HasField("float_domain"):
            domain = feature.float_domain
            self.minimum = domain.min if domain.HasField("min") else None
            self.maximum = domain.max if domain.HasField("max") else None
            self.disallow_nan = domain.disallow_nan
            self.disallow_inf = domain.disallow_inf

        if self.kind == STRING:
            self.categories = tuple(feature.string_domain.value)
            self.category_index = {
                value: index for index, value in enumerate(self.categories)
            }
            self.width = len(self.categories)

    def parse(self, value: Any) -> Any:
        """Convert a present raw value to this column's kind.

        Raises ValueError when the value does not fit the kind.
        """
        if self.kind == FLOAT:
            return parse_float(value)
        if self.kind == INT:
            parsed = parse_int(value)
            # encode() feeds the value to the model as a float.
            parse_float(parsed)
            return parsed
        if self.kind == BOOL:
            return parse_bool(value)
        return category_string(value)

    def encode(self, parsed: Any) -> tuple:
        """Encode a parsed value. A string outside the domain raises KeyError."""
        if self.kind == STRING:
            one_hot = [0.0] * self.width
            one_hot[self.category_index[parsed]] = 1.0
            return tuple(one_hot)
        return (float(parsed),)

    def encode_missing(self) -> tuple:
        """Encode a missing optional value as zeros."""
        return (0.0,) * self.width


def _feature_kind(feature: schema_pb2.Feature) -> str:
    if feature.type == schema_pb2.FLOAT:
        return FLOAT
    if feature.type == schema_pb2.INT:
        return BOOL if feature.HasField("bool_domain") else INT
    if feature.type == schema_pb2.BYTES:
        return STRING
    raise ValueError(
        f"Feature {feature.name!r} has the unsupported type"
        f" {schema_pb2.FeatureType.Name(feature.type)}; expected INT, FLOAT or"
        " BYTES.")


def feature_specs(schema: schema_pb2.Schema) -> list:
    """Return a ``FeatureSpec`` per model input column, in schema order."""
    return [
        FeatureSpec(feature) for feature in schema.feature
        if _is_model_input(feature)
    ]


def num_model_inputs(schema: schema_pb2.Schema) -> int:
    """Return the length of an encoded feature tuple.

    A string column counts once per domain value because it is one-hot
    encoded.
    """
    return sum(spec.width for spec in feature_specs(schema))


def encode_features(
        row: dict,
        schema: Union[schema_pb2.Schema, Sequence[FeatureSpec]],
) -> tuple:
    """Encode a row's model inputs as a tuple of floats in schema order.

    Numbers become floats, booleans 0.0 or 1.0, and string columns one-hot
    vectors over their domain. A missing optional column encodes as zeros.
    Domain bounds are not checked here, because ``ValidateRecords`` does
    that.

    Pass the result of ``feature_specs(schema)`` instead of the schema to
    skip rebuilding the lookups on every call.

    Raises ValueError for a missing required column, a value of the wrong
    type, or a string outside the column's domain.
    """
    if isinstance(schema, schema_pb2.Schema):
        specs = feature_specs(schema)
    else:
        specs = schema

    encoded = []
    for spec in specs:
        value = row.get(spec.name)
        if is_missing(value):
            if spec.required:
                raise ValueError(f"Required field {spec.name!r} is missing.")
            encoded.extend(spec.encode_missing())
            continue

        try:
            parsed = spec.parse(value)
        except ValueError:
            raise ValueError(
                f"Field {spec.name!r} has the value {value!r}, which is not a"
                f" valid {spec.kind}.") from None

        try:
            encoded.extend(spec.encode(parsed))
        except KeyError:
            raise ValueError(
                f"Field {spec.name!r} has the value {value!r}, which is not in"
                " its string domain.") from None
    return tuple(encoded)
