"""Pytest fixtures for the Prism and Flink runners, plus a pipeline to run on them.

Load it with ``pytest_plugins = ["tests.runner_fixtures"]`` in conftest.py.

``prism_location`` builds Prism with Go on first use and caches it.
``flink_cluster`` starts a local Flink session cluster once per test
session and stops it at the end. Each fixture skips, with the reason, when
its toolchain (Go, Java) or download is not available.

``build_state_and_side_input_pipeline`` adds the transforms that runner
tests check: a stateful DoFn with a bag and an event-time timer in the
global window, and a side input read in the main input's fixed windows.
"""

import logging
import shutil
from typing import NamedTuple

import apache_beam as beam
import pytest
from apache_beam.coders import VarIntCoder
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to
from apache_beam.transforms import userstate
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.window import FixedWindows
from apache_beam.transforms.window import TimestampedValue

_LOGGER = logging.getLogger(__name__)

WINDOW_SIZE_S = 10

# (key, value, event time in seconds): three 10-second windows, two keys.
MAIN_EVENTS = [
    ("a", 1, 1.0),
    ("b", 2, 4.0),
    ("a", 3, 12.0),
    ("b", 4, 15.0),
    ("a", 5, 19.0),
    ("b", 6, 27.0),
]

# (offset, event time in seconds): window [0, 10) gets two offsets,
# [10, 20) one and [20, 30) one.
SIDE_EVENTS = [
    (100, 2.0),
    (200, 8.0),
    (1000, 11.0),
    (10000, 25.0),
]

# Event time (seconds) of the stateful DoFn's timer: after every test event.
FLUSH_AT_S = 100

# Per key: the sum of its values, from the stateful DoFn.
EXPECTED_KEY_SUMS = [("a", 9), ("b", 12)]

# Per main element: value plus the sum of the side input in its window.
EXPECTED_WITH_SIDE = [301, 302, 1003, 1004, 1005, 10006]


class BufferUntilWatermark(beam.DoFn):
    """Buffer each key's values in a bag and emit their sum from a timer.

    The event-time timer is set past every test event, so it fires only once
    the watermark has passed all of them. A sum that misses a value
    therefore shows a runner that fired the timer early or lost state.
    """

    BUFFER = userstate.BagStateSpec("buffer", VarIntCoder())
    FLUSH = userstate.TimerSpec("flush", TimeDomain.WATERMARK)

    def process(
            self,
            element,
            buffer=beam.DoFn.StateParam(BUFFER),
            flush=beam.DoFn.TimerParam(FLUSH)):
        _, value = element
        buffer.add(value)
        flush.set(FLUSH_AT_S)

    @userstate.on_timer(FLUSH)
    def on_flush(
            self,
            key=beam.DoFn.KeyParam,
            buffer=beam.DoFn.StateParam(BUFFER)):
        yield key, sum(buffer.read())
        buffer.clear()


class CheckOutputs(NamedTuple):
    key_sums: beam.PCollection
    with_side: beam.PCollection


def _add_side_sum(value, side_offsets):
    return value + sum(side_offsets)


def build_state_and_side_input_pipeline(
        pipeline: beam.Pipeline) -> CheckOutputs:
    """Add the state, timer and windowed side input transforms to ``pipeline``.

    Returns the two outputs, to compare with ``EXPECTED_KEY_SUMS`` and
    ``EXPECTED_WITH_SIDE``.
    """
    main = (
        pipeline
        | "CreateMain" >> beam.Create(MAIN_EVENTS)
        | "StampMain" >> beam.Map(
            lambda event: TimestampedValue((event[0], event[1]), event[2])))

    key_sums = main | "SumPerKey" >> beam.ParDo(BufferUntilWatermark())

    side = (
        pipeline
        | "CreateSide" >> beam.Create(SIDE_EVENTS)
        | "StampSide" >> beam.Map(lambda event: TimestampedValue(*event))
        | "WindowSide" >> beam.WindowInto(FixedWindows(WINDOW_SIZE_S)))

    with_side = (
        main
        | "DropKey" >> beam.Map(lambda element: element[1])
        | "WindowMain" >> beam.WindowInto(FixedWindows(WINDOW_SIZE_S))
        | "AddSideSum" >> beam.Map(
            _add_side_sum, side_offsets=beam.pvalue.AsList(side)))

    return CheckOutputs(key_sums=key_sums, with_side=with_side)


def run_check_pipeline(args) -> None:
    """Run the check pipeline with ``args`` and assert both of its outputs."""
    with beam.Pipeline(options=PipelineOptions(args)) as pipeline:
        outputs = build_state_and_side_input_pipeline(pipeline)
        assert_that(outputs.key_sums, equal_to(EXPECTED_KEY_SUMS), label="CheckKeySums")
        assert_that(outputs.with_side, equal_to(EXPECTED_WITH_SIDE), label="CheckWithSide")


@pytest.fixture(scope="session")
def prism_location():
    """Path of a Prism binary for the installed Beam version."""
    from runners import prism

    if shutil.which("go") is None:
        pytest.skip("Go is not installed, so Prism cannot be built "
                    "(install Go 1.23+ to run the Prism tests)")
    return prism.prism_path()


@pytest.fixture(scope="session")
def flink_cluster(tmp_path_factory):
    """A running local Flink session cluster, stopped after the session.

    Yields a ``runners.flink.cluster.FlinkCluster`` with ``master``
    (``127.0.0.1:<rest port>``) and ``job_server_jar`` (None when the Beam
    job server jar could not be fetched).
    """
    from runners.flink import assemble
    from runners.flink import cluster

    if shutil.which("java") is None:
        pytest.skip("Java is not installed, so a Flink cluster cannot start "
                    "(install a JDK 11 or 17 to run the Flink tests)")

    flink_home = assemble.assemble_flink()
    try:
        job_server_jar = assemble.fetch_job_server_jar()
    except assemble.DownloadError as error:
        _LOGGER.warning("Beam Flink job server jar not available: %s", error)
        job_server_jar = None

    work_dir = tmp_path_factory.mktemp("flink")
    # FlinkRunner starts its own job server from --flink_job_server_jar, so
    # the cluster runs without one and only records the jar.
    running = cluster.start_cluster(flink_home, work_dir=str(work_dir))
    running.job_server_jar = job_server_jar
    try:
        yield running
    finally:
        cluster.stop_cluster(running)
