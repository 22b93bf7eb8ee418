"""Run the windowing lab: one recorded stream replayed under every setting.

``load_stream`` reads and validates the source once. ``run_setting`` then
replays it under one setting: the replay schedule (arrival order and
watermark) comes from ``transforms.replay.replay_schedule`` and the
setting's seed, the panes from one streaming DirectRunner pipeline, and
the measures from the panes and the schedule alone. Settings run one after
another, one TestStream per pipeline, because a pipeline with two
TestStreams loses elements on the legacy DirectRunner.
"""

import dataclasses
import logging
import statistics
import tempfile
import time
from typing import Dict, List, Optional, Sequence

from transforms import schema as schema_lib
from transforms import sources
from transforms.records import Event, SourceRecord
from transforms.replay import replay_schedule
from transforms.validate import RecordValidator
from transforms.windowing_lab.capture import replay_panes
from transforms.windowing_lab.firing import check_firing_points, fire_panes
from transforms.windowing_lab.grid import LabSetting
from transforms.windowing_lab.measures import PaneMeasures, measure_panes
from transforms.windowing_lab.prequential import ModelConfig, PrequentialResult, evaluate_prequential
from transforms.windowing_lab.schedule import LabElement, make_elements

_LOGGER = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LabStream:
    """The validated stream that every setting replays.

    ``records`` are the valid source records in file order and ``events``
    the matching events, position for position. ``spacing`` is the median
    gap between consecutive event times in seconds.
    """

    name: str
    records: tuple
    events: tuple
    task: str
    num_inputs: int
    num_outputs: int
    spacing: float
    dead_letters: int

    @property
    def events_by_id(self) -> Dict[str, Event]:
        return {event.id: event for event in self.events}


@dataclasses.dataclass(frozen=True)
class TrainingOptions:
    """Settings of the model trained on each setting's panes."""

    hidden: tuple = (32,)
    learning_rate: float = 1e-2
    steps_per_pane: int = 1
    batch_size: int = 64


@dataclasses.dataclass(frozen=True)
class SettingResult:
    """Everything the lab measured for one setting.

    ``stalled`` is True when the DirectRunner stopped with a watermark hold
    left (see ``capture.py``). ``prequential`` is None when training is off.
    """

    setting: LabSetting
    measures: PaneMeasures
    fired: tuple
    prequential: Optional[PrequentialResult]
    stalled: bool


def _median_spacing(event_times: Sequence[float]) -> float:
    ordered = sorted(event_times)
    gaps = [later - earlier for earlier, later in zip(ordered, ordered[1:]) if later > earlier]
    return statistics.median(gaps) if gaps else 1.0


def load_stream(source_config: sources.SourceConfig) -> LabStream:
    """Read, infer a schema for, and validate a source; return its valid part.

    Raises ValueError when the source has no label column, because both the
    schema and the model need one, or when two valid events share an id,
    because the lab identifies events by id.
    """
    config = sources.resolve_source_config(source_config)
    if config.label_column is None:
        raise ValueError(
            "The windowing lab needs a label column: pass --label_column with"
            " --input, or use a --dataset.")

    records = list(sources.read_source_records(config))
    rows = [record.row for record in records if sources.malformed_reason(record) is None]
    schema = schema_lib.infer_schema(
        rows,
        label_column=config.label_column,
        timestamp_column=config.timestamp_column,
        id_column=config.id_column)

    # Lateness is off: the lab measures what the windowing does with late
    # records, so none may be filtered out before it.
    validator = RecordValidator(schema, lateness=None)
    valid_records: List[SourceRecord] = []
    events: List[Event] = []
    seen_ids = set()
    for record in records:
        result = validator.validate(record)
        if not isinstance(result, Event):
            continue
        if result.id in seen_ids:
            raise ValueError(
                f"Event id {result.id!r} appears more than once; the windowing lab"
                " identifies events by id, so give each row a unique id.")
        seen_ids.add(result.id)
        valid_records.append(record)
        events.append(result)

    if not events:
        raise ValueError(f"No valid events in {config.input or config.dataset}.")

    task = schema_lib.task(schema)
    num_outputs = len(schema_lib.label_classes(schema)) if task == schema_lib.CLASSIFICATION else 1
    stream = LabStream(
        name=config.input or config.dataset,
        records=tuple(valid_records),
        events=tuple(events),
        task=task,
        num_inputs=schema_lib.num_model_inputs(schema),
        num_outputs=num_outputs,
        spacing=_median_spacing([event.event_time for event in events]),
        dead_letters=len(records) - len(events))
    _LOGGER.info(
        "Loaded %s: %d valid events, %d dead letters, event spacing %.3g s.",
        stream.name, len(events), stream.dead_letters, stream.spacing)
    return stream


def schedule_elements(stream: LabStream, setting: LabSetting, seed: int) -> List[LabElement]:
    """Return the stream's replay schedule under ``setting`` as LabElements."""
    # replay_schedule returns the input records with only arrival and
    # watermark replaced, so each row object identifies its record.
    position_of_row = {id(record.row): position for position, record in enumerate(stream.records)}
    scheduled = replay_schedule(stream.records, setting.replay_config(seed))

    events = [stream.events[position_of_row[id(record.row)]] for record in scheduled]
    return make_elements(
        ids=[event.id for event in events],
        event_times=[event.event_time for event in events],
        watermarks=[record.watermark for record in scheduled])


def run_setting(
        stream: LabStream,
        setting: LabSetting,
        seed: int,
        training: Optional[TrainingOptions] = TrainingOptions()) -> SettingResult:
    """Replay ``stream`` under ``setting`` and measure the panes.

    ``training`` None skips the prequential model.
    """
    started = time.monotonic()
    windowing = setting.windowing_config()
    accumulating = windowing.accumulation == "accumulating"
    elements = schedule_elements(stream, setting, seed)

    with tempfile.TemporaryDirectory(prefix="windowing-lab-") as pane_dir:
        capture = replay_panes(elements, windowing, pane_dir)

    fired = fire_panes(capture.panes, elements, windowing.trigger, accumulating)
    contradictions = check_firing_points(fired, accumulating)
    if contradictions:
        _LOGGER.warning(
            "Setting %r: %d panes contradict their derived firing time, for example %s.",
            setting.name, len(contradictions), contradictions[0])
    measures = measure_panes(fired, elements, windowing, len(contradictions))

    prequential = None
    if training is not None:
        prequential = evaluate_prequential(fired, stream.events_by_id, _model_config(stream, training, seed))

    _LOGGER.info(
        "Setting %r: %d panes in %.1f s.", setting.name, len(fired), time.monotonic() - started)
    return SettingResult(
        setting=setting,
        measures=measures,
        fired=tuple(fired),
        prequential=prequential,
        stalled=capture.stalled)


def _model_config(stream: LabStream, training: TrainingOptions, seed: int) -> ModelConfig:
    return ModelConfig(
        task=stream.task,
        num_inputs=stream.num_inputs,
        num_outputs=stream.num_outputs,
        hidden=tuple(training.hidden),
        learning_rate=training.learning_rate,
        steps_per_pane=training.steps_per_pane,
        batch_size=training.batch_size,
        seed=seed)


def run_grid(
        stream: LabStream,
        settings: Sequence[LabSetting],
        seed: int,
        training: Optional[TrainingOptions] = TrainingOptions()) -> List[SettingResult]:
    """Run every setting in order, one pipeline each."""
    return [run_setting(stream, setting, seed, training) for setting in settings]
