"""Measure one replay's panes: latency, completeness, lateness and duplicates.

The unit of most measures is an *assignment*: one event in one window. A
fixed window gives each event one assignment and a sliding window several.
Sessions merge, so their assignment is keyed by the event alone. The ground
truth is every assignment of every replayed event, emitted or not.

Definitions, all over the panes in firing order (see ``firing.py``):

* latency: per event, the firing time of the first pane that holds it minus
  its arrival time, both on the TestStream clock, in seconds;
* on-time completeness: the fraction of all assignments first emitted in an
  EARLY or ON_TIME pane, so a consumer that stops at the on-time pane has
  seen them;
* late accepted: assignments first emitted in a LATE pane;
* late dropped: assignments never emitted whose window had expired when the
  event arrived, judged from the replay's watermark field with the Python
  SDK's rule ``watermark > window end + allowed lateness``;
* unemitted: assignments never emitted for another reason, such as the last
  partial pane of a count trigger or late data after a window's final pane;
* duplicates: emitted assignments minus distinct emitted assignments, the
  overcount of a consumer that sums every pane.
"""

import dataclasses
import logging
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
from apache_beam.transforms import window as beam_window

from transforms.windowing import WindowingConfig
from transforms.windowing_lab.firing import EARLY, LATE, ON_TIME, FiredPane
from transforms.windowing_lab.schedule import LabElement, to_timestamp

_LOGGER = logging.getLogger(__name__)

Assignment = Tuple[str, Optional[Tuple[float, float]]]


@dataclasses.dataclass(frozen=True)
class PaneMeasures:
    """Measures of one replay's panes. Latencies are seconds of processing time.

    ``relabelled_panes`` counts panes whose Beam ``PaneInfo`` timing differs
    from the timing derived from the replay's watermark.
    ``dropped_mismatches`` counts assignments that the watermark rule marks
    as dropped but that a pane emitted. ``firing_contradictions`` counts
    panes whose contents contradict their derived firing time. Both are 0
    when the lab's model of the runner is right.
    """

    events: int
    assignments: int
    panes_early: int
    panes_on_time: int
    panes_late: int
    empty_panes: int
    relabelled_panes: int
    latency_p50_s: Optional[float]
    latency_p95_s: Optional[float]
    on_time_completeness: Optional[float]
    late_accepted: int
    late_dropped: int
    unemitted: int
    duplicates: int
    dropped_mismatches: int
    firing_contradictions: int


def assignments_of(
        element: LabElement, windowing: WindowingConfig) -> List[Tuple[Assignment, beam_window.BoundedWindow]]:
    """Return the element's assignments with the window each was assigned to.

    For merging windows (sessions) that window is the element's own proto
    session, which is what a GroupByKey checks for lateness before merging.
    """
    window_fn = windowing.window_fn
    context = beam_window.WindowFn.AssignContext(to_timestamp(element.event_time))
    windows = window_fn.assign(context)
    if window_fn.is_merging():
        return [((element.id, None), window) for window in windows]
    return [((element.id, (float(w.start), float(w.end))), w) for w in windows]


def _pane_assignments(fired: FiredPane, merging: bool) -> List[Assignment]:
    bounds = None if merging else (fired.pane.window_start, fired.pane.window_end)
    return [(event_id, bounds) for event_id in fired.pane.ids]


def _is_expired(
        element: LabElement, window: beam_window.BoundedWindow, allowed_lateness: float) -> bool:
    # GeneralTriggerDriver.process_elements in Beam 2.77 skips a window when
    # input_watermark > window.end + allowed_lateness, strictly.
    return element.watermark > float(window.end) + allowed_lateness


def _percentile(values: Sequence[float], percent: float) -> Optional[float]:
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), percent))


def _first_emissions(
        fired: Sequence[FiredPane], merging: bool) -> Tuple[Dict[Assignment, FiredPane], int]:
    """Map each emitted assignment to its first pane; also count all emissions."""
    first: Dict[Assignment, FiredPane] = {}
    emissions = 0
    for item in fired:
        for assignment in _pane_assignments(item, merging):
            emissions += 1
            first.setdefault(assignment, item)
    return first, emissions


def _latencies(fired: Sequence[FiredPane], elements: Sequence[LabElement]) -> List[float]:
    arrival_clock = {element.id: element.processing_time for element in elements}
    first_firing: Dict[str, float] = {}
    for item in fired:
        for event_id in item.pane.ids:
            first_firing.setdefault(event_id, item.processing_time)
    return [first_firing[event_id] - arrival_clock[event_id] for event_id in first_firing]


def measure_panes(
        fired: Sequence[FiredPane],
        elements: Sequence[LabElement],
        windowing: WindowingConfig,
        firing_contradictions: int = 0) -> PaneMeasures:
    """Compute ``PaneMeasures`` for panes in firing order.

    ``firing_contradictions`` is passed through from
    ``firing.check_firing_points``.
    """
    merging = windowing.window_fn.is_merging()
    first, emissions = _first_emissions(fired, merging)

    truth: Set[Assignment] = set()
    expired: Set[Assignment] = set()
    for element in elements:
        for assignment, window in assignments_of(element, windowing):
            truth.add(assignment)
            if _is_expired(element, window, windowing.allowed_lateness):
                expired.add(assignment)

    never_emitted = truth - set(first)
    dropped_mismatches = expired - never_emitted
    if dropped_mismatches:
        _LOGGER.warning(
            "%d assignments were emitted although the replay's watermark had"
            " passed their window's end plus the allowed lateness, for example %s.",
            len(dropped_mismatches), sorted(dropped_mismatches, key=str)[:3])

    first_timings = [item.timing for item in first.values()]
    complete = sum(1 for timing in first_timings if timing in (EARLY, ON_TIME))
    latencies = _latencies(fired, elements)
    timings = [item.timing for item in fired]

    return PaneMeasures(
        events=len(elements),
        assignments=len(truth),
        panes_early=timings.count(EARLY),
        panes_on_time=timings.count(ON_TIME),
        panes_late=timings.count(LATE),
        empty_panes=sum(1 for item in fired if not item.pane.ids),
        relabelled_panes=sum(1 for item in fired if item.timing != item.pane.timing),
        latency_p50_s=_percentile(latencies, 50),
        latency_p95_s=_percentile(latencies, 95),
        on_time_completeness=complete / len(truth) if truth else None,
        late_accepted=first_timings.count(LATE),
        late_dropped=len(never_emitted & expired),
        unemitted=len(never_emitted - expired),
        duplicates=emissions - len(first),
        dropped_mismatches=len(dropped_mismatches),
        firing_contradictions=firing_contradictions)
