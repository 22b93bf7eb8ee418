"""The trainer's timer chain, driven directly with in-memory state and timers."""

import itertools

import apache_beam as beam
import pytest
from apache_beam.utils.timestamp import Timestamp

from ml.models import ModelSpec
from ml.store import LocalFileSystem, ModelStore
from ml.trainer import TrainerConfig
from tests.fake_state import FakeBagState, FakeTimer, FakeValueState
from transforms.records import Event
from transforms.training import OnlineTrainer, Pane, ServingRecord, TrainingConfig, publish_initial_model

WINDOW_S = 60.0
SPEC = ModelSpec("classification", 1, 2, (4,))


class _TrainerHarness:
    """Run one key of :class:`OnlineTrainer` the way a runner would."""

    def __init__(self, tmp_path):
        config = TrainingConfig(
            model_name="m", model_spec=SPEC, trainer=TrainerConfig(learning_rate=0.1),
            serving_window_s=WINDOW_S, store_root=str(tmp_path), end_of_stream=3 * WINDOW_S,
        )
        initial = publish_initial_model(config, ModelStore(str(tmp_path)))
        self.dofn = OnlineTrainer(config, initial, filesystem=LocalFileSystem())
        self.dofn.setup()
        self.state = {"panes": FakeBagState(), "released": FakeBagState(),
                      "progress_state": FakeValueState(), "release": FakeTimer()}

    def deliver(self, pane):
        self.dofn.process(("m", pane), key="m", **self.state)

    def fire_timers(self):
        """Fire the pending timer until the chain stops; return the serving records."""
        records = []
        while self.state["release"].at is not None:
            fire_at, self.state["release"].at = self.state["release"].at, None
            outputs = self.dofn.release_panes(key="m", fire_timestamp=Timestamp(fire_at), **self.state)
            records += [out.value for out in outputs if not isinstance(out, beam.pvalue.TaggedOutput)]
        return [(record.window_start, record.version.version) for record in records]


def _pane(index):
    start = index * WINDOW_S
    events = tuple(Event(f"e{index}-{row}", start + row, (float(row % 2),), row % 2) for row in range(4))
    return Pane(start, start + WINDOW_S, 0, "on_time", events)


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_pane_order_keeps_serving_records(tmp_path, order):
    # A runner that passes several windows at once may deliver their panes
    # in any order before the first timer fires.
    harness = _TrainerHarness(tmp_path)
    for index in order:
        harness.deliver(_pane(index))

    records = harness.fire_timers()

    assert records == [(60.0, 1), (120.0, 2), (180.0, 3), (240.0, 3)]


def test_late_pane_trains_at_next_timer(tmp_path):
    harness = _TrainerHarness(tmp_path)
    harness.deliver(_pane(1))
    fire_at = harness.state["release"].at
    harness.state["release"].at = None
    first = list(harness.dofn.release_panes(key="m", fire_timestamp=Timestamp(fire_at), **harness.state))

    # The first timer has fired, so a pane of an earlier window is late:
    # it cannot move the chain back before the windows already served.
    harness.deliver(_pane(0))

    assert [out.value.window_start for out in first if isinstance(out.value, ServingRecord)] == [120.0]
    assert harness.state["release"].at == 180.0
    assert harness.fire_timers() == [(180.0, 2), (240.0, 2)]
