"""Elastic Weight Consolidation (EWC) for a model trained on a stream.

EWC (Kirkpatrick et al., 2017, "Overcoming catastrophic forgetting in
neural networks") adds the penalty

    (lambda / 2) * sum_i F_i * (theta_i - theta*_i) ** 2

to the training loss, where theta* are the weights at the last
consolidation ("anchors") and F is the diagonal of the Fisher information
there: weights that mattered for the old data become stiff, the others
stay free. On a stream there are no task boundaries, so the trainer
consolidates after a detected drift or every K panes, and consolidations
accumulate as in online EWC: F <- decay * F + F_new, with the newest
weights as anchors.
"""

import logging
from typing import Callable, Dict, Optional

import torch
from torch import nn

_LOGGER = logging.getLogger(__name__)


def diagonal_fisher(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
) -> Dict[str, torch.Tensor]:
    """Estimate the diagonal empirical Fisher of ``model`` on a batch.

    F_i is the mean over examples of the squared gradient of the per-example
    loss (the negative log-likelihood for cross-entropy) at the observed
    targets. Gradients are taken one example at a time, because the square
    of a batch gradient is not the mean of per-example squares. The model's
    mode and its ``.grad`` fields are left as they were.
    """
    parameters = {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}
    fisher = {name: torch.zeros_like(parameter) for name, parameter in parameters.items()}
    if len(inputs) == 0:
        return fisher

    was_training = model.training
    saved_grads = {name: parameter.grad for name, parameter in parameters.items()}
    model.eval()
    try:
        for index in range(len(inputs)):
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model(inputs[index:index + 1]), targets[index:index + 1])
            loss.backward()
            for name, parameter in parameters.items():
                if parameter.grad is not None:
                    fisher[name] += parameter.grad.detach() ** 2
    finally:
        model.train(was_training)
        for name, parameter in parameters.items():
            parameter.grad = saved_grads[name]

    return {name: value / len(inputs) for name, value in fisher.items()}


class ElasticWeightConsolidation:
    """Anchors, accumulated Fisher diagonal and the penalty they define.

    ``strength`` is lambda in the penalty. ``decay`` multiplies the previous
    Fisher diagonal at each consolidation: 1.0 keeps every consolidation at
    full weight, 0.0 keeps only the newest.
    """

    def __init__(self, strength: float, decay: float = 0.9):
        if not strength > 0:
            raise ValueError(
                f"EWC strength (lambda) must be positive, got {strength}; pass 0 to the "
                "trainer's ewc_lambda to turn EWC off instead."
            )
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EWC decay must be in [0, 1], got {decay}.")
        self.strength = strength
        self.decay = decay
        self.consolidations = 0
        self.anchors: Dict[str, torch.Tensor] = {}
        self.fisher: Dict[str, torch.Tensor] = {}

    @property
    def anchored(self) -> bool:
        return bool(self.anchors)

    def consolidate(
        self,
        model: nn.Module,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        inputs: torch.Tensor,
        targets: torch.Tensor,
    ) -> None:
        """Anchor at the current weights and add the Fisher diagonal on a batch."""
        new_fisher = diagonal_fisher(model, loss_fn, inputs, targets)
        for name, value in new_fisher.items():
            previous = self.fisher.get(name)
            self.fisher[name] = value if previous is None else self.decay * previous + value
        self.anchors = {
            name: parameter.detach().clone() for name, parameter in model.named_parameters()
            if name in new_fisher
        }
        self.consolidations += 1
        _LOGGER.info(
            "EWC consolidation %d on %d examples; mean Fisher diagonal %.4g.",
            self.consolidations, len(inputs), self._mean_fisher(),
        )

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """Return (lambda / 2) * sum F (theta - theta*)^2, zero before any consolidation."""
        total: Optional[torch.Tensor] = None
        for name, parameter in model.named_parameters():
            if name not in self.anchors:
                continue
            term = (self.fisher[name] * (parameter - self.anchors[name]) ** 2).sum()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return 0.5 * self.strength * total

    def _mean_fisher(self) -> float:
        values = [value.flatten() for value in self.fisher.values()]
        return float(torch.cat(values).mean()) if values else 0.0

    def state_tensors(self) -> Dict[str, torch.Tensor]:
        """Return anchors and Fisher diagonal, keyed ``anchor.<name>`` and ``fisher.<name>``."""
        tensors = {"consolidations": torch.tensor([self.consolidations], dtype=torch.int64)}
        for name, value in self.anchors.items():
            tensors[f"anchor.{name}"] = value.detach().cpu().contiguous()
            tensors[f"fisher.{name}"] = self.fisher[name].detach().cpu().contiguous()
        return tensors

    def load_state_tensors(self, tensors: Dict[str, torch.Tensor], device: str = "cpu") -> None:
        """Restore the state saved by :meth:`state_tensors`."""
        self.consolidations = int(tensors["consolidations"][0])
        self.anchors = {
            key[len("anchor."):]: value.to(device, copy=True) for key, value in tensors.items()
            if key.startswith("anchor.")
        }
        self.fisher = {
            key[len("fisher."):]: value.to(device, copy=True) for key, value in tensors.items()
            if key.startswith("fisher.")
        }
