"""A poisoned update is never published, and the previous version keeps serving."""

import json
import logging
import math
import os

import numpy as np
import pytest
import torch

from ml.models import CLASSIFICATION, REGRESSION, ModelSpec, build_model
from ml.trainer import IncrementalTrainer, TrainerConfig
from pipelines import online_train
from pipelines.report import read_manifest, read_parquet_dir

START = 1_700_006_400.0  # A multiple of 600 s, so fixed 10-minute windows align with the data.
WINDOW_S = 600.0
EVENTS_PER_WINDOW = 10
POISONED_WINDOW = 3


def _trainer(task, **config):
    spec = ModelSpec(task=task, num_inputs=2, num_outputs=2 if task == CLASSIFICATION else 1, hidden=(8,))
    return IncrementalTrainer(build_model(spec, seed=0), task, TrainerConfig(**config))


def _weights(trainer):
    return {name: tensor.clone() for name, tensor in trainer.model.state_dict().items()}


def test_trainer_rejects_non_finite_update():
    trainer = _trainer(REGRESSION, optimizer="sgd", learning_rate=1e10)
    before = _weights(trainer)
    features = np.full((16, 2), 1e30, dtype=np.float32)
    labels = np.full(16, 1e30, dtype=np.float32)

    result = trainer.learn_many(features, labels)

    assert not result.accepted
    assert "not finite" in result.reason
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_trainer_rejects_loss_above_bound():
    trainer = _trainer(CLASSIFICATION, max_loss=1e-6)
    before = _weights(trainer)
    features = np.random.default_rng(0).normal(size=(32, 2)).astype(np.float32)
    labels = np.arange(32) % 2

    result = trainer.learn_many(features, labels)

    assert not result.accepted
    assert result.reason.startswith("training loss")
    assert "exceeds the bound 1e-06" in result.reason
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_trainer_accepts_after_rejection():
    trainer = _trainer(REGRESSION, learning_rate=1e-2)
    good = np.linspace(-1, 1, 32, dtype=np.float32).reshape(16, 2)
    poisoned_labels = np.full(16, 1e30, dtype=np.float32)

    rejected = trainer.learn_many(good, poisoned_labels)
    accepted = trainer.learn_many(good, good[:, 0] * 2.0)

    assert not rejected.accepted
    assert accepted.accepted
    assert math.isfinite(accepted.loss)


def _write_input(path):
    """Write a regression stream, one event a minute, with one poisoned window."""
    rng = np.random.default_rng(0)
    lines = []
    for index in range(6 * EVENTS_PER_WINDOW):
        x = float(rng.uniform(-1, 1))
        y = 2.0 * x + 1.0
        if index // EVENTS_PER_WINDOW == POISONED_WINDOW:
            y = 1e30
        event_time = START + index * WINDOW_S / EVENTS_PER_WINDOW
        lines.append(json.dumps({"id": f"e{index}", "ts": event_time, "x": x, "y": y}))
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def poisoned_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("poisoned")
    input_path = directory / "events.jsonl"
    _write_input(input_path)
    output_dir = str(directory / "out")
    logger = logging.getLogger()
    handler = _ListHandler()
    logger.addHandler(handler)
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        online_train.run([
            f"--output_dir={output_dir}", "--runner=DirectRunner", f"--input={input_path}",
            "--timestamp_column=ts", "--label_column=y", "--id_column=id",
            "--window=fixed:10m", "--max_loss=1e6", "--model_name=poisoned", "--no_report",
        ])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
    return output_dir, handler.messages


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_poisoned_pane_not_published(poisoned_run):
    output_dir, _ = poisoned_run
    versions = read_manifest(os.path.join(output_dir, "models"), "poisoned")

    poisoned_end = START + (POISONED_WINDOW + 1) * WINDOW_S
    assert [entry["version"] for entry in versions] == list(range(len(versions)))
    assert all(entry["training_watermark"] != poisoned_end for entry in versions)
    assert all(math.isfinite(entry["metadata"]["loss"]) for entry in versions[1:])


def test_previous_version_keeps_serving(poisoned_run):
    output_dir, _ = poisoned_run
    rows = read_parquet_dir(os.path.join(output_dir, "predictions")).to_pylist()
    version_by_window = {}
    for row in rows:
        window = int((row["event_time"] - START) // WINDOW_S)
        version_by_window.setdefault(window, set()).add(row["model_version"])

    # The window after the poisoned one is served by the same version as the
    # poisoned window itself, because no version was trained on it.
    assert version_by_window[POISONED_WINDOW + 1] == version_by_window[POISONED_WINDOW]
    assert version_by_window[POISONED_WINDOW + 2] == {max(version_by_window[POISONED_WINDOW]) + 1}


def test_rejection_counted_and_logged(poisoned_run):
    _, messages = poisoned_run

    assert "Counter OnlineTrainer.updates_rejected = 1" in messages
    rejections = [message for message in messages if "rejected by the quality gate" in message]
    assert len(rejections) == 1
    assert "not finite" in rejections[0] or "exceeds the bound" in rejections[0]
    assert f"version {POISONED_WINDOW} keeps serving" in rejections[0]
