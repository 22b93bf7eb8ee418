"""End-to-end throughput: ``online_train`` against a plain PyTorch loop and River.

Every learner here is evaluated prequentially on the same events: each
event is predicted before the learner trains on it. ``online_train`` and
the plain loop predict a whole fixed window with the current model, then
train on that window with ``IncrementalTrainer``; River's learners do the
same one event at a time. ``online_train`` runs either per event
(``--block_size=0``, one event per Beam element) or in block mode
(``--block_size=N``), which gives the same predictions.
"""

import logging
import os
import time
from typing import Callable, List, Optional, Tuple

import numpy as np
from river import dummy
from river import linear_model
from river import preprocessing
from river import tree

from bench.engines import Engine
from bench.results import Row, mode_label
from bench.workload import Workload, feature_matrix, label_vector
from ml.models import build_model
from ml.trainer import IncrementalTrainer
from pipelines import online_train
from pipelines import report

_LOGGER = logging.getLogger(__name__)


def no_change_accuracy(workload: Workload) -> float:
    """Return the accuracy of predicting each event's label as the previous one's.

    The first event has no previous label and counts as a miss, as River's
    ``NoChangeClassifier`` returns None for it.
    """
    model = dummy.NoChangeClassifier()
    correct = 0
    for event in workload.events:
        if model.predict_one({}) == event.label:
            correct += 1
        model.learn_one({}, event.label)
    return correct / len(workload.events)


def run_plain_loop(workload: Workload) -> Tuple[Row, Row]:
    """Time predict-then-train per window with a bare ``IncrementalTrainer``.

    Like the job, it also predicts each window with the frozen initial model.

    Returns the end-to-end row (reading and validating the stream included,
    as the pipeline does) and the model-only row.
    """
    windows = [(feature_matrix(events), label_vector(events)) for _, events in workload.windows()]

    started = time.perf_counter()
    spec = workload.model_spec
    trainer = IncrementalTrainer(build_model(spec, seed=workload.trainer_config.seed), spec.task,
                                 workload.trainer_config)
    # The job also scores every event with the frozen initial model, the
    # baseline of its report, so the loop does the same.
    frozen = IncrementalTrainer(build_model(spec, seed=workload.trainer_config.seed), spec.task,
                                workload.trainer_config)
    correct = 0
    for features, labels in windows:
        probabilities = trainer.predict_many(features)
        frozen.predict_many(features)
        correct += int((probabilities.argmax(axis=1) == labels).sum())
        trainer.learn_many(features, labels)
    model_s = time.perf_counter() - started

    accuracy = correct / len(workload.events)
    total_s = workload.prepare_s + model_s
    end_to_end = Row(
        "throughput", "plain PyTorch loop", events=workload.max_events, seconds=total_s,
        events_per_s=workload.max_events / total_s, vs_plain=1.0, accuracy=accuracy,
        detail=f"read+validate {workload.prepare_s:.2f} s, model {model_s:.2f} s",
    )
    model_only = Row(
        "throughput", "plain PyTorch loop, model only", events=workload.max_events, seconds=model_s,
        events_per_s=workload.max_events / model_s, accuracy=accuracy,
        detail="predict (online and frozen initial model) + train on prepared float32 arrays",
    )
    return end_to_end, model_only


def river_learners() -> List[Tuple[str, Callable]]:
    """River's online learners to compare against, as (name, factory) pairs."""
    return [
        ("River StandardScaler | LogisticRegression",
         lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression()),
        ("River HoeffdingTreeClassifier", tree.HoeffdingTreeClassifier),
    ]


def run_river(workload: Workload, name: str, factory: Callable) -> Row:
    """Time River's predict_one then learn_one over the stream."""
    samples = [({index: value for index, value in enumerate(event.features)}, event.label)
               for event in workload.events]

    started = time.perf_counter()
    model = factory()
    correct = 0
    for features, label in samples:
        if model.predict_one(features) == label:
            correct += 1
        model.learn_one(features, label)
    model_s = time.perf_counter() - started

    total_s = workload.prepare_s + model_s
    return Row(
        "peers", name, events=workload.max_events, seconds=total_s,
        events_per_s=workload.max_events / total_s, accuracy=correct / len(samples),
        detail=f"model only {workload.max_events / model_s:,.0f} events/s",
    )


def online_train_argv(job_args: List[str], output_dir: str, engine: Engine, block_size: int = 0) -> List[str]:
    """Return the ``online_train`` command line for a stream on ``engine``, per event or in blocks."""
    return [*job_args, f"--block_size={block_size}", f"--output_dir={output_dir}", "--no_report",
            *engine.pipeline_args]


def run_online_train(workload: Workload, engine: Engine, output_dir: str, block_size: int = 0) -> Tuple[Row, Row]:
    """Run the ``online_train`` job on ``engine``; return its throughput and freshness rows.

    ``block_size`` is the job's ``--block_size``: 0 runs one event per Beam
    element, N carries up to N events of one window slot per element.
    """
    argv = online_train_argv(workload.job_args, output_dir, engine, block_size)
    started = time.perf_counter()
    online_train.run(argv)
    seconds = time.perf_counter() - started

    predictions = report.read_parquet_dir(os.path.join(output_dir, "predictions"))
    metrics = report.overall_metrics(predictions, workload.model_spec.task)
    throughput = Row(
        "throughput", f"online_train, {mode_label(block_size)}", engine.name, events=workload.max_events,
        seconds=seconds, events_per_s=workload.max_events / seconds, accuracy=metrics["online_accuracy"],
        detail=f"{predictions.num_rows} predictions; frozen initial model {metrics['baseline_accuracy']:.4f}",
    )
    return throughput, freshness_row(workload, engine, output_dir, predictions, block_size)


def freshness_row(workload: Workload, engine: Engine, output_dir: str, predictions, block_size: int = 0) -> Row:
    """Summarise the lag from each version's training watermark to its first prediction."""
    model_name = f"{workload.dataset}-mlp"
    versions = report.read_manifest(os.path.join(output_dir, "models"), model_name)
    lags = report.version_freshness(predictions, versions)
    event_lags = [row["event_time_lag_s"] for row in lags if row["event_time_lag_s"] is not None]
    processing_lags = [row["processing_time_lag_s"] for row in lags if row["processing_time_lag_s"] is not None]
    return Row(
        "freshness", f"version to first prediction, {mode_label(block_size)}", engine.name,
        events=workload.max_events,
        detail=(
            f"{len(event_lags)} versions served; event time p50 {_percentile(event_lags, 50)} s, "
            f"p95 {_percentile(event_lags, 95)} s; processing time p50 {_percentile(processing_lags, 50)} s, "
            f"p95 {_percentile(processing_lags, 95)} s"
        ),
    )


def _percentile(values: List[float], q: float) -> Optional[str]:
    if not values:
        return "n/a"
    return f"{float(np.percentile(values, q)):.3g}"
