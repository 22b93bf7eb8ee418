from transforms.records import Event
from transforms.training import Pane, _pane_key, _PaneBuffer


def _pane(start, index=0):
    return Pane(start, start + 60.0, index, "on_time", (Event(f"e{start}", start, (1.0,), 0),))


def test_release_returns_panes_in_training_order():
    buffer = _PaneBuffer([], 0, 0)
    for start in (120.0, 0.0, 60.0, 180.0):
        buffer.add(_pane(start))

    ready = buffer.release_until(180.0)

    assert [pane.window_start for pane in ready] == [0.0, 60.0, 120.0]
    assert [pane.window_start for pane in buffer.waiting] == [180.0]
    assert buffer.generation == 5


def test_rebuild_skips_released_panes():
    logged = [_pane(0.0), _pane(60.0), _pane(60.0, index=1), _pane(120.0)]
    released = [_pane_key(logged[0]), _pane_key(logged[2])]

    buffer = _PaneBuffer.rebuild(logged, released, generation=7)

    assert buffer.waiting == [logged[1], logged[3]]
    assert buffer.released_count == 2
    assert buffer.generation == 7


def test_compaction_waits_for_released_log_to_outgrow_waiting():
    buffer = _PaneBuffer([_pane(float(60 * i)) for i in range(40)], 0, 0)
    buffer.release_until(60.0 * 10)
    assert not buffer.should_compact()
    buffer.release_until(60.0 * 40)
    assert buffer.should_compact()
    buffer.compacted()
    assert buffer.released_count == 0
