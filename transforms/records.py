"""Record types that flow between the pipeline steps.

Plain NamedTuples keep pickling cheap on every runner and let Beam infer
element types. Event times are float seconds since the Unix epoch (UTC),
the unit of ``apache_beam.utils.timestamp.Timestamp.micros / 1e6``.
"""

from typing import Any, NamedTuple, Optional


class SourceRecord(NamedTuple):
    """A raw input row as a source read it, before validation.

    ``row`` contains the original fields exactly as parsed from the file or
    generator. ``event_time`` is None when the timestamp column could not be
    parsed, and ``timestamp_error`` then says why. ``arrival`` is the row's
    position in the replayed arrival order, which differs from file order
    when disorder is injected. ``watermark`` is the replay's event-time
    watermark (seconds) in force when the row arrived; comparing it with
    ``event_time`` tells whether the row is late, the same way on every
    runner.
    """

    row: dict
    event_time: Optional[float]
    arrival: int
    watermark: float
    timestamp_error: Optional[str] = None


class Event(NamedTuple):
    """A validated record, ready for a model.

    ``features`` follow the schema's feature order, with string features
    one-hot encoded over their domain. ``label`` is the class index for a
    classification schema, the float target for regression, or None for an
    unlabelled event that is served but not trained on.
    """

    id: str
    event_time: float
    features: tuple
    label: Optional[Any]


class DeadLetter(NamedTuple):
    """An input record that could not be used, with the reason.

    ``reason_code`` is a short stable identifier (for counters and tests);
    ``reason`` is a sentence for people. ``field`` names the offending field
    when one field is to blame.
    """

    record: Any
    reason_code: str
    reason: str
    field: Optional[str] = None
    stage: str = "validate"


class Block:
    """Items of one event-time window slot, carried as one Beam element.

    In block mode the pipeline moves records, events and predictions in
    blocks, so Beam's per-element work (coding, timestamps, windowing) is
    paid once per block instead of once per event. Every item of a block
    falls into the same windows, which makes windowing the block by its
    timestamp window each item as if it travelled alone. Blocks pickle as
    one object: Beam's default coder would encode each NamedTuple item field
    by field, about three times slower.
    """

    __slots__ = ("items",)

    def __init__(self, items):
        self.items = tuple(items)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def __eq__(self, other) -> bool:
        return isinstance(other, Block) and self.items == other.items

    def __hash__(self) -> int:
        return hash(self.items)

    def __repr__(self) -> str:
        return f"Block({len(self.items)} items)"

    def __reduce__(self):
        return Block, (self.items,)


def unblock(elements) -> list:
    """Return the items of ``elements``, with every Block expanded in place."""
    items = []
    for element in elements:
        if isinstance(element, Block):
            items.extend(element.items)
        else:
            items.append(element)
    return items
