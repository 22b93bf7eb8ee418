"""Property-based fuzzing of record validation.

Each hypothesis example draws a seed and a mix of defects, and expands them
into thousands of records, so a run checks tens of thousands of records in
a few examples. The invariants: validation never raises, and every record
comes out exactly once, as an Event that fits the schema or as a
DeadLetter that carries the original row and a known reason code.
"""

import math
import random

from hypothesis import Phase
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies

from transforms import schema as schema_lib
from transforms import validate
from transforms import windowing
from transforms.records import DeadLetter
from transforms.records import Event
from transforms.records import SourceRecord
from apache_beam.transforms import window as beam_window

EVENT_TIME = 1_704_067_200.0

# Rows the fuzzing schema is inferred from: an id, an epoch timestamp, a
# bounded float, a bounded int, a string category, an optional float and an
# integer class label.
SCHEMA_ROWS = [
    {"id": "a", "ts": 1, "x": -5.0, "n": 0, "c": "red", "f": 0.5, "y": 0},
    {"id": "b", "ts": 2, "x": 5.0, "n": 100, "c": "blue", "y": 1},
    {"id": "c", "ts": 3, "x": 0.25, "n": 7, "c": "grün", "f": 1.5, "y": 1},
]
SCHEMA = schema_lib.infer_schema(SCHEMA_ROWS, "y", "ts", "id")
FIELDS = ("id", "ts", "x", "n", "c", "f", "y")
LATENESS = windowing.LatenessRule(beam_window.FixedWindows(300), allowed_lateness=60.0)

NASTY_STRINGS = (
    "", " ", "\t", "\ufeff", "\ufeffred", "red ", "RED", "grün", "gru\u0308n",
    "日本語", "🙂", "\u0000", "\u202e", "a\nb", "a,b", '"', "'", "\\", "null",
    "NaN", "nan", "-inf", "Infinity", "1e309", "-1e309", "1e-400", "0x10",
    "1_000", " 7 ", "７", "٣", "true", "False", "{}", "[]",
    "__import__('os').system('touch pwned')", "!!python/object:os.system",
    "9" * 400, "-" + "9" * 400, "x" * 70_000, "\ud800", "a\udfffb",
)
NASTY_NUMBERS = (
    0, -0.0, 1, -1, 7, 100, 101, 2**31, -2**63, 2**64, 10**30, 10**400,
    -10**400, 5.0, -5.0, 5.000000001, 0.25, 1e308, -1e308, 1e-320,
    float("nan"), float("inf"), float("-inf"), 1.5, 0.0,
)
NASTY_OTHERS = (None, True, False, [], [1, 2], {}, {"nested": [None]}, ["red"])
NASTY_TIMES = (
    None, float("nan"), float("inf"), float("-inf"), -1.0, 0.0, 4102444800.0,
    4102444800.5, 1e20, -1e20, EVENT_TIME, EVENT_TIME + 0.5, EVENT_TIME - 1e6,
)
DEFECTS = (
    "none", "missing", "wrong_type", "string", "number", "other", "extra",
    "time", "error", "raw", "not_dict", "huge", "late",
)


def good_row(rng: random.Random, index: int) -> dict:
    """Return a row that the fuzzing schema accepts, with id ``r<index>``."""
    row = {
        "id": f"r{index}",
        "ts": int(EVENT_TIME) + index,
        "x": rng.uniform(-5.0, 5.0),
        "n": rng.randint(0, 100),
        "c": rng.choice(("red", "blue", "grün")),
        "y": rng.randint(0, 1),
    }
    if rng.random() < 0.5:
        row["f"] = rng.uniform(0.5, 1.5)
    return row


def nasty_value(rng: random.Random):
    """Return a value drawn from strings, numbers and other JSON types."""
    pool = rng.choice((NASTY_STRINGS, NASTY_NUMBERS, NASTY_OTHERS))
    return rng.choice(pool)


def corrupt_row(rng: random.Random, row: dict, defect: str) -> dict:
    """Apply one defect from DEFECTS to a copy of ``row``."""
    row = dict(row)
    field = rng.choice(FIELDS)
    if defect == "missing":
        row.pop(field, None)
    elif defect == "wrong_type":
        row[field] = rng.choice(NASTY_OTHERS)
    elif defect == "string":
        row[field] = rng.choice(NASTY_STRINGS)
    elif defect == "number":
        row[field] = rng.choice(NASTY_NUMBERS)
    elif defect == "other":
        for name in rng.sample(FIELDS, rng.randint(1, len(FIELDS))):
            row[name] = nasty_value(rng)
    elif defect == "extra":
        row[rng.choice(("extra", "_raw", "Y", "id "))] = nasty_value(rng)
    elif defect == "huge":
        row["c"] = "x" * (validate.DEFAULT_MAX_RECORD_BYTES + 1)
    return row


@strategies.composite
def source_records(draw, min_size: int, max_size: int):
    """Draw (defects, SourceRecords): mostly valid rows with a drawn defect mix."""
    # A drawn seed expands into thousands of records without filling
    # hypothesis's input buffer.
    rng = random.Random(draw(strategies.integers(0, 2**32 - 1)))
    size = draw(strategies.integers(min_size, max_size))
    weights = draw(
        strategies.lists(strategies.integers(0, 5), min_size=len(DEFECTS), max_size=len(DEFECTS)))
    weights[0] += 1
    defects = rng.choices(DEFECTS, weights, k=size)
    records = [make_record(rng, index, defect) for index, defect in enumerate(defects)]
    return defects, records


def make_record(rng: random.Random, index: int, defect: str) -> SourceRecord:
    """Build the SourceRecord at arrival ``index`` with one defect."""
    row = corrupt_row(rng, good_row(rng, index), defect)
    event_time = EVENT_TIME + index
    watermark = event_time - 1.0
    error = None
    if defect == "time":
        event_time = rng.choice(NASTY_TIMES)
        watermark = rng.choice(NASTY_TIMES[1:])
    elif defect == "error":
        event_time, error = None, "invalid timestamp 'soon': expected a number"
    elif defect == "raw":
        row, event_time, error = {"_raw": '{"id": "r'}, None, "unparseable JSON line (f:1)"
    elif defect == "not_dict":
        row = rng.choice((["id", "r"], "id,r", None, 7))
    elif defect == "late":
        watermark = event_time + 3600.0
    return SourceRecord(row, event_time, index, watermark, error)


def check_outcome(record: SourceRecord, result) -> None:
    """Assert the fuzzing invariants for one record and its validation result."""
    assert isinstance(result, (Event, DeadLetter)), result
    if isinstance(result, DeadLetter):
        assert result.record is record.row
        assert result.reason_code in validate.REASON_CODES
        assert result.stage == "validate"
        assert isinstance(result.reason, str) and result.reason
        return

    assert isinstance(result.id, str)
    assert 0.0 <= result.event_time <= validate.DEFAULT_MAX_TIMESTAMP
    assert len(result.features) == schema_lib.num_model_inputs(SCHEMA)
    assert all(isinstance(value, float) and math.isfinite(value) for value in result.features)
    assert result.label in (0, 1)
    assert result.features[0] == schema_lib.parse_float(record.row["x"])


def validate_all(records, **kwargs) -> tuple:
    """Validate ``records`` and return (events, dead letters) after the checks."""
    validator = validate.RecordValidator(SCHEMA, **kwargs)
    events, dead_letters = [], []
    for record in records:
        result = validator.validate(record)
        check_outcome(record, result)
        (events if isinstance(result, Event) else dead_letters).append(result)
    assert len(events) + len(dead_letters) == len(records)
    return events, dead_letters


@settings(max_examples=15, deadline=None, derandomize=True, database=None,
          phases=(Phase.explicit, Phase.generate))
@given(source_records(min_size=2500, max_size=3000))
def test_validate_fuzzed_records(drawn):
    defects, records = drawn

    events, _ = validate_all(records, lateness=LATENESS)

    valid_ids = {event.id for event in events}
    for defect, record in zip(defects, records):
        if defect == "none":
            assert f"r{record.arrival}" in valid_ids, record
        if defect in ("error", "raw", "not_dict", "huge", "late"):
            assert f"r{record.arrival}" not in valid_ids, record


@settings(max_examples=4, deadline=None, derandomize=True, database=None,
          phases=(Phase.explicit, Phase.generate))
@given(source_records(min_size=500, max_size=1000))
def test_validate_record_matches_validator(drawn):
    _, records = drawn
    validator = validate.RecordValidator(SCHEMA)
    for record in records[:200]:
        assert repr(validate.validate_record(record, SCHEMA)) == repr(validator.validate(record))


@given(
    strategies.dictionaries(
        strategies.sampled_from(FIELDS + ("extra",)),
        strategies.one_of(
            strategies.none(),
            strategies.booleans(),
            strategies.integers(),
            strategies.floats(),
            strategies.text(),
            strategies.lists(strategies.integers(), max_size=3),
        ),
    ),
    strategies.one_of(strategies.none(), strategies.floats()),
    strategies.floats(),
)
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
def test_validate_drawn_row(row, event_time, watermark):
    record = SourceRecord(row, event_time, 0, watermark, None)

    result = validate.validate_record(record, SCHEMA, lateness=LATENESS)

    check_outcome(record, result)
