import json
import os

import numpy as np
import pytest
import torch

from ml.metrics import PrequentialAccumulator
from ml.models import ModelSpec, build_model
from ml.store import ModelStore, validate_model_name
from ml.trainer import IncrementalTrainer


def trained_trainer():
    trainer = IncrementalTrainer(build_model(ModelSpec("classification", 2, 2, (4,))), "classification")
    features = np.random.default_rng(0).normal(size=(32, 2)).astype(np.float32)
    trainer.learn_many(features, (features[:, 0] > 0).astype(np.int64))
    return trainer


def test_publish_and_load_round_trip(tmp_path):
    store = ModelStore(str(tmp_path))
    trainer = trained_trainer()

    published = store.publish("m", 1, trainer.model.state_dict(), 100.0, {"loss": 0.5},
                              optimizer_state=trainer.optimizer.state_dict())

    loaded = store.load_model_state(published.path)
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(loaded[name], tensor)
    optimizer_state, _ = store.load_optimizer_state(published.path)
    fresh = IncrementalTrainer(build_model(ModelSpec("classification", 2, 2, (4,))), "classification")
    fresh.optimizer.load_state_dict(optimizer_state)
    assert fresh.optimizer.state_dict()["state"][0]["step"] == trainer.optimizer.state_dict()["state"][0]["step"]
    assert store.read_version(published.path).metadata == {"loss": 0.5}


def test_published_version_is_immutable(tmp_path):
    store = ModelStore(str(tmp_path))
    state = trained_trainer().model.state_dict()
    store.publish("m", 1, state, 1.0)
    with pytest.raises(FileExistsError, match="already published"):
        store.publish("m", 1, state, 2.0)


def test_manifest_lists_versions_in_order(tmp_path):
    store = ModelStore(str(tmp_path))
    state = trained_trainer().model.state_dict()
    for version in (0, 2, 1):
        store.publish("m", version, state, float(version))

    with open(tmp_path / "m" / "manifest.json") as file:
        manifest = json.load(file)
    assert [entry["version"] for entry in manifest["versions"]] == [0, 1, 2]
    assert store.latest("m").version == 2


def test_uncommitted_version_is_invisible(tmp_path):
    store = ModelStore(str(tmp_path))
    store.publish("m", 1, trained_trainer().model.state_dict(), 1.0)
    # A crash after the weights but before metadata.json leaves this behind.
    os.makedirs(tmp_path / "m" / "v000002")
    (tmp_path / "m" / "v000002" / "model.safetensors").write_bytes(b"partial")

    assert [version.version for version in store.versions("m")] == [1]
    with pytest.raises(FileNotFoundError, match="never committed"):
        store.read_version(str(tmp_path / "m" / "v000002"))


def test_no_temporary_files_left(tmp_path):
    store = ModelStore(str(tmp_path))
    store.publish("m", 1, trained_trainer().model.state_dict(), 1.0)
    leftovers = [name for _, _, files in os.walk(tmp_path) for name in files if ".tmp-" in name]
    assert leftovers == []


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", "x" * 200])
def test_model_name_cannot_escape_root(name):
    with pytest.raises(ValueError, match="model name .* is invalid"):
        validate_model_name(name)


def test_load_rejects_path_outside_store(tmp_path):
    store = ModelStore(str(tmp_path / "store"))
    with pytest.raises(ValueError, match="not a version directory of the model store"):
        store.load_model_state(str(tmp_path / "store" / "m" / ".." / ".." / "elsewhere" / "v000001"))


def test_classification_metrics_known_answer():
    accumulator = PrequentialAccumulator("classification")
    accumulator.add(1, [0.2, 0.8])
    accumulator.add(0, [0.4, 0.6])

    result = accumulator.result()

    assert result["accuracy"] == 0.5
    assert result["log_loss"] == pytest.approx((-np.log(0.8) - np.log(0.4)) / 2)


def test_regression_metrics_merge():
    first, second = PrequentialAccumulator("regression"), PrequentialAccumulator("regression")
    first.add(1.0, 2.0)
    second.add(0.0, -3.0)

    result = first.merge(second).result()

    assert result["mae"] == 2.0
    assert result["rmse"] == pytest.approx(np.sqrt(5.0))


def test_empty_metrics_are_none():
    assert PrequentialAccumulator("classification").result() == {"accuracy": None, "log_loss": None}
