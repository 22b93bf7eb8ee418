"""Tests for the device check script, run on CPU with simulated out-of-memory errors."""

import dataclasses
import pathlib
import subprocess
import sys
import types

import pytest
import torch
from torch import nn

from bench import gpu_check
from bench.gpu_check import PhaseResult

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


class CappedModel(nn.Module):
    """Wraps a model so inputs above ``capacity`` rows raise a simulated CUDA OOM."""

    def __init__(self, model: nn.Module, capacity: int):
        super().__init__()
        self.model = model
        self.capacity = capacity

    def forward(self, features):
        if len(features) > self.capacity:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.model(features)


def parse_table(text: str):
    lines = [line for line in text.splitlines() if line.strip()]
    device_line = lines[0]
    header = lines[1].split()
    rows = [dict(zip(header, line.split())) for line in lines[2:]]
    return device_line, header, rows


def small_sizes(**overrides) -> gpu_check.BenchSizes:
    changes = dict(phase_seconds=0.05)
    changes.update(overrides)
    return dataclasses.replace(gpu_check.SMALL_SIZES, **changes)


def test_script_cpu_table():
    completed = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--small", "--seconds", "0.2"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )

    assert completed.returncode == 0, completed.stderr
    device_line, header, rows = parse_table(completed.stdout)
    assert device_line.startswith("device: cpu")
    assert tuple(header) == gpu_check.TABLE_COLUMNS
    assert [(row["phase"], row["mode"]) for row in rows] == [
        ("inference", "fixed"),
        ("inference", "controller"),
        ("training", "fixed"),
        ("training", "controller"),
        ("oom_split", "forced"),
    ]
    assert all(row["lost"] == "0" for row in rows)
    assert all(float(row["events_per_s"]) > 0 for row in rows)
    assert rows[0]["batch_start"] == rows[0]["batch_max"] == "32"
    assert rows[1]["batch_start"] == "8"
    assert int(rows[1]["batch_max"]) > 8


def test_forced_oom_known_answer():
    sizes = small_sizes()

    result = gpu_check.run_forced_oom(gpu_check.build_model(sizes, CPU, 0), sizes, CPU, 0)

    # 5000 rows against a 1000-row capacity: 5000 -> 2 x 2500 -> 4 x 1250 -> 8 x 625.
    assert result.splits == 7
    assert result.oom_errors == 7
    assert result.batch_end == 625
    assert result.events == 5000
    assert result.failed == 0
    assert result.lost == 0


def test_training_retries_in_micro_batches():
    sizes = small_sizes()
    features, labels = gpu_check.make_events(sizes, sizes.pool_size, 0, CPU)
    model = CappedModel(gpu_check.build_model(sizes, CPU, 0), capacity=10)

    result = gpu_check.run_training(model, features, labels, sizes, CPU)

    steps = result.events // sizes.fixed_batch
    # Each 32-row step runs out of memory at 32 and 16 rows, then fits at 8.
    assert steps > 0
    assert result.oom_errors == 2 * steps
    assert result.lost == 0


def test_inference_controller_learns_capacity():
    sizes = small_sizes(phase_seconds=0.3)
    features, _ = gpu_check.make_events(sizes, sizes.pool_size, 0, CPU)
    model = CappedModel(gpu_check.build_model(sizes, CPU, 0), capacity=50)
    controller = gpu_check.BatchSizeController(
        8, max_size=1024, additive_step=8, slow_start=True
    )

    result = gpu_check.run_inference(model, features, sizes, CPU, controller)

    # Slow start reaches 64 rows, past the 50-row capacity, within 4 steps.
    # Every ceiling is a size that failed, so it stays above the capacity.
    assert result.oom_errors > 0
    assert result.failed == 0
    assert result.lost == 0
    assert 50 < controller.oom_ceiling <= 64
    assert controller.batch_size < controller.oom_ceiling


def test_memory_cap_set_and_restored(monkeypatch):
    fractions = []
    fake_cuda = types.SimpleNamespace(
        get_device_properties=lambda device: types.SimpleNamespace(total_memory=64 << 30),
        set_per_process_memory_fraction=lambda fraction, device: fractions.append(fraction),
        synchronize=lambda device: None,
        is_available=lambda: False,
    )
    monkeypatch.setattr(gpu_check.torch, "cuda", fake_cuda)

    result, seconds = gpu_check._run_under_memory_cap(
        lambda batch: list(batch), [1, 2, 3], 4 << 30, "cuda:0"
    )

    assert fractions == [pytest.approx(1 / 16), 1.0]
    assert result.predictions == [1, 2, 3]
    assert seconds >= 0


def test_format_table_aligns():
    results = [
        PhaseResult("inference", "fixed", 32, 32, 32, events=1000, seconds=2.0),
        PhaseResult("oom_split", "forced", 5000, 625, 5000, events=5000, seconds=1.0,
                    oom_errors=7, splits=7),
    ]

    table = gpu_check.format_table("cpu (test)", results)

    assert table.splitlines() == [
        "device: cpu (test)",
        "phase      mode    batch_start  batch_end  batch_max  events_per_s  oom_errors  splits  failed  lost",
        "inference  fixed   32           32         32         500           0           0       0       0",
        "oom_split  forced  5000         625        5000       5000          7           7       0       0",
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a host without CUDA")
def test_cuda_without_device_rejected(capsys):
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--device", "cuda"])

    assert "--device cuda needs a CUDA device" in capsys.readouterr().err


def test_seconds_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--device", "cpu", "--seconds", "0"])

    assert "--seconds must be positive, got 0.0" in capsys.readouterr().err
