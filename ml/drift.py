"""Concept drift detection on a model's prequential errors.

The trainer predicts each pane before it trains on it (predict-then-train),
so every labelled event yields one error of the model that served it: 0 or 1
for a classification, the absolute error for a regression. A
:class:`DriftMonitor` feeds these errors, in event-time order, to one of
River's drift detectors and returns a :class:`DriftEvent` for each detection.

The monitor restarts its detector after each detection, so every detection
measures a change relative to the concept learned since the previous one.
ADWIN and KSWIN also fire when the error rate falls, as it does while a
model learns. By default the monitor restarts on such a change but reports
only rising error rates, because those are the drifts a model must react to.
Detector objects cannot be checkpointed without pickle, because ADWIN's
state lives in a compiled helper. The monitor therefore keeps the errors fed
to the current detector and rebuilds it by replaying them (see
:meth:`DriftMonitor.state_tensors`).
"""

import dataclasses
import logging
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from river import drift

from ml.models import CLASSIFICATION

_LOGGER = logging.getLogger(__name__)

ADWIN = "adwin"
PAGE_HINKLEY = "page_hinkley"
KSWIN = "kswin"
DETECTORS = (ADWIN, PAGE_HINKLEY, KSWIN)

# Defaults that differ from River's (any River parameter can still be
# passed). Page-Hinkley watches both directions by default, but a rising
# error rate is the drift that matters for a model. KSWIN's default windows
# (100 errors, 30 of them recent) are too small for 0/1 errors: a jump from
# 10% to 50% errors gives a Kolmogorov-Smirnov p-value near 0.01 on 30
# against 30 samples, above its alpha of 0.005.
_DEFAULT_PARAMS = {
    ADWIN: {},
    PAGE_HINKLEY: {"mode": "up"},
    KSWIN: {"window_size": 300, "stat_size": 100},
}


@dataclasses.dataclass(frozen=True)
class DriftEvent:
    """One drift detection.

    ``event_time`` (seconds) and ``position`` (zero-based index among all
    errors the monitor has seen) locate the error that triggered it.
    ``statistic`` names the detector's summary and ``value`` is its value:
    ADWIN's ``estimation`` (mean error in its window after the cut), KSWIN's
    ``p_value``, or Page-Hinkley's input ``mean``. ``error_rate`` is the mean
    error since the previous detection. ``model_version`` is the version
    whose predictions were monitored, when the caller passed one.
    """

    event_time: float
    position: int
    detector: str
    statistic: str
    value: float
    error_rate: float
    model_version: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def make_detector(name: str, params: Optional[Dict[str, Any]] = None, seed: int = 0):
    """Build River's drift detector ``name`` with ``params`` over the defaults.

    KSWIN draws random reference samples, so it gets ``seed`` unless
    ``params`` sets one.
    """
    if name not in DETECTORS:
        raise ValueError(
            f"drift detector must be one of {DETECTORS}, got {name!r}; for example "
            f"drift_detector='{ADWIN}'."
        )
    arguments = dict(_DEFAULT_PARAMS[name])
    arguments.update(params or {})
    try:
        if name == ADWIN:
            return drift.ADWIN(**arguments)
        if name == PAGE_HINKLEY:
            return drift.PageHinkley(**arguments)
        arguments.setdefault("seed", seed)
        return drift.KSWIN(**arguments)
    except TypeError as error:
        raise ValueError(
            f"invalid parameters {params!r} for drift detector {name!r}: {error}. "
            "Use the keyword arguments of the River class of the same name."
        ) from error


def prequential_errors(task: str, labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """Return per-event errors: 0/1 misclassifications or absolute errors.

    ``predictions`` are class probabilities (one row per event) for a
    classification and real values for a regression.
    """
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    if task == CLASSIFICATION:
        predicted = np.argmax(predictions, axis=1)
        return (predicted != labels.astype(np.int64)).astype(np.float64)
    return np.abs(predictions.astype(np.float64) - labels.astype(np.float64))


class DriftMonitor:
    """Feed prequential errors to a River drift detector and report detections.

    The detector's state is always that of a fresh detector (built from
    ``name``, ``params`` and ``seed``) fed with ``history``, the errors seen
    since the last restart. That invariant is what makes a checkpoint exact:
    restoring replays ``history`` into a fresh detector. Once ``history``
    reaches ``max_history`` errors, the monitor restarts the detector on the
    newest ``keep_history`` of them, which bounds both the checkpoint size and
    the replay time on restore, at the cost of forgetting older errors.
    """

    def __init__(
        self,
        name: str = ADWIN,
        params: Optional[Dict[str, Any]] = None,
        seed: int = 0,
        max_history: int = 10_000,
        keep_history: int = 2_000,
        increases_only: bool = True,
    ):
        if not 0 < keep_history < max_history:
            raise ValueError(
                f"keep_history must be positive and below max_history, got "
                f"keep_history={keep_history}, max_history={max_history}; for example "
                "keep_history=2000, max_history=10000."
            )
        self.name = name
        self.params = dict(params or {})
        self.seed = seed
        self.max_history = max_history
        self.keep_history = keep_history
        self.increases_only = increases_only
        self.errors_seen = 0
        self.detections = 0
        self._history: List[float] = []
        self._detector = make_detector(name, self.params, seed)

    def update(
        self,
        errors: Sequence[float],
        event_times: Optional[Sequence[float]] = None,
        model_version: Optional[int] = None,
    ) -> List[DriftEvent]:
        """Feed ``errors`` in order and return the drift events they trigger."""
        errors = [float(error) for error in errors]
        if event_times is None:
            event_times = [float("nan")] * len(errors)
        if len(event_times) != len(errors):
            raise ValueError(
                f"event_times has {len(event_times)} entries but errors has "
                f"{len(errors)}; pass one event time per error."
            )

        events = []
        for error, event_time in zip(errors, event_times):
            self._detector.update(error)
            self._history.append(error)
            self.errors_seen += 1
            if self._detector.drift_detected:
                if self.increases_only and not self._error_rose():
                    self._restart([])
                    continue
                events.append(self._on_drift(float(event_time), model_version))
            elif len(self._history) >= self.max_history:
                self._restart(self._history[-self.keep_history:])
        return events

    def _on_drift(self, event_time: float, model_version: Optional[int]) -> DriftEvent:
        statistic, value = self._statistic()
        event = DriftEvent(
            event_time=event_time,
            position=self.errors_seen - 1,
            detector=self.name,
            statistic=statistic,
            value=value,
            error_rate=float(np.mean(self._history)),
            model_version=model_version,
        )
        self.detections += 1
        _LOGGER.info(
            "Drift detected by %s at event time %s (position %d): %s=%.4g, error rate "
            "since the previous detection %.4g.",
            self.name, event_time, event.position, statistic, value, event.error_rate,
        )
        self._restart([])
        return event

    def _error_rose(self) -> bool:
        """Return whether the errors after the detected change exceed those before it.

        "After" is ADWIN's window once it has dropped the old part, KSWIN's
        ``stat_size`` newest errors, or Page-Hinkley's ``min_instances``
        newest errors. Page-Hinkley in mode "up" only detects increases.
        """
        if self.name == PAGE_HINKLEY and self._detector.mode == "up":
            return True
        if self.name == ADWIN:
            recent = int(self._detector.width)
        elif self.name == KSWIN:
            recent = self._detector.stat_size
        else:
            recent = self._detector.min_instances
        if not 0 < recent < len(self._history):
            return True
        return np.mean(self._history[-recent:]) > np.mean(self._history[:-recent])

    def _statistic(self) -> tuple:
        if self.name == ADWIN:
            return "estimation", float(self._detector.estimation)
        if self.name == KSWIN:
            return "p_value", float(self._detector.p_value)
        return "mean", float(np.mean(self._history))

    def _restart(self, history: List[float]) -> None:
        self._detector = make_detector(self.name, self.params, self.seed)
        self._history = list(history)
        for error in self._history:
            self._detector.update(error)

    def state_tensors(self) -> Dict[str, torch.Tensor]:
        """Return the monitor's state as tensors, for a checkpoint."""
        return {
            "history": torch.tensor(self._history, dtype=torch.float64),
            "counters": torch.tensor([self.errors_seen, self.detections], dtype=torch.int64),
        }

    def load_state_tensors(self, tensors: Dict[str, torch.Tensor]) -> None:
        """Restore the state saved by :meth:`state_tensors`."""
        errors_seen, detections = (int(value) for value in tensors["counters"].tolist())
        self.errors_seen = errors_seen
        self.detections = detections
        self._restart(tensors["history"].tolist())
