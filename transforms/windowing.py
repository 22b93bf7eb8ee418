"""Window, trigger and lateness options shared by all pipelines.

Pipelines take three short specs on the command line and turn them into one
configured ``beam.WindowInto``:

* ``--window``: ``fixed:60s``, ``sliding:300s/60s`` (size/period),
    ``session:120s`` (gap) or ``global``.
* ``--trigger``: ``watermark``, ``watermark+early=count:100``,
    ``watermark+early=time:30s+late=count:1``, or a repeated firing on its own
    such as ``count:50`` or ``time:30s``.
* ``--allowed_lateness``: a duration such as ``0s`` or ``5m``, and
    ``--accumulation``: ``discarding`` or ``accumulating``.

Durations take the units ``ms``, ``s``, ``m`` and ``h``. The same
configuration also decides, through ``is_droppable``, which records a
GroupByKey would drop as late, so that validation can send them to the dead
letter output instead of losing them silently.
"""

import argparse
import dataclasses
import functools
import math
import re
from typing import Any, Optional, Union

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms import trigger as beam_trigger
from apache_beam.transforms import window as beam_window
from apache_beam.utils.timestamp import Duration
from apache_beam.utils.timestamp import Timestamp

DEFAULT_WINDOW = "fixed:60s"
DEFAULT_TRIGGER = "watermark"
DEFAULT_ALLOWED_LATENESS = "0s"
DEFAULT_ACCUMULATION = "discarding"

_WINDOW_EXAMPLES = "'fixed:60s', 'sliding:300s/60s', 'session:120s' or 'global'"
_TRIGGER_EXAMPLES = (
    "'watermark', 'watermark+early=count:100', "
    "'watermark+early=time:30s+late=count:1' or 'count:50'")
_ACCUMULATION_MODES = {
    "discarding": beam_trigger.AccumulationMode.DISCARDING,
    "accumulating": beam_trigger.AccumulationMode.ACCUMULATING,
}
_DURATION_PATTERN = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_MICROS_PER_SECOND = 1_000_000


def parse_duration(spec: str, name: str = "duration") -> float:
    """Parse a duration such as ``250ms``, ``30s``, ``5m`` or ``1h`` to seconds.

    A bare ``0`` is accepted because it is unambiguous. Any other number needs
    a unit, since ``60`` could mean seconds or milliseconds.
    """
    text = str(spec).strip().lower()
    if text == "0":
        return 0.0

    match = _DURATION_PATTERN.match(text)
    if match is None:
        raise ValueError(
            f"Invalid {name} {spec!r}: expected a number with a unit ms, s, m or h,"
            " for example '30s' or '5m'.")

    number, unit = match.groups()
    return float(number) * _UNIT_SECONDS[unit]


def format_duration(seconds: float) -> str:
    """Format seconds as the shortest spec that ``parse_duration`` reads back."""
    if seconds == 0:
        return "0s"

    for unit in ("h", "m", "s"):
        count = seconds / _UNIT_SECONDS[unit]
        if count >= 1 and count.is_integer():
            return f"{int(count)}{unit}"

    milliseconds = seconds * 1000
    if milliseconds.is_integer():
        return f"{int(milliseconds)}ms"
    return f"{seconds!r}s"


@dataclasses.dataclass(frozen=True)
class WindowSpec:
    """A parsed ``--window`` spec, with all durations in seconds.

    ``kind`` is ``fixed``, ``sliding``, ``session`` or ``global``. ``size`` is
    set for fixed and sliding windows, ``period`` for sliding windows and
    ``gap`` for session windows.
    """

    kind: str
    size: Optional[float] = None
    period: Optional[float] = None
    gap: Optional[float] = None

    def window_fn(self) -> beam_window.WindowFn:
        """Build the Beam WindowFn for this spec."""
        if self.kind == "fixed":
            return beam_window.FixedWindows(self.size)
        if self.kind == "sliding":
            return beam_window.SlidingWindows(self.size, self.period)
        if self.kind == "session":
            return beam_window.Sessions(self.gap)
        return beam_window.GlobalWindows()

    def __str__(self) -> str:
        if self.kind == "fixed":
            return f"fixed:{format_duration(self.size)}"
        if self.kind == "sliding":
            return (
                f"sliding:{format_duration(self.size)}/"
                f"{format_duration(self.period)}")
        if self.kind == "session":
            return f"session:{format_duration(self.gap)}"
        return "global"


def _window_error(spec: str, problem: str) -> ValueError:
    return ValueError(
        f"Invalid window spec {spec!r}: {problem}. "
        f"Valid specs look like {_WINDOW_EXAMPLES}.")


def _parse_positive_duration(text: str, spec: str, description: str) -> float:
    try:
        seconds = parse_duration(text, name=description)
    except ValueError as error:
        raise _window_error(spec, str(error).rstrip(".")) from None

    if seconds <= 0:
        raise _window_error(spec, f"the {description} must be greater than 0")
    return seconds


def parse_window_spec(spec: str) -> WindowSpec:
    """Parse a ``--window`` spec such as ``sliding:300s/60s``."""
    text = str(spec).strip().lower()
    if text == "global":
        return WindowSpec(kind="global")

    kind, separator, arguments = text.partition(":")
    if not separator or not arguments:
        raise _window_error(spec, "expected '<kind>:<duration>'")

    if kind == "fixed":
        size = _parse_positive_duration(arguments, spec, "window size")
        return WindowSpec(kind="fixed", size=size)

    if kind == "sliding":
        size_text, separator, period_text = arguments.partition("/")
        if not separator:
            raise _window_error(spec, "sliding windows need '<size>/<period>'")
        size = _parse_positive_duration(size_text, spec, "window size")
        period = _parse_positive_duration(period_text, spec, "window period")
        if period > size:
            raise _window_error(
                spec, "the period must not exceed the size, or events fall between"
                " windows")
        return WindowSpec(kind="sliding", size=size, period=period)

    if kind == "session":
        gap = _parse_positive_duration(arguments, spec, "session gap")
        return WindowSpec(kind="session", gap=gap)

    raise _window_error(spec, f"unknown window kind {kind!r}")


@dataclasses.dataclass(frozen=True)
class FiringSpec:
    """One firing condition: ``count`` elements or a processing-time delay.

    ``value`` is the element count for ``count`` and, for ``time``, the
    delay in whole seconds, measured from the first element of the pane.
    """

    kind: str
    value: float

    def to_trigger(self) -> beam_trigger.TriggerFn:
        """Build the single-shot Beam trigger for this condition."""
        if self.kind == "count":
            return beam_trigger.AfterCount(int(self.value))
        return beam_trigger.AfterProcessingTime(int(self.value))

    def __str__(self) -> str:
        if self.kind == "count":
            return f"count:{int(self.value)}"
        return f"time:{format_duration(self.value)}"


@dataclasses.dataclass(frozen=True)
class TriggerSpec:
    """A parsed ``--trigger`` spec.

    ``repeated`` is set for a trigger that fires on its own condition forever
    (``count:50``). Otherwise the trigger fires when the watermark passes the
    end of the window, plus repeated ``early`` firings before that and
    ``late`` firings after it.
    """

    repeated: Optional[FiringSpec] = None
    early: Optional[FiringSpec] = None
    late: Optional[FiringSpec] = None

    def to_trigger(self) -> beam_trigger.TriggerFn:
        """Build the Beam trigger for this spec."""
        if self.repeated is not None:
            return beam_trigger.Repeatedly(self.repeated.to_trigger())

        # AfterWatermark wraps early and late firings in Repeatedly itself.
        early = self.early.to_trigger() if self.early else None
        late = self.late.to_trigger() if self.late else None
        return beam_trigger.AfterWatermark(early=early, late=late)

    def __str__(self) -> str:
        if self.repeated is not None:
            return str(self.repeated)

        parts = ["watermark"]
        if self.early is not None:
            parts.append(f"early={self.early}")
        if self.late is not None:
            parts.append(f"late={self.late}")
        return "+".join(parts)


def _trigger_error(spec: str, problem: str) -> ValueError:
    return ValueError(
        f"Invalid trigger spec {spec!r}: {problem}. "
        f"Valid specs look like {_TRIGGER_EXAMPLES}.")


def _parse_firing(text: str, spec: str) -> FiringSpec:
    kind, separator, argument = text.partition(":")
    if not separator or not argument:
        raise _trigger_error(
            spec, f"expected 'count:<n>' or 'time:<duration>', got {text!r}")

    if kind == "count":
        if not argument.isdigit() or int(argument) < 1:
            raise _trigger_error(
                spec, f"the count in {text!r} must be a whole number of at least 1")
        return FiringSpec(kind="count", value=int(argument))

    if kind == "time":
        try:
            delay = parse_duration(argument, name="trigger delay")
        except ValueError as error:
            raise _trigger_error(spec, str(error).rstrip(".")) from None
        if delay <= 0:
            raise _trigger_error(
                spec, f"the delay in {text!r} must be greater than 0")

        # Beam 2.77's AfterProcessingTime writes its delay to the runner API
        # as seconds * 1000 in an integer field and reads it back with // 1000.
        if not delay.is_integer():
            raise _trigger_error(
                spec, f"the delay in {text!r} must be whole seconds, because"
                " Beam's Python AfterProcessingTime supports no fractions")
        return FiringSpec(kind="time", value=int(delay))

    raise _trigger_error(spec, f"unknown firing kind {kind!r} in {text!r}")


def parse_trigger_spec(spec: str) -> TriggerSpec:
    """Parse a ``--trigger`` spec such as ``watermark+early=count:100``."""
    text = str(spec).strip().lower()
    head, *qualifiers = text.split("+")
    if head != "watermark":
        if qualifiers:
            raise _trigger_error(
                spec, "only a 'watermark' trigger takes early= or late= firings")
        return TriggerSpec(repeated=_parse_firing(head, spec))

    firings = {}
    for qualifier in qualifiers:
        name, separator, firing_text = qualifier.partition("=")
        if not separator or name not in ("early", "late"):
            raise _trigger_error(
                spec, f"expected 'early=<firing>' or 'late=<firing>', got"
                f" {qualifier!r}")
        if name in firings:
            raise _trigger_error(spec, f"{name}= is given more than once")
        firings[name] = _parse_firing(firing_text, spec)

    return TriggerSpec(early=firings.get("early"), late=firings.get("late"))


def is_droppable(
        window_fn: beam_window.WindowFn,
        allowed_lateness: float,
        event_time: float,
        watermark: float) -> bool:
    """Return whether a GroupByKey would drop an element as late.

    The Beam model drops an element when the end of the last window that
    contains its timestamp, plus the allowed lateness, is at or before the
    input watermark. Times are in seconds. Elements in the global window are
    never late.

    NOTE: the Python SDK's trigger driver (Beam 2.77) drops only when that sum
    is strictly before the watermark, so at exact equality the Python
    DirectRunner keeps an element that this rule, like Beam Java, drops.
    """
    if math.isnan(watermark) or watermark == -math.inf:
        return False

    last_end = last_window_end(window_fn, event_time)
    if last_end is None:
        return False
    if watermark == math.inf:
        return True

    lateness_micros = allowed_lateness * _MICROS_PER_SECOND
    watermark_micros = watermark * _MICROS_PER_SECOND
    if math.isinf(lateness_micros) or math.isinf(watermark_micros):
        # Beyond 1.8e302 s the product overflows, and round() would raise.
        # Such a lateness keeps every element, and such a watermark has
        # passed every window end (or none, when negative).
        return not math.isinf(lateness_micros) and watermark_micros > 0
    return last_end.micros + round(lateness_micros) <= round(watermark_micros)


def last_window_end(
        window_fn: beam_window.WindowFn, event_time: float) -> Optional[Timestamp]:
    """Return the end of the last window that contains ``event_time``.

    Returns None for the global window, which never ends. For merging
    windows such as sessions this is the end of the element's own window
    before merging, which is what a GroupByKey checks for lateness.
    """
    context = beam_window.WindowFn.AssignContext(Timestamp.of(event_time))
    windows = window_fn.assign(context)
    if any(isinstance(window, beam_window.GlobalWindow) for window in windows):
        return None
    return max(window.end for window in windows)


@dataclasses.dataclass(frozen=True)
class LatenessRule:
    """Rule for late drops: a GroupByKey's WindowFn and allowed lateness (s).

    Validation takes this rule to send records that a windowed GroupByKey
    would drop to the dead letter output instead.
    """

    window_fn: beam_window.WindowFn
    allowed_lateness: float = 0.0

    def is_droppable(self, event_time: float, watermark: float) -> bool:
        """Return whether a GroupByKey under this rule drops the element.

        See the module function ``is_droppable`` for the rule.
        """
        return is_droppable(
            self.window_fn, self.allowed_lateness, event_time, watermark)

    def last_window_end(self, event_time: float) -> Optional[Timestamp]:
        """Return the end of the last window that contains ``event_time``."""
        return last_window_end(self.window_fn, event_time)

    def max_delay_s(self) -> float:
        """Return how many seconds after its timestamp an element can arrive without being droppable.

        That is the longest window (the gap for sessions) plus the allowed
        lateness, or ``math.inf`` in the global window.
        """
        window_fn = self.window_fn
        if isinstance(window_fn, (beam_window.FixedWindows, beam_window.SlidingWindows)):
            length = window_fn.size
        elif isinstance(window_fn, beam_window.Sessions):
            length = window_fn.gap_size
        else:
            return math.inf
        return length.micros / _MICROS_PER_SECOND + self.allowed_lateness


@dataclasses.dataclass(frozen=True)
class WindowingConfig:
    """Window, trigger, allowed lateness (seconds) and accumulation mode."""

    window: WindowSpec
    trigger: TriggerSpec = TriggerSpec()
    allowed_lateness: float = 0.0
    accumulation: str = DEFAULT_ACCUMULATION

    def __post_init__(self):
        if not math.isfinite(self.allowed_lateness) or self.allowed_lateness < 0:
            raise ValueError(
                f"Invalid allowed_lateness {self.allowed_lateness!r}: expected a"
                " finite number of seconds of at least 0, for example 300.")

        if self.accumulation not in _ACCUMULATION_MODES:
            raise ValueError(
                f"Invalid accumulation {self.accumulation!r}: expected"
                " 'discarding' or 'accumulating'.")

        if self.trigger.late is not None and self.allowed_lateness == 0:
            raise ValueError(
                f"Trigger {str(self.trigger)!r} has late firings, but allowed"
                " lateness is 0s, so every late element is dropped before it can"
                " fire. Set allowed lateness above 0, for example"
                " --allowed_lateness=5m.")

    @classmethod
    def from_specs(
            cls,
            window: str = DEFAULT_WINDOW,
            trigger: str = DEFAULT_TRIGGER,
            allowed_lateness: Union[str, float] = DEFAULT_ALLOWED_LATENESS,
            accumulation: str = DEFAULT_ACCUMULATION) -> "WindowingConfig":
        """Build a configuration from the short specs of the command line.

        ``allowed_lateness`` is a duration spec such as ``5m``, or seconds.
        """
        if isinstance(allowed_lateness, str):
            lateness_seconds = parse_duration(
                allowed_lateness, name="allowed lateness")
        else:
            lateness_seconds = float(allowed_lateness)

        return cls(
            window=parse_window_spec(window),
            trigger=parse_trigger_spec(trigger),
            allowed_lateness=lateness_seconds,
            accumulation=str(accumulation).strip().lower())

    @classmethod
    def from_options(
            cls, options: Union[PipelineOptions, argparse.Namespace, Any],
    ) -> "WindowingConfig":
        """Build a configuration from parsed pipeline options.

        ``options`` is a ``PipelineOptions`` (whether or not a subclass
        registered the flags of ``add_windowing_options``) or an argparse
        namespace.
        """
        if isinstance(options, PipelineOptions):
            values = options.get_all_options()
            if "window" not in values:
                values = options.get_all_options(
                    add_extra_args_fn=add_windowing_options)
        else:
            values = vars(options)

        return cls.from_specs(
            window=values.get("window") or DEFAULT_WINDOW,
            trigger=values.get("trigger") or DEFAULT_TRIGGER,
            allowed_lateness=(
                values.get("allowed_lateness") or DEFAULT_ALLOWED_LATENESS),
            accumulation=values.get("accumulation") or DEFAULT_ACCUMULATION)

    @functools.cached_property
    def window_fn(self) -> beam_window.WindowFn:
        """The Beam WindowFn, also used for the lateness rule."""
        return self.window.window_fn()

    @property
    def trigger_fn(self) -> beam_trigger.TriggerFn:
        """The Beam trigger."""
        return self.trigger.to_trigger()

    @property
    def accumulation_mode(self):
        """The Beam ``AccumulationMode`` value."""
        return _ACCUMULATION_MODES[self.accumulation]

    def window_into(self, label: str = "WindowInto") -> beam.WindowInto:
        """Build the configured ``beam.WindowInto`` step, labelled ``label``."""
        window_into = beam.WindowInto(
            self.window_fn,
            trigger=self.trigger_fn,
            accumulation_mode=self.accumulation_mode,
            allowed_lateness=Duration.of(self.allowed_lateness))
        window_into.label = label
        return window_into

    def lateness_rule(self) -> LatenessRule:
        """Return the lateness rule of a GroupByKey after ``window_into``."""
        return LatenessRule(self.window_fn, self.allowed_lateness)

    def is_droppable(self, event_time: float, watermark: float) -> bool:
        """Return whether a GroupByKey after ``window_into`` drops this element.

        See the module function ``is_droppable`` for the rule.
        """
        return self.lateness_rule().is_droppable(event_time, watermark)

    def __str__(self) -> str:
        return (
            f"window={self.window} trigger={self.trigger}"
            f" allowed_lateness={format_duration(self.allowed_lateness)}"
            f" accumulation={self.accumulation}")


def add_windowing_options(parser: argparse.ArgumentParser) -> None:
    """Add the windowing flags to an argparse parser.

    The flags are ``--window``, ``--trigger``, ``--allowed_lateness`` and
    ``--accumulation``, read back by ``WindowingConfig.from_options``. Call
    it from one ``PipelineOptions._add_argparse_args`` only, because argparse
    rejects a flag that is added twice to the same parser.
    """
    parser.add_argument(
        "--window",
        default=DEFAULT_WINDOW,
        help=(
            "Event-time windows for training and metrics: 'fixed:<size>',"
            " 'sliding:<size>/<period>', 'session:<gap>' or 'global'."
            " Durations take ms, s, m or h, for example 'sliding:300s/60s'."))
    parser.add_argument(
        "--trigger",
        default=DEFAULT_TRIGGER,
        help=(
            "When windows emit panes: 'watermark', optionally with"
            " '+early=<firing>' and '+late=<firing>', or a repeated"
            " '<firing>' alone. A firing is 'count:<elements>' or"
            " 'time:<processing-time delay>', for example"
            " 'watermark+early=time:30s+late=count:1'."))
    parser.add_argument(
        "--allowed_lateness",
        default=DEFAULT_ALLOWED_LATENESS,
        help=(
            "How long after the end of a window late data is still accepted,"
            " as a duration such as '0s' or '5m'. Windowed steps drop later"
            " data, and validation sends it to the dead letter output."))
    parser.add_argument(
        "--accumulation",
        default=DEFAULT_ACCUMULATION,
        choices=sorted(_ACCUMULATION_MODES),
        help=(
            "Whether a later pane of a window repeats the elements of earlier"
            " panes ('accumulating') or holds only new ones ('discarding')."))
