"""One optimizer step over a batch that is run in micro-batches.

Gradient accumulation trades time for memory: the activations of only one
micro-batch are alive at a time, while the step still follows the gradient
of the whole batch.
"""

from typing import Callable

import torch
from torch import nn


def accumulated_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    features: torch.Tensor,
    labels: torch.Tensor,
    micro_batch_size: int,
) -> float:
    """Take one optimizer step on ``features`` and ``labels``, in micro-batches.

    ``loss_fn`` must return the mean loss over its micro-batch (PyTorch's
    default ``reduction="mean"``). Each micro-batch loss is scaled by the
    micro-batch's share of the batch before ``backward``, so the accumulated
    gradient equals the gradient of the mean loss over the whole batch, also
    when the last micro-batch is smaller. The equality holds only for models
    whose output for one example does not depend on the others in the
    micro-batch, which rules out BatchNorm in training mode.

    Returns the mean loss over the batch as a float.
    """
    _validate(features, labels, micro_batch_size)
    batch_size = len(features)

    optimizer.zero_grad(set_to_none=True)
    # Kept on the device so the step synchronises with the host only once.
    scaled_losses = []
    for micro_features, micro_labels in zip(
        torch.split(features, micro_batch_size), torch.split(labels, micro_batch_size)
    ):
        share = len(micro_features) / batch_size
        loss = loss_fn(model(micro_features), micro_labels) * share
        loss.backward()
        scaled_losses.append(loss.detach())

    optimizer.step()
    return torch.stack(scaled_losses).sum().item()


def _validate(features, labels, micro_batch_size) -> None:
    if not isinstance(micro_batch_size, int) or isinstance(micro_batch_size, bool) or micro_batch_size < 1:
        raise ValueError(
            f"micro_batch_size must be a positive integer, got {micro_batch_size!r}; "
            f"pass the number of examples whose activations fit in memory."
        )
    if len(features) == 0:
        raise ValueError("features must contain at least one example, got an empty batch.")
    if len(features) != len(labels):
        raise ValueError(
            f"features and labels must have the same length, got {len(features)} "
            f"features and {len(labels)} labels."
        )
