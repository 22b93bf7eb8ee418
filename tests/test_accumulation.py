"""Tests for the gradient-accumulation optimizer step."""

import copy

import pytest
import torch
from torch import nn

from ml.accumulation import accumulated_step


def make_model() -> nn.Module:
    """Return a small MLP with weights drawn from a fixed seed."""
    generator = torch.Generator().manual_seed(7)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model


def make_batches(steps: int, batch_size: int = 10):
    generator = torch.Generator().manual_seed(11)
    for _ in range(steps):
        features = torch.randn(batch_size, 3, generator=generator)
        labels = torch.randint(0, 2, (batch_size,), generator=generator)
        yield features, labels


def full_batch_step(model, optimizer, loss_fn, features, labels) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(features), labels)
    loss.backward()
    optimizer.step()
    return loss.item()


def max_weight_difference(first: nn.Module, second: nn.Module) -> float:
    return max(
        (a - b).abs().max().item()
        for a, b in zip(first.parameters(), second.parameters())
    )


def test_single_step_known_answer():
    # One weight w = 1 fitted to y = 2x with mean squared error: the gradient
    # is 2 (w - 2) mean(x^2) = -28/3, so SGD at lr 0.1 moves w to 1 + 2.8/3.
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    features = torch.tensor([[1.0], [2.0], [3.0]])
    labels = 2 * features

    loss = accumulated_step(model, optimizer, nn.MSELoss(), features, labels, micro_batch_size=2)

    assert loss == pytest.approx(14 / 3)
    assert model.weight.item() == pytest.approx(1 + 2.8 / 3)


@pytest.mark.parametrize(
    "optimizer_factory",
    [
        lambda parameters: torch.optim.SGD(parameters, lr=0.1),
        lambda parameters: torch.optim.SGD(parameters, lr=0.1, momentum=0.9),
        lambda parameters: torch.optim.Adam(parameters, lr=0.01),
    ],
    ids=["sgd", "sgd_momentum", "adam"],
)
@pytest.mark.parametrize("micro_batch_size", [1, 3, 4, 10, 16])
def test_matches_full_batch(optimizer_factory, micro_batch_size):
    reference = make_model()
    accumulated = copy.deepcopy(reference)
    reference_optimizer = optimizer_factory(reference.parameters())
    accumulated_optimizer = optimizer_factory(accumulated.parameters())
    loss_fn = nn.CrossEntropyLoss()

    for features, labels in make_batches(steps=5):
        expected_loss = full_batch_step(reference, reference_optimizer, loss_fn, features, labels)
        loss = accumulated_step(
            accumulated, accumulated_optimizer, loss_fn, features, labels, micro_batch_size
        )
        assert loss == pytest.approx(expected_loss, abs=1e-6)

    assert max_weight_difference(reference, accumulated) < 1e-6
    assert max_weight_difference(reference, make_model()) > 1e-3


def test_unscaled_accumulation_differs():
    # Guards the test above: summing unscaled micro-batch losses would be
    # caught, because it changes the weights by far more than the tolerance.
    reference = make_model()
    summed = copy.deepcopy(reference)
    loss_fn = nn.CrossEntropyLoss()
    features, labels = next(make_batches(steps=1))

    full_batch_step(reference, torch.optim.SGD(reference.parameters(), lr=0.1), loss_fn, features, labels)
    accumulated_step(
        summed,
        torch.optim.SGD(summed.parameters(), lr=0.1),
        lambda outputs, targets: loss_fn(outputs, targets) * len(features) / len(outputs),
        features,
        labels,
        micro_batch_size=3,
    )

    assert max_weight_difference(reference, summed) > 1e-3


def test_stale_gradients_cleared():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    reference = copy.deepcopy(model)
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    features, labels = next(make_batches(steps=1))
    for parameter in model.parameters():
        parameter.grad = torch.full_like(parameter, 5.0)

    accumulated_step(model, optimizer, nn.CrossEntropyLoss(), features, labels, micro_batch_size=4)
    full_batch_step(reference, reference_optimizer, nn.CrossEntropyLoss(), features, labels)

    assert max_weight_difference(reference, model) < 1e-6


@pytest.mark.parametrize(
    "micro_batch_size, features, labels, message",
    [
        (0, torch.zeros(4, 3), torch.zeros(4), r"micro_batch_size must be a positive integer, got 0"),
        (2.0, torch.zeros(4, 3), torch.zeros(4), r"micro_batch_size must be a positive integer, got 2.0"),
        (2, torch.zeros(0, 3), torch.zeros(0), r"features must contain at least one example"),
        (2, torch.zeros(4, 3), torch.zeros(3), r"got 4 features and 3 labels"),
    ],
)
def test_rejects_bad_input(micro_batch_size, features, labels, message):
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    with pytest.raises(ValueError, match=message):
        accumulated_step(model, optimizer, nn.MSELoss(), features, labels, micro_batch_size)
