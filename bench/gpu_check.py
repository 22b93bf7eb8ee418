"""Measure batch-size control and out-of-memory recovery on one device.

The script times MLP inference and training at a fixed batch size and under
:class:`ml.backpressure.BatchSizeController`, then runs one oversized batch
through :func:`ml.oom.run_with_oom_split` and checks that every element comes
back as a prediction or a reported failure. It prints one table row per
phase and exits with status 1 if any element was lost.

On CUDA the oversized batch runs out of memory for real, under a per-process
memory cap. With ``--device cpu`` the out-of-memory error is simulated above
a fixed number of rows. Usage::

    python -m bench.gpu_check                      # CUDA, full sizes
    python -m bench.gpu_check --device cpu --small # seconds on a laptop
"""

import argparse
import dataclasses
import logging
import os
import platform
import sys
import time
from typing import Callable, List, NamedTuple, Optional

import torch
from torch import nn

from ml.accumulation import accumulated_step
from ml.backpressure import BatchSizeController, cuda_memory_probe, rss_memory_probe
from ml.oom import is_cuda_oom, release_device_memory, run_with_oom_split

_LOGGER = logging.getLogger(__name__)

TABLE_COLUMNS = (
    "phase", "mode", "batch_start", "batch_end", "batch_max",
    "events_per_s", "oom_errors", "splits", "failed", "lost",
)


@dataclasses.dataclass(frozen=True)
class BenchSizes:
    """Model and workload sizes of one run.

    ``oom_batch`` is the batch that must run out of memory. On CUDA the
    process is capped at ``oom_cap_bytes`` of device memory while it runs, and
    on CPU the simulated device fails above ``simulated_capacity`` rows.
    """

    in_features: int
    hidden: int
    classes: int
    pool_size: int
    fixed_batch: int
    initial_batch: int
    max_batch: int
    additive_step: int
    target_latency_ms: float
    phase_seconds: float
    oom_batch: int
    oom_cap_bytes: int
    simulated_capacity: int


# The full sizes are an estimate of a run under 5 minutes on one data-centre
# GPU: 4 phases of 15 s plus a forced OOM whose widest tensor (262144 rows x
# 4096 hidden units x 4 bytes = 4 GiB) cannot fit under the 4 GiB cap.
FULL_SIZES = BenchSizes(
    in_features=512, hidden=4096, classes=10, pool_size=131072,
    fixed_batch=256, initial_batch=64, max_batch=65536, additive_step=256,
    target_latency_ms=50.0, phase_seconds=15.0,
    oom_batch=262144, oom_cap_bytes=4 << 30, simulated_capacity=32768,
)

SMALL_SIZES = BenchSizes(
    in_features=16, hidden=64, classes=4, pool_size=4096,
    fixed_batch=32, initial_batch=8, max_batch=4096, additive_step=8,
    target_latency_ms=2.0, phase_seconds=0.3,
    oom_batch=5000, oom_cap_bytes=1 << 20, simulated_capacity=1000,
)


class PhaseResult(NamedTuple):
    """One table row: what a phase ran and how many events it lost.

    For the forced out-of-memory phase ``batch_end`` is the largest piece of
    the oversized batch that ran.
    """

    phase: str
    mode: str
    batch_start: int
    batch_end: int
    batch_max: int
    events: int
    seconds: float
    oom_errors: int = 0
    splits: int = 0
    failed: int = 0
    lost: int = 0

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def build_model(sizes: BenchSizes, device: torch.device, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(sizes.in_features, sizes.hidden),
        nn.ReLU(),
        nn.Linear(sizes.hidden, sizes.hidden),
        nn.ReLU(),
        nn.Linear(sizes.hidden, sizes.classes),
    )
    return model.to(device)


def make_events(sizes: BenchSizes, count: int, seed: int, device: torch.device):
    """Return host tensors of ``count`` feature rows and class labels."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(count, sizes.in_features, generator=generator)
    labels = torch.randint(0, sizes.classes, (count,), generator=generator)
    if device.type == "cuda":
        # Pinned host memory makes the per-step copies asynchronous.
        features, labels = features.pin_memory(), labels.pin_memory()
    return features, labels


def make_controller(sizes: BenchSizes, device: torch.device) -> BatchSizeController:
    if device.type == "cuda":
        probe = cuda_memory_probe(device)
    else:
        probe = rss_memory_probe(_host_memory_bytes())
    return BatchSizeController(
        sizes.initial_batch,
        max_size=min(sizes.max_batch, sizes.pool_size),
        additive_step=sizes.additive_step,
        target_latency_ms=sizes.target_latency_ms,
        slow_start=True,
        memory_probe=probe,
    )


def run_inference(model, features, sizes, device, controller=None) -> PhaseResult:
    """Predict classes for ``phase_seconds``, each batch guarded by run_with_oom_split."""
    model.eval()

    def predict(batch: torch.Tensor) -> list:
        with torch.no_grad():
            return model(batch.to(device, non_blocking=True)).argmax(dim=1).tolist()

    predict(features[: sizes.initial_batch])  # Warm-up, outside the timing.
    on_oom = None if controller is None else (lambda size, error: controller.record_oom(size))
    tracker = _PhaseTracker(sizes, controller)
    while tracker.running():
        batch_size = tracker.next_batch_size()
        batch = _slice(features, tracker.steps, batch_size)

        started = time.perf_counter()
        result = run_with_oom_split(predict, batch, on_oom=on_oom)
        tracker.record(batch_size, (time.perf_counter() - started) * 1000.0)
        tracker.count_oom(result.oom_errors, result.splits, len(result.failures))
        tracker.lost += batch_size - len(result.predictions) - len(result.failures)

    mode = "fixed" if controller is None else "controller"
    return tracker.result("inference", mode)


def run_training(model, features, labels, sizes, device, controller=None) -> PhaseResult:
    """Train for ``phase_seconds``, retrying a step that runs out of memory in micro-batches."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()

    def step(batch_features, batch_labels, micro_batch_size) -> float:
        return accumulated_step(
            model, optimizer, loss_fn,
            batch_features.to(device, non_blocking=True),
            batch_labels.to(device, non_blocking=True),
            micro_batch_size,
        )

    step(features[:8], labels[:8], 8)  # Warm-up, outside the timing.
    tracker = _PhaseTracker(sizes, controller)
    while tracker.running():
        batch_size = tracker.next_batch_size()
        batch_features = _slice(features, tracker.steps, batch_size)
        batch_labels = _slice(labels, tracker.steps, batch_size)

        started = time.perf_counter()
        micro_batch_size = batch_size
        while True:
            try:
                step(batch_features, batch_labels, micro_batch_size)
                break
            except RuntimeError as error:
                if not is_cuda_oom(error) or micro_batch_size == 1:
                    raise
            # The retry runs the same batch in micro-batches half as large, so
            # the gradient is unchanged.
            tracker.count_oom(1, 0, 0)
            release_device_memory()
            if controller is not None:
                controller.record_oom(micro_batch_size)
            micro_batch_size = max(1, micro_batch_size // 2)
        tracker.record(batch_size, (time.perf_counter() - started) * 1000.0)

    mode = "fixed" if controller is None else "controller"
    return tracker.result("training", mode)


def run_forced_oom(model, sizes, device, seed) -> PhaseResult:
    """Run one oversized batch through run_with_oom_split and count what came back."""
    features, _ = make_events(sizes, sizes.oom_batch, seed + 1, torch.device("cpu"))
    model.eval()
    piece_sizes = []

    def predict(batch: torch.Tensor) -> list:
        with torch.no_grad():
            predictions = model(batch.to(device)).argmax(dim=1).tolist()
        piece_sizes.append(len(batch))
        return predictions

    if device.type == "cuda":
        result, seconds = _run_under_memory_cap(predict, features, sizes.oom_cap_bytes, device)
    else:
        simulated = _simulate_capacity(predict, sizes.simulated_capacity)
        started = time.perf_counter()
        result = run_with_oom_split(simulated, features)
        seconds = time.perf_counter() - started

    lost = len(features) - len(result.predictions) - len(result.failures)
    return PhaseResult(
        phase="oom_split",
        mode="forced",
        batch_start=len(features),
        batch_end=max(piece_sizes, default=0),
        batch_max=len(features),
        events=len(result.predictions),
        seconds=seconds,
        oom_errors=result.oom_errors,
        splits=result.splits,
        failed=len(result.failures),
        lost=lost,
    )


def _run_under_memory_cap(predict, features, cap_bytes, device):
    # NOTE: this CUDA path has not run on a GPU yet. On CPU the OOM is simulated.
    release_device_memory()
    total_bytes = torch.cuda.get_device_properties(device).total_memory
    _LOGGER.info(
        "Capping this process at %.1f GiB of the device's %.1f GiB for the forced OOM.",
        cap_bytes / (1 << 30), total_bytes / (1 << 30),
    )
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_bytes / total_bytes), device)
    try:
        started = time.perf_counter()
        result = run_with_oom_split(predict, features)
        torch.cuda.synchronize(device)
        return result, time.perf_counter() - started
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        release_device_memory()


def _simulate_capacity(predict: Callable, capacity: int) -> Callable:
    def simulated(batch):
        if len(batch) > capacity:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory (simulated): batch of {len(batch)} rows "
                f"exceeds the capacity of {capacity} rows."
            )
        return predict(batch)

    return simulated


class _PhaseTracker:
    """Step counts, batch sizes and timing of one throughput phase."""

    def __init__(self, sizes: BenchSizes, controller: Optional[BatchSizeController]):
        self.sizes = sizes
        self.controller = controller
        self.batch_sizes: List[int] = []
        self.events = 0
        self.steps = 0
        self.oom_errors = 0
        self.splits = 0
        self.failed = 0
        self.lost = 0
        self.started = time.perf_counter()

    def running(self) -> bool:
        return time.perf_counter() - self.started < self.sizes.phase_seconds

    def next_batch_size(self) -> int:
        if self.controller is None:
            return self.sizes.fixed_batch
        return self.controller.batch_size

    def record(self, batch_size: int, latency_ms: float) -> None:
        self.batch_sizes.append(batch_size)
        self.events += batch_size
        self.steps += 1
        if self.controller is not None:
            self.controller.record_step(batch_size, latency_ms)

    def count_oom(self, oom_errors: int, splits: int, failed: int) -> None:
        self.oom_errors += oom_errors
        self.splits += splits
        self.failed += failed

    def result(self, phase: str, mode: str) -> PhaseResult:
        return PhaseResult(
            phase=phase,
            mode=mode,
            batch_start=self.batch_sizes[0],
            batch_end=self.batch_sizes[-1],
            batch_max=max(self.batch_sizes),
            events=self.events,
            seconds=time.perf_counter() - self.started,
            oom_errors=self.oom_errors,
            splits=self.splits,
            failed=self.failed,
            lost=self.lost,
        )


def _slice(tensor: torch.Tensor, step: int, batch_size: int) -> torch.Tensor:
    """Return rows ``[offset, offset + batch_size)``, moving through the pool step by step."""
    offset = (step * batch_size) % (len(tensor) - batch_size + 1)
    return tensor[offset: offset + batch_size]


def _host_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        # Platforms without sysconf: an assumed 16 GiB only scales the probe.
        return 16 << 30


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def format_table(name: str, results: List[PhaseResult]) -> str:
    """Return the results as an aligned text table under a device line."""
    rows = [TABLE_COLUMNS]
    for result in results:
        rows.append((
            result.phase, result.mode,
            str(result.batch_start), str(result.batch_end), str(result.batch_max),
            f"{result.events_per_s:.0f}",
            str(result.oom_errors), str(result.splits), str(result.failed), str(result.lost),
        ))
    widths = [max(len(row[column]) for row in rows) for column in range(len(TABLE_COLUMNS))]
    lines = [f"device: {name}"]
    for row in rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device", choices=("cuda", "cpu"),
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="Device to measure (default: cuda when available).",
    )
    parser.add_argument(
        "--small", action="store_true",
        help="Use a small model and short phases (seconds in total on a CPU).",
    )
    parser.add_argument(
        "--seconds", type=float, default=None,
        help="Duration of each throughput phase in seconds (default: 15, or 0.3 with --small).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the model weights and events.")
    args = parser.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA device, and none is available; pass --device cpu --small.")
    if args.seconds is not None and not args.seconds > 0:
        parser.error(f"--seconds must be positive, got {args.seconds}.")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    sizes = SMALL_SIZES if args.small else FULL_SIZES
    if args.seconds is not None:
        sizes = dataclasses.replace(sizes, phase_seconds=args.seconds)
    device = torch.device(args.device)

    features, labels = make_events(sizes, sizes.pool_size, args.seed, device)
    results = [
        run_inference(build_model(sizes, device, args.seed), features, sizes, device),
        run_inference(
            build_model(sizes, device, args.seed), features, sizes, device,
            make_controller(sizes, device),
        ),
        run_training(build_model(sizes, device, args.seed), features, labels, sizes, device),
        run_training(
            build_model(sizes, device, args.seed), features, labels, sizes, device,
            make_controller(sizes, device),
        ),
        run_forced_oom(build_model(sizes, device, args.seed), sizes, device, args.seed),
    ]

    print(format_table(device_name(device), results))
    lost = sum(result.lost for result in results)
    if lost:
        print(f"FAILED: {lost} elements lost", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
