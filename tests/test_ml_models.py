import numpy as np
import pytest
import torch

from ml.models import MLPClassifier, ModelSpec, OnlineStandardizer, StreamingModel, build_model, import_model_class
from ml.trainer import IncrementalTrainer, QualityGate, TrainerConfig


def hand_weighted_classifier() -> StreamingModel:
    """A linear classifier with known weights: logits = [0, x0 - x1]."""
    network = MLPClassifier(num_inputs=2, num_classes=2, hidden=())
    with torch.no_grad():
        linear = network.layers[0]
        linear.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, -1.0]]))
        linear.bias.zero_()
    return StreamingModel(network, num_inputs=2)


def test_hand_weighted_classifier_known_probabilities():
    trainer = IncrementalTrainer(hand_weighted_classifier(), "classification")

    probabilities = trainer.predict_many(np.array([[2.0, 1.0], [0.0, 0.0], [0.0, 3.0]]))

    expected_positive = 1 / (1 + np.exp(-np.array([1.0, 0.0, -3.0])))
    np.testing.assert_allclose(probabilities[:, 1], expected_positive, rtol=1e-6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)


def test_standardizer_matches_numpy():
    standardizer = OnlineStandardizer(num_inputs=2)
    data = np.random.default_rng(1).normal(loc=[5.0, -3.0], scale=[2.0, 0.5], size=(300, 2))

    for chunk in np.array_split(data, 7):
        standardizer.update(torch.tensor(chunk))
    output = standardizer(torch.tensor(data)).numpy()

    expected = (data - data.mean(axis=0)) / data.std(axis=0, ddof=1)
    np.testing.assert_allclose(output, expected, atol=1e-5)


def test_build_model_same_seed_same_weights():
    spec = ModelSpec("classification", num_inputs=4, num_outputs=3, hidden=(8,))

    first = build_model(spec, seed=7).state_dict()
    second = build_model(spec, seed=7).state_dict()
    other = build_model(spec, seed=8).state_dict()

    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not torch.equal(first["network.layers.0.weight"], other["network.layers.0.weight"])


def test_build_model_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model(ModelSpec("regression", num_inputs=2, num_outputs=1), seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_model_spec_json_round_trip():
    spec = ModelSpec("classification", 3, 2, (16, 8), "ml.models:MLPClassifier", (("hidden", [4]),))
    assert ModelSpec.from_json(spec.to_json()) == spec


def test_user_model_class_is_built():
    spec = ModelSpec("classification", 3, 2, model_class="ml.models:MLPClassifier",
                     model_kwargs=(("hidden", (5,)),))
    model = build_model(spec)
    assert model.network.layers[0].out_features == 5


def test_import_model_class_rejects_bad_path():
    with pytest.raises(ValueError, match="not of the form 'package.module:ClassName'"):
        import_model_class("ml.models.MLPClassifier")
    with pytest.raises(ValueError, match="does not name a torch.nn.Module subclass"):
        import_model_class("ml.models:build_model")


def test_trainer_same_seed_same_weights():
    data = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)
    labels = (data[:, 0] > 0).astype(np.int64)
    spec = ModelSpec("classification", 3, 2, (8,))

    def train(seed):
        trainer = IncrementalTrainer(build_model(spec, seed), "classification", TrainerConfig(seed=seed))
        for chunk in range(4):
            trainer.learn_many(data[chunk * 50:(chunk + 1) * 50], labels[chunk * 50:(chunk + 1) * 50])
        return trainer.model.state_dict()

    first, second = train(3), train(3)
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_trainer_learns_separable_stream():
    rng = np.random.default_rng(0)
    spec = ModelSpec("classification", 2, 2, (16,))
    trainer = IncrementalTrainer(build_model(spec), "classification", TrainerConfig(learning_rate=0.05))
    for _ in range(20):
        features = rng.normal(size=(64, 2)).astype(np.float32)
        trainer.learn_many(features, (features[:, 0] + features[:, 1] > 0).astype(np.int64))

    test = rng.normal(size=(500, 2)).astype(np.float32)
    accuracy = (trainer.predict_many(test).argmax(axis=1) == (test.sum(axis=1) > 0)).mean()
    assert accuracy > 0.95


def test_gate_rejects_loss_above_bound_and_rolls_back():
    spec = ModelSpec("regression", 1, 1, (4,))
    trainer = IncrementalTrainer(build_model(spec), "regression", TrainerConfig(max_loss=1.0))
    before = {name: tensor.clone() for name, tensor in trainer.model.state_dict().items()}

    result = trainer.learn_many(np.ones((8, 1), np.float32), np.full(8, 1e6, np.float32))

    assert not result.accepted
    assert "exceeds the bound" in result.reason
    after = trainer.model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_gate_rejects_non_finite_weights():
    model = hand_weighted_classifier()
    with torch.no_grad():
        model.network.layers[0].weight[0, 0] = float("nan")
    reason = QualityGate().check(model, loss=0.5)
    assert reason == "parameter 'network.layers.0.weight' has non-finite values"


def test_trainer_config_rejects_bad_values():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        TrainerConfig(optimizer="lbfgs")
    with pytest.raises(ValueError, match="steps_per_pane must be at least 1, got 0"):
        TrainerConfig(steps_per_pane=0)
