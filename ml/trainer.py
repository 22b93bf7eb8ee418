"""Incremental training of a PyTorch model on a stream of labelled batches."""

import copy
import dataclasses
import logging
import math
from typing import Optional

import numpy as np
import torch
from torch import nn

from ml.models import CLASSIFICATION, StreamingModel

_LOGGER = logging.getLogger(__name__)

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """Hyperparameters of :class:`IncrementalTrainer`.

    ``steps_per_pane`` is the number of passes over each pane; ``batch_size``
    is the mini-batch size within a pass. ``max_loss`` is the quality gate's
    bound on the mean training loss of an update (None disables it).
    """

    learning_rate: float = 1e-2
    optimizer: str = "adam"
    steps_per_pane: int = 1
    batch_size: int = 64
    weight_decay: float = 0.0
    max_loss: Optional[float] = None
    seed: int = 0

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {sorted(OPTIMIZERS)}, got {self.optimizer!r}."
            )
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}.")
        if self.steps_per_pane < 1:
            raise ValueError(f"steps_per_pane must be at least 1, got {self.steps_per_pane}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}.")


@dataclasses.dataclass
class UpdateResult:
    """The outcome of one :meth:`IncrementalTrainer.learn_many` call."""

    accepted: bool
    loss: float
    examples: int
    reason: Optional[str] = None


class QualityGate:
    """Reject an update whose weights are not finite or whose loss is too high."""

    def __init__(self, max_loss: Optional[float] = None):
        self.max_loss = max_loss

    def check(self, model: nn.Module, loss: float) -> Optional[str]:
        """Return None when the update may be published, else the reason."""
        if not math.isfinite(loss):
            return f"training loss is not finite ({loss})"
        if self.max_loss is not None and loss > self.max_loss:
            return f"training loss {loss:.6g} exceeds the bound {self.max_loss:.6g}"
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                return f"parameter {name!r} has non-finite values"
        return None


class IncrementalTrainer:
    """Train a model in place, one batch of labelled examples at a time.

    The optimizer state survives between calls, which is what makes the
    training incremental rather than a restart per pane. Mini-batch order is
    drawn from a generator seeded once, so the same stream of batches gives
    the same weights. An update that fails the quality gate is rolled back:
    the weights and optimizer state return to what they were before it.
    """

    def __init__(
        self,
        model: StreamingModel,
        task: str,
        config: TrainerConfig = TrainerConfig(),
        device: str = "cpu",
    ):
        self.model = model.to(device)
        self.task = task
        self.config = config
        self.device = device
        self.gate = QualityGate(config.max_loss)
        self.optimizer = OPTIMIZERS[config.optimizer](
            self.model.parameters(),
            lr=config.learning_rate,
            weight_decay=config.weight_decay,
        )
        self.loss_fn = nn.CrossEntropyLoss() if task == CLASSIFICATION else nn.MSELoss()
        self.generator = torch.Generator().manual_seed(config.seed)

    def learn_many(self, features: np.ndarray, labels: np.ndarray) -> UpdateResult:
        """Train on one batch of examples and return the gate's verdict."""
        if len(features) == 0:
            return UpdateResult(accepted=False, loss=float("nan"), examples=0, reason="empty batch")

        inputs = torch.as_tensor(np.asarray(features, dtype=np.float32), device=self.device)
        targets = self._targets(labels)
        snapshot = self._snapshot()

        self.model.train()
        self.model.standardizer.update(inputs)
        loss = self._run_passes(inputs, targets)

        reason = self.gate.check(self.model, loss)
        if reason is not None:
            self._restore(snapshot)
            _LOGGER.warning("Rejected a model update on %d examples: %s.", len(features), reason)
            return UpdateResult(accepted=False, loss=loss, examples=len(features), reason=reason)
        return UpdateResult(accepted=True, loss=loss, examples=len(features))

    @torch.no_grad()
    def predict_many(self, features: np.ndarray) -> np.ndarray:
        """Return class probabilities, or regression values, for ``features``."""
        self.model.eval()
        inputs = torch.as_tensor(np.asarray(features, dtype=np.float32), device=self.device)
        outputs = self.model(inputs)
        if self.task == CLASSIFICATION:
            outputs = torch.softmax(outputs, dim=-1)
        return outputs.cpu().numpy()

    def _targets(self, labels: np.ndarray) -> torch.Tensor:
        if self.task == CLASSIFICATION:
            return torch.as_tensor(np.asarray(labels, dtype=np.int64), device=self.device)
        return torch.as_tensor(np.asarray(labels, dtype=np.float32), device=self.device)

    def _run_passes(self, inputs: torch.Tensor, targets: torch.Tensor) -> float:
        total_loss = 0.0
        total_examples = 0
        for _ in range(self.config.steps_per_pane):
            total_loss, total_examples = 0.0, 0
            order = torch.randperm(len(inputs), generator=self.generator).to(self.device)
            for start in range(0, len(inputs), self.config.batch_size):
                batch = order[start:start + self.config.batch_size]
                self.optimizer.zero_grad(set_to_none=True)
                loss = self.loss_fn(self.model(inputs[batch]), targets[batch])
                loss.backward()
                self.optimizer.step()
                total_loss += loss.item() * len(batch)
                total_examples += len(batch)
        # The last pass's mean loss, measured while training, is what the gate
        # judges: it reflects the weights that would be published.
        return total_loss / total_examples

    def _snapshot(self) -> tuple:
        return (
            copy.deepcopy(self.model.state_dict()),
            copy.deepcopy(self.optimizer.state_dict()),
        )

    def _restore(self, snapshot: tuple) -> None:
        model_state, optimizer_state = snapshot
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(optimizer_state)
