"""Tests for window and trigger specs, options and the lateness rule."""

import argparse
import re

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.testing import test_stream
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to
from apache_beam.transforms import trigger
from apache_beam.transforms import window
from apache_beam.runners import pipeline_context
from apache_beam.utils.timestamp import Duration
from apache_beam.utils.timestamp import Timestamp

from transforms import windowing
from transforms.windowing import FiringSpec
from transforms.windowing import TriggerSpec
from transforms.windowing import WindowingConfig
from transforms.windowing import WindowSpec


@pytest.mark.parametrize(
    "spec, seconds",
    [("250ms", 0.25), ("30s", 30.0), ("1.5s", 1.5), ("5m", 300.0), ("2h", 7200.0),
     ("0", 0.0), ("0s", 0.0), (" 10S ", 10.0)],
)
def test_parse_duration_units(spec, seconds):
    assert windowing.parse_duration(spec) == seconds


@pytest.mark.parametrize("spec", ["60", "5 m", "-5s", "1d", "s", "", "1e3s"])
def test_parse_duration_invalid(spec):
    with pytest.raises(ValueError, match=r"for example '30s' or '5m'"):
        windowing.parse_duration(spec)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("fixed:60s", WindowSpec(kind="fixed", size=60.0)),
        ("FIXED:2m", WindowSpec(kind="fixed", size=120.0)),
        ("sliding:300s/60s", WindowSpec(kind="sliding", size=300.0, period=60.0)),
        ("session:120s", WindowSpec(kind="session", gap=120.0)),
        ("global", WindowSpec(kind="global")),
    ],
)
def test_parse_window_spec(spec, expected):
    assert windowing.parse_window_spec(spec) == expected


@pytest.mark.parametrize(
    "spec", ["fixed:90s", "fixed:1m", "sliding:5m/1m", "session:250ms", "global"])
def test_window_spec_round_trip(spec):
    assert str(windowing.parse_window_spec(spec)) == spec


@pytest.mark.parametrize(
    "spec, problem",
    [
        ("fixed", r"expected '<kind>:<duration>'"),
        ("fixed:", r"expected '<kind>:<duration>'"),
        ("fixed:60", r"expected a number with a unit"),
        ("fixed:0s", r"the window size must be greater than 0"),
        ("sliding:300s", r"sliding windows need '<size>/<period>'"),
        ("sliding:60s/300s", r"the period must not exceed the size"),
        ("session:abc", r"Invalid session gap 'abc'"),
        ("tumbling:60s", r"unknown window kind 'tumbling'"),
    ],
)
def test_parse_window_spec_invalid(spec, problem):
    pattern = (
        rf"Invalid window spec '{spec}': .*{problem}.*"
        r"Valid specs look like 'fixed:60s', 'sliding:300s/60s'")

    with pytest.raises(ValueError, match=pattern):
        windowing.parse_window_spec(spec)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("watermark", TriggerSpec()),
        ("watermark+early=count:100",
         TriggerSpec(early=FiringSpec("count", 100))),
        ("watermark+early=time:30s",
         TriggerSpec(early=FiringSpec("time", 30.0))),
        ("watermark+early=time:30s+late=count:1",
         TriggerSpec(early=FiringSpec("time", 30.0), late=FiringSpec("count", 1))),
        ("watermark+late=count:1", TriggerSpec(late=FiringSpec("count", 1))),
        ("count:50", TriggerSpec(repeated=FiringSpec("count", 50))),
        ("time:1m", TriggerSpec(repeated=FiringSpec("time", 60.0))),
    ],
)
def test_parse_trigger_spec(spec, expected):
    assert windowing.parse_trigger_spec(spec) == expected


def test_trigger_spec_round_trip():
    spec = "watermark+early=time:30s+late=count:1"

    assert str(windowing.parse_trigger_spec(spec)) == spec


@pytest.mark.parametrize(
    "spec, problem",
    [
        ("count", r"expected 'count:<n>' or 'time:<duration>', got 'count'"),
        ("count:0", r"the count in 'count:0' must be a whole number of at least 1"),
        ("count:2.5", r"must be a whole number"),
        ("time:30", r"expected a number with a unit"),
        ("time:0s", r"the delay in 'time:0s' must be greater than 0"),
        ("time:1500ms", r"the delay in 'time:1500ms' must be whole seconds"),
        ("count:5+late=count:1", r"only a 'watermark' trigger takes early="),
        ("watermark+soon=count:1", r"expected 'early=<firing>' or 'late=<firing>'"),
        ("watermark+early=count:1+early=count:2", r"early= is given more than once"),
        ("watermark+early=size:3", r"unknown firing kind 'size'"),
    ],
)
def test_parse_trigger_spec_invalid(spec, problem):
    pattern = (
        rf"Invalid trigger spec '{re.escape(spec)}': .*{problem}.*"
        r"Valid specs look like")

    with pytest.raises(ValueError, match=pattern):
        windowing.parse_trigger_spec(spec)


def test_trigger_spec_builds_beam_triggers():
    spec = windowing.parse_trigger_spec("watermark+early=count:100+late=count:1")

    assert spec.to_trigger() == trigger.AfterWatermark(
        early=trigger.AfterCount(100), late=trigger.AfterCount(1))
    assert windowing.parse_trigger_spec("count:50").to_trigger() == (
        trigger.Repeatedly(trigger.AfterCount(50)))


def test_time_trigger_runner_api_round_trip():
    beam_trigger = windowing.parse_trigger_spec("watermark+early=time:2m").to_trigger()
    context = pipeline_context.PipelineContext()

    restored = trigger.TriggerFn.from_runner_api(
        beam_trigger.to_runner_api(context), context)

    assert repr(restored) == "AfterWatermark(early=AfterProcessingTime(delay=120))"


def test_config_window_into():
    config = WindowingConfig.from_specs(
        "sliding:300s/60s", "watermark+early=time:30s+late=count:1", "5m",
        "accumulating")

    window_into = config.window_into("WindowForTraining")
    windowing_strategy = window_into.get_windowing(None)

    assert window_into.label == "WindowForTraining"
    assert windowing_strategy.windowfn == window.SlidingWindows(300, 60)
    # AfterProcessingTime defines no equality, so the triggers compare by repr.
    assert repr(windowing_strategy.triggerfn) == repr(trigger.AfterWatermark(
        early=trigger.AfterProcessingTime(30), late=trigger.AfterCount(1)))
    assert windowing_strategy.allowed_lateness == Duration.of(300)
    assert windowing_strategy.accumulation_mode == (
        trigger.AccumulationMode.ACCUMULATING)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"allowed_lateness": -1.0}, r"Invalid allowed_lateness -1.0"),
        ({"accumulation": "both"}, r"Invalid accumulation 'both'"),
        ({"trigger": TriggerSpec(late=FiringSpec("count", 1))},
         r"Trigger 'watermark\+late=count:1' has late firings, but allowed lateness"
         r" is 0s"),
    ],
)
def test_config_invalid(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WindowingConfig(window=WindowSpec(kind="fixed", size=60.0), **kwargs)


def test_config_from_argparse_options():
    parser = argparse.ArgumentParser()
    windowing.add_windowing_options(parser)

    options = parser.parse_args(
        ["--window=session:90s", "--trigger=count:10", "--allowed_lateness=1m",
         "--accumulation=accumulating"])
    config = WindowingConfig.from_options(options)

    assert config.window == WindowSpec(kind="session", gap=90.0)
    assert config.trigger == TriggerSpec(repeated=FiringSpec("count", 10))
    assert config.allowed_lateness == 60.0
    assert config.accumulation == "accumulating"


def test_config_from_argparse_defaults():
    parser = argparse.ArgumentParser()
    windowing.add_windowing_options(parser)

    config = WindowingConfig.from_options(parser.parse_args([]))

    assert str(config) == (
        "window=fixed:1m trigger=watermark allowed_lateness=0s"
        " accumulation=discarding")


def test_config_from_pipeline_options():
    options = PipelineOptions(
        ["--window=fixed:10s", "--trigger=watermark+late=count:1",
         "--allowed_lateness=30s"])

    config = WindowingConfig.from_options(options)

    assert config.window == WindowSpec(kind="fixed", size=10.0)
    assert config.trigger == TriggerSpec(late=FiringSpec("count", 1))
    assert config.allowed_lateness == 30.0


def test_config_from_options_invalid_spec():
    parser = argparse.ArgumentParser()
    windowing.add_windowing_options(parser)
    options = parser.parse_args(["--window=fixed:1minute"])

    with pytest.raises(ValueError, match=r"Invalid window spec 'fixed:1minute'"):
        WindowingConfig.from_options(options)


@pytest.mark.parametrize(
    "window_spec, lateness, event_time, watermark, expected",
    [
        # Fixed [0, 60): dropped once 60 + lateness is at or before the watermark.
        ("fixed:60s", 0.0, 10.0, 59.9, False),
        ("fixed:60s", 0.0, 10.0, 60.0, True),
        ("fixed:60s", 30.0, 10.0, 89.999999, False),
        ("fixed:60s", 30.0, 10.0, 90.0, True),
        # Sliding 60s/20s: the last window containing 50 is [40, 100).
        ("sliding:60s/20s", 0.0, 50.0, 99.0, False),
        ("sliding:60s/20s", 0.0, 50.0, 100.0, True),
        # A session's own window is [t, t + gap) before merging.
        ("session:30s", 5.0, 100.0, 134.0, False),
        ("session:30s", 5.0, 100.0, 135.0, True),
        ("global", 0.0, 10.0, 1e12, False),
        ("fixed:60s", 0.0, 10.0, float("-inf"), False),
        ("fixed:60s", 0.0, 10.0, float("inf"), True),
        # Finite watermarks too large for microseconds in a float.
        ("fixed:60s", 0.0, 10.0, 1.797e302, True),
        ("fixed:60s", 0.0, 10.0, -1.797e302, False),
        ("sliding:60s/20s", 10.0, 0.0, 1.797693134862316e302, True),
    ],
)
def test_is_droppable_known_answers(
        window_spec, lateness, event_time, watermark, expected):
    config = WindowingConfig(
        window=windowing.parse_window_spec(window_spec), allowed_lateness=lateness)

    assert config.is_droppable(event_time, watermark) is expected
    assert config.lateness_rule().is_droppable(event_time, watermark) is expected


def test_lateness_rule_last_window_end():
    rule = windowing.LatenessRule(window.SlidingWindows(60, 20), 5.0)

    assert rule.last_window_end(50.0) == Timestamp(100)
    assert windowing.LatenessRule(window.GlobalWindows()).last_window_end(50.0) is None


def _describe_pane(element, window=beam.DoFn.WindowParam,
                   pane_info=beam.DoFn.PaneInfoParam):
    _, values = element
    timing = {0: "early", 1: "on_time", 2: "late"}[pane_info.timing]
    yield int(window.start), timing, tuple(sorted(values))


def test_trigger_spec_panes_streaming():
    """Early, on-time and late panes, and late data dropped by the rule."""
    config = WindowingConfig.from_specs(
        "fixed:60s", "watermark+early=count:2+late=count:1", "30s")
    stream = (
        test_stream.TestStream()
        .advance_watermark_to(0)
        .add_elements([window.TimestampedValue("a", 10),
                       window.TimestampedValue("b", 20)])
        .add_elements([window.TimestampedValue("c", 30)])
        .advance_watermark_to(60)
        .add_elements([window.TimestampedValue("late_kept", 15)])
        .advance_watermark_to(95)
        .add_elements([window.TimestampedValue("late_dropped", 25),
                       window.TimestampedValue("next", 70)])
        .advance_watermark_to_infinity())
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True

    with beam.Pipeline(options=options) as pipeline:
        panes = (
            pipeline
            | "Stream" >> stream
            | config.window_into("Window")
            | "KeyByNone" >> beam.Map(lambda value: (None, value))
            | "Group" >> beam.GroupByKey()
            | "DescribePanes" >> beam.FlatMap(_describe_pane))

        assert_that(panes, equal_to([
            (0, "early", ("a", "b")),
            (0, "on_time", ("c",)),
            (0, "late", ("late_kept",)),
            (60, "on_time", ("next",)),
        ]))

    # The rule agrees with what the GroupByKey did to the two late elements.
    assert not config.is_droppable(15, 60)
    assert config.is_droppable(25, 95)
