"""Tests for out-of-memory recovery by batch splitting, with simulated CUDA OOMs."""

import weakref

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ml.backpressure import BatchSizeController
from ml.oom import OomFailure, is_cuda_oom, release_device_memory, run_with_oom_split


def simulated_oom(size: int) -> torch.cuda.OutOfMemoryError:
    return torch.cuda.OutOfMemoryError(
        f"CUDA out of memory. Tried to allocate {size} MiB (simulated)"
    )


class FakeDevice:
    """Doubles its inputs, running out of memory above ``capacity`` elements.

    A batch holding any element of ``poisoned`` runs out of memory at any size.
    """

    def __init__(self, capacity: int, poisoned=()):
        self.capacity = capacity
        self.poisoned = set(poisoned)
        self.calls = []

    def __call__(self, batch):
        self.calls.append(list(batch))
        if len(batch) > self.capacity or self.poisoned.intersection(batch):
            raise simulated_oom(len(batch))
        return [element * 2 for element in batch]


@pytest.mark.parametrize(
    "error, expected",
    [
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (torch.OutOfMemoryError("XPU out of memory"), True),
        (RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"), True),
        (RuntimeError("CUDA error: out of memory"), True),
        (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"), True),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 2x2)"), False),
        (ValueError("CUDA out of memory"), False),
        (MemoryError(), False),
    ],
)
def test_is_cuda_oom(error, expected):
    assert is_cuda_oom(error) is expected


def test_no_oom_runs_once():
    device = FakeDevice(capacity=100)

    result = run_with_oom_split(device, [1, 2, 3], release=lambda: None)

    assert result.predictions == [2, 4, 6]
    assert result.failures == []
    assert result.splits == 0
    assert result.oom_errors == 0
    assert device.calls == [[1, 2, 3]]


def test_split_known_answer():
    device = FakeDevice(capacity=3)
    batch = list(range(10))

    result = run_with_oom_split(device, batch, release=lambda: None)

    assert result.predictions == [element * 2 for element in batch]
    assert result.failures == []
    # 10 -> 5 + 5, and each 5 -> 2 + 3.
    assert result.splits == 3
    assert result.oom_errors == 3
    assert device.calls == [
        list(range(10)), [0, 1, 2, 3, 4], [0, 1], [2, 3, 4],
        [5, 6, 7, 8, 9], [5, 6], [7, 8, 9],
    ]


def test_release_and_on_oom_per_failure():
    releases = []
    oom_sizes = []

    run_with_oom_split(
        FakeDevice(capacity=3),
        list(range(10)),
        release=lambda: releases.append(len(oom_sizes)),
        on_oom=lambda size, error: oom_sizes.append(size),
    )

    assert oom_sizes == [10, 5, 5]
    # release() runs before on_oom for the same failure.
    assert releases == [0, 1, 2]


def test_poisoned_element_returned_as_failure():
    batch = list(range(8))

    result = run_with_oom_split(FakeDevice(capacity=4, poisoned={5}), batch, release=lambda: None)

    assert result.predictions == [0, 2, 4, 6, 8, 12, 14]
    assert len(result.failures) == 1
    failure = result.failures[0]
    assert failure.index == 5
    assert failure.element == 5
    assert failure.reason.startswith("OutOfMemoryError: CUDA out of memory")


def test_pairs_skip_failures():
    batch = ["a", "b", "c", "d"]

    def fn(items):
        if "c" in items:
            raise simulated_oom(1)
        return [item.upper() for item in items]

    result = run_with_oom_split(fn, batch, release=lambda: None)

    assert result.pairs(batch) == [("a", "A"), ("b", "B"), ("d", "D")]
    assert result.failures == [OomFailure(2, "c", result.failures[0].reason)]


def test_tensor_batch():
    batch = torch.arange(10, dtype=torch.float32).reshape(5, 2)

    def fn(rows):
        if len(rows) > 2:
            raise simulated_oom(len(rows))
        return rows.sum(dim=1)

    result = run_with_oom_split(fn, batch, release=lambda: None)

    assert torch.equal(torch.stack(result.predictions), batch.sum(dim=1))
    assert result.splits == 2


def test_empty_batch_skips_fn():
    device = FakeDevice(capacity=1)

    result = run_with_oom_split(device, [], release=lambda: None)

    assert result.predictions == []
    assert result.splits == 0
    assert device.calls == []


def test_other_errors_propagate():
    def fn(batch):
        raise ValueError("bad feature width")

    with pytest.raises(ValueError, match="bad feature width"):
        run_with_oom_split(fn, [1, 2], release=lambda: None)


def test_custom_is_oom():
    def fn(batch):
        if len(batch) > 1:
            raise MemoryError("host allocation failed")
        return batch

    result = run_with_oom_split(
        fn, [1, 2, 3], is_oom=lambda error: isinstance(error, MemoryError), release=lambda: None
    )

    assert result.predictions == [1, 2, 3]
    assert result.splits == 2


def test_wrong_output_count_rejected():
    with pytest.raises(ValueError, match=r"fn returned 1 outputs for a batch of 3; fn must return"):
        run_with_oom_split(lambda batch: [0], [1, 2, 3], release=lambda: None)


def test_failed_step_tensors_freed_before_release():
    references = []
    alive_at_release = []

    def fn(batch):
        activations = torch.ones(1024)
        references.append(weakref.ref(activations))
        if len(batch) > 1:
            raise simulated_oom(4)
        return batch

    def release():
        alive_at_release.append(references[-1]() is not None)

    run_with_oom_split(fn, [1, 2], release=release)

    assert alive_at_release == [False]


def test_oom_feeds_controller():
    controller = BatchSizeController(initial=16, max_size=64, clock=lambda: 0.0)

    result = run_with_oom_split(
        FakeDevice(capacity=5),
        list(range(16)),
        on_oom=lambda size, error: controller.record_oom(size),
        release=lambda: None,
    )

    assert len(result.predictions) == 16
    assert controller.oom_ceiling == 8
    assert controller.batch_size == 4


def test_release_device_memory_on_cpu():
    release_device_memory()


@settings(max_examples=60, derandomize=True, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=40),
    capacity=st.integers(min_value=1, max_value=40),
    poisoned=st.sets(st.integers(min_value=0, max_value=39), max_size=4),
)
def test_no_element_lost(size, capacity, poisoned):
    batch = list(range(size))

    result = run_with_oom_split(FakeDevice(capacity, poisoned), batch, release=lambda: None)

    failed = [failure.element for failure in result.failures]
    assert failed == sorted(poisoned.intersection(batch))
    assert result.pairs(batch) == [(e, e * 2) for e in batch if e not in poisoned]
    assert len(result.predictions) + len(result.failures) == size
