"""Versioned, hot-swapped inference on Beam's ``ModelHandler`` API.

Stock ``RunInference(model_metadata_pcoll=...)`` swaps one model for all
elements when a new path arrives. On replayed data that lets an event be
predicted by a model trained on labels from its future. Here each event
picks its version itself:

* ``as_of`` (default): the newest version whose training watermark is at
  or before the event's time. The trainer emits one :class:`ServingRecord`
  per fixed serving window, and each event waits for its window's record,
  so the choice is the same on every runner. A window without a record
  means no trained version existed yet: the initial version serves. In
  batch, and on the DirectRunner, the records are a side input windowed
  like the events. In streaming on other runners a GroupByKey per serving
  window joins them with the events (:mod:`transforms.serving_join`).
* ``latest``: the newest version published so far, from a side input in
  the global window that fires on every update. Freshest for live streams,
  but it depends on processing time and is not reproducible.

Any ``ModelHandler`` whose ``update_model_path`` changes what ``load_model``
loads plugs in; :class:`SafetensorsModelHandler` is the PyTorch one.
"""

import collections
import dataclasses
import logging
import time
from typing import Any, Dict, Iterable, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np
import torch
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner, SwitchingDirectRunner

from ml.backpressure import BatchSizeController, cuda_memory_probe, rss_memory_probe
from ml.models import CLASSIFICATION, ModelSpec, build_model
from ml.oom import run_with_oom_split
from ml.store import ModelStore, PublishedVersion
from transforms.records import Block, DeadLetter, Event
from transforms.serving_join import JoinServingRecords, select_as_of, window_for_serving
from transforms.store_io import BeamFileSystem
from transforms.training import set_torch_threads

_LOGGER = logging.getLogger(__name__)

METRICS_NAMESPACE = "VersionedInference"
MODEL_SELECTIONS = ("as_of", "latest")
SERVING_JOINS = ("side_input", "group_by_key")
_DIRECT_RUNNERS = (SwitchingDirectRunner, BundleBasedDirectRunner)
DEVICES = ("auto", "cpu", "cuda")
DEAD_LETTER_TAG = "dead_letter"


@dataclasses.dataclass(frozen=True)
class BackpressureConfig:
    """How the batch-size controller sizes the batches given to the model.

    Beam's ``BatchElements`` caps batches at ``max_batch_size``. Within that
    cap the controller grows the batch additively while steps stay under
    ``target_latency_ms`` and memory under ``memory_high_fraction``. It
    halves the batch on a slow step, high memory or an out-of-memory error.
    Memory is the CUDA device's on GPU, else the process RSS against
    ``rss_limit_bytes``. On CPU with ``rss_limit_bytes=None`` there is no
    memory signal.
    """

    enabled: bool = True
    initial_batch_size: int = 64
    max_batch_size: int = 256
    target_latency_ms: Optional[float] = 200.0
    memory_high_fraction: float = 0.9
    rss_limit_bytes: Optional[int] = None

    def controller(self, device: str) -> BatchSizeController:
        probe = None
        if device.startswith("cuda"):
            probe = cuda_memory_probe(device)
        elif self.rss_limit_bytes:
            probe = rss_memory_probe(self.rss_limit_bytes)
        return BatchSizeController(
            initial=min(self.initial_batch_size, self.max_batch_size),
            max_size=self.max_batch_size,
            target_latency_ms=self.target_latency_ms,
            memory_high_fraction=self.memory_high_fraction,
            memory_probe=probe,
        )


def resolve_device(device: str) -> str:
    """Map ``--device`` to a torch device, falling back to CPU with a log line."""
    if device not in DEVICES:
        raise ValueError(f"--device must be one of {DEVICES}, got {device!r}.")
    cuda_available = torch.cuda.is_available()
    if device == "auto":
        return "cuda" if cuda_available else "cpu"
    if device == "cuda" and not cuda_available:
        _LOGGER.warning("--device=cuda was requested but CUDA is not available; running on CPU.")
        return "cpu"
    return device


class Prediction(NamedTuple):
    """One served prediction, with what freshness and metrics need.

    ``prediction`` contains class probabilities (classification) or one value
    (regression); ``baseline_prediction`` is the frozen initial model's.
    ``inference_latency_ms`` is the wall time of the model call for the
    batch that held this event; ``processing_time`` is when it returned.
    """

    id: str
    event_time: float
    label: Any
    prediction: Any
    predicted_class: Optional[int]
    model_version: int
    training_watermark: float
    baseline_prediction: Any
    inference_latency_ms: float
    processing_time: float


class SafetensorsModelHandler(ModelHandler[Event, Any, torch.nn.Module]):
    """Load a checkpoint from the model store and run a batch of events.

    Loads with safetensors, never pickle. Inference runs under
    ``torch.no_grad`` so no autograd graph holds device memory.
    """

    def __init__(self, store_root: str, device: str = "cpu", filesystem=None,
                 min_batch_size: Optional[int] = None, max_batch_size: int = 256):
        # BatchElements starts at min_batch_size and grows adaptively; from 1
        # it averaged 16 events a batch, so start at a quarter of the maximum.
        if min_batch_size is None:
            min_batch_size = max(1, min(32, max_batch_size // 4))
        super().__init__()
        self._store_root = store_root
        self._device = device
        self._filesystem = filesystem
        self._model_path: Optional[str] = None
        self._batch_kwargs = {"min_batch_size": min_batch_size, "max_batch_size": max_batch_size}

    def update_model_path(self, model_path: Optional[str] = None):
        self._model_path = model_path

    def load_model(self) -> torch.nn.Module:
        if self._model_path is None:
            raise ValueError("SafetensorsModelHandler has no model path; call update_model_path first.")
        store = ModelStore(self._store_root, self._filesystem or BeamFileSystem())
        version = store.read_version(self._model_path)
        spec = ModelSpec.from_json(version.metadata["model_spec"])
        model = build_model(spec)
        model.load_state_dict(store.load_model_state(self._model_path))
        model.task = spec.task
        return model.to(resolve_device(self._device)).eval()

    def run_inference(self, batch: Sequence[Event], model: torch.nn.Module,
                      inference_args: Optional[Dict[str, Any]] = None) -> Iterable[PredictionResult]:
        device = next(model.parameters()).device
        features = np.asarray([event.features for event in batch], dtype=np.float32)
        with torch.no_grad():
            outputs = model(torch.from_numpy(features).to(device))
            if model.task == CLASSIFICATION:
                outputs = torch.softmax(outputs, dim=-1)
            outputs = outputs.cpu().numpy()
        return [
            PredictionResult(event, output.tolist(), self._model_path)
            for event, output in zip(batch, outputs)
        ]

    def get_num_bytes(self, batch: Sequence[Event]) -> int:
        return sum(len(event.features) * 4 for event in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE

    def batch_elements_kwargs(self):
        return self._batch_kwargs


def select_latest(records: Iterable[PublishedVersion], fallback: PublishedVersion) -> PublishedVersion:
    """Return the highest version published so far."""
    best = fallback
    for version in records:
        if version.version > best.version:
            best = version
    return best


class _ModelCache:
    """An LRU cache of loaded models keyed by checkpoint path."""

    def __init__(self, model_handler: ModelHandler, max_models: int):
        self._handler = model_handler
        self._max_models = max_models
        self._models: "collections.OrderedDict[str, Any]" = collections.OrderedDict()
        self.loads = 0

    def get(self, path: str):
        if path in self._models:
            self._models.move_to_end(path)
            return self._models[path]
        self._handler.update_model_path(path)
        model = self._handler.load_model()
        self.loads += 1
        self._models[path] = model
        if len(self._models) > self._max_models:
            self._models.popitem(last=False)
        return model


class _ProgressReporter:
    """Log events/s, event-time progress and the serving version every few seconds."""

    def __init__(self, interval_s: float = 5.0, clock=time.monotonic):
        self._interval_s = interval_s
        self._clock = clock
        self._started = clock()
        self._last_report = self._started
        self._events = 0
        self._max_event_time = None

    def update(self, events: int, max_event_time: float, version: int) -> None:
        self._events += events
        if self._max_event_time is None or max_event_time > self._max_event_time:
            self._max_event_time = max_event_time
        now = self._clock()
        if now - self._last_report < self._interval_s:
            return
        self._last_report = now
        rate = self._events / max(now - self._started, 1e-9)
        event_time = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._max_event_time))
        _LOGGER.info(
            "Progress: %d events served, %.0f events/s, event time %s, serving version %d.",
            self._events, rate, event_time, version,
        )


class _VersionedInferenceDoFn(beam.DoFn):
    """Predict each batch with the version its events select.

    Batches are cut to the controller's batch size. A chunk that runs out
    of device memory is split in half and retried down to single events.
    An event that fails alone goes to the ``dead_letter`` output, so no
    event is lost.
    """

    def __init__(self, model_handler: ModelHandler, initial_version: PublishedVersion,
                 model_selection: str, baseline_version: Optional[PublishedVersion], max_cached_models: int,
                 backpressure: BackpressureConfig, device: str = "cpu", torch_threads: Optional[int] = 1):
        self._handler = model_handler
        self._torch_threads = torch_threads
        self._initial = initial_version
        self._selection = model_selection
        self._baseline = baseline_version
        self._max_cached_models = max_cached_models
        self._backpressure = backpressure
        self._device = device
        self.events_served = Metrics.counter(METRICS_NAMESPACE, "events_served")
        self.model_loads = Metrics.counter(METRICS_NAMESPACE, "model_loads")
        self.oom_splits = Metrics.counter(METRICS_NAMESPACE, "oom_splits")
        self.oom_dead_letters = Metrics.counter(METRICS_NAMESPACE, "oom_dead_letters")
        self.batch_latency_ms = Metrics.distribution(METRICS_NAMESPACE, "inference_batch_latency_ms")
        self.batch_size = Metrics.distribution(METRICS_NAMESPACE, "inference_batch_size")
        self.controller_batch_size = Metrics.distribution(METRICS_NAMESPACE, "controller_batch_size")

    def setup(self):
        set_torch_threads(self._torch_threads)
        # One extra slot so the frozen baseline never evicts a serving model.
        self._cache = _ModelCache(self._handler, self._max_cached_models + 1)
        self._progress = _ProgressReporter()
        self._controller = None
        if self._backpressure.enabled:
            self._controller = self._backpressure.controller(resolve_device(self._device))

    def process(self, batch, versions=()):
        events = batch.items if isinstance(batch, Block) else batch
        versions = list(versions)
        pairs = []
        for event in events:
            if self._selection == "as_of":
                version = select_as_of(event.event_time, versions, self._initial)
            else:
                version = select_latest(versions, self._initial)
            pairs.append((version, event))
        yield from self._serve(pairs, isinstance(batch, Block))

    def _serve(self, pairs, as_block: bool):
        """Predict each ``(version, event)`` pair and yield the predictions and dead letters."""
        by_version: Dict[int, list] = collections.defaultdict(list)
        chosen: Dict[int, PublishedVersion] = {}
        for version, event in pairs:
            by_version[version.version].append(event)
            chosen[version.version] = version

        predictions = []
        for number in sorted(by_version):
            selected = by_version[number]
            size = self._controller.batch_size if self._controller else len(selected)
            for start in range(0, len(selected), size):
                served, dead_letters = self._predict(selected[start:start + size], chosen[number])
                predictions.extend(served)
                yield from dead_letters

        if as_block:
            if predictions:
                yield beam.window.TimestampedValue(
                    Block(predictions), min(prediction.event_time for prediction in predictions))
            return
        for prediction in predictions:
            yield beam.window.TimestampedValue(prediction, prediction.event_time)

    def _run_split(self, events, model):
        """Run the handler with split-and-retry; return the ``OomSplitResult`` and the latency in ms."""
        def on_oom(failed_size, _error):
            if self._controller is not None:
                self._controller.record_oom(failed_size)

        started = time.perf_counter()
        outcome = run_with_oom_split(
            lambda chunk: list(self._handler.run_inference(chunk, model)), events, on_oom=on_oom
        )
        latency_ms = (time.perf_counter() - started) * 1000
        self.oom_splits.inc(outcome.splits)
        return outcome, latency_ms

    def _predict(self, events, version: PublishedVersion) -> tuple:
        """Return the predictions for ``events`` and dead-letter outputs for those that failed."""
        loads_before = self._cache.loads
        model = self._cache.get(version.path)
        outcome, latency_ms = self._run_split(events, model)
        if self._controller is not None and outcome.oom_errors == 0:
            self._controller.record_step(len(events), latency_ms)
            self.controller_batch_size.update(self._controller.batch_size)

        baseline = {}
        if self._baseline is not None:
            frozen = self._cache.get(self._baseline.path)
            baseline_outcome, _ = self._run_split(events, frozen)
            baseline = {result.example.id: result.inference for result in baseline_outcome.predictions}
        self.model_loads.inc(self._cache.loads - loads_before)

        dead_letters = [self._dead_letter(failure, version) for failure in outcome.failures]
        self.oom_dead_letters.inc(len(dead_letters))
        served = outcome.predictions
        if not served:
            return [], dead_letters
        self.events_served.inc(len(served))
        self.batch_latency_ms.update(int(latency_ms))
        self.batch_size.update(len(events))
        self._progress.update(len(served), max(event.event_time for event in events), version.version)

        processing_time = time.time()
        predictions = []
        for result in served:
            event = result.example
            predictions.append(Prediction(
                id=event.id,
                event_time=event.event_time,
                label=event.label,
                prediction=result.inference,
                predicted_class=_predicted_class(result.inference),
                model_version=version.version,
                training_watermark=version.training_watermark,
                baseline_prediction=baseline.get(event.id),
                inference_latency_ms=latency_ms,
                processing_time=processing_time,
            ))
        return predictions, dead_letters

    @staticmethod
    def _dead_letter(failure, version: PublishedVersion):
        return beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, beam.window.TimestampedValue(
            DeadLetter(
                record=failure.element._asdict(),
                reason_code="inference_out_of_memory",
                reason=f"Model version {version.version} ran out of memory on this event alone: "
                       f"{failure.reason}",
                stage="inference",
            ),
            failure.element.event_time,
        ))


class _JoinedInferenceDoFn(_VersionedInferenceDoFn):
    """Predict events that :class:`JoinServingRecords` paired with their versions.

    Takes ``(version, Block)`` pairs, or lists of ``(version, event)`` pairs
    from ``BatchElements``.
    """

    def process(self, element):
        if isinstance(element, tuple) and isinstance(element[1], Block):
            version, block = element
            yield from self._serve([(version, event) for event in block.items], as_block=True)
            return
        yield from self._serve(element, as_block=False)


def _predicted_class(output) -> Optional[int]:
    if isinstance(output, (list, tuple)) and len(output) > 1:
        return int(np.argmax(output))
    return None


class VersionedInference(beam.PTransform):
    """Serve events with hot-swapped model versions.

    Takes timestamped events (in any windowing) and returns a tagged result:
    ``predictions`` contains :class:`Prediction`s in fixed event-time
    windows of ``serving_window_s`` seconds, and ``dead_letter`` the events
    that ran out of device memory even alone.

    Args:
      model_handler: a ``ModelHandler`` over :class:`Event` batches.
      serving_records: the trainer's :class:`ServingRecord`s (``as_of``).
      published_versions: every :class:`PublishedVersion` (``latest``).
      initial_version: the version that serves until a trained version
        exists (version 0, or the newest one when a job resumes).
      with_baseline: also predict with the frozen baseline model.
      baseline_version: that baseline; None means ``initial_version``.
      blocks: the events arrive as :class:`Block`s, which are served as
        they are instead of through ``BatchElements``; the predictions
        leave as Blocks too.
      serving_join: how ``as_of`` pairs events with serving records.
        ``side_input`` reads them as a side input, after a Reshuffle in
        batch. ``group_by_key`` groups them with the events per serving
        window (:class:`JoinServingRecords`). None picks ``group_by_key``
        for streaming pipelines on runners other than the DirectRunner,
        else ``side_input``.
      allowed_lateness_s: how long after its serving window ends an event
        may still arrive and be served with the window's version: the
        allowed lateness of the serving windows. ``math.inf`` counts as 0.
      serving_shards: for the ``group_by_key`` join, keys per serving
        window.
    """

    def __init__(self, model_handler: ModelHandler, serving_window_s: float, initial_version: PublishedVersion,
                 serving_records=None, published_versions=None, model_selection: str = "as_of",
                 with_baseline: bool = True, baseline_version: Optional[PublishedVersion] = None,
                 max_cached_models: int = 4,
                 backpressure: BackpressureConfig = BackpressureConfig(), device: str = "cpu",
                 torch_threads: Optional[int] = 1, blocks: bool = False,
                 serving_join: Optional[str] = None, allowed_lateness_s: float = 0.0, serving_shards: int = 1):
        super().__init__()
        if model_selection not in MODEL_SELECTIONS:
            raise ValueError(
                f"--model_selection must be one of {MODEL_SELECTIONS}, got {model_selection!r}; "
                "use as_of for replayed data and latest for live streams."
            )
        if max_cached_models < 1:
            raise ValueError(f"max_cached_models must be at least 1, got {max_cached_models}.")
        if serving_join is not None and serving_join not in SERVING_JOINS:
            raise ValueError(
                f"serving_join must be one of {SERVING_JOINS} or None (chosen from the runner), "
                f"got {serving_join!r}."
            )
        if serving_join == "group_by_key" and model_selection != "as_of":
            raise ValueError(
                f"serving_join='group_by_key' pairs events with serving records, which only "
                f"model_selection='as_of' reads; got model_selection={model_selection!r}. "
                "Use serving_join='side_input'."
            )
        self.model_handler = model_handler
        self.serving_window_s = serving_window_s
        self.initial_version = initial_version
        self.serving_records = serving_records
        self.published_versions = published_versions
        self.model_selection = model_selection
        self.baseline_version = None
        if with_baseline:
            self.baseline_version = baseline_version or initial_version
        self.max_cached_models = max_cached_models
        self.backpressure = backpressure
        self.device = device
        self.torch_threads = torch_threads
        self.blocks = blocks
        self.serving_join = serving_join
        self.allowed_lateness_s = allowed_lateness_s
        self.serving_shards = serving_shards

    def expand(self, events):
        streaming = events.pipeline.options.view_as(StandardOptions).streaming
        do_fn_args = (
            self.model_handler, self.initial_version, self.model_selection,
            self.baseline_version, self.max_cached_models, self.backpressure, self.device, self.torch_threads,
        )
        if self._join(streaming, events.pipeline.runner) == "group_by_key":
            paired = events | "JoinServingRecords" >> JoinServingRecords(
                self.serving_window_s, self.initial_version, self.serving_records,
                allowed_lateness_s=self.allowed_lateness_s, shards=self.serving_shards,
            )
            predict = beam.ParDo(_JoinedInferenceDoFn(*do_fn_args))
            return self._batched(paired) | "Predict" >> predict.with_outputs(DEAD_LETTER_TAG, main="predictions")

        windowed = events | "WindowForServing" >> window_for_serving(self.serving_window_s, self.allowed_lateness_s)
        predict = beam.ParDo(_VersionedInferenceDoFn(*do_fn_args), versions=self._versions_side_input(streaming))
        return self._batched(windowed) | "Predict" >> predict.with_outputs(DEAD_LETTER_TAG, main="predictions")

    def _join(self, streaming: bool, runner) -> str:
        if self.serving_join is not None:
            return self.serving_join
        # The legacy DirectRunner (Beam 2.77) sets no watermark holds for
        # timers, so serving records could reach the join after their
        # windows fired. Its side inputs work.
        if not streaming or self.model_selection != "as_of" or isinstance(runner, _DIRECT_RUNNERS):
            return "side_input"
        return "group_by_key"

    def _batched(self, elements):
        if self.blocks:
            return elements
        return elements | "BatchEvents" >> beam.BatchElements(**self.model_handler.batch_elements_kwargs())

    def _versions_side_input(self, streaming: bool):
        if self.model_selection == "as_of":
            records = self.serving_records | "WindowServingRecords" >> beam.WindowInto(
                beam.window.FixedWindows(self.serving_window_s)
            )
            return beam.pvalue.AsList(self._materialized(records, "MaterializeServingRecords", streaming))

        trigger = beam.trigger.Repeatedly(beam.trigger.AfterCount(1))
        updates = self._materialized(self.published_versions, "MaterializeVersionUpdates", streaming) | (
            "WindowVersionUpdates" >> beam.WindowInto(
                beam.window.GlobalWindows(),
                trigger=trigger,
                accumulation_mode=beam.trigger.AccumulationMode.ACCUMULATING,
            )
        )
        return beam.pvalue.AsList(updates)

    @staticmethod
    def _materialized(versions, label: str, streaming: bool):
        # The trainer emits from timers, so the FnApiRunner (Beam 2.77) runs
        # its stage once per timer round and, after each round, appends the
        # stage's whole output so far to the side input again: window k gets
        # one copy of its record per later round, quadratic in the stream. A
        # Reshuffle moves the side input into a stage that runs once. Only in
        # batch: a streaming runner would make the side input ready later
        # than the main input that needs it.
        if streaming:
            return versions
        return versions | label >> beam.Reshuffle()
