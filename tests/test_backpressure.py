"""Tests for the AIMD batch-size controller and its memory probes."""

import types

import pytest

from ml import backpressure
from ml.backpressure import BatchSizeChange, BatchSizeController


class FakeClock:
    """A clock that moves only when the test advances it."""

    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ScriptedProbe:
    """A memory probe that returns the given readings in order."""

    def __init__(self, readings):
        self.readings = list(readings)

    def __call__(self) -> float:
        return self.readings.pop(0)


def make_controller(**overrides) -> BatchSizeController:
    arguments = dict(initial=8, min_size=1, max_size=64, additive_step=4, clock=FakeClock())
    arguments.update(overrides)
    return BatchSizeController(**arguments)


def test_initial_history():
    clock = FakeClock(5.0)
    controller = make_controller(clock=clock)

    assert controller.batch_size == 8
    assert controller.history == [BatchSizeChange(5.0, 8, "initial")]


def test_additive_increase():
    controller = make_controller()

    sizes = [controller.record_step(controller.batch_size, 1.0) for _ in range(3)]

    assert sizes == [12, 16, 20]
    assert [change.reason for change in controller.history] == [
        "initial", "increase", "increase", "increase"
    ]


def test_increase_capped_at_max_size():
    controller = make_controller(initial=60, max_size=64)

    controller.record_step(60, 1.0)
    controller.record_step(64, 1.0)

    assert controller.batch_size == 64
    assert len(controller.history) == 2


def test_latency_sawtooth_known_answer():
    # Latency is 1 ms per element against a 10 ms target, so the size climbs
    # by 4 while latency is at most 10 ms and halves when it exceeds it.
    controller = make_controller(target_latency_ms=10.0)

    sizes = []
    for _ in range(10):
        size = controller.batch_size
        sizes.append(controller.record_step(size, float(size)))

    assert sizes == [12, 6, 10, 14, 7, 11, 5, 9, 13, 6]


def test_latency_decrease_reason():
    clock = FakeClock()
    controller = make_controller(initial=16, target_latency_ms=10.0, clock=clock)
    clock.advance(2.0)

    controller.record_step(16, 25.0)

    assert controller.history[-1] == BatchSizeChange(102.0, 8, "latency")


def test_stale_latency_report_does_not_compound():
    controller = make_controller(initial=16, target_latency_ms=10.0)

    controller.record_step(16, 50.0)
    controller.record_step(16, 50.0)

    assert controller.batch_size == 8
    assert [change.reason for change in controller.history] == ["initial", "latency"]


def test_partial_step_does_not_increase():
    controller = make_controller()

    controller.record_step(3, 1.0)

    assert controller.batch_size == 8


def test_partial_step_over_target_decreases():
    controller = make_controller(initial=32, target_latency_ms=10.0)

    controller.record_step(12, 40.0)

    assert controller.batch_size == 6


def test_memory_high_decreases_current_size():
    probe = ScriptedProbe([0.5, 0.95, 0.89])
    controller = make_controller(memory_probe=probe, memory_high_fraction=0.9)

    first = controller.record_step(8, 1.0)
    second = controller.record_step(3, 1.0)
    third = controller.record_step(6, 1.0)

    assert first == 12
    assert second == 6
    assert third == 10
    assert controller.history[2].reason == "memory"
    assert controller.last_memory_fraction == 0.89


def test_memory_checked_before_latency():
    probe = ScriptedProbe([0.99])
    controller = make_controller(
        initial=16, memory_probe=probe, target_latency_ms=10.0
    )

    controller.record_step(16, 50.0)

    assert controller.history[-1].reason == "memory"


def test_oom_halves_and_sets_ceiling():
    controller = make_controller(initial=32)

    size = controller.record_oom(32)

    assert size == 16
    assert controller.oom_ceiling == 32
    assert controller.history[-1].reason == "oom"


def test_oom_ceiling_caps_growth():
    controller = make_controller(initial=24, additive_step=4)
    controller.record_oom(30)

    sizes = [controller.record_step(controller.batch_size, 1.0) for _ in range(6)]

    assert sizes == [19, 23, 27, 29, 29, 29]


def test_oom_ceiling_keeps_smallest():
    controller = make_controller(initial=64)

    controller.record_oom(64)
    controller.record_oom(40)
    controller.record_oom(64)

    assert controller.oom_ceiling == 40
    assert controller.batch_size == 20


def test_oom_at_min_size_stays_at_min():
    controller = make_controller(initial=2, min_size=2)

    controller.record_oom(2)
    controller.record_step(2, 1.0)

    assert controller.batch_size == 2
    assert controller.oom_ceiling == 2


def test_cooldown_suppresses_signals():
    clock = FakeClock()
    controller = make_controller(
        initial=32, target_latency_ms=10.0, cooldown_s=5.0, clock=clock
    )
    controller.record_step(32, 50.0)

    clock.advance(1.0)
    after_fast_step = controller.record_step(16, 1.0)
    after_slow_step = controller.record_step(16, 50.0)
    clock.advance(4.0)
    after_cooldown = controller.record_step(16, 1.0)

    assert after_fast_step == 16
    assert after_slow_step == 16
    assert after_cooldown == 20


def test_oom_ignores_cooldown():
    controller = make_controller(initial=32, target_latency_ms=10.0, cooldown_s=60.0)
    controller.record_step(32, 50.0)

    size = controller.record_oom(16)

    assert size == 8


def test_slow_start_doubles_until_decrease():
    controller = make_controller(initial=2, max_size=1024, slow_start=True, target_latency_ms=10.0)

    sizes = [controller.record_step(controller.batch_size, 1.0) for _ in range(4)]
    sizes.append(controller.record_step(32, 50.0))
    sizes.append(controller.record_step(16, 1.0))

    assert sizes == [4, 8, 16, 32, 16, 20]


def test_history_bounded():
    controller = make_controller(initial=1, max_size=1000, additive_step=1, history_size=3)

    for _ in range(10):
        controller.record_step(controller.batch_size, 1.0)

    assert [change.batch_size for change in controller.history] == [9, 10, 11]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(min_size=0), r"min_size must be a positive integer, got 0"),
        (dict(max_size=4, initial=4, min_size=8), r"max_size must be at least min_size \(8\), got 4"),
        (dict(initial=100), r"initial must lie in \[min_size, max_size\] = \[1, 64\], got 100"),
        (dict(initial=2.5), r"initial must be a positive integer, got 2.5"),
        (dict(additive_step=0), r"additive_step must be a positive integer, got 0"),
        (dict(decrease_factor=1.0), r"decrease_factor must lie strictly between 0 and 1, got 1.0"),
        (dict(decrease_factor=0), r"decrease_factor must lie strictly between 0 and 1, got 0"),
        (dict(target_latency_ms=0), r"target_latency_ms must be a positive number .* got 0"),
        (dict(memory_high_fraction=1.5), r"memory_high_fraction must lie in \(0, 1\], got 1.5"),
        (dict(cooldown_s=-1), r"cooldown_s must be a non-negative number of seconds, got -1"),
        (dict(clock=3), r"clock must be a callable returning seconds, got 3"),
        (dict(memory_probe=0.5), r"memory_probe must be a callable .* got 0.5"),
        (dict(history_size=0), r"history_size must be a positive integer, got 0"),
    ],
)
def test_constructor_rejects(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_controller(**overrides)


def test_record_step_rejects_bad_values():
    controller = make_controller()

    with pytest.raises(ValueError, match=r"batch_size must be a positive integer, got 0"):
        controller.record_step(0, 1.0)
    with pytest.raises(ValueError, match=r"latency_ms must be a non-negative .* got -2.0"):
        controller.record_step(8, -2.0)
    with pytest.raises(ValueError, match=r"latency_ms must be a non-negative .* got nan"):
        controller.record_step(8, float("nan"))


def test_cuda_probe_counts_cache_as_free():
    gib = 1 << 30
    calls = []
    fake_cuda = types.SimpleNamespace(
        mem_get_info=lambda device: (30 * gib, 100 * gib),
        memory_reserved=lambda device: 50 * gib,
        max_memory_allocated=lambda device: 20 * gib,
        reset_peak_memory_stats=lambda device: calls.append(device),
    )
    probe = backpressure.cuda_memory_probe("cuda:1", cuda_api=fake_cuda)

    fraction = probe()

    # 20 GiB held by other processes plus this process's 20 GiB peak.
    assert fraction == pytest.approx(0.4)
    assert calls == ["cuda:1"]


def test_cuda_probe_drives_controller():
    gib = 1 << 30
    peaks = [10 * gib, 95 * gib]
    fake_cuda = types.SimpleNamespace(
        mem_get_info=lambda device: (0, 100 * gib),
        memory_reserved=lambda device: 100 * gib,
        max_memory_allocated=lambda device: peaks.pop(0),
        reset_peak_memory_stats=lambda device: None,
    )
    controller = make_controller(
        initial=32, memory_probe=backpressure.cuda_memory_probe(cuda_api=fake_cuda)
    )

    grown = controller.record_step(32, 1.0)
    shrunk = controller.record_step(36, 1.0)

    assert grown == 36
    assert shrunk == 18


def test_rss_probe_reads_statm(tmp_path):
    statm = tmp_path / "statm"
    statm.write_text("5000 250 100 10 0 200 0\n")
    page_bytes = backpressure.os.sysconf("SC_PAGE_SIZE")
    probe = backpressure.rss_memory_probe(1000 * page_bytes, statm_path=str(statm))

    assert probe() == pytest.approx(0.25)


def test_rss_probe_this_process():
    probe = backpressure.rss_memory_probe(1 << 40)

    fraction = probe()

    assert 0 < fraction < 1


def test_rss_probe_falls_back_to_peak(tmp_path):
    probe = backpressure.rss_memory_probe(1 << 40, statm_path=str(tmp_path / "missing"))

    assert probe() == pytest.approx(backpressure._peak_rss_bytes() / (1 << 40))
    assert probe() > 0


def test_rss_probe_rejects_limit():
    with pytest.raises(ValueError, match=r"limit_bytes must be a positive integer, got 0"):
        backpressure.rss_memory_probe(0)
