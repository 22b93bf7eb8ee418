"""Tests for schema inference, persistence and feature encoding."""

import math

import pytest
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from transforms import schema as schema_lib

ROWS = [
    {"id": "a", "ts": "2024-01-01T00:00:00Z", "x": 1.5, "n": 3, "color": "red",
     "flag": True, "y": 2},
    {"id": "b", "ts": "2024-01-01T00:00:01Z", "x": -0.5, "n": 7, "color": "blue",
     "flag": False, "y": 10, "note": "late"},
    {"id": "c", "ts": "2024-01-01T00:00:02Z", "x": 4.0, "n": 5, "color": "red",
     "flag": True, "y": 2},
]


def _infer(rows=None, **kwargs):
    arguments = {"label_column": "y", "timestamp_column": "ts", "id_column": "id"}
    arguments.update(kwargs)
    return schema_lib.infer_schema(rows if rows is not None else ROWS, **arguments)


def _feature(schema, name):
    return next(feature for feature in schema.feature if feature.name == name)


def test_infer_types():
    schema = _infer()

    assert _feature(schema, "x").type == schema_pb2.FLOAT
    assert _feature(schema, "n").type == schema_pb2.INT
    assert _feature(schema, "color").type == schema_pb2.BYTES
    assert _feature(schema, "flag").type == schema_pb2.INT
    assert _feature(schema, "flag").HasField("bool_domain")
    assert _feature(schema, "id").type == schema_pb2.BYTES


def test_infer_types_from_csv_strings():
    rows = [
        {"x": "1.25", "n": "3", "flag": "true", "word": "7a", "y": "1"},
        {"x": "2", "n": " 4 ", "flag": "FALSE", "word": "8", "y": "0"},
    ]

    schema = schema_lib.infer_schema(rows, "y", None, None)

    assert _feature(schema, "x").type == schema_pb2.FLOAT
    assert _feature(schema, "n").type == schema_pb2.INT
    assert _feature(schema, "n").int_domain.max == 4
    assert _feature(schema, "flag").HasField("bool_domain")
    assert _feature(schema, "word").type == schema_pb2.BYTES


def test_infer_column_order():
    schema = _infer()

    names = [feature.name for feature in schema.feature]

    assert names == ["id", "ts", "x", "n", "color", "flag", "y", "note"]


def test_infer_presence():
    rows = ROWS + [{"id": "d", "ts": "t", "x": None, "n": 4, "color": "",
                    "flag": True, "y": 2}]

    schema = _infer(rows)

    assert _feature(schema, "n").presence.min_fraction == 1.0
    assert not _feature(schema, "x").presence.HasField("min_fraction")
    assert not _feature(schema, "color").presence.HasField("min_fraction")
    assert not _feature(schema, "note").presence.HasField("min_fraction")


def test_infer_numeric_domains():
    schema = _infer()

    assert _feature(schema, "n").int_domain.min == 3
    assert _feature(schema, "n").int_domain.max == 7
    float_domain = _feature(schema, "x").float_domain
    assert float_domain.min == -0.5
    assert float_domain.max == 4.0
    assert float_domain.disallow_nan
    assert float_domain.disallow_inf


def test_infer_float_domain_allows_seen_nan_and_inf():
    rows = [{"x": 1.0, "y": 0}, {"x": "NaN", "y": 1}, {"x": float("-inf"), "y": 0}]

    float_domain = _feature(
        schema_lib.infer_schema(rows, "y", None, None), "x").float_domain

    assert not float_domain.disallow_nan
    assert not float_domain.disallow_inf
    assert float_domain.min == 1.0
    assert float_domain.max == 1.0


def test_infer_string_domain_sorted():
    schema = _infer()

    assert list(_feature(schema, "color").string_domain.value) == ["blue", "red"]


def test_infer_roles_need_no_domain():
    schema = _infer()

    for name in ("id", "ts"):
        assert _feature(schema, name).WhichOneof("domain_info") is None


def test_infer_integer_classes_sorted_numerically():
    schema = _infer()

    assert schema_lib.task(schema) == schema_lib.CLASSIFICATION
    assert schema_lib.label_classes(schema) == [2, 10]
    assert list(_feature(schema, "y").string_domain.value) == ["2", "10"]


def test_infer_string_classes():
    rows = [{"x": 1.0, "y": "dog"}, {"x": 2.0, "y": "cat"}, {"x": 3.0, "y": "emu"}]

    schema = schema_lib.infer_schema(rows, "y", None, None)

    assert schema_lib.task(schema) == schema_lib.CLASSIFICATION
    assert schema_lib.label_classes(schema) == ["cat", "dog", "emu"]


def test_infer_boolean_label_classes():
    rows = [{"x": 1.0, "y": True}, {"x": 2.0, "y": "false"}]

    schema = schema_lib.infer_schema(rows, "y", None, None)

    assert schema_lib.label_classes(schema) == [0, 1]


def test_infer_regression_for_float_label():
    rows = [{"x": float(i), "y": i * 0.5} for i in range(5)]

    schema = schema_lib.infer_schema(rows, "y", None, None)

    assert schema_lib.task(schema) == schema_lib.REGRESSION
    assert schema_lib.label_classes(schema) == []


def test_infer_regression_for_many_integer_values():
    rows = [{"x": 1.0, "y": i} for i in range(30)]

    schema = schema_lib.infer_schema(rows, "y", None, None, max_label_classes=20)

    assert schema_lib.task(schema) == schema_lib.REGRESSION


def test_infer_classification_for_integral_floats():
    rows = [{"x": 1.0, "y": 1.0}, {"x": 2.0, "y": 0.0}]

    schema = schema_lib.infer_schema(
        rows, "y", None, None, task=schema_lib.CLASSIFICATION)

    assert _feature(schema, "y").type == schema_pb2.INT
    assert schema_lib.label_classes(schema) == [0, 1]


def test_infer_task_override_regression():
    schema = _infer(task=schema_lib.REGRESSION)

    assert schema_lib.task(schema) == schema_lib.REGRESSION
    assert schema_lib.label_classes(schema) == []


@pytest.mark.parametrize(
    "rows, kwargs, message",
    [
        ([{"y": "a"}, {"y": "b"}], {"task": "regression"},
         r"Label column 'y' contains string values, so it cannot be a regression"),
        ([{"y": 0.5}, {"y": 1.0}], {"task": "classification"},
         r"Label column 'y' contains non-integer numbers"),
        ([{"y": letter} for letter in "abcde"], {"max_label_classes": 3},
         r"more than max_label_classes=3 distinct values"),
        ([{"y": 1}], {"task": "ranking"}, r"Invalid task 'ranking'"),
        ([{"y": 1}], {"max_label_classes": 1}, r"Invalid max_label_classes 1"),
        ([], {}, r"Cannot infer a schema from 0 rows"),
        ([{"x": 1}], {}, r"Invalid label_column 'y': no row has that column"),
        ([{"x": [1, 2], "y": 1}], {}, r"Column 'x' has the value \[1, 2\] of type list"),
        ([{"x": None, "y": 1}], {}, r"Column 'x' is missing in all 1 rows"),
        ([{"x": str(i), "y": 1} for i in range(3)] + [{"x": "a", "y": 0}],
         {"max_string_values": 2},
         r"String column 'x' has more than max_string_values=2 distinct values"),
    ],
)
def test_infer_invalid_input(rows, kwargs, message):
    with pytest.raises(ValueError, match=message):
        schema_lib.infer_schema(rows, "y", None, None, **kwargs)


def test_roles_recorded_in_schema():
    schema = _infer()

    assert schema_lib.label_column(schema) == "y"
    assert schema_lib.id_column(schema) == "id"
    assert schema_lib.timestamp_column(schema) == "ts"
    assert list(schema.annotation.tag) == ["task:classification"]


def test_feature_names_exclude_roles():
    schema = _infer()

    assert schema_lib.feature_names(schema) == ["x", "n", "color", "flag", "note"]


def test_num_model_inputs_counts_one_hot():
    schema = _infer()

    # x, n, color (2 values), flag, note (1 value).
    assert schema_lib.num_model_inputs(schema) == 6


def test_encode_features_known_answer():
    schema = _infer()

    encoded = schema_lib.encode_features(ROWS[1], schema)

    assert encoded == (-0.5, 7.0, 1.0, 0.0, 0.0, 1.0)


def test_encode_features_csv_strings_and_missing_optional():
    schema = _infer()
    row = {"x": "2.5", "n": "4", "color": "red", "flag": "false", "note": None}

    encoded = schema_lib.encode_features(row, schema_lib.feature_specs(schema))

    assert encoded == (2.5, 4.0, 0.0, 1.0, 0.0, 0.0)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"n": None}, r"Required field 'n' is missing"),
        ({"x": "abc"}, r"Field 'x' has the value 'abc', which is not a valid float"),
        ({"color": "green"}, r"Field 'color' has the value 'green', which is not in"),
    ],
)
def test_encode_features_invalid_row(change, message):
    schema = _infer()
    row = dict(ROWS[0], **change)

    with pytest.raises(ValueError, match=message):
        schema_lib.encode_features(row, schema)


def test_task_missing_annotation():
    schema = _infer()
    del schema.annotation.tag[:]

    with pytest.raises(ValueError, match=r"Schema has no task annotation"):
        schema_lib.task(schema)


def test_save_load_round_trip(tmp_path):
    schema = _infer()
    path = str(tmp_path / "nested" / "schema.pbtxt")

    schema_lib.save_schema(schema, path)
    loaded = schema_lib.load_schema(path)

    assert loaded == schema
    assert schema_lib.label_classes(loaded) == [2, 10]
    assert schema_lib.feature_names(loaded) == schema_lib.feature_names(schema)


def test_load_hand_written_schema(tmp_path):
    path = tmp_path / "schema.pbtxt"
    path.write_text(
        'feature { name: "v" type: FLOAT presence { min_fraction: 1.0 } }\n'
        'feature { name: "target" type: FLOAT annotation { tag: "label" } }\n'
        'annotation { tag: "task:regression" }\n')

    schema = schema_lib.load_schema(str(path))

    assert schema_lib.task(schema) == schema_lib.REGRESSION
    assert schema_lib.feature_names(schema) == ["v"]
    assert schema_lib.encode_features({"v": "3"}, schema) == (3.0,)


def test_load_rejects_invalid_text(tmp_path):
    path = tmp_path / "schema.pbtxt"
    path.write_text("feature { name: 1 2 3")

    with pytest.raises(text_format.ParseError, match=r"Expected string but found"):
        schema_lib.load_schema(str(path))


@pytest.mark.parametrize(
    "value, expected",
    [(3, 3), ("12", 12), (" -4 ", -4), (5.0, 5), ("6.0", 6)],
)
def test_parse_int_accepts(value, expected):
    assert schema_lib.parse_int(value) == expected


@pytest.mark.parametrize("value", [True, 2.5, "2.5", "abc", float("nan"), [1]])
def test_parse_int_rejects(value):
    with pytest.raises(ValueError):
        schema_lib.parse_int(value)


def test_parse_float_keeps_non_finite():
    assert math.isnan(schema_lib.parse_float("nan"))
    assert schema_lib.parse_float("-inf") == -math.inf


def test_float_domain_keeps_observed_extremes():
    # 9.99928989225699 rounds down to a smaller float32; the stored bound
    # must still admit the value it was inferred from.
    values = [0.000378132885089144, 9.99928989225699, 5.0]
    rows = [{"t": i, "x": value, "y": i % 2} for i, value in enumerate(values)]
    schema = schema_lib.infer_schema(rows, label_column="y", timestamp_column="t", id_column=None)
    domain = next(f for f in schema.feature if f.name == "x").float_domain
    assert domain.min <= min(values)
    assert domain.max >= max(values)
