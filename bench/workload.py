"""The stream, model and training settings that every benchmark shares.

The settings come from ``online_train``'s own parser and helpers, so the
plain loops and the peers below see exactly the events, model and
``TrainerConfig`` that the pipeline builds from the same flags.
"""

import dataclasses
import math
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

from ml.models import CLASSIFICATION, ModelSpec
from ml.trainer import TrainerConfig
from pipelines import common
from pipelines import online_train
from transforms import sources
from transforms import windowing
from transforms.records import Event
from transforms.validate import RecordValidator


@dataclasses.dataclass
class Workload:
    """One benchmark stream: the job's flags and the validated events they give.

    ``events`` are in event-time order (ties broken by id), the order in
    which the pipeline's trainer trains on each pane. ``prepare_s`` is the wall
    time it took to read, validate and sort them.
    """

    dataset: str
    max_events: int
    seed: int
    job_args: List[str]
    model_spec: ModelSpec
    trainer_config: TrainerConfig
    window_s: float
    events: List[Event]
    prepare_s: float

    def windows(self) -> List[Tuple[float, List[Event]]]:
        """Group the events into the job's fixed training windows, oldest first."""
        grouped: Dict[float, List[Event]] = {}
        for event in self.events:
            start = math.floor(event.event_time / self.window_s) * self.window_s
            grouped.setdefault(start, []).append(event)
        return sorted(grouped.items())


def job_args(dataset: str, max_events: int, seed: int = 0, window: Optional[str] = None) -> List[str]:
    """Return the ``online_train`` flags, without runner or output flags, for a stream.

    ``window`` is a ``--window`` spec; None keeps the job's default for the data set.
    """
    args = [f"--dataset={dataset}", f"--max_events={max_events}", f"--seed={seed}"]
    if window is not None:
        args.append(f"--window={window}")
    return args


def prepare_workload(dataset: str, max_events: int, seed: int = 0, window: Optional[str] = None) -> Workload:
    """Read and validate a stream the way ``online_train`` does, outside Beam."""
    started = time.perf_counter()
    args_list = job_args(dataset, max_events, seed, window)
    args, _ = online_train.build_parser().parse_known_args(args_list)

    source_config = sources.source_config_from_args(args)
    if args.window is None:
        args.window = online_train.default_window_spec(source_config)
    windowing_config = windowing.WindowingConfig.from_options(args)
    window_s = common.serving_window_seconds(args.serving_window, windowing_config)
    if windowing_config.window.kind != "fixed":
        raise ValueError(f"the benchmarks need fixed windows, got --window={args.window}.")

    scan = online_train.scan_source(source_config, args.schema_sample_rows)
    schema = online_train.load_or_infer_schema(args, source_config, scan.sample)
    model_spec = online_train.build_model_spec(args, schema)
    if model_spec.task != CLASSIFICATION:
        raise ValueError(
            f"--dataset={dataset} is a {model_spec.task} stream; the benchmarks compare "
            "classification accuracy, so pick a classification stream such as --dataset=sea."
        )
    trainer_config = online_train.build_trainer_config(args, source_config)

    validator = RecordValidator(
        schema, max_record_bytes=args.max_record_bytes, lateness=windowing_config.lateness_rule()
    )
    events = []
    for record in sources.read_source_records(source_config):
        result = validator.validate(record)
        if isinstance(result, Event):
            events.append(result)
    events.sort(key=lambda event: (event.event_time, event.id))

    return Workload(
        dataset=dataset,
        max_events=max_events,
        seed=seed,
        job_args=args_list,
        model_spec=model_spec,
        trainer_config=trainer_config,
        window_s=window_s,
        events=events,
        prepare_s=time.perf_counter() - started,
    )


def feature_matrix(events: List[Event]) -> np.ndarray:
    """Stack event features as float32, the dtype the model runs in."""
    return np.asarray([event.features for event in events], dtype=np.float32)


def label_vector(events: List[Event]) -> np.ndarray:
    return np.asarray([event.label for event in events])
