"""When each pane fired, derived from the replay schedule.

A DoFn downstream of GroupByKey cannot read the TestStream's clock, so the
lab derives each pane's *firing point* from the schedule instead. A firing
point is ``(step, phase)``: the step of the schedule (see ``schedule.py``)
and the action within it that fired the pane, ``PHASE_CLOCK`` (processing
time advanced), ``PHASE_WATERMARK`` (watermark advanced) or
``PHASE_ELEMENT`` (element added). The step ``len(elements)`` is the final
advance of the watermark to infinity. The pane's *firing time* is the
TestStream clock at its step.

The point follows from what fired the pane:

* an ON_TIME pane fires at the first watermark advance to or past the
  window end (the window's *close point*);
* an element-count firing, and the immediate firing of a window whose first
  element is already late, happens when the pane's latest element is added;
* a processing-time firing happens at the first clock advance to or past
  the arrival clock of the pane's first new element plus the delay.

Whether a pane belongs to the early or the late phase follows from its
latest element: added before the close point means early.

Beam 2.77's Python trigger driver labels a pane fired by a processing-time
timer by comparing the timer's clock time with the window end, so a late
pane fired by ``late=time:...`` comes out as EARLY. The lab therefore
recomputes each pane's timing from its firing point: EARLY before the close
point, ON_TIME as Beam reports it, LATE otherwise. ``check_firing_points``
verifies the derived points against the panes' contents.
"""

import bisect
import collections
import logging
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from transforms.windowing import FiringSpec, TriggerSpec
from transforms.windowing_lab.capture import PaneRecord, drain_seconds
from transforms.windowing_lab.schedule import LabElement

_LOGGER = logging.getLogger(__name__)

PHASE_CLOCK = 0
PHASE_WATERMARK = 1
PHASE_ELEMENT = 2

EARLY = "EARLY"
ON_TIME = "ON_TIME"
LATE = "LATE"

# A trigger condition that fires when an element is added.
_ON_ELEMENT = FiringSpec(kind="count", value=1)


class FiredPane(NamedTuple):
    """A pane with its derived firing point and timing.

    ``timing`` is EARLY, ON_TIME or LATE relative to the replay's watermark
    (see the module docstring); ``pane.timing`` keeps Beam's label.
    ``processing_time`` is the TestStream clock at firing, in seconds since
    the replay started.
    """

    pane: PaneRecord
    timing: str
    step: int
    phase: int
    processing_time: float

    @property
    def point(self) -> Tuple[int, int]:
        return (self.step, self.phase)


class Schedule:
    """Look-ups over the replay schedule's clock and watermark per step.

    The final step ``len(elements)`` first advances the clock by
    ``drain_seconds`` (see ``capture.drain_seconds``) and then the watermark
    to infinity.
    """

    def __init__(self, elements: Sequence[LabElement], drain_seconds: float = 0.0):
        self.elements = list(elements)
        self.clocks = [element.processing_time for element in self.elements]
        self.watermarks = [element.watermark for element in self.elements]
        self.final_step = len(self.elements)
        last_clock = self.clocks[-1] if self.clocks else 0.0
        self.final_clock = last_clock + drain_seconds

    def clock_at(self, step: int) -> float:
        """Return the clock at ``step``, after its clock advance."""
        if step >= self.final_step:
            return self.final_clock
        return self.clocks[step]

    def close_point(self, window_end: float) -> Tuple[int, int]:
        """Return the point at which the watermark first reaches ``window_end``."""
        # Watermarks never decrease, so the first step at or past the end is
        # found by bisection.
        step = bisect.bisect_left(self.watermarks, window_end)
        return (step, PHASE_WATERMARK)

    def clock_point(self, deadline: float, after_step: int) -> Tuple[int, int]:
        """Return the first clock advance after ``after_step`` that reaches ``deadline``.

        Past the last element that is the final step's advance. A deadline
        beyond even that is never reached, and the point returned is the
        final watermark advance.
        """
        step = bisect.bisect_left(self.clocks, deadline, lo=after_step + 1)
        if step < self.final_step:
            return (step, PHASE_CLOCK)
        if deadline <= self.final_clock:
            return (self.final_step, PHASE_CLOCK)
        return (self.final_step, PHASE_WATERMARK)


def _element_point(pane: PaneRecord) -> Tuple[int, int]:
    return (max(pane.arrivals), PHASE_ELEMENT)


def _window_key(pane: PaneRecord) -> Tuple[float, float]:
    return (pane.window_start, pane.window_end)


def _firing_for_phase(
        trigger: TriggerSpec, phase: str, first_late_pane: bool) -> FiringSpec:
    """Return the condition that fires a non-ON_TIME pane in ``phase``."""
    if trigger.repeated is not None:
        return trigger.repeated
    if phase == "early":
        return trigger.early or _ON_ELEMENT
    if first_late_pane or trigger.late is None:
        # A window whose first element is already late fires at once: the
        # watermark condition already holds when the element is added.
        return _ON_ELEMENT
    return trigger.late


def _new_arrivals(pane: PaneRecord, previous: Optional[PaneRecord], accumulating: bool):
    """Return the arrivals added to the window since its previous pane."""
    if not accumulating or previous is None:
        return pane.arrivals
    seen = set(previous.arrivals)
    new = tuple(arrival for arrival in pane.arrivals if arrival not in seen)
    # NOTE: a pane without new elements fired on a timer set before the
    # previous pane, so its point is a guess; check_firing_points flags it.
    return new or pane.arrivals


def _pane_point(
        pane: PaneRecord,
        firing: FiringSpec,
        previous: Optional[PaneRecord],
        accumulating: bool,
        schedule: Schedule) -> Tuple[int, int]:
    if firing.kind == "count":
        return _element_point(pane)

    first_new = min(_new_arrivals(pane, previous, accumulating))
    deadline = schedule.clocks[first_new] + firing.value
    return schedule.clock_point(deadline, after_step=first_new)


def _window_fired_panes(
        panes: List[PaneRecord],
        trigger: TriggerSpec,
        accumulating: bool,
        schedule: Schedule) -> List[FiredPane]:
    """Derive the firing points of one window's panes, given in index order."""
    close = schedule.close_point(panes[0].window_end)
    has_on_time = any(pane.timing == ON_TIME for pane in panes)
    fired = []
    previous = None
    late_panes = 0

    for pane in panes:
        if pane.timing == ON_TIME:
            point = close
        elif not pane.arrivals:
            # An empty pane carries no events, so only its order matters.
            point = fired[-1].point if fired else close
        else:
            phase = "early" if _element_point(pane) < close else "late"
            first_late_pane = phase == "late" and not has_on_time and late_panes == 0
            late_panes += phase == "late"
            firing = _firing_for_phase(trigger, phase, first_late_pane)
            point = _pane_point(pane, firing, previous, accumulating, schedule)

        if pane.timing == ON_TIME:
            timing = ON_TIME
        else:
            timing = EARLY if point < close else LATE

        fired.append(FiredPane(
            pane=pane,
            timing=timing,
            step=point[0],
            phase=point[1],
            processing_time=schedule.clock_at(point[0])))
        previous = pane
    return fired


def fire_panes(
        panes: Sequence[PaneRecord],
        elements: Sequence[LabElement],
        trigger: TriggerSpec,
        accumulating: bool) -> List[FiredPane]:
    """Derive every pane's firing point and timing; return them in firing order.

    Panes that fire at the same point are ordered by window end, window
    start and pane index, so the order is the same on every run.
    """
    schedule = Schedule(elements, drain_seconds(trigger))
    by_window: Dict[Tuple[float, float], List[PaneRecord]] = collections.defaultdict(list)
    for pane in panes:
        by_window[_window_key(pane)].append(pane)

    fired = []
    for window_panes in by_window.values():
        window_panes.sort(key=lambda pane: pane.index)
        fired.extend(_window_fired_panes(window_panes, trigger, accumulating, schedule))

    fired.sort(key=lambda item: (
        item.point, item.pane.window_end, item.pane.window_start, item.pane.index))
    return fired


def check_firing_points(
        fired: Sequence[FiredPane], accumulating: bool) -> List[FiredPane]:
    """Return the panes whose contents contradict their derived firing point.

    A pane fired at point P contains exactly the window's emitted elements added
    up to P (accumulating mode), or those added after the window's previous
    firing and up to P (discarding mode). An element-count firing includes
    the element that completed the count. Elements never emitted in any pane
    of the window (dropped as late, or left in a closed window) are ignored.
    ``fired`` must be in firing order; windows that merge (sessions) change
    shape between panes, so only compare panes of identical bounds.
    """
    emitted: Dict[Tuple[float, float], set] = collections.defaultdict(set)
    for item in fired:
        emitted[_window_key(item.pane)].update(item.pane.arrivals)

    previous_points: Dict[Tuple[float, float], Tuple[int, int]] = {}
    contradictions = []
    for item in fired:
        key = _window_key(item.pane)
        start = previous_points.get(key, (-1, PHASE_ELEMENT))
        if accumulating:
            start = (-1, PHASE_ELEMENT)

        expected = {
            arrival for arrival in emitted[key]
            if start < (arrival, PHASE_ELEMENT) <= item.point
        }
        if expected != set(item.pane.arrivals):
            contradictions.append(item)
        previous_points[key] = item.point
    return contradictions
