"""Named datasets that a pipeline can read with ``--dataset``.

Two kinds of dataset are registered:

* Files that ship inside the ``river`` package, read with pyarrow.
* Seeded synthetic streams from ``river.datasets.synth``, most with concept
  drift at known positions so that drift detection can be scored.

Every dataset yields rows as dicts with an id column, an event-time column,
the feature columns and the label column, in that order. Synthetic streams
are unbounded generators cut lazily at the requested length, so a stream of
10^6 events is never held as a list.
"""

import dataclasses
import importlib.resources
import itertools
import random
from typing import Callable, Iterator, Optional

import pyarrow as pa
import pyarrow.csv as pa_csv
from river.datasets import synth

CLASSIFICATION = "classification"
REGRESSION = "regression"

ID_COLUMN = "id"
EVENT_TIME_COLUMN = "event_time"

# 2020-01-01T00:00:00Z. Rows of the phishing file are one minute apart.
PHISHING_START_SECONDS = 1577836800.0
PHISHING_STEP_SECONDS = 60.0

# 2024-01-01T00:00:00Z. Synthetic events are one second apart.
SYNTHETIC_START_SECONDS = 1704067200.0
SYNTHETIC_STEP_SECONDS = 1.0

SYNTHETIC_DEFAULT_LENGTH = 10_000
# Events per concept in the streams that cycle through concepts.
CONCEPT_LENGTH = 2_500

DEFAULT_DATASET = "phishing"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Description of one registered dataset.

    ``drift_every`` and ``drift_at`` give drift positions as zero-based event
    indices: a stream that switches concept every ``drift_every`` events
    drifts at each multiple of it, and ``drift_at`` lists one-off drifts.
    ``drift_width`` is the number of events over which the new concept takes
    over (1 means the concept switches exactly at the position).
    ``generate(seed)`` returns an iterator of rows, unbounded for synthetic
    streams.
    """

    name: str
    description: str
    task: str
    label_column: str
    feature_columns: tuple
    default_length: int
    generate: Callable[[int], Iterator[dict]] = dataclasses.field(repr=False, compare=False)
    timestamp_column: str = EVENT_TIME_COLUMN
    timestamp_unit: str = "s"
    id_column: str = ID_COLUMN
    drift_every: Optional[int] = None
    drift_at: tuple = ()
    drift_width: int = 1
    synthetic: bool = True

    def drift_positions(self, length: Optional[int] = None) -> tuple:
        """Return the drift positions inside the first ``length`` events.

        ``length`` defaults to ``default_length``.
        """
        length = self.default_length if length is None else length
        positions = set(position for position in self.drift_at if position < length)
        if self.drift_every:
            positions.update(range(self.drift_every, length, self.drift_every))
        return tuple(sorted(positions))

    def rows(self, seed: int = 0, max_events: Optional[int] = None) -> Iterator[dict]:
        """Yield up to ``max_events`` rows (``default_length`` when None).

        A file dataset stops at the end of its file even when ``max_events``
        is larger.
        """
        length = self.default_length if max_events is None else max_events
        return itertools.islice(self.generate(seed), length)


def _river_file(filename: str):
    return importlib.resources.files("river.datasets").joinpath(filename)


def _read_river_csv(filename: str, column_types: Optional[dict] = None) -> pa.Table:
    convert_options = pa_csv.ConvertOptions(column_types=column_types or {})
    with importlib.resources.as_file(_river_file(filename)) as path:
        return pa_csv.read_csv(path, convert_options=convert_options)


def _phishing_rows(seed: int) -> Iterator[dict]:
    """Yield the phishing file in file order. ``seed`` is unused."""
    del seed
    table = _read_river_csv("phishing.csv.gz")
    for index, fields in enumerate(table.to_pylist()):
        event_time = PHISHING_START_SECONDS + index * PHISHING_STEP_SECONDS
        yield {ID_COLUMN: f"phishing-{index}", EVENT_TIME_COLUMN: event_time, **fields}


def _sp500_rows(seed: int) -> Iterator[dict]:
    """Yield the S&P 500 file in file order. ``seed`` is unused."""
    del seed
    # Keep the date as the text in the file, so it is parsed like any other
    # ISO-8601 timestamp column.
    table = _read_river_csv("sp500.csv.gz", column_types={"date": pa.string()})
    for index, fields in enumerate(table.to_pylist()):
        yield {ID_COLUMN: f"sp500-{index}", **fields}


# SEA, Sine and Hyperplane number their features 0, 1, ...; rows name them
# x0, x1, ...
_NUMBERED_FEATURES = {number: f"x{number}" for number in range(100)}


def _synthetic_row(name: str, index: int, features: dict, label) -> dict:
    row = {
        ID_COLUMN: f"{name}-{index}",
        EVENT_TIME_COLUMN: SYNTHETIC_START_SECONDS + index * SYNTHETIC_STEP_SECONDS,
    }
    row.update((_NUMBERED_FEATURES.get(key, key), value) for key, value in features.items())
    row["label"] = int(label)
    return row


def _label_rows(name: str, samples) -> Iterator[dict]:
    for index, (features, label) in enumerate(samples):
        yield _synthetic_row(name, index, features, label)


def _cycle_concepts(make_stream: Callable[[int, int], object], concepts: tuple, seed: int):
    """Yield samples that switch to the next concept every CONCEPT_LENGTH events.

    ``make_stream(concept, stream_seed)`` builds the River generator of one
    concept. Each block of CONCEPT_LENGTH events draws a fresh seed from
    ``seed``, so blocks are independent but the whole stream is reproducible.
    """
    seeds = random.Random(seed)
    for concept in itertools.cycle(concepts):
        stream = make_stream(concept, seeds.getrandbits(32))
        yield from itertools.islice(stream, CONCEPT_LENGTH)


def _sea_rows(seed: int) -> Iterator[dict]:
    samples = _cycle_concepts(
        lambda variant, stream_seed: synth.SEA(variant=variant, seed=stream_seed),
        (0, 1, 2, 3),
        seed,
    )
    return _label_rows("sea", samples)


def _agrawal_rows(seed: int) -> Iterator[dict]:
    samples = _cycle_concepts(
        lambda function, stream_seed: synth.Agrawal(
            classification_function=function, seed=stream_seed
        ),
        (0, 2, 4, 6),
        seed,
    )
    return _label_rows("agrawal", samples)


def _sine_rows(seed: int) -> Iterator[dict]:
    samples = _cycle_concepts(
        lambda function, stream_seed: synth.Sine(classification_function=function, seed=stream_seed),
        (0, 1, 2, 3),
        seed,
    )
    return _label_rows("sine", samples)


def _stagger_rows(seed: int) -> Iterator[dict]:
    samples = _cycle_concepts(
        lambda function, stream_seed: synth.STAGGER(
            classification_function=function, seed=stream_seed
        ),
        (0, 1, 2),
        seed,
    )
    return _label_rows("stagger", samples)


def _hyperplane_rows(seed: int) -> Iterator[dict]:
    stream = synth.Hyperplane(
        seed=seed, n_features=10, n_drift_features=2, mag_change=0.001, noise_percentage=0.05
    )
    return _label_rows("hyperplane", stream)


# ConceptDriftStream draws the new concept with probability
# 1 / (1 + exp(-4 (t - position) / width)) for its 1-based sample index t.
# Passing position + 1 centres that sigmoid on the zero-based index
# CONCEPT_DRIFT_POSITION. River 0.26 evaluates math.exp of the negated
# exponent, which overflows once 4 * position / width exceeds about 709, so
# the width cannot be 1: 50 is the narrowest round value that is safe here.
CONCEPT_DRIFT_POSITION = 5_000
CONCEPT_DRIFT_WIDTH = 50


def _concept_drift_sea_rows(seed: int) -> Iterator[dict]:
    # The two concepts use different seeds so that they do not repeat the same
    # feature draws.
    stream = synth.ConceptDriftStream(
        stream=synth.SEA(variant=0, seed=seed),
        drift_stream=synth.SEA(variant=3, seed=seed + 1),
        position=CONCEPT_DRIFT_POSITION + 1,
        width=CONCEPT_DRIFT_WIDTH,
        seed=seed,
    )
    return _label_rows("concept_drift_sea", stream)


def _spec_list() -> list:
    cycle = dict(default_length=SYNTHETIC_DEFAULT_LENGTH, drift_every=CONCEPT_LENGTH)
    return [
        DatasetSpec(
            name="phishing",
            description=(
                "River's phishing websites file: 1,250 labelled rows, 9 numeric "
                "features. Event time is 2020-01-01T00:00:00Z plus one minute per "
                "row in file order."
            ),
            task=CLASSIFICATION,
            label_column="is_phishing",
            feature_columns=(
                "empty_server_form_handler",
                "popup_window",
                "https",
                "request_from_other_domain",
                "anchor_from_other_domain",
                "is_popular",
                "long_url",
                "age_of_domain",
                "ip_in_url",
            ),
            default_length=1250,
            generate=_phishing_rows,
            synthetic=False,
        ),
        DatasetSpec(
            name="sp500",
            description=(
                "River's S&P 500 file: 1,257 trading days from 2013-02-11 to "
                "2018-02-06, daily returns of 10 stocks and the next day's index "
                "return as the target. Event time is the date column."
            ),
            task=REGRESSION,
            label_column="next_day_return",
            feature_columns=(
                "AAPL", "AMZN", "IBM", "INTC", "JNJ", "JPM", "KO", "MSFT", "WMT", "XOM",
            ),
            default_length=1257,
            generate=_sp500_rows,
            timestamp_column="date",
            timestamp_unit="iso",
            synthetic=False,
        ),
        DatasetSpec(
            name="sea",
            description=(
                "SEA stream: x0 + x1 above a threshold of 8, 9, 7 and then 9.5, "
                "switching abruptly every 2,500 events and repeating."
            ),
            task=CLASSIFICATION,
            label_column="label",
            feature_columns=("x0", "x1", "x2"),
            generate=_sea_rows,
            **cycle,
        ),
        DatasetSpec(
            name="agrawal",
            description=(
                "Agrawal loan stream cycling through classification functions 0, "
                "2, 4 and 6, switching abruptly every 2,500 events."
            ),
            task=CLASSIFICATION,
            label_column="label",
            feature_columns=(
                "salary", "commission", "age", "elevel", "car", "zipcode", "hvalue",
                "hyears", "loan",
            ),
            generate=_agrawal_rows,
            **cycle,
        ),
        DatasetSpec(
            name="hyperplane",
            description=(
                "Rotating hyperplane in 10 dimensions: 2 weights change by 0.001 "
                "each event, an incremental drift with no single position; 5% label "
                "noise."
            ),
            task=CLASSIFICATION,
            label_column="label",
            feature_columns=tuple(f"x{i}" for i in range(10)),
            default_length=SYNTHETIC_DEFAULT_LENGTH,
            generate=_hyperplane_rows,
        ),
        DatasetSpec(
            name="concept_drift_sea",
            description=(
                "River ConceptDriftStream from SEA threshold 8 to SEA threshold 9.5, "
                "centred on event 5,000 over about 50 events."
            ),
            task=CLASSIFICATION,
            label_column="label",
            feature_columns=("x0", "x1", "x2"),
            default_length=SYNTHETIC_DEFAULT_LENGTH,
            generate=_concept_drift_sea_rows,
            drift_at=(CONCEPT_DRIFT_POSITION,),
            drift_width=CONCEPT_DRIFT_WIDTH,
        ),
        DatasetSpec(
            name="sine",
            description=(
                "Sine stream over two features cycling through classification "
                "functions 0 to 3, switching abruptly every 2,500 events."
            ),
            task=CLASSIFICATION,
            label_column="label",
            feature_columns=("x0", "x1"),
            generate=_sine_rows,
            **cycle,
        ),
        DatasetSpec(
            name="stagger",
            description=(
                "STAGGER stream of categorical size, color and shape codes cycling "
                "through classification functions 0 to 2, switching abruptly every "
                "2,500 events."
            ),
            task=CLASSIFICATION,
            label_column="label",
            feature_columns=("size", "color", "shape"),
            generate=_stagger_rows,
            **cycle,
        ),
    ]


DATASETS = {spec.name: spec for spec in _spec_list()}


def dataset_names() -> tuple:
    """Return the registered dataset names, the default first."""
    return (DEFAULT_DATASET,) + tuple(sorted(set(DATASETS) - {DEFAULT_DATASET}))


def get_dataset(name: str) -> DatasetSpec:
    """Return the spec registered as ``name`` or raise ValueError."""
    if name not in DATASETS:
        raise ValueError(
            f"Unknown --dataset {name!r}: expected one of {', '.join(dataset_names())}, "
            f"for example --dataset={DEFAULT_DATASET}."
        )
    return DATASETS[name]
