"""Online training inside the pipeline: panes in, published versions out.

Labelled events are windowed for training, grouped into panes, and handed
to :class:`OnlineTrainer`, a stateful DoFn in the global window keyed by
model name. It buffers panes and releases them on event-time timers, so it
trains in event-time order whatever order the runner delivers panes in,
and the same input gives the same versions on every runner. A late pane
(one that fires after the watermark passed its window) is the exception:
it trains at the first timer after it arrives, which depends on the
runner's timing, so the serving window where its version starts can vary.

Serving windows are fixed windows of ``serving_window_s`` seconds. For each
serving window W = [a, a + S) the trainer fires an event-time timer at a,
trains on every buffered pane whose window ended at or before a (all of
them have arrived once the input watermark reaches a), and emits one
*serving record*, the version valid at a, timestamped a. Versioned
inference reads these records as a side input windowed the same way, so
Beam's per-window side-input readiness makes each event wait for exactly
the version trained on labels before its serving window.

The timers form a chain, one per serving window, that runs through gaps
in the data: each pending timer holds the trainer's output watermark, so
no serving record is ever late. The chain stops once the watermark passes
``end_of_stream`` (the last event time of a bounded replay); without it,
as for a live stream, the chain runs as long as the pipeline does.
"""

import collections
import dataclasses
import logging
import math
import pickle
import time
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple

import apache_beam as beam
import numpy as np
import torch
from apache_beam.coders import BytesCoder, PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.transforms.userstate import TimerSpec
from apache_beam.transforms.userstate import on_timer
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming

from ml.models import ModelSpec, build_model
from ml.store import ModelStore, PublishedVersion
from ml.trainer import IncrementalTrainer, TrainerConfig
from transforms.records import Event, unblock
from transforms.store_io import BeamFileSystem

_LOGGER = logging.getLogger(__name__)

METRICS_NAMESPACE = "OnlineTrainer"
VERSIONS_TAG = "versions"
DRIFT_TAG = "drift"


class Pane(NamedTuple):
    """The events of one trigger firing of one training window."""

    window_start: float
    window_end: float
    pane_index: int
    timing: str
    events: Tuple[Event, ...]


class ServingRecord(NamedTuple):
    """The version that serves events in the serving window starting at ``window_start``."""

    window_start: float
    version: PublishedVersion


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Settings of the trainer: model, optimisation, serving windows and store."""

    model_name: str
    model_spec: ModelSpec
    trainer: TrainerConfig
    serving_window_s: float
    store_root: str
    device: str = "cpu"
    end_of_stream: Optional[float] = None
    rollback_factor: Optional[float] = None
    torch_threads: Optional[int] = 1

    def __post_init__(self):
        if self.rollback_factor is not None and not self.rollback_factor >= 1:
            raise ValueError(
                f"rollback_factor must be at least 1, got {self.rollback_factor}; for example 1.5 "
                "rolls back a version whose loss on the next pane is 50% above its predecessor's."
            )
        if not self.serving_window_s > 0:
            raise ValueError(
                f"serving_window_s must be positive, got {self.serving_window_s}; "
                "use the training window size, for example 3600 for one hour."
            )


def set_torch_threads(threads: Optional[int]) -> None:
    """Limit torch's intra-op threads in this worker process (None leaves torch's default).

    Small tabular models gain nothing from several threads, and on a worker
    whose cores already run other bundles the threads contend. A plain
    training loop ran about 50 times slower with two threads than with one
    on a loaded 2-core machine (bench/, 3,000 events).
    """
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def serving_window_start(event_time: float, window_s: float) -> float:
    """Start of the serving window containing ``event_time`` (epoch-aligned)."""
    return math.floor(event_time / window_s) * window_s


def next_serving_boundary(time_s: float, window_s: float) -> float:
    """Return the first serving window start at or after ``time_s``."""
    return math.ceil(time_s / window_s) * window_s


def publish_initial_model(config: TrainingConfig, store: ModelStore) -> PublishedVersion:
    """Publish version 0, the seeded initial model, before any event is served.

    Version 0 also serves as the frozen baseline. When it already exists (a
    rerun over the same store) it is reused, since versions are immutable.
    """
    existing = [v for v in store.versions(config.model_name) if v.version == 0]
    if existing:
        return existing[0]

    model = build_model(config.model_spec, seed=config.trainer.seed)
    trainer = IncrementalTrainer(model, config.model_spec.task, config.trainer)
    metadata = {
        "model_spec": config.model_spec.to_json(),
        "published_at": time.time(),
        "examples_trained": 0,
        "loss": None,
        "trained_through_window_end": None,
    }
    return store.publish(
        config.model_name,
        0,
        trainer.model.state_dict(),
        training_watermark=float("-inf"),
        metadata=metadata,
        optimizer_state=trainer.optimizer.state_dict(),
        extra_tensors={"generator_state": trainer.generator.get_state()},
    )


class AttachPaneInfo(beam.DoFn):
    """Turn a grouped (key, events) pair into a (key, Pane) pair; Blocks of events are expanded."""

    def process(
        self,
        element,
        window=beam.DoFn.WindowParam,
        pane_info=beam.DoFn.PaneInfoParam,
    ):
        key, events = element
        ordered = tuple(sorted(unblock(events), key=lambda event: (event.event_time, event.id)))
        window_start, window_end = float(window.start), float(window.end)
        if isinstance(window, beam.window.GlobalWindow):
            # A global-window pane never ends; it is released once the
            # watermark passes its newest event.
            window_start = ordered[0].event_time
            window_end = ordered[-1].event_time + 1e-3
        yield key, Pane(
            window_start=window_start,
            window_end=window_end,
            pane_index=pane_info.index,
            timing=_timing_name(pane_info.timing),
            events=ordered,
        )


def _timing_name(timing) -> str:
    return PaneInfoTiming.to_string(timing).lower()


def _pane_key(pane: Pane) -> tuple:
    return (pane.window_start, pane.window_end, pane.pane_index, pane.timing, len(pane.events))


def _release_order(pane: Pane) -> tuple:
    return (pane.window_end, pane.window_start, pane.pane_index)


class _Progress(NamedTuple):
    """The trainer's scalar state for one key.

    ``generation`` counts changes to the pane buffer, ``version`` is the
    newest accepted version (None until the first), ``served_until`` is the
    end of the last serving window emitted and ``timer_at`` the pending
    release timer's time (None when the chain has stopped).
    """

    generation: int = 0
    version: Optional[PublishedVersion] = None
    served_until: Optional[float] = None
    timer_at: Optional[float] = None


class _PaneBuffer:
    """The panes a key is waiting to train on, mirrored from state."""

    def __init__(self, waiting: List[Pane], released_count: int, generation: int):
        self.waiting = waiting
        self.released_count = released_count
        self.generation = generation

    @classmethod
    def rebuild(cls, logged: Iterable[Pane], released_keys: Iterable[tuple], generation: int) -> "_PaneBuffer":
        remaining = collections.Counter(released_keys)
        released_count = sum(remaining.values())
        waiting = []
        for pane in logged:
            key = _pane_key(pane)
            if remaining[key] > 0:
                remaining[key] -= 1
            else:
                waiting.append(pane)
        return cls(waiting, released_count, generation)

    def add(self, pane: Pane) -> None:
        self.waiting.append(pane)
        self.generation += 1

    def release_until(self, time_s: float) -> List[Pane]:
        """Remove and return, in training order, the panes whose window ended by ``time_s``."""
        ready = [pane for pane in self.waiting if pane.window_end <= time_s]
        if ready:
            self.waiting = [pane for pane in self.waiting if pane.window_end > time_s]
            self.released_count += len(ready)
            self.generation += 1
        return sorted(ready, key=_release_order)

    def should_compact(self) -> bool:
        # Rewriting the bag costs O(waiting); doing it only once the released
        # log outgrows the waiting panes keeps the cost amortised O(1) per pane.
        return self.released_count > len(self.waiting) + 16

    def compacted(self) -> None:
        self.released_count = 0


class OnlineTrainer(beam.DoFn):
    """Train on panes in event-time order and publish versions.

    Main output: one :class:`ServingRecord` per serving window that follows
    the first pane. Tagged output ``versions``: every accepted
    :class:`PublishedVersion`. Weights live in the model store and the state
    keeps the current version, so a runner that checkpoints state can
    restore training from the store after a failure. NOTE: that restore was
    tested by reloading the DoFn from the store, not on a Flink failover.
    """

    # Panes are kept as pickled bytes: the SDK's state cache measures every
    # cached object with objsize, and one bytes value per pane costs a tiny
    # fraction of walking every event of every buffered pane.
    PANES = BagStateSpec("panes", BytesCoder())
    RELEASED = BagStateSpec("released_pane_keys", PickleCoder())
    # The scalar state lives in one value because each state write costs the
    # SDK's state cache an objsize walk of about a millisecond (Beam 2.77),
    # whatever the value's size, and a timer firing used to make eight.
    PROGRESS = ReadModifyWriteStateSpec("trainer_progress", PickleCoder())
    RELEASE = TimerSpec("release", TimeDomain.WATERMARK)

    def __init__(self, config: TrainingConfig, initial_version: PublishedVersion, filesystem=None):
        self.config = config
        self.initial_version = initial_version
        self.filesystem = filesystem
        self.panes_trained = Metrics.counter(METRICS_NAMESPACE, "panes_trained")
        self.examples_trained = Metrics.counter(METRICS_NAMESPACE, "examples_trained")
        self.versions_published = Metrics.counter(METRICS_NAMESPACE, "versions_published")
        self.updates_rejected = Metrics.counter(METRICS_NAMESPACE, "updates_rejected")
        self.train_latency_ms = Metrics.distribution(METRICS_NAMESPACE, "train_latency_ms")
        self.rollbacks = Metrics.counter(METRICS_NAMESPACE, "rollbacks")
        self.train_oom_retries = Metrics.counter(METRICS_NAMESPACE, "train_oom_retries")
        self.train_micro_batch_size = Metrics.distribution(METRICS_NAMESPACE, "train_micro_batch_size")
        self.loader_producer_blocked_ms = Metrics.counter(METRICS_NAMESPACE, "loader_producer_blocked_ms")
        self.loader_consumer_blocked_ms = Metrics.counter(METRICS_NAMESPACE, "loader_consumer_blocked_ms")

    def setup(self):
        set_torch_threads(self.config.torch_threads)
        self._store = ModelStore(self.config.store_root, self.filesystem or BeamFileSystem())
        self._cached: Optional[Tuple[int, IncrementalTrainer]] = None
        self._buffers: Dict[Any, _PaneBuffer] = {}

    def _buffer(self, key, panes, released, progress: "_Progress") -> "_PaneBuffer":
        """Return the in-memory view of the key's waiting panes, rebuilt if stale.

        The bag of panes is append-only between compactions, and released
        panes are appended to a second bag instead of rewriting the first, so
        a firing costs O(released panes), not O(buffered panes). The state's
        generation number shows whether this DoFn instance saw every change.
        After a restart, or when a key moves between instances, it does not
        match and the view is rebuilt from both bags.
        """
        buffer = self._buffers.get(key)
        if buffer is None or buffer.generation != progress.generation:
            logged = (pickle.loads(data) for data in panes.read())
            buffer = _PaneBuffer.rebuild(logged, released.read(), progress.generation)
            self._buffers[key] = buffer
        return buffer

    def process(
        self,
        element,
        key=beam.DoFn.KeyParam,
        panes=beam.DoFn.StateParam(PANES),
        released=beam.DoFn.StateParam(RELEASED),
        progress_state=beam.DoFn.StateParam(PROGRESS),
        release=beam.DoFn.TimerParam(RELEASE),
    ):
        _, pane = element
        progress = progress_state.read() or _Progress()
        buffer = self._buffer(key, panes, released, progress)
        panes.add(pickle.dumps(pane, protocol=pickle.HIGHEST_PROTOCOL))
        buffer.add(pane)
        progress = progress._replace(generation=buffer.generation)

        # Start (or restart) the chain at the first serving window this pane
        # may serve. Panes of windows that the watermark passed together
        # arrive in any order, so a pane may move a pending first timer earlier.
        fire_at = next_serving_boundary(pane.window_end, self.config.serving_window_s)
        if progress.served_until is not None:
            fire_at = max(fire_at, progress.served_until)
        if progress.timer_at is None or fire_at < progress.timer_at:
            release.set(Timestamp(fire_at))
            progress = progress._replace(timer_at=fire_at)
        progress_state.write(progress)

    @on_timer(RELEASE)
    def release_panes(
        self,
        key=beam.DoFn.KeyParam,
        fire_timestamp=beam.DoFn.TimestampParam,
        panes=beam.DoFn.StateParam(PANES),
        released=beam.DoFn.StateParam(RELEASED),
        progress_state=beam.DoFn.StateParam(PROGRESS),
        release=beam.DoFn.TimerParam(RELEASE),
    ):
        window_s = self.config.serving_window_s
        window_start = float(fire_timestamp)

        progress = progress_state.read() or _Progress()
        buffer = self._buffer(key, panes, released, progress)
        ready = buffer.release_until(window_start)
        waiting = buffer.waiting

        accepted = progress.version
        for pane in ready:
            published = self._train_on_pane(key, accepted or self.initial_version, pane)
            if published is not None:
                accepted = published
                yield beam.pvalue.TaggedOutput(
                    VERSIONS_TAG, beam.window.TimestampedValue(accepted, window_start)
                )
        version = accepted or self.initial_version

        # Drift events take the timer's time, not their own event time,
        # because the timer holds the output watermark at window_start.
        for drift_event in self.drain_drift_events():
            yield beam.pvalue.TaggedOutput(DRIFT_TAG, beam.window.TimestampedValue(drift_event, window_start))

        if ready:
            if buffer.should_compact():
                panes.clear()
                released.clear()
                for pane in waiting:
                    panes.add(pickle.dumps(pane, protocol=pickle.HIGHEST_PROTOCOL))
                buffer.compacted()
            else:
                for pane in ready:
                    released.add(_pane_key(pane))

        yield beam.window.TimestampedValue(ServingRecord(window_start, version), window_start)

        timer_at = None
        end_of_stream = self.config.end_of_stream
        if waiting or end_of_stream is None or window_start <= end_of_stream:
            timer_at = window_start + window_s
            release.set(Timestamp(timer_at))
        progress_state.write(_Progress(
            generation=buffer.generation,
            version=accepted,
            served_until=window_start + window_s,
            timer_at=timer_at,
        ))

    def _train_on_pane(self, key, version: PublishedVersion, pane: Pane) -> Optional[PublishedVersion]:
        labelled = [event for event in pane.events if event.label is not None]
        if not labelled:
            return None

        trainer = self._trainer_for(version)
        features = np.asarray([event.features for event in labelled], dtype=np.float32)
        labels = np.asarray([event.label for event in labelled])
        event_times = [event.event_time for event in labelled]
        trainer, rolled_back_from = self._maybe_roll_back(key, version, trainer, features, labels)

        retries_before = trainer.oom_retries
        blocked_before = (trainer.loader_producer_blocked_s, trainer.loader_consumer_blocked_s)
        started = time.perf_counter()
        result = trainer.learn_many(features, labels, event_times, model_version=version.version)
        self.train_oom_retries.inc(trainer.oom_retries - retries_before)
        self.loader_producer_blocked_ms.inc(int((trainer.loader_producer_blocked_s - blocked_before[0]) * 1000))
        self.loader_consumer_blocked_ms.inc(int((trainer.loader_consumer_blocked_s - blocked_before[1]) * 1000))
        self.train_latency_ms.update(int((time.perf_counter() - started) * 1000))
        self.panes_trained.inc()
        self._stash_drift_events(key, result.drift_events)

        if not result.accepted:
            self.updates_rejected.inc()
            _LOGGER.warning(
                "Model %s: update on pane [%s, %s) rejected by the quality gate (%s); "
                "version %d keeps serving.",
                key, pane.window_start, pane.window_end, result.reason, version.version,
            )
            return None

        self.examples_trained.inc(result.examples)
        self.train_micro_batch_size.update(trainer.micro_batch_size)
        published = self._publish(key, version, trainer, pane, result, rolled_back_from)
        self._cached = (published.version, trainer)
        self.versions_published.inc()
        return published

    def _stash_drift_events(self, key, drift_events) -> None:
        """Keep drift events for :meth:`drain_drift_events` and count them."""
        if not drift_events:
            return
        stash = self.__dict__.setdefault("_drift_events", [])
        for drift_event in drift_events:
            stash.append(dict(drift_event.to_dict(), model_name=key))
        Metrics.counter(METRICS_NAMESPACE, "drifts_detected").inc(len(drift_events))
        reaction = self.config.trainer.drift_reaction
        Metrics.counter(METRICS_NAMESPACE, f"drift_reactions_{reaction}").inc(len(drift_events))

    def drain_drift_events(self) -> List[dict]:
        """Return and forget the drift events of the panes trained since the last call.

        Each is a :class:`ml.drift.DriftEvent` as a dict plus ``model_name``.
        """
        drained = self.__dict__.get("_drift_events", [])
        self._drift_events = []
        return drained

    def _maybe_roll_back(self, key, version: PublishedVersion, trainer, features, labels) -> tuple:
        """Return the trainer to continue from, and the version rolled back from (or None).

        The current version served this pane's events before training on
        them, so its loss here is its prequential loss on the next window.
        When that exceeds ``rollback_factor`` times the loss of the version
        it replaced, training continues from the replaced version instead.
        """
        factor = self.config.rollback_factor
        previous_number = version.metadata.get("previous_version")
        if factor is None or previous_number is None:
            return trainer, None

        # Loaded from the store on each checked pane: two small files, and a
        # cache would only help after a rejected update.
        previous_path = self._store.version_path(key, previous_number)
        previous = self._load_trainer(self._store.read_version(previous_path))
        current_loss = trainer.evaluate_loss(features, labels)
        previous_loss = previous.evaluate_loss(features, labels)
        if not (current_loss > factor * previous_loss) and math.isfinite(current_loss):
            return trainer, None

        self.rollbacks.inc()
        _LOGGER.warning(
            "Model %s: version %d has loss %.6g on its next window, above %g x %.6g of version %d; "
            "rolling back to version %d's weights.",
            key, version.version, current_loss, factor, previous_loss, previous_number, previous_number,
        )
        return previous, version.version

    def _publish(self, key, previous: PublishedVersion, trainer, pane: Pane, result,
                 rolled_back_from: Optional[int] = None) -> PublishedVersion:
        metadata = {
            "rolled_back_from": rolled_back_from,
            "model_spec": self.config.model_spec.to_json(),
            "published_at": time.time(),
            "examples_trained": result.examples,
            "loss": result.loss,
            "trained_through_window_end": pane.window_end,
            "pane_window_start": pane.window_start,
            "pane_index": pane.pane_index,
            "pane_timing": pane.timing,
            "previous_version": previous.version,
        }
        return self._store.publish(
            key,
            previous.version + 1,
            trainer.model.state_dict(),
            training_watermark=pane.window_end,
            metadata=metadata,
            optimizer_state=trainer.optimizer.state_dict(),
            extra_tensors={"generator_state": trainer.generator.get_state(), **trainer.extra_state()},
        )

    def _trainer_for(self, version: PublishedVersion) -> IncrementalTrainer:
        if self._cached is not None and self._cached[0] == version.version:
            return self._cached[1]

        # A cold worker, or state restored from a checkpoint: rebuild the
        # trainer from the version the state points at.
        trainer = self._load_trainer(version)
        self._cached = (version.version, trainer)
        return trainer

    def _load_trainer(self, version: PublishedVersion) -> IncrementalTrainer:
        """Build a trainer with the weights, optimizer and extra state of ``version``."""
        spec = ModelSpec.from_json(version.metadata["model_spec"])
        trainer = IncrementalTrainer(
            build_model(spec, seed=self.config.trainer.seed),
            spec.task,
            self.config.trainer,
            device=self.config.device,
        )
        trainer.model.load_state_dict(self._store.load_model_state(version.path))
        optimizer_state, extra = self._store.load_optimizer_state(version.path)
        trainer.optimizer.load_state_dict(optimizer_state)
        if "generator_state" in extra:
            trainer.generator.set_state(extra["generator_state"])
        trainer.load_extra_state(extra)
        return trainer


class TrainOnline(beam.PTransform):
    """Window events for training, group them into panes and train.

    Returns a tagged result: the main output contains :class:`ServingRecord`s,
    ``versions`` every published :class:`PublishedVersion` and
    ``drift`` the drift events (dicts) the trainer's detector raised.
    """

    def __init__(self, config: TrainingConfig, window_into: beam.WindowInto, initial_version, filesystem=None):
        super().__init__()
        self.config = config
        self.window_into = window_into
        self.initial_version = initial_version
        self.filesystem = filesystem

    def expand(self, events):
        model_name = self.config.model_name
        return (
            events
            | "WindowForTraining" >> self.window_into
            | "KeyByModelName" >> beam.Map(lambda event: (model_name, event))
            | "GroupIntoPanes" >> beam.GroupByKey()
            | "AttachPaneInfo" >> beam.ParDo(AttachPaneInfo())
            | "ToGlobalWindow" >> beam.WindowInto(beam.window.GlobalWindows())
            | "Train" >> beam.ParDo(
                OnlineTrainer(self.config, self.initial_version, self.filesystem)
            ).with_outputs(VERSIONS_TAG, DRIFT_TAG, main="serving")
        )
