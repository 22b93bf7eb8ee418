"""A small train-and-serve pipeline over hand-built events, run on any engine.

Shared by the tests that compare engines: it returns, for each event id,
the model version that served it, plus the published versions.
"""

import os
import pickle
import tempfile
from typing import Dict, List, Optional

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream

from ml.models import ModelSpec
from ml.store import ModelStore
from ml.trainer import TrainerConfig
from transforms.inference import SafetensorsModelHandler, VersionedInference
from transforms.records import Event
from transforms.training import TrainingConfig, TrainOnline, publish_initial_model

WINDOW_S = 60.0


def drifting_events(count: int = 480, gap_after: Optional[int] = 300, seed: int = 0) -> List[Event]:
    """Two-feature events whose decision boundary flips halfway through.

    Events are one second apart from t=1000 s; after ``gap_after`` events the
    clock jumps by 500 s, leaving serving windows with no events at all.
    """
    rng = np.random.default_rng(seed)
    events = []
    for index in range(count):
        features = rng.normal(size=2)
        sign = 1.0 if index < count // 2 else -1.0
        label = int(features[0] + sign * features[1] > 0)
        event_time = 1000.0 + index + (500.0 if gap_after is not None and index >= gap_after else 0.0)
        events.append(Event(f"e{index}", event_time, tuple(float(x) for x in features), label))
    return events


class _AppendPickled(beam.DoFn):
    def __init__(self, path):
        self.path = path

    def process(self, element):
        with open(self.path, "ab") as file:
            pickle.dump(element, file)


def _read_pickled(path) -> list:
    items = []
    if not os.path.exists(path):
        return items
    with open(path, "rb") as file:
        while True:
            try:
                items.append(pickle.load(file))
            except EOFError:
                return items


def run_train_and_serve(events: List[Event], pipeline_args: List[str], source: str = "create",
                        model_selection: str = "as_of", chunk: int = 40,
                        advance_processing_time: float = 0.0) -> Dict:
    """Run training and versioned serving; return predictions and versions."""
    root = tempfile.mkdtemp(prefix="store-")
    results = tempfile.mkdtemp(prefix="results-")
    config = TrainingConfig(
        "model", ModelSpec("classification", 2, 2, (8,)), TrainerConfig(learning_rate=0.05, seed=3),
        WINDOW_S, root, end_of_stream=max(event.event_time for event in events),
    )
    store = ModelStore(root)
    initial = publish_initial_model(config, store)

    pipeline = beam.Pipeline(options=PipelineOptions(pipeline_args))
    if source == "teststream":
        stream = TestStream()
        for start in range(0, len(events), chunk):
            batch = events[start:start + chunk]
            stream = stream.add_elements([beam.window.TimestampedValue(e, e.event_time) for e in batch])
            stream = stream.advance_watermark_to(max(e.event_time for e in batch))
            if advance_processing_time:
                stream = stream.advance_processing_time(advance_processing_time)
        events_pc = pipeline | "Events" >> stream.advance_watermark_to_infinity()
    else:
        events_pc = (
            pipeline
            | "Events" >> beam.Create(events)
            | "Stamp" >> beam.Map(lambda e: beam.window.TimestampedValue(e, e.event_time))
        )

    trained = events_pc | "Train" >> TrainOnline(
        config, beam.WindowInto(beam.window.FixedWindows(WINDOW_S)), initial
    )
    predictions = events_pc | "Serve" >> VersionedInference(
        SafetensorsModelHandler(root), WINDOW_S, initial,
        serving_records=trained.serving, published_versions=trained.versions,
        model_selection=model_selection,
    )
    predictions.predictions | "Collect" >> beam.ParDo(_AppendPickled(os.path.join(results, "predictions")))
    pipeline.run().wait_until_finish()

    return {
        "predictions": {p.id: p for p in _read_pickled(os.path.join(results, "predictions"))},
        "versions": store.versions("model"),
        "store": store,
    }
