"""Tests for dead letter serialisation and the JSON Lines writer."""

import collections
import datetime
import decimal
import json
import os

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.testing import test_stream
from apache_beam.transforms import window
from apache_beam.utils.timestamp import Timestamp

from transforms import dead_letter
from transforms.records import DeadLetter
from transforms.records import SourceRecord

_Point = collections.namedtuple("_Point", ["x", "y"])


def _letter(name, reason_code="wrong_type", **extra):
    record = {"name": name}
    record.update(extra)
    return DeadLetter(
        record=record, reason_code=reason_code,
        reason=f"Field 'name' has the value {name!r}.", field="name")


def _file_names(output_dir):
    directory = os.path.join(output_dir, dead_letter.DEAD_LETTER_DIRECTORY)
    return sorted(os.listdir(directory))


@pytest.mark.parametrize(
    "value, expected",
    [
        (float("nan"), "NaN"),
        (float("inf"), "Infinity"),
        (float("-inf"), "-Infinity"),
        (b"\x00\xff", "base64:AP8="),
        (datetime.datetime(2024, 5, 1, 12, 30), "2024-05-01T12:30:00"),
        (Timestamp(micros=1_500_000), "1970-01-01T00:00:01.500000Z"),
        (decimal.Decimal("1.10"), "1.10"),
        ({3, 1, 2}, [1, 2, 3]),
        ((1, "a"), [1, "a"]),
        (_Point(1, float("nan")), {"x": 1, "y": "NaN"}),
        ({1: "one", None: "none"}, {"1": "one", "null": "none"}),
        (object, repr(object)),
        ({"nested": [b"a", {"n": float("inf")}]},
         {"nested": ["base64:YQ==", {"n": "Infinity"}]}),
    ],
)
def test_to_json_value_known_answers(value, expected):
    assert dead_letter.to_json_value(value) == expected


def test_dumps_is_strict_json():
    line = dead_letter.dumps({"x": float("nan"), "b": b"\x01", "s": "é"})

    def reject_constant(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    assert json.loads(line, parse_constant=reject_constant) == {
        "x": "NaN", "b": "base64:AQ==", "s": "é"}
    assert line == '{"x":"NaN","b":"base64:AQ==","s":"é"}'


def test_dead_letter_to_dict_unpacks_source_record():
    record = SourceRecord(
        row={"x": "abc"}, event_time=None, arrival=7, watermark=100.0,
        timestamp_error="no ts")
    letter = DeadLetter(record, "unparseable_timestamp", "bad time", "ts")

    entry = dead_letter.dead_letter_to_dict(letter, Timestamp(100))

    assert entry == {
        "record": {"x": "abc"},
        "event_time": None,
        "arrival": 7,
        "watermark": 100.0,
        "timestamp_error": "no ts",
        "reason_code": "unparseable_timestamp",
        "reason": "bad time",
        "field": "ts",
        "stage": "validate",
        "element_timestamp": 100.0,
    }


def test_window_file_name_known_answer():
    name = dead_letter.window_file_name(
        window.IntervalWindow(60, 120), pane_index=2, shard=0, num_shards=1)

    assert name == (
        "dead-letter-19700101T000100Z-19700101T000200Z-pane-00002-00000-of-00001"
        ".jsonl")


def test_window_file_name_global_and_minimum_timestamp():
    global_name = dead_letter.window_file_name(window.GlobalWindow(), 0, 1, 2)
    first_window = window.FixedWindows(60).assign(
        window.WindowFn.AssignContext(window.MIN_TIMESTAMP))[0]

    assert global_name == "dead-letter-global-pane-00000-00001-of-00002.jsonl"
    assert "us-" in dead_letter.window_file_name(first_window, 0, 0, 1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"output_dir": ""}, r"Invalid output_dir ''"),
        ({"window_size": 0}, r"Invalid window_size 0"),
        ({"allowed_lateness": -1}, r"Invalid allowed_lateness -1"),
        ({"num_shards": 0}, r"Invalid num_shards 0"),
    ],
)
def test_write_dead_letters_invalid_arguments(kwargs, message):
    arguments = {"output_dir": "/tmp/unused"}
    arguments.update(kwargs)

    with pytest.raises(ValueError, match=message):
        dead_letter.WriteDeadLetters(**arguments)


def test_read_dead_letters_empty(tmp_path):
    assert dead_letter.read_dead_letters(str(tmp_path)) == []


def test_write_dead_letters_batch(tmp_path):
    output_dir = str(tmp_path)
    letters = [
        window.TimestampedValue(_letter("a", value=float("nan")), 10),
        window.TimestampedValue(_letter("b", raw=b"\xff"), 30),
        window.TimestampedValue(_letter("c", reason_code="extra_field"), 70),
    ]

    with beam.Pipeline() as pipeline:
        _ = (
            pipeline
            | "CreateDeadLetters" >> beam.Create(letters)
            | "WriteDeadLetters" >> dead_letter.WriteDeadLetters(
                output_dir, window_size=60))

    written = dead_letter.read_dead_letters(output_dir)

    assert _file_names(output_dir) == [
        "dead-letter-19700101T000000Z-19700101T000100Z-pane-00000-00000-of-00001"
        ".jsonl",
        "dead-letter-19700101T000100Z-19700101T000200Z-pane-00000-00000-of-00001"
        ".jsonl",
    ]
    assert [entry["record"]["name"] for entry in written] == ["a", "b", "c"]
    assert written[0]["record"]["value"] == "NaN"
    assert written[1]["record"]["raw"] == "base64:/w=="
    assert written[2]["reason_code"] == "extra_field"
    assert written[2]["element_timestamp"] == 70.0
    assert written[0]["reason"] == "Field 'name' has the value 'a'."


def test_write_dead_letters_streaming_late_pane(tmp_path):
    output_dir = str(tmp_path)
    stream = (
        test_stream.TestStream()
        .advance_watermark_to(0)
        .add_elements([window.TimestampedValue(_letter("on_time"), 10),
                       window.TimestampedValue(_letter("next"), 70)])
        .advance_watermark_to(65)
        .add_elements([window.TimestampedValue(_letter("late"), 20)])
        .advance_watermark_to_infinity())
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True

    with beam.Pipeline(options=options) as pipeline:
        _ = (
            pipeline
            | "Stream" >> stream
            | "WriteDeadLetters" >> dead_letter.WriteDeadLetters(
                output_dir, window_size=60, allowed_lateness=120))

    written = dead_letter.read_dead_letters(output_dir)

    assert _file_names(output_dir) == [
        "dead-letter-19700101T000000Z-19700101T000100Z-pane-00000-00000-of-00001"
        ".jsonl",
        "dead-letter-19700101T000000Z-19700101T000100Z-pane-00001-00000-of-00001"
        ".jsonl",
        "dead-letter-19700101T000100Z-19700101T000200Z-pane-00000-00000-of-00001"
        ".jsonl",
    ]
    assert [entry["record"]["name"] for entry in written] == [
        "on_time", "late", "next"]
