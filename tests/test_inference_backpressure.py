"""Split-and-retry on simulated CUDA out-of-memory errors, on CPU."""

import apache_beam as beam
import pytest
import torch
from apache_beam.testing.util import assert_that, equal_to

from ml.store import ModelStore
from tests.versioned_pipeline import WINDOW_S, drifting_events
from transforms.inference import BackpressureConfig, SafetensorsModelHandler, VersionedInference
from transforms.training import TrainingConfig, publish_initial_model
from ml.models import ModelSpec
from ml.trainer import TrainerConfig


class OutOfMemoryHandler(SafetensorsModelHandler):
    """Raise CUDA's out-of-memory error for batches above a size, or for one event."""

    def __init__(self, store_root, max_fitting, poison_id):
        super().__init__(store_root, min_batch_size=32, max_batch_size=64)
        self.max_fitting = max_fitting
        self.poison_id = poison_id

    def run_inference(self, batch, model, inference_args=None):
        if len(batch) > self.max_fitting or any(event.id == self.poison_id for event in batch):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().run_inference(batch, model, inference_args)


@pytest.fixture()
def initial_version(tmp_path):
    config = TrainingConfig("m", ModelSpec("classification", 2, 2, (4,)), TrainerConfig(), WINDOW_S, str(tmp_path))
    return publish_initial_model(config, ModelStore(str(tmp_path)))


def _serve(events, handler, initial_version, backpressure):
    pipeline = beam.Pipeline()
    no_records = pipeline | "NoRecords" >> beam.Create([])
    served = (
        pipeline
        | beam.Create(events)
        | beam.Map(lambda e: beam.window.TimestampedValue(e, e.event_time))
        | VersionedInference(handler, WINDOW_S, initial_version, serving_records=no_records,
                             backpressure=backpressure, with_baseline=False)
    )
    ids = served.predictions | "PredictionIds" >> beam.Map(lambda p: p.id)
    dead = served.dead_letter | "DeadIds" >> beam.Map(lambda d: (d.record["id"], d.reason_code))
    assert_that(ids, equal_to([e.id for e in events if e.id != "e7"]), label="CheckPredictions")
    assert_that(dead, equal_to([("e7", "inference_out_of_memory")]), label="CheckDeadLetters")
    result = pipeline.run()
    result.wait_until_finish()
    return result


@pytest.mark.parametrize("enabled", [True, False], ids=["controller", "no_controller"])
def test_oom_loses_no_event(tmp_path, initial_version, enabled):
    events = drifting_events(count=60, gap_after=None)
    handler = OutOfMemoryHandler(str(tmp_path), max_fitting=5, poison_id="e7")

    result = _serve(events, handler, initial_version, BackpressureConfig(enabled=enabled, initial_batch_size=32))

    splits = result.metrics().query(beam.metrics.MetricsFilter().with_name("oom_splits"))["counters"]
    assert sum(counter.committed for counter in splits) > 0


def test_controller_shrinks_batches_after_oom(tmp_path, initial_version):
    from ml.backpressure import BatchSizeController

    config = BackpressureConfig(initial_batch_size=32, max_batch_size=64, target_latency_ms=None)
    controller = config.controller("cpu")
    assert isinstance(controller, BatchSizeController)
    controller.record_oom(32)
    assert controller.batch_size == 16
