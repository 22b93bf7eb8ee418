"""Train a PyTorch model inside a Beam pipeline and serve it as it trains.

Run the default job (the embedded phishing data set, replayed in event time):

    python -m pipelines.online_train --runner=DirectRunner

Outputs under ``--output_dir``: ``predictions/`` (Parquet), ``metrics/``
(Parquet and JSON Lines, one row per event-time window), ``models/`` (the
versioned checkpoints and a manifest), ``dead_letter/`` (JSON Lines),
``report.md`` with plots, and ``schema.pbtxt``.
"""

import argparse
import dataclasses
import json
import logging
import math
import os
import shlex
import shutil
import sys
from typing import Any, List, NamedTuple, Optional

import apache_beam as beam
import pyarrow as pa
from apache_beam.options.pipeline_options import StandardOptions

from ml.models import CLASSIFICATION, ModelSpec
from ml.store import ModelStore
from ml.drift import DETECTORS
from ml.trainer import OPTIMIZERS, REACTIONS, TrainerConfig
from pipelines import common
from pipelines import report
from pipelines import segments
from transforms import dead_letter
from transforms import replay
from transforms import schema as schema_lib
from transforms import sources
from transforms import windowing
from transforms.blocks import DEFAULT_BLOCK_SIZE, block_config
from transforms.evaluation import PrequentialMetrics
from transforms.inference import (
    DEVICES,
    MODEL_SELECTIONS,
    BackpressureConfig,
    SafetensorsModelHandler,
    VersionedInference,
)
from transforms.records import Block
from transforms.sinks import WriteRows
from transforms.store_io import BeamFileSystem
from transforms.training import TrainingConfig, TrainOnline, publish_initial_model
from transforms.validate import ValidateRecords

_LOGGER = logging.getLogger(__name__)

# Pipeline counters copied into the run summary and report.
REPORTED_COUNTERS = (
    "ValidateRecords.records_read",
    "ValidateRecords.records_valid",
    "ValidateRecords.records_invalid",
    "OnlineTrainer.updates_rejected",
    "OnlineTrainer.drifts_detected",
    "OnlineTrainer.rollbacks",
    "OnlineTrainer.train_oom_retries",
    "OnlineTrainer.loader_producer_blocked_ms",
    "OnlineTrainer.loader_consumer_blocked_ms",
    "VersionedInference.oom_splits",
    "VersionedInference.oom_dead_letters",
)

# Batch sizes chosen under memory and latency pressure, for the report.
REPORTED_DISTRIBUTIONS = (
    "VersionedInference.controller_batch_size",
    "OnlineTrainer.train_micro_batch_size",
)

# Owned output subdirectories, replaced on a fresh run (not with --resume).
OUTPUT_SUBDIRS = ("predictions", "metrics", "models", "dead_letter", "drift", "plots")

PREDICTION_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("event_time", pa.float64()),
    ("label", pa.float64()),
    ("prediction", pa.list_(pa.float64())),
    ("predicted_class", pa.int64()),
    ("model_version", pa.int64()),
    ("training_watermark", pa.float64()),
    ("baseline_prediction", pa.list_(pa.float64())),
    ("inference_latency_ms", pa.float64()),
    ("processing_time", pa.float64()),
])

METRICS_SCHEMA_FIELDS = [
    ("window_start", pa.float64()),
    ("window_end", pa.float64()),
    ("events", pa.int64()),
    ("labelled_events", pa.int64()),
    ("min_model_version", pa.int64()),
    ("max_model_version", pa.int64()),
]


def metrics_schema(task: str) -> pa.Schema:
    names = ("accuracy", "log_loss") if task == CLASSIFICATION else ("mae", "rmse")
    fields = list(METRICS_SCHEMA_FIELDS)
    for prefix in ("online", "baseline"):
        fields += [(f"{prefix}_{name}", pa.float64()) for name in names]
    return pa.schema(fields)


def prediction_to_row(prediction) -> dict:
    def as_list(output):
        if output is None:
            return None
        return list(output) if isinstance(output, (list, tuple)) else [float(output)]

    row = prediction._asdict()
    row["label"] = None if prediction.label is None else float(prediction.label)
    row["prediction"] = as_list(prediction.prediction)
    row["baseline_prediction"] = as_list(prediction.baseline_prediction)
    return row


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.online_train",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sources.add_source_options(parser)
    replay.add_replay_options(parser)
    windowing.add_windowing_options(parser)
    # None means "pick a window that suits the data set" (default_window_spec).
    parser.set_defaults(window=None)

    group = parser.add_argument_group("model and training")
    group.add_argument("--model_name", default=None,
                       help="Name of the model in the store; defaults to '<dataset>-mlp'.")
    group.add_argument("--model_class", default=None,
                       help="Your own nn.Module as 'package.module:ClassName', built as "
                            "cls(num_inputs, num_outputs, **model_kwargs).")
    group.add_argument("--model_kwargs", default="{}", help="JSON object of keyword arguments for --model_class.")
    group.add_argument("--hidden", default="64", help="Hidden layer widths of the built-in MLP, comma-separated.")
    group.add_argument("--learning_rate", type=float, default=1e-2, help="Optimizer learning rate.")
    group.add_argument("--optimizer", default="adam", choices=sorted(OPTIMIZERS), help="Optimizer.")
    group.add_argument("--steps_per_pane", type=int, default=1, help="Passes over each pane's examples.")
    group.add_argument("--train_batch_size", type=int, default=64, help="Mini-batch size within a pass.")
    group.add_argument("--train_micro_batch_size", type=int, default=None,
                       help="Micro-batch size for gradient accumulation (default: the whole mini-batch); "
                            "it shrinks by itself on out-of-memory errors.")
    group.add_argument("--train_loader", choices=("auto", "on", "off"), default="auto",
                       help="Feed training steps through the prefetching loader (auto: on CUDA only).")
    group.add_argument("--rollback_factor", type=float, default=None,
                       help="Roll back a version whose loss on its next window exceeds this factor times "
                            "its predecessor's (off when absent).")
    group.add_argument("--max_loss", type=float, default=None,
                       help="Quality gate: an update whose training loss exceeds this is not published.")
    group.add_argument("--serving_window", default=None,
                       help="Event-time length of a serving window (e.g. 1h); defaults to the "
                            "training window's size (or period, for sliding windows).")

    group = parser.add_argument_group("drift and forgetting")
    group.add_argument("--drift_detector", default=None, choices=DETECTORS,
                       help="River drift detector fed with each pane's prequential errors; off when absent.")
    group.add_argument("--drift_params", default="{}",
                       help="JSON object of keyword arguments for the drift detector, e.g. '{\"delta\": 0.01}'.")
    group.add_argument("--drift_reaction", default="none", choices=REACTIONS,
                       help="What the trainer does when the detector fires.")
    group.add_argument("--lr_boost_factor", type=float, default=10.0,
                       help="Learning-rate multiplier of the boost_lr reaction.")
    group.add_argument("--lr_boost_panes", type=int, default=5, help="Panes the boost_lr reaction lasts.")
    group.add_argument("--replay_size", type=int, default=0,
                       help="Examples kept in the reservoir replay buffer (0 turns replay off).")
    group.add_argument("--replay_ratio", type=float, default=0.5,
                       help="Replayed examples mixed into each training step, as a fraction of the pane.")
    group.add_argument("--ewc_lambda", type=float, default=0.0,
                       help="Strength of Elastic Weight Consolidation (0 turns it off).")
    group.add_argument("--ewc_every_panes", type=int, default=0,
                       help="Consolidate EWC anchors every this many panes (0: only after a detected drift).")
    group.add_argument("--ewc_decay", type=float, default=0.9, help="Decay of older EWC Fisher estimates.")
    group.add_argument("--ewc_examples", type=int, default=256, help="Examples used to estimate the Fisher diagonal.")

    group = parser.add_argument_group("serving")
    group.add_argument("--model_selection", default="as_of", choices=MODEL_SELECTIONS,
                       help="as_of: newest version trained on labels at or before the event's time "
                            "(reproducible, no leakage); latest: newest version published so far.")
    group.add_argument("--device", default="auto", choices=DEVICES,
                       help="Inference device; cuda falls back to cpu when CUDA is unavailable.")
    group.add_argument("--inference_batch_size", type=int, default=256, help="Maximum inference batch size.")
    group.add_argument("--max_cached_models", type=int, default=4, help="Loaded model versions kept per worker.")
    group.add_argument("--torch_threads", type=int, default=1,
                       help="torch intra-op threads per worker process for training and inference "
                            "(0 keeps torch's default of one per core).")
    group.add_argument("--target_latency_ms", type=float, default=200.0,
                       help="Inference step latency above which the batch-size controller halves the batch.")
    group.add_argument("--no_backpressure", action="store_true",
                       help="Give the model whole BatchElements batches, without the batch-size controller.")

    group = parser.add_argument_group("execution")
    group.add_argument("--block_size", type=int, default=None,
                       help="Carry up to this many events of one window as one Beam element through "
                            "validation, training, inference and the sinks, which cuts Beam's per-element "
                            "cost; 0 carries one event per element. Blocks need fixed, sliding or global "
                            f"windows and a trigger without counts. Default: {DEFAULT_BLOCK_SIZE} where "
                            "they can be used, else 0.")
    group.add_argument("--segment_events", type=int, default=None,
                       help="Run a bounded replay as consecutive pipelines of about this many records, cut "
                            "where windows start, each resuming from the newest model version; the outputs "
                            "equal those of one pipeline and memory stays bounded by the segment. 0 runs one "
                            f"pipeline. Default: {segments.DEFAULT_SEGMENT_EVENTS} on the DirectRunner, whose "
                            "engines keep a job's data in memory, else 0.")

    group = parser.add_argument_group("validation and output")
    group.add_argument("--schema", default=None,
                       help="A tensorflow_metadata Schema text proto; inferred from the input when absent.")
    group.add_argument("--schema_sample_rows", type=int, default=100_000,
                       help="Rows read to infer the schema when --schema is absent.")
    group.add_argument("--max_record_bytes", type=int, default=65_536,
                       help="Records larger than this (as JSON) go to dead letters.")
    group.add_argument("--output_dir", default=os.path.join("output", "online_train"),
                       help="Directory for predictions, metrics, models, dead letters and the report.")
    group.add_argument("--resume", action="store_true",
                       help="Continue from the newest version in --output_dir/models instead of starting anew.")
    group.add_argument("--no_report", action="store_true", help="Skip report.md and plots after the run.")
    return parser


def default_window_spec(source_config) -> str:
    """Return a training window that gives each window tens of events on the built-in data."""
    if source_config.input is None and source_config.dataset == "phishing":
        return "fixed:1h"
    return "fixed:5m"


class SourceScan(NamedTuple):
    """What one pass over a bounded source finds before the pipeline starts.

    ``sample`` contains the rows of the first ``sample_count`` records,
    malformed ones left out, for schema inference. ``newest_event_time`` is
    where the trainer's timer chain may stop, and with ``oldest_event_time``
    it gives the number of serving windows. Both are infinite for a source
    without event times. ``records`` counts every record, malformed ones
    included.
    """

    sample: list
    oldest_event_time: float
    newest_event_time: float
    records: int = 0


def scan_source(source_config, sample_count: int) -> SourceScan:
    """Read a bounded source once; return its schema sample and event-time range."""
    sample = []
    oldest, newest = float("inf"), float("-inf")
    records = 0
    for record in sources.read_source_records(sources.resolve_source_config(source_config)):
        records += 1
        if record.arrival < sample_count and sources.malformed_reason(record) is None:
            sample.append(record.row)
        if record.event_time is not None:
            oldest = min(oldest, record.event_time)
            newest = max(newest, record.event_time)
    return SourceScan(sample, oldest, newest, records)


def serving_window_count(scan: SourceScan, serving_window_s: float) -> int:
    """Return how many serving windows the scanned event times span (0 without event times)."""
    if not math.isfinite(scan.newest_event_time):
        return 0
    return math.floor(scan.newest_event_time / serving_window_s) - math.floor(scan.oldest_event_time / serving_window_s) + 1


def prepare_output_dir(output_dir: str, resume: bool) -> None:
    # NOTE: earlier outputs are removed only from local directories; on an
    # object store, use a new --output_dir for each run.
    if resume or not common.is_local_path(output_dir):
        return
    for name in OUTPUT_SUBDIRS:
        path = os.path.join(output_dir, name)
        if os.path.isdir(path):
            _LOGGER.info("Removing %s from an earlier run (pass --resume to continue it).", path)
            shutil.rmtree(path)
    os.makedirs(output_dir, exist_ok=True)


def load_or_infer_schema(args, source_config, sample_rows: list):
    if args.schema:
        return schema_lib.load_schema(args.schema)
    return schema_lib.infer_schema(
        sample_rows,
        label_column=source_config.label_column,
        timestamp_column=source_config.timestamp_column,
        id_column=source_config.id_column,
    )


def parse_json_object(flag: str, text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{flag} {text!r} is not valid JSON: {error}; pass an object such as '{{}}'.") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} {text!r} is not a JSON object; pass an object such as '{{}}'.")
    return value


def build_model_spec(args, schema) -> ModelSpec:
    task = schema_lib.task(schema)
    num_outputs = len(schema_lib.label_classes(schema)) if task == CLASSIFICATION else 1
    model_kwargs = parse_json_object("--model_kwargs", args.model_kwargs)
    try:
        hidden = tuple(int(width) for width in args.hidden.split(",") if width.strip())
    except ValueError:
        raise ValueError(f"--hidden {args.hidden!r} is not a comma-separated list of widths, e.g. 64,32.") from None
    return ModelSpec(
        task=task,
        num_inputs=schema_lib.num_model_inputs(schema),
        num_outputs=num_outputs,
        hidden=hidden,
        model_class=args.model_class,
        model_kwargs=tuple(sorted(model_kwargs.items())),
    )


def build_trainer_config(args, source_config) -> TrainerConfig:
    """Build the trainer's settings from the job's flags."""
    return TrainerConfig(
        learning_rate=args.learning_rate,
        optimizer=args.optimizer,
        steps_per_pane=args.steps_per_pane,
        batch_size=args.train_batch_size,
        max_loss=args.max_loss,
        seed=source_config.seed,
        drift_detector=args.drift_detector,
        drift_params=parse_json_object("--drift_params", args.drift_params),
        drift_reaction=args.drift_reaction,
        lr_boost_factor=args.lr_boost_factor,
        lr_boost_panes=args.lr_boost_panes,
        replay_size=args.replay_size,
        replay_ratio=args.replay_ratio,
        ewc_lambda=args.ewc_lambda,
        ewc_every_panes=args.ewc_every_panes,
        ewc_decay=args.ewc_decay,
        ewc_examples=args.ewc_examples,
        micro_batch_size=args.train_micro_batch_size,
        use_loader={"auto": None, "on": True, "off": False}[args.train_loader],
    )


def check_late_replay(mode: str, replay_config) -> None:
    """Raise ValueError for a late-data replay on the legacy streaming DirectRunner, which cannot run it."""
    if mode != "teststream" or replay_config.late_fraction == 0:
        return
    # NOTE: the legacy engine (Beam 2.77, runners/direct/executor.py) fails
    # when a bundle with no elements reaches a step that reads a side input,
    # and ValidateRecords emits such bundles when every record in one is late.
    raise ValueError(
        f"--late_fraction={replay_config.late_fraction} cannot run with --streaming on the DirectRunner: its "
        "legacy streaming engine fails when a bundle of only late records reaches the versioned inference step. "
        "Replay late data with --runner=PrismRunner --streaming, or in batch without --streaming."
    )


def skip_trained(element, resume_from: float) -> list:
    """Keep the events (alone or in a Block) at or after ``resume_from``."""
    if isinstance(element, Block):
        untrained = [event for event in element if event.event_time >= resume_from]
        return [Block(untrained)] if untrained else []
    return [element] if element.event_time >= resume_from else []


class _Job(NamedTuple):
    """The settings and objects shared by every pipeline of one job, one pipeline or one per segment."""

    args: argparse.Namespace
    options: Any
    source_config: Any
    replay_config: replay.ReplayConfig
    mode: str
    windowing_config: windowing.WindowingConfig
    serving_window_s: float
    blocks: Optional[Any]
    schema: Any
    model_spec: ModelSpec
    training_config: TrainingConfig
    baseline_version: Any
    filesystem: BeamFileSystem


def run(argv: Optional[List[str]] = None) -> dict:
    """Build and run the pipeline, or one per segment; return the report summary."""
    parser = build_parser()
    args, pipeline_args = parser.parse_known_args(argv)
    options = common.build_pipeline_options(pipeline_args)
    streaming = options.view_as(StandardOptions).streaming

    source_config = sources.source_config_from_args(args)
    replay_config = replay.replay_config_from_args(args)
    mode = replay.choose_replay_mode(options)
    check_late_replay(mode, replay_config)
    if args.window is None:
        args.window = default_window_spec(source_config)
    windowing_config = windowing.WindowingConfig.from_options(args)
    serving_window_s = common.serving_window_seconds(args.serving_window, windowing_config)
    blocks = block_config(args.block_size, windowing_config, serving_window_s)
    per_segment, period_micros = segment_settings(args, options, mode, windowing_config, serving_window_s)

    prepare_output_dir(args.output_dir, args.resume)
    if args.schema_sample_rows < 1:
        raise ValueError(
            f"--schema_sample_rows must be at least 1, got {args.schema_sample_rows}; for example 100000."
        )
    scan = scan_source(source_config, 0 if args.schema else args.schema_sample_rows)
    schema = load_or_infer_schema(args, source_config, scan.sample)
    newest_event_time = scan.newest_event_time
    serving_windows = serving_window_count(scan, serving_window_s)
    segmented = per_segment and scan.records > per_segment
    # Up to --schema_sample_rows rows would otherwise stay alive for the whole run.
    del scan
    schema_lib.save_schema(schema, os.path.join(args.output_dir, "schema.pbtxt"))
    model_spec = build_model_spec(args, schema)
    model_name = args.model_name or f"{source_config.dataset or 'input'}-mlp"

    store_root = os.path.join(args.output_dir, "models")
    filesystem = BeamFileSystem()
    store = ModelStore(store_root, filesystem)
    training_config = TrainingConfig(
        model_name=model_name,
        model_spec=model_spec,
        trainer=build_trainer_config(args, source_config),
        serving_window_s=serving_window_s,
        store_root=store_root,
        end_of_stream=newest_event_time,
        rollback_factor=args.rollback_factor,
        torch_threads=args.torch_threads or None,
    )
    baseline_version = publish_initial_model(training_config, store)
    initial_version = baseline_version
    if args.resume:
        initial_version = store.latest(model_name) or initial_version
        _LOGGER.info("Resuming from version %d of %s.", initial_version.version, model_name)

    _LOGGER.info(
        "Replaying %s in %s mode (%s), training windows %s, serving windows of %g s, %s model selection, %s.",
        source_config.input or source_config.dataset, mode, "streaming" if streaming else "batch",
        args.window, serving_window_s, args.model_selection,
        f"blocks of up to {blocks.size} events" if blocks else "one event per element",
    )
    job = _Job(args, options, source_config, replay_config, mode, windowing_config, serving_window_s, blocks,
               schema, model_spec, training_config, baseline_version, filesystem)
    deep_metrics = serving_windows > common.MAX_SHALLOW_BUNDLES
    if segmented:
        queries, result = run_segments(job, store, initial_version, per_segment, period_micros, deep_metrics)
    else:
        result = common.run_and_wait(build_pipeline(job, initial_version), options, deep_metrics=deep_metrics)
        queries = [common.query_metrics(result)]

    engine = common.describe_engine(result, options)
    _LOGGER.info("Pipeline finished on %s.", engine)
    counters = common.log_counters(queries)
    validation = {
        name.split(".", 1)[1]: counters[name]
        for name in REPORTED_COUNTERS
        if name in counters
    }
    validation.update(common.distribution_summaries(queries, REPORTED_DISTRIBUTIONS))

    output = args.output_dir
    if args.no_report or not common.is_local_path(output):
        return dict(validation, engine=engine)
    command = "python -m pipelines.online_train " + " ".join(shlex.quote(arg) for arg in (argv or sys.argv[1:]))
    summary = report.build_report(output, model_name, model_spec.task, engine, command, validation)
    print(report.format_summary_table(summary))
    print(f"Report: {os.path.join(output, 'report.md')}")
    return summary


def segment_settings(args, options, mode: str, windowing_config, serving_window_s: float) -> tuple:
    """Return the records per segment (0: one pipeline) and the period of the possible cuts in microseconds."""
    on_direct_runner = common.runs_on_fnapi_runner(options) or mode == "teststream"
    per_segment = segments.events_per_segment(args.segment_events, on_direct_runner, mode, args.model_selection)
    if per_segment == 0:
        return 0, None
    try:
        period_micros = segments.cut_period_micros(windowing_config.window, serving_window_s)
    except ValueError:
        if args.segment_events is not None:
            raise
        _LOGGER.info("Running one pipeline: --window=%s cannot be cut into segments.", windowing_config.window)
        return 0, None
    return per_segment, period_micros


def run_segments(job: _Job, store: ModelStore, initial_version, per_segment: int, period_micros: int,
                 deep_metrics: bool) -> tuple:
    """Run one pipeline per planned segment, each from the newest version.

    Returns each pipeline's metrics (:func:`common.query_metrics`) and the
    last pipeline's result. The other results are dropped as soon as their
    metrics are read, because a runner's result can keep its pipeline's data.
    """
    planned = segments.plan_segments(
        replay.iter_replay(sources.resolve_source_config(job.source_config), job.replay_config),
        period_micros,
        per_segment,
    )
    queries, result = [], None
    version = initial_version
    for position, segment in enumerate(planned, start=1):
        if position > 1:
            version = store.latest(job.training_config.model_name) or version
        _LOGGER.info(
            "Segment %d of %d: %d records from arrival %d, starting from version %d.",
            position, len(planned), segment.records, segment.replay.first_arrival, version.version,
        )
        pipeline = build_pipeline(job, version, segment, segments.dead_letter_prefix(position))
        # The legacy DirectRunner's result keeps its evaluation context, and with it the segment's state.
        result = None
        result = common.run_and_wait(pipeline, job.options, deep_metrics=deep_metrics)
        queries.append(common.query_metrics(result))
    return queries, result


def build_pipeline(job: _Job, initial_version, segment: Optional[segments.Segment] = None,
                   dead_letter_prefix: str = dead_letter.FILE_PREFIX) -> beam.Pipeline:
    """Build the job's pipeline over the whole replay, or over one segment of it."""
    args = job.args
    training_config = job.training_config
    replay_segment = None
    if segment is not None:
        replay_segment = segment.replay
        if replay_segment.end_micros is not None:
            training_config = dataclasses.replace(training_config, end_of_stream=segment.newest_event_time)

    pipeline = beam.Pipeline(options=job.options)
    records = pipeline | "ReadEvents" >> replay.ReadEvents(
        job.source_config, job.replay_config, job.mode, job.blocks, replay_segment
    )
    validated = records | "ValidateRecords" >> ValidateRecords(
        job.schema,
        max_record_bytes=args.max_record_bytes,
        lateness=job.windowing_config.lateness_rule(),
    )
    events = validated.valid
    if args.resume and initial_version.version > 0:
        # The earlier run already served and trained on the events before the
        # resumed version's training watermark. Replaying them would serve
        # them with a model trained on their own labels.
        resume_from = initial_version.training_watermark
        events = events | "SkipTrainedEvents" >> beam.FlatMap(skip_trained, resume_from)

    trained = events | "TrainOnline" >> TrainOnline(
        training_config, job.windowing_config.window_into("WindowForTraining"), initial_version, job.filesystem
    )
    store_root = training_config.store_root
    handler = SafetensorsModelHandler(
        store_root, device=args.device, filesystem=job.filesystem, max_batch_size=args.inference_batch_size
    )
    served = events | "VersionedInference" >> VersionedInference(
        handler,
        job.serving_window_s,
        initial_version,
        serving_records=trained.serving,
        published_versions=trained.versions,
        model_selection=args.model_selection,
        baseline_version=job.baseline_version,
        max_cached_models=args.max_cached_models,
        backpressure=BackpressureConfig(
            enabled=not args.no_backpressure,
            initial_batch_size=min(64, args.inference_batch_size),
            max_batch_size=args.inference_batch_size,
            target_latency_ms=args.target_latency_ms,
        ),
        device=args.device,
        torch_threads=args.torch_threads or None,
        blocks=job.blocks is not None,
        allowed_lateness_s=job.windowing_config.lateness_rule().max_delay_s(),
    )
    write_outputs(job, validated.dead_letter, trained, served, dead_letter_prefix)
    return pipeline


def write_outputs(job: _Job, validation_dead_letters, trained, served, dead_letter_prefix: str) -> None:
    """Attach the sinks: predictions, per-window metrics, drift events and dead letters."""
    output = job.args.output_dir
    task = job.model_spec.task
    predictions = served.predictions
    _ = predictions | "WritePredictions" >> WriteRows(
        os.path.join(output, "predictions"), "parquet", PREDICTION_SCHEMA, prediction_to_row
    )
    metrics = predictions | "PrequentialMetrics" >> PrequentialMetrics(task)
    _ = metrics | "WriteMetricsParquet" >> WriteRows(os.path.join(output, "metrics"), "parquet", metrics_schema(task))
    _ = metrics | "WriteMetricsJson" >> WriteRows(os.path.join(output, "metrics"), "jsonl")
    inference_dead_letters = served.dead_letter | "DeadLettersToGlobalWindow" >> beam.WindowInto(
        beam.window.GlobalWindows()
    )
    _ = (
        trained.drift
        | "WindowDriftEvents" >> beam.WindowInto(beam.window.FixedWindows(job.serving_window_s))
        | "WriteDriftEvents" >> WriteRows(os.path.join(output, "drift"), "jsonl", prefix="drift")
    )
    dead_letters = (validation_dead_letters, inference_dead_letters) | "CollectDeadLetters" >> beam.Flatten()
    _ = dead_letters | "WriteDeadLetters" >> dead_letter.WriteDeadLetters(output, prefix=dead_letter_prefix)


def main() -> None:
    common.run_main(run, "%(asctime)s %(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    main()
