"""Inference alone: ``VersionedInference`` against bare ``model(x)`` and ``RunInference``.

All three serve the workload's valid events with models published to a
temporary model store. ``VersionedInference`` and the plain loop switch
among a fixed set of versions by event time (``as_of``), as the job does.
Stock ``RunInference`` serves one version, because it cannot pick a
version per event. None of them trains.
"""

import functools
import os
import time
from typing import List

import apache_beam as beam
import torch
from apache_beam.ml.inference.base import RunInference
from apache_beam.ml.inference.pytorch_inference import PytorchModelHandlerTensor
from apache_beam.options.pipeline_options import PipelineOptions

from bench.engines import Engine
from bench.results import Row
from bench.workload import Workload, feature_matrix
from ml.models import build_model
from ml.store import ModelStore, PublishedVersion
from transforms.inference import SafetensorsModelHandler, VersionedInference
from transforms.store_io import BeamFileSystem
from transforms.training import ServingRecord

MODEL_NAME = "bench-mlp"
BATCH_SIZE = 256


class FixedVersions:
    """``count`` model versions with seeded weights, published to a store.

    Version k has its training watermark at the start of the serving window
    k / count of the way through the stream, so each version serves about
    an equal share of the events.
    """

    def __init__(self, workload: Workload, store_root: str, count: int = 4):
        self.workload = workload
        self.store_root = store_root
        store = ModelStore(store_root, BeamFileSystem())
        window_starts = [start for start, _ in workload.windows()]
        self.window_starts = window_starts
        self.versions: List[PublishedVersion] = []
        for number in range(count):
            model = build_model(workload.model_spec, seed=number)
            watermark = float("-inf") if number == 0 else window_starts[number * len(window_starts) // count]
            metadata = {"model_spec": workload.model_spec.to_json(), "published_at": time.time()}
            self.versions.append(store.publish(MODEL_NAME, number, model.state_dict(), watermark, metadata))
        self.state_dict_path = os.path.join(store_root, "last_version_state_dict.pt")
        torch.save(build_model(workload.model_spec, seed=count - 1).state_dict(), self.state_dict_path)

    def serving_records(self) -> List[ServingRecord]:
        """Return the version serving each window, as the trainer would emit them."""
        records = []
        for start in self.window_starts:
            version = max(
                (v for v in self.versions if v.training_watermark <= start), key=lambda v: v.version
            )
            records.append(ServingRecord(start, version))
        return records


def run_plain_inference(workload: Workload, versions: FixedVersions) -> Row:
    """Time batched ``model(x)`` calls per window with the version serving it."""
    models = {}
    for version in versions.versions:
        model = build_model(workload.model_spec, seed=version.version).eval()
        models[version.version] = model
    windows = [(record.version.version, feature_matrix(events))
               for record, (_, events) in zip(versions.serving_records(), workload.windows())]

    started = time.perf_counter()
    served = 0
    with torch.no_grad():
        for number, features in windows:
            model = models[number]
            for start in range(0, len(features), BATCH_SIZE):
                outputs = torch.softmax(model(torch.from_numpy(features[start:start + BATCH_SIZE])), dim=-1)
                served += len(outputs.numpy())
    seconds = time.perf_counter() - started
    return Row(
        "inference", "plain model(x), batches of 256", events=served, seconds=seconds,
        events_per_s=served / seconds, detail=f"{len(versions.versions)} versions, prepared float32 arrays",
    )


def _timestamped_events(pipeline, workload: Workload):
    return (
        pipeline
        | "CreateEvents" >> beam.Create(workload.events)
        | "StampEvents" >> beam.Map(lambda event: beam.window.TimestampedValue(event, event.event_time))
    )


def run_versioned_inference(workload: Workload, versions: FixedVersions, engine: Engine) -> Row:
    """Time a pipeline that serves the events with ``VersionedInference`` (no baseline)."""
    handler = SafetensorsModelHandler(versions.store_root, device="cpu", max_batch_size=BATCH_SIZE)
    pipeline = beam.Pipeline(options=PipelineOptions(list(engine.pipeline_args)))
    events = _timestamped_events(pipeline, workload)
    records = (
        pipeline
        | "CreateServingRecords" >> beam.Create(versions.serving_records())
        | "StampRecords" >> beam.Map(lambda record: beam.window.TimestampedValue(record, record.window_start))
    )
    _ = events | "VersionedInference" >> VersionedInference(
        handler, workload.window_s, versions.versions[0], serving_records=records, with_baseline=False,
    )
    return _timed_run(pipeline, "VersionedInference", engine, len(workload.events),
                      f"{len(versions.versions)} versions as side input")


def run_stock_run_inference(workload: Workload, versions: FixedVersions, engine: Engine) -> Row:
    """Time Beam's ``RunInference`` with ``PytorchModelHandlerTensor`` and one model."""
    handler = PytorchModelHandlerTensor(
        state_dict_path=versions.state_dict_path,
        model_class=functools.partial(build_model, workload.model_spec),
        model_params={},
        device="CPU",
        max_batch_size=BATCH_SIZE,
    )
    pipeline = beam.Pipeline(options=PipelineOptions(list(engine.pipeline_args)))
    _ = (
        _timestamped_events(pipeline, workload)
        | "ToTensor" >> beam.Map(lambda event: torch.tensor(event.features, dtype=torch.float32))
        | "RunInference" >> RunInference(handler)
    )
    return _timed_run(pipeline, "RunInference + PytorchModelHandlerTensor", engine, len(workload.events),
                      "one version (stock RunInference cannot pick one per event)")


def _timed_run(pipeline, case: str, engine: Engine, events: int, detail: str) -> Row:
    started = time.perf_counter()
    result = pipeline.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - started
    return Row("inference", case, engine.name, events=events, seconds=seconds,
               events_per_s=events / seconds, detail=detail)

