import numpy as np
import pytest
import torch
from torch import nn

from ml.ewc import ElasticWeightConsolidation, diagonal_fisher
from ml.models import ModelSpec, build_model
from ml.trainer import IncrementalTrainer, TrainerConfig


def line_model(weight: float) -> nn.Linear:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(weight)
    return model


def squared_error(outputs, targets):
    return ((outputs.squeeze(-1) - targets) ** 2).mean()


def test_fisher_known_values():
    # For loss (w x - y)^2 the per-example gradient is 2 (w x - y) x.
    model = line_model(2.0)
    inputs = torch.tensor([[1.0], [2.0], [-1.0]])
    targets = torch.tensor([1.0, 1.0, 0.0])

    fisher = diagonal_fisher(model, squared_error, inputs, targets)

    gradients = 2 * (2.0 * inputs[:, 0] - targets) * inputs[:, 0]
    assert fisher["weight"].item() == pytest.approx(float((gradients**2).mean()))


def test_fisher_leaves_model_alone():
    model = line_model(2.0)
    model.train()
    model.weight.grad = torch.tensor([[5.0]])

    diagonal_fisher(model, squared_error, torch.ones(4, 1), torch.zeros(4))

    assert model.training
    assert model.weight.grad.item() == 5.0
    assert model.weight.item() == 2.0


def test_penalty_zero_at_anchor():
    model = line_model(2.0)
    ewc = ElasticWeightConsolidation(strength=3.0)

    assert ewc.penalty(model).item() == 0.0
    ewc.consolidate(model, squared_error, torch.tensor([[1.0]]), torch.tensor([0.0]))

    assert ewc.penalty(model).item() == 0.0


def test_penalty_known_value():
    model = line_model(2.0)
    ewc = ElasticWeightConsolidation(strength=3.0)
    ewc.consolidate(model, squared_error, torch.tensor([[1.0]]), torch.tensor([0.0]))

    with torch.no_grad():
        model.weight.fill_(2.5)

    # Fisher = (2 * 2 * 1)^2 = 16, so the penalty is 3 / 2 * 16 * 0.5^2.
    assert ewc.penalty(model).item() == pytest.approx(6.0)


def test_penalty_gradient_pulls_back():
    model = line_model(2.0)
    ewc = ElasticWeightConsolidation(strength=1.0)
    ewc.consolidate(model, squared_error, torch.tensor([[1.0]]), torch.tensor([0.0]))
    with torch.no_grad():
        model.weight.fill_(3.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    for _ in range(20):
        optimizer.zero_grad()
        ewc.penalty(model).backward()
        optimizer.step()

    assert 2.0 <= model.weight.item() < 2.5


def test_consolidations_accumulate_with_decay():
    model = line_model(1.0)
    ewc = ElasticWeightConsolidation(strength=1.0, decay=0.5)
    inputs, targets = torch.tensor([[1.0]]), torch.tensor([0.0])

    ewc.consolidate(model, squared_error, inputs, targets)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ewc.consolidate(model, squared_error, inputs, targets)

    # Fisher values are (2 * 1)^2 = 4 and then (2 * 3)^2 = 36.
    assert ewc.fisher["weight"].item() == pytest.approx(0.5 * 4 + 36)
    assert ewc.anchors["weight"].item() == 3.0
    assert ewc.consolidations == 2


def test_ewc_state_round_trip():
    model = line_model(2.0)
    ewc = ElasticWeightConsolidation(strength=2.0)
    ewc.consolidate(model, squared_error, torch.tensor([[1.0], [3.0]]), torch.tensor([0.0, 1.0]))

    restored = ElasticWeightConsolidation(strength=2.0)
    restored.load_state_tensors(ewc.state_tensors())
    with torch.no_grad():
        model.weight.fill_(-1.0)

    assert restored.penalty(model).item() == ewc.penalty(model).item() > 0
    assert restored.consolidations == 1


def test_ewc_rejects_bad_input():
    with pytest.raises(ValueError, match="EWC strength \\(lambda\\) must be positive, got 0"):
        ElasticWeightConsolidation(strength=0.0)
    with pytest.raises(ValueError, match="EWC decay must be in \\[0, 1\\], got 1.5"):
        ElasticWeightConsolidation(strength=1.0, decay=1.5)


def labelled(rng, size, flipped):
    features = rng.normal(size=(size, 2)).astype(np.float32)
    labels = (features[:, 0] > 0).astype(np.int64)
    return features, (1 - labels) if flipped else labels


def distance_after_new_concept(ewc_lambda: float) -> tuple:
    """Train on concept A, then on its label flip B; return drift from A's weights."""
    spec = ModelSpec("classification", num_inputs=2, num_outputs=2, hidden=(8,))
    config = TrainerConfig(ewc_lambda=ewc_lambda, ewc_every_panes=10, seed=5)
    trainer = IncrementalTrainer(build_model(spec, seed=5), "classification", config)
    rng = np.random.default_rng(1)
    for _ in range(10):
        trainer.learn_many(*labelled(rng, 50, flipped=False))
    weights_a = [parameter.detach().clone() for parameter in trainer.model.parameters()]

    for _ in range(9):
        trainer.learn_many(*labelled(rng, 50, flipped=True))
    moved = sum(
        float(((parameter.detach() - anchor) ** 2).sum())
        for parameter, anchor in zip(trainer.model.parameters(), weights_a)
    )
    return moved, trainer


def test_trainer_ewc_stays_closer():
    moved_with_ewc, with_ewc = distance_after_new_concept(ewc_lambda=1000.0)
    moved_without, _ = distance_after_new_concept(ewc_lambda=0.0)

    assert with_ewc.ewc.consolidations == 1
    assert moved_with_ewc < 0.5 * moved_without
