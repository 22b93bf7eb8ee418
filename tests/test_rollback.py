"""Automatic rollback of a version that does worse than its predecessor."""

import numpy as np
import pytest
import torch

from ml.models import ModelSpec
from ml.store import LocalFileSystem, ModelStore
from ml.trainer import TrainerConfig
from transforms.records import Event
from transforms.training import OnlineTrainer, Pane, TrainingConfig, publish_initial_model

SPEC = ModelSpec("classification", 2, 2, (8,))


def _pane(index, flip=False, size=80):
    rng = np.random.default_rng(index)
    features = rng.normal(size=(size, 2))
    labels = (features[:, 0] > 0).astype(int)
    if flip:
        labels = 1 - labels
    start = index * 100.0
    events = tuple(
        Event(f"p{index}-{row}", start + row, tuple(map(float, x)), int(y))
        for row, (x, y) in enumerate(zip(features, labels))
    )
    return Pane(start, start + 100.0, 0, "on_time", events)


def _trainer(tmp_path, rollback_factor):
    config = TrainingConfig(
        model_name="m", model_spec=SPEC, trainer=TrainerConfig(learning_rate=0.2, steps_per_pane=5),
        serving_window_s=100.0, store_root=str(tmp_path), rollback_factor=rollback_factor,
    )
    dofn = OnlineTrainer(config, publish_initial_model(config, ModelStore(str(tmp_path))), filesystem=LocalFileSystem())
    dofn.setup()
    return dofn


def _train(dofn, panes):
    version = dofn.initial_version
    versions = []
    for pane in panes:
        version = dofn._train_on_pane("m", version, pane) or version
        versions.append(version)
    return versions


def test_poisoned_version_is_rolled_back(tmp_path, caplog):
    # Pane 2 has flipped labels, so version 3 (trained on it) does much
    # worse on pane 3 than version 2 did.
    panes = [_pane(0), _pane(1), _pane(2, flip=True), _pane(3)]
    versions = _train(_trainer(tmp_path, rollback_factor=1.5), panes)

    last = versions[-1]
    assert last.version == 4
    assert last.metadata["rolled_back_from"] == 3
    assert "rolling back to version 2's weights" in caplog.text


def test_rollback_continues_from_predecessor(tmp_path):
    panes = [_pane(0), _pane(1), _pane(2, flip=True), _pane(3)]
    dofn = _trainer(tmp_path, rollback_factor=1.5)
    rolled = _train(dofn, panes)
    store = ModelStore(str(tmp_path))

    # Version 4 must be version 2 (weights, optimizer and RNG state) trained
    # on pane 3, with version 3's update discarded.
    reference = dofn._load_trainer(store.read_version(store.version_path("m", 2)))
    features = np.asarray([e.features for e in panes[3].events], dtype=np.float32)
    labels = np.asarray([e.label for e in panes[3].events])
    reference.learn_many(features, labels)

    rolled_state = store.load_model_state(rolled[-1].path)
    for name, tensor in reference.model.state_dict().items():
        assert torch.allclose(rolled_state[name], tensor, atol=1e-6), name


def test_no_rollback_without_factor(tmp_path):
    panes = [_pane(0), _pane(1), _pane(2, flip=True), _pane(3)]
    versions = _train(_trainer(tmp_path, rollback_factor=None), panes)
    assert versions[-1].metadata["rolled_back_from"] is None


def test_rollback_factor_validated(tmp_path):
    with pytest.raises(ValueError, match="rollback_factor must be at least 1, got 0.5"):
        _trainer(tmp_path, rollback_factor=0.5)
