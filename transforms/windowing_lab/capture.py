"""Run one replay through a windowing configuration and record every pane.

The pipeline is ``TestStream -> WindowInto -> GroupByKey -> RecordPanes``.
Each pane becomes a ``PaneRecord`` with Beam's own ``PaneInfo`` and the
arrival data of its elements, and is written to its own JSON file as soon
as it fires.

Writing each pane at once, rather than collecting panes downstream, is
deliberate. In Beam 2.77's Python trigger driver a pane that never fires
(the last partial pane of ``Repeatedly(AfterCount(n))``) or a pane fired
by a late processing-time timer leaves its watermark hold in place, so the
GroupByKey's output watermark never reaches infinity. The streaming
DirectRunner then reports a stall instead of finishing. Every pane that
will fire has fired by then, so ``replay_panes`` records the stall and
returns the panes.
"""

import json
import logging
import os
import uuid
from typing import List, NamedTuple, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils.windowed_value import PaneInfoTiming

from transforms.windowing import TriggerSpec, WindowingConfig
from transforms.windowing_lab.schedule import LabElement, build_test_stream

_LOGGER = logging.getLogger(__name__)

METRICS_NAMESPACE = "WindowingLab"

TIMING_NAMES = {
    PaneInfoTiming.EARLY: "EARLY",
    PaneInfoTiming.ON_TIME: "ON_TIME",
    PaneInfoTiming.LATE: "LATE",
    PaneInfoTiming.UNKNOWN: "UNKNOWN",
}

# Message fragments of a stall on the streaming DirectRunner. Beam 2.77
# raises a tuple, which Python turns into the first TypeError message. A
# fixed Beam would raise the exception inside the tuple, whose message
# contains the second fragment.
_STALL_MARKERS = ("exceptions must derive from BaseException", "pipeline stall")


class PaneRecord(NamedTuple):
    """One pane of one window, as a consumer downstream of GroupByKey receives it.

    ``window_start`` and ``window_end`` are seconds since the Unix epoch.
    ``timing``, ``index``, ``nonspeculative_index`` and ``is_last`` come
    from ``beam.DoFn.PaneInfoParam`` unchanged. ``ids``, ``arrivals`` and
    ``processing_times`` describe the pane's elements, sorted by arrival.
    """

    window_start: float
    window_end: float
    timing: str
    index: int
    nonspeculative_index: int
    is_last: bool
    ids: tuple
    arrivals: tuple
    processing_times: tuple


class CaptureResult(NamedTuple):
    """The panes of one replay, and whether the runner stalled at the end."""

    panes: List[PaneRecord]
    stalled: bool


class RecordPanesFn(beam.DoFn):
    """Write each grouped pane to ``pane_dir`` as a ``PaneRecord`` JSON file.

    ``pane_dir`` must be on the local filesystem of the DirectRunner.
    """

    def __init__(self, pane_dir: str):
        self.pane_dir = pane_dir
        self.pane_counters = {
            name: Metrics.counter(METRICS_NAMESPACE, f"panes_{name.lower()}")
            for name in TIMING_NAMES.values()
        }
        self.pane_elements = Metrics.counter(METRICS_NAMESPACE, "pane_elements")

    def process(
            self,
            keyed_elements,
            window=beam.DoFn.WindowParam,
            pane_info=beam.DoFn.PaneInfoParam):
        _, elements = keyed_elements
        members = sorted(elements, key=lambda element: element.arrival)
        record = PaneRecord(
            window_start=float(window.start),
            window_end=float(window.end),
            timing=TIMING_NAMES[pane_info.timing],
            index=pane_info.index,
            nonspeculative_index=pane_info.nonspeculative_index,
            is_last=pane_info.is_last,
            ids=tuple(member.id for member in members),
            arrivals=tuple(member.arrival for member in members),
            processing_times=tuple(member.processing_time for member in members))

        path = os.path.join(self.pane_dir, f"pane-{uuid.uuid4().hex}.json")
        with open(path, "w", encoding="utf-8") as file:
            json.dump(record._asdict(), file)

        self.pane_counters[record.timing].inc()
        self.pane_elements.inc(len(members))
        yield record


def drain_seconds(trigger: TriggerSpec) -> float:
    """Return the longest processing-time delay in ``trigger``, or 0.

    The replay advances its clock by this much after the last element, so
    every processing-time timer fires: the streaming DirectRunner waits
    forever on a timer that its clock never reaches.
    """
    firings = (trigger.repeated, trigger.early, trigger.late)
    return max(
        (firing.value for firing in firings if firing and firing.kind == "time"),
        default=0.0)


class CapturePanes(beam.PTransform):
    """Window ``(key, LabElement)`` pairs, group them and record each pane."""

    def __init__(self, windowing: WindowingConfig, pane_dir: str):
        super().__init__()
        self.windowing = windowing
        self.pane_dir = pane_dir

    def expand(self, keyed_elements):
        return (
            keyed_elements
            | self.windowing.window_into("WindowInto")
            | "GroupIntoPanes" >> beam.GroupByKey()
            | "RecordPanes" >> beam.ParDo(RecordPanesFn(self.pane_dir)))


def read_panes(pane_dir: str) -> List[PaneRecord]:
    """Read the panes that ``RecordPanesFn`` wrote to ``pane_dir``, sorted."""
    panes = []
    for name in os.listdir(pane_dir):
        if not (name.startswith("pane-") and name.endswith(".json")):
            continue
        with open(os.path.join(pane_dir, name), encoding="utf-8") as file:
            row = json.load(file)
        for field in ("ids", "arrivals", "processing_times"):
            row[field] = tuple(row[field])
        panes.append(PaneRecord(**row))
    return sorted(panes)


def _is_stall(error: Exception) -> bool:
    message = str(error)
    return any(marker in message for marker in _STALL_MARKERS)


def replay_panes(
        elements: Sequence[LabElement],
        windowing: WindowingConfig,
        pane_dir: str) -> CaptureResult:
    """Replay ``elements`` on the streaming DirectRunner and return all panes.

    ``pane_dir`` must be an empty local directory; it receives one JSON file
    per pane. A stall at the end of the replay (see the module docstring) is
    logged and reported in the result; any other failure is raised.
    """
    # The lab measures data loss, so triggers that Beam flags as able to
    # lose data (MAY_FINISH) must run rather than be rejected.
    options = PipelineOptions(
        flags=[], runner="DirectRunner", streaming=True, allow_unsafe_triggers=True)
    pipeline = beam.Pipeline(options=options)
    _ = (
        pipeline
        | "ReplayStream" >> build_test_stream(elements, drain_seconds(windowing.trigger))
        | "CapturePanes" >> CapturePanes(windowing, pane_dir))

    stalled = False
    try:
        pipeline.run().wait_until_finish()
    except (TypeError, RuntimeError) as error:
        if not _is_stall(error):
            raise
        stalled = True
        _LOGGER.warning(
            "The DirectRunner stalled at the end of the replay under %s: a"
            " pane that never fired, or a late processing-time firing, kept"
            " its watermark hold. All panes that fired were recorded.",
            windowing)

    panes = read_panes(pane_dir)
    _LOGGER.info(
        "Replayed %d elements under %s: %d panes.", len(elements), windowing, len(panes))
    return CaptureResult(panes=panes, stalled=stalled)
