"""PyTorch models for tabular event streams.

Every model built here is wrapped in :class:`StreamingModel`, which puts an
online standardiser in front of the network. Streams rarely come with known
feature scales (salaries next to ratios), and the standardiser's running
statistics are buffers, so they travel in each checkpoint and inference uses
exactly the scaling the weights were trained with.
"""

import dataclasses
import importlib
import json
from typing import Optional, Sequence

import torch
from torch import nn

CLASSIFICATION = "classification"
REGRESSION = "regression"
TASKS = (CLASSIFICATION, REGRESSION)


class OnlineStandardizer(nn.Module):
    """Standardise inputs with running mean and variance (Welford's method).

    The statistics change only through :meth:`update`, which the trainer
    calls on each training batch, so inference never moves them.
    """

    def __init__(self, num_inputs: int, epsilon: float = 1e-6):
        super().__init__()
        self.epsilon = epsilon
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(num_inputs, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(num_inputs, dtype=torch.float64))

    @torch.no_grad()
    def update(self, features: torch.Tensor) -> None:
        batch = features.detach().to(torch.float64)
        batch_count = batch.shape[0]
        if batch_count == 0:
            return

        batch_mean = batch.mean(dim=0)
        batch_m2 = ((batch - batch_mean) ** 2).sum(dim=0)
        total = self.count + batch_count
        delta = batch_mean - self.mean

        self.mean += delta * batch_count / total
        self.m2 += batch_m2 + delta**2 * self.count * batch_count / total
        self.count.fill_(total)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.count < 2:
            return features
        std = torch.sqrt(self.m2 / (self.count - 1)) + self.epsilon
        return ((features - self.mean.to(features.dtype)) / std.to(features.dtype))


class MLP(nn.Module):
    """A multilayer perceptron with ReLU hidden layers."""

    def __init__(self, num_inputs: int, num_outputs: int, hidden: Sequence[int] = (64,)):
        super().__init__()
        layers = []
        width = num_inputs
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, num_outputs))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class MLPClassifier(MLP):
    """An MLP that returns one logit per class."""

    def __init__(self, num_inputs: int, num_classes: int, hidden: Sequence[int] = (64,)):
        if num_classes < 2:
            raise ValueError(
                f"num_classes must be at least 2, got {num_classes}; a binary "
                "label has num_classes=2."
            )
        super().__init__(num_inputs, num_classes, hidden)


class MLPRegressor(MLP):
    """An MLP that returns one real value per event."""

    def __init__(self, num_inputs: int, hidden: Sequence[int] = (64,)):
        super().__init__(num_inputs, 1, hidden)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(features).squeeze(-1)


class StreamingModel(nn.Module):
    """A network behind an :class:`OnlineStandardizer`."""

    def __init__(self, network: nn.Module, num_inputs: int):
        super().__init__()
        self.standardizer = OnlineStandardizer(num_inputs)
        self.network = network

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.network(self.standardizer(features))


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model's architecture on any worker.

    ``model_class`` is ``"package.module:ClassName"`` for a user's own
    ``nn.Module``; it is constructed as ``cls(num_inputs, num_outputs,
    **model_kwargs)``. When it is None, the built-in MLP for ``task`` is used.
    """

    task: str
    num_inputs: int
    num_outputs: int
    hidden: tuple = (64,)
    model_class: Optional[str] = None
    model_kwargs: tuple = ()

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}.")
        if self.num_inputs < 1:
            raise ValueError(
                f"num_inputs must be positive, got {self.num_inputs}; the schema "
                "has no model input features."
            )
        if self.task == REGRESSION and self.num_outputs != 1:
            raise ValueError(
                f"a regression model has num_outputs=1, got {self.num_outputs}."
            )

    def to_json(self) -> str:
        fields = dataclasses.asdict(self)
        fields["model_kwargs"] = dict(self.model_kwargs)
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        fields = json.loads(text)
        fields["hidden"] = tuple(fields["hidden"])
        fields["model_kwargs"] = tuple(sorted(fields["model_kwargs"].items()))
        return cls(**fields)


def import_model_class(path: str) -> type:
    """Import ``"package.module:ClassName"`` and check it is an nn.Module."""
    module_name, separator, class_name = path.partition(":")
    if not separator or not module_name or not class_name:
        raise ValueError(
            f"model class {path!r} is not of the form 'package.module:ClassName', "
            "for example 'ml.models:MLPClassifier'."
        )
    module = importlib.import_module(module_name)
    model_class = getattr(module, class_name, None)
    if not (isinstance(model_class, type) and issubclass(model_class, nn.Module)):
        raise ValueError(f"{path!r} does not name a torch.nn.Module subclass.")
    return model_class


def build_model(spec: ModelSpec, seed: int = 0) -> StreamingModel:
    """Build the model for ``spec`` with weights drawn from ``seed``.

    The global torch RNG is left untouched, so building a model in the
    middle of a pipeline changes no other random stream.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if spec.model_class is not None:
            model_class = import_model_class(spec.model_class)
            network = model_class(spec.num_inputs, spec.num_outputs, **dict(spec.model_kwargs))
        elif spec.task == CLASSIFICATION:
            network = MLPClassifier(spec.num_inputs, spec.num_outputs, spec.hidden)
        else:
            network = MLPRegressor(spec.num_inputs, spec.hidden)
    return StreamingModel(network, spec.num_inputs)
