"""A seeded reservoir-sampling replay buffer of labelled examples.

Replaying a uniform sample of everything seen so far alongside each new
mini-batch is the simplest defence against catastrophic forgetting: old
concepts keep contributing gradients after the stream has moved on.
"""

from typing import Dict, Optional

import torch

class ReservoirReplayBuffer:
    """A uniform sample of at most ``capacity`` (features, label) pairs.

    Insertion follows Vitter's Algorithm R: the n-th example (zero-based)
    fills a free slot while n < capacity, and afterwards replaces a uniformly
    chosen slot with probability capacity / (n + 1). Every example seen so
    far is then in the buffer with the same probability. Insertion and
    :meth:`sample` draw from one ``torch.Generator`` seeded once, so the same
    stream and calls give the same contents and samples, also after a
    :meth:`state_tensors` round trip.
    """

    def __init__(self, capacity: int, seed: int = 0):
        if capacity < 1:
            raise ValueError(
                f"capacity must be at least 1, got {capacity}; for example capacity=1000."
            )
        self.capacity = capacity
        self.seen = 0
        self.generator = torch.Generator().manual_seed(seed)
        self.features: Optional[torch.Tensor] = None
        self.labels: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return min(self.seen, self.capacity)

    def add_many(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Offer each example, in order, to the reservoir."""
        features = torch.as_tensor(features).detach().cpu()
        labels = torch.as_tensor(labels).detach().cpu()
        if len(features) != len(labels):
            raise ValueError(
                f"features has {len(features)} rows but labels has {len(labels)}; "
                "pass one label per row."
            )
        if len(features) == 0:
            return
        if self.features is None:
            self.features = torch.zeros((self.capacity,) + features.shape[1:], dtype=features.dtype)
            self.labels = torch.zeros((self.capacity,) + labels.shape[1:], dtype=labels.dtype)

        # One uniform draw per example keeps the generator's consumption
        # independent of how the stream is split into calls.
        uniforms = torch.rand(len(features), generator=self.generator, dtype=torch.float64)
        for index in range(len(features)):
            slot = self._slot_for(uniforms[index].item())
            if slot is not None:
                self.features[slot] = features[index]
                self.labels[slot] = labels[index]
            self.seen += 1

    def _slot_for(self, uniform: float) -> Optional[int]:
        if self.seen < self.capacity:
            return self.seen
        # A uniform integer in [0, seen]: the example is kept when it lands
        # inside the buffer, which happens with probability capacity / (seen + 1).
        candidate = int(uniform * (self.seen + 1))
        return candidate if candidate < self.capacity else None

    def sample(self, count: int) -> tuple:
        """Draw ``count`` stored examples uniformly without replacement.

        Returns fewer when the buffer contains fewer, and ``(None, None)`` when
        it is empty.
        """
        size = len(self)
        count = min(count, size)
        if count <= 0 or self.features is None:
            return None, None
        chosen = torch.randperm(size, generator=self.generator)[:count]
        return self.features[chosen], self.labels[chosen]

    def state_tensors(self) -> Dict[str, torch.Tensor]:
        """Return the contents, the count seen and the generator state."""
        tensors = {
            "seen": torch.tensor([self.seen], dtype=torch.int64),
            "generator": self.generator.get_state(),
        }
        if self.features is not None:
            tensors["features"] = self.features[: len(self)].clone()
            tensors["labels"] = self.labels[: len(self)].clone()
        return tensors

    def load_state_tensors(self, tensors: Dict[str, torch.Tensor]) -> None:
        """Restore the state saved by :meth:`state_tensors`."""
        self.seen = int(tensors["seen"][0])
        self.generator.set_state(tensors["generator"])
        if "features" not in tensors:
            self.features = None
            self.labels = None
            return
        stored_features = tensors["features"]
        stored_labels = tensors["labels"]
        self.features = torch.zeros(
            (self.capacity,) + stored_features.shape[1:], dtype=stored_features.dtype
        )
        self.labels = torch.zeros((self.capacity,) + stored_labels.shape[1:], dtype=stored_labels.dtype)
        stored = min(len(stored_features), self.capacity)
        self.features[:stored] = stored_features[:stored]
        self.labels[:stored] = stored_labels[:stored]

