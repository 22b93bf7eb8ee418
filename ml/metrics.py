"""Prequential (test-then-train) metrics, mergeable so Beam can combine them.

Each accumulator adds one prediction at a time and merges with others, the
shape a ``CombineFn`` needs. Log loss clips probabilities to [1e-15, 1 - 1e-15]
so one confident mistake costs about 34.5 nats, not infinity.
"""

import dataclasses
import math
from typing import Optional, Sequence

from ml.models import CLASSIFICATION

_PROBABILITY_FLOOR = 1e-15


@dataclasses.dataclass
class PrequentialAccumulator:
    """Running sums for accuracy and log loss, or for MAE and RMSE."""

    task: str
    count: int = 0
    correct: int = 0
    log_loss_sum: float = 0.0
    absolute_error_sum: float = 0.0
    squared_error_sum: float = 0.0

    def add(self, label, prediction) -> None:
        """Add one labelled prediction: class probabilities or a real value."""
        self.count += 1
        if self.task == CLASSIFICATION:
            self._add_classification(int(label), prediction)
        else:
            error = float(prediction) - float(label)
            self.absolute_error_sum += abs(error)
            self.squared_error_sum += error * error

    def _add_classification(self, label: int, probabilities: Sequence[float]) -> None:
        predicted = max(range(len(probabilities)), key=probabilities.__getitem__)
        self.correct += int(predicted == label)
        probability = min(max(float(probabilities[label]), _PROBABILITY_FLOOR), 1 - _PROBABILITY_FLOOR)
        self.log_loss_sum -= math.log(probability)

    def merge(self, other: "PrequentialAccumulator") -> "PrequentialAccumulator":
        self.count += other.count
        self.correct += other.correct
        self.log_loss_sum += other.log_loss_sum
        self.absolute_error_sum += other.absolute_error_sum
        self.squared_error_sum += other.squared_error_sum
        return self

    def result(self) -> dict:
        """Return the metrics; empty accumulators give None, never a 0/0."""
        if self.task == CLASSIFICATION:
            return {
                "accuracy": self._mean(self.correct),
                "log_loss": self._mean(self.log_loss_sum),
            }
        mse = self._mean(self.squared_error_sum)
        return {
            "mae": self._mean(self.absolute_error_sum),
            "rmse": None if mse is None else math.sqrt(mse),
        }

    def _mean(self, total: float) -> Optional[float]:
        return None if self.count == 0 else total / self.count
