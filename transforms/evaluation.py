"""Prequential evaluation per event-time window.

Each event was predicted by the version serving at its time before it was
trained on, so per-window metrics of the predictions are prequential
(test-then-train) metrics. The frozen initial model is scored on the same
events as the baseline.
"""

import apache_beam as beam

from ml.metrics import PrequentialAccumulator
from transforms.inference import Prediction
from transforms.records import Block


class _WindowAccumulator:
    """Online and baseline accumulators plus the range of versions served."""

    def __init__(self, task: str):
        self.online = PrequentialAccumulator(task)
        self.baseline = PrequentialAccumulator(task)
        self.events = 0
        self.min_version = None
        self.max_version = None


class PrequentialMetricsFn(beam.CombineFn):
    """Combine the labelled predictions of one window into metrics."""

    def __init__(self, task: str):
        self.task = task

    def create_accumulator(self):
        return _WindowAccumulator(self.task)

    def add_input(self, accumulator, element):
        predictions = element.items if isinstance(element, Block) else (element,)
        for prediction in predictions:
            self._add_prediction(accumulator, prediction)
        return accumulator

    @staticmethod
    def _add_prediction(accumulator, prediction: Prediction) -> None:
        accumulator.events += 1
        version = prediction.model_version
        accumulator.min_version = version if accumulator.min_version is None else min(accumulator.min_version, version)
        accumulator.max_version = version if accumulator.max_version is None else max(accumulator.max_version, version)
        if prediction.label is not None:
            accumulator.online.add(prediction.label, prediction.prediction)
            if prediction.baseline_prediction is not None:
                accumulator.baseline.add(prediction.label, prediction.baseline_prediction)

    def merge_accumulators(self, accumulators):
        merged = self.create_accumulator()
        for accumulator in accumulators:
            merged.online.merge(accumulator.online)
            merged.baseline.merge(accumulator.baseline)
            merged.events += accumulator.events
            for version in (accumulator.min_version, accumulator.max_version):
                if version is None:
                    continue
                merged.min_version = version if merged.min_version is None else min(merged.min_version, version)
                merged.max_version = version if merged.max_version is None else max(merged.max_version, version)
        return merged

    def extract_output(self, accumulator):
        row = {
            "events": accumulator.events,
            "labelled_events": accumulator.online.count,
            "min_model_version": accumulator.min_version,
            "max_model_version": accumulator.max_version,
        }
        for name, value in accumulator.online.result().items():
            row[f"online_{name}"] = value
        for name, value in accumulator.baseline.result().items():
            row[f"baseline_{name}"] = value
        return row


class _AddWindowBounds(beam.DoFn):
    def process(self, row, window=beam.DoFn.WindowParam):
        yield dict(row, window_start=float(window.start), window_end=float(window.end))


class PrequentialMetrics(beam.PTransform):
    """Per-window metrics rows for windowed :class:`Prediction`s (alone or in Blocks)."""

    def __init__(self, task: str):
        super().__init__()
        self.task = task

    def expand(self, predictions):
        return (
            predictions
            | "CombinePerWindow" >> beam.CombineGlobally(PrequentialMetricsFn(self.task)).without_defaults()
            | "AddWindowBounds" >> beam.ParDo(_AddWindowBounds())
        )
