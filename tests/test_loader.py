"""Tests for the bounded, prefetching streaming loader."""

import collections
import itertools
import threading
import time

import pytest
import torch

from ml import loader as loader_module
from ml.loader import StreamingLoader, pin_tensors, to_device

Example = collections.namedtuple("Example", ["features", "label"])


def wait_for(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within the timeout")
        time.sleep(0.001)


def test_items_arrive_in_order():
    with StreamingLoader(range(200), high_watermark=4) as loader:
        items = list(loader)

    assert items == list(range(200))
    stats = loader.stats()
    assert stats.produced == 200
    assert stats.consumed == 200
    assert stats.depth == 0


def test_slow_consumer_bounds_queue():
    high_watermark = 5
    yielded = 0
    in_flight = []

    def source():
        nonlocal yielded
        for index in range(60):
            yielded += 1
            yield index

    received = []
    with StreamingLoader(source(), high_watermark=high_watermark, low_watermark=2) as loader:
        for item in loader:
            received.append(item)
            in_flight.append(yielded - len(received))
            time.sleep(0.002)

    stats = loader.stats()
    assert received == list(range(60))
    assert max(in_flight) <= high_watermark
    assert stats.max_depth == high_watermark
    assert stats.producer_blocked_s > 0


def test_producer_resumes_below_low_watermark():
    loader = StreamingLoader(itertools.count(), high_watermark=6, low_watermark=2).start()
    try:
        wait_for(lambda: loader.stats().produced == 6)
        time.sleep(0.05)
        assert loader.stats().produced == 6

        consumed = [next(loader) for _ in range(4)]
        time.sleep(0.05)
        assert loader.stats().produced == 6

        consumed.append(next(loader))
        wait_for(lambda: loader.stats().produced == 11)
        time.sleep(0.05)
        assert loader.stats().produced == 11
        assert consumed == [0, 1, 2, 3, 4]
    finally:
        loader.close()


def test_slow_producer_blocks_consumer():
    def source():
        for index in range(5):
            time.sleep(0.01)
            yield index

    with StreamingLoader(source(), high_watermark=2) as loader:
        items = list(loader)

    assert items == [0, 1, 2, 3, 4]
    assert loader.stats().consumer_blocked_s > 0.02


def test_source_error_raised_after_items():
    def source():
        yield from range(3)
        raise ValueError("row 3 is malformed")

    received = []
    with StreamingLoader(source(), high_watermark=2) as loader:
        with pytest.raises(ValueError, match="row 3 is malformed"):
            for item in loader:
                received.append(item)

    assert received == [0, 1, 2]


def test_close_stops_infinite_source():
    loader = StreamingLoader(itertools.count(), high_watermark=3).start()
    first = [next(loader) for _ in range(3)]

    loader.close()

    assert first == [0, 1, 2]
    assert not loader._thread.is_alive()
    with pytest.raises(StopIteration):
        next(loader)


def test_close_wakes_blocked_consumer():
    gate = threading.Event()

    def source():
        gate.wait(5.0)
        yield 1

    loader = StreamingLoader(source(), high_watermark=2, join_timeout_s=0.1).start()
    outcome = []
    consumer = threading.Thread(target=lambda: outcome.append(list(loader)))
    consumer.start()
    time.sleep(0.02)

    loader.close()
    consumer.join(1.0)
    gate.set()

    assert not consumer.is_alive()
    assert outcome == [[]]


def test_device_copy_keeps_structure():
    item = {"batch": Example(torch.ones(2, 3), torch.tensor([0, 1])), "ids": ["a", "b"]}

    with StreamingLoader([item], device="meta") as loader:
        (moved,) = list(loader)

    assert moved["batch"].features.device.type == "meta"
    assert moved["batch"].label.device.type == "meta"
    assert moved["batch"].features.shape == (2, 3)
    assert isinstance(moved["batch"], Example)
    assert moved["ids"] == ["a", "b"]


def test_cpu_device_ignores_pin_memory():
    # Pinning needs a CUDA driver, so this would raise if it were attempted.
    with StreamingLoader([torch.ones(2)], device="cpu", pin_memory=True) as loader:
        (tensor,) = list(loader)

    assert torch.equal(tensor, torch.ones(2))


def test_cuda_pins_in_producer_copies_in_consumer(monkeypatch):
    events = []

    def fake_pin_memory(tensor):
        events.append(("pin", threading.current_thread().name))
        return tensor.clone()

    def fake_to_device(item, device, *, non_blocking=False):
        events.append(("copy", threading.current_thread().name, str(device), non_blocking))
        return item

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin_memory)
    monkeypatch.setattr(loader_module, "to_device", fake_to_device)

    with StreamingLoader([(torch.ones(2), torch.zeros(1))], device="cuda:0", pin_memory=True) as loader:
        items = list(loader)

    consumer = threading.current_thread().name
    assert len(items) == 1
    assert events == [
        ("pin", "StreamingLoaderProducer"),
        ("pin", "StreamingLoaderProducer"),
        ("copy", consumer, "cuda:0", True),
    ]


def test_cuda_without_pinning_copies_blocking(monkeypatch):
    copies = []
    monkeypatch.setattr(
        loader_module,
        "to_device",
        lambda item, device, non_blocking=False: copies.append(non_blocking) or item,
    )

    with StreamingLoader([torch.ones(1)], device="cuda") as loader:
        list(loader)

    assert copies == [False]


def test_pin_tensors_maps_nested(monkeypatch):
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda tensor: tensor + 1)

    pinned = pin_tensors([torch.zeros(1), ("text", {"x": torch.ones(1)})])

    assert pinned[0].item() == 1.0
    assert pinned[1][0] == "text"
    assert pinned[1][1]["x"].item() == 2.0


def test_to_device_non_blocking():
    moved = to_device(Example(torch.ones(1), 3), torch.device("meta"), non_blocking=True)

    assert moved.features.device.type == "meta"
    assert moved.label == 3


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(high_watermark=0), r"high_watermark must be a positive integer, got 0"),
        (dict(high_watermark=4, low_watermark=5), r"low_watermark must be an integer in \[1, high_watermark\] = \[1, 4\], got 5"),
        (dict(high_watermark=4, low_watermark=0), r"low_watermark must be .* got 0"),
        (dict(join_timeout_s=-1), r"join_timeout_s must be a non-negative number of seconds, got -1"),
    ],
)
def test_rejects_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        StreamingLoader([], **arguments)
