"""Tests for pipelines.common.run_and_wait, the pipeline runner with room for deep metric chains."""

import itertools
import sys
import threading

import pytest
from apache_beam.metrics.monitoring_infos import consolidate, extract_counter_value, int64_user_counter
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import common

BATCH_DIRECT = PipelineOptions(["--runner=DirectRunner"])

# Deeper than Python's default recursion limit of 1,000, as the FnApiRunner
# builds for a trainer stage that ran one bundle per serving window.
CHAIN_DEPTH = 20_000


def _counter():
    return int64_user_counter("test", "events", 1, ptransform="Train")


class _DeepMetricsResult:
    """A finished result whose first metrics() call reads a chain like the FnApiRunner's."""

    def __init__(self):
        self.merged = None
        self.metrics_calls = 0

    def wait_until_finish(self):
        return "DONE"

    def metrics(self):
        self.metrics_calls += 1
        if self.merged is None:
            chain = consolidate([_counter()])
            for _ in range(CHAIN_DEPTH):
                chain = consolidate(itertools.chain([_counter()], chain))
            self.merged = list(chain)
        return self.merged


class _Pipeline:
    def __init__(self, result=None, error=None):
        self._result = result
        self._error = error

    def run(self):
        if self._error is not None:
            raise self._error
        return self._result


def test_deep_chain_fails_without_helper():
    with pytest.raises(RecursionError):
        _DeepMetricsResult().metrics()


def test_deep_chain_merges_in_helper():
    result = common.run_and_wait(_Pipeline(_DeepMetricsResult()), BATCH_DIRECT, deep_metrics=True)

    assert result.metrics_calls == 1
    assert len(result.merged) == 1
    assert extract_counter_value(result.merged[0]) == CHAIN_DEPTH + 1


def test_recursion_limit_restored():
    before = sys.getrecursionlimit()

    common.run_and_wait(_Pipeline(_DeepMetricsResult()), BATCH_DIRECT, deep_metrics=True)

    assert sys.getrecursionlimit() == before


def test_run_error_reaches_caller():
    with pytest.raises(ValueError, match="bad flag"):
        common.run_and_wait(_Pipeline(error=ValueError("bad flag")), BATCH_DIRECT, deep_metrics=True)


@pytest.mark.parametrize("flags, expected", [
    ([], True),
    (["--runner=DirectRunner"], True),
    (["--runner=DirectRunner", "--streaming"], False),
    (["--runner=PrismRunner"], False),
    (["--runner=PortableRunner"], False),
])
def test_fnapi_runner_detection(flags, expected):
    assert common.runs_on_fnapi_runner(PipelineOptions(flags)) is expected


class _ThreadRecordingPipeline:
    def __init__(self):
        self.thread_name = None

    def run(self):
        self.thread_name = threading.current_thread().name
        return _DeepMetricsResult()


@pytest.mark.parametrize("deep_metrics, thread_name", [(False, "MainThread"), (True, "run-pipeline")])
def test_run_thread_choice(deep_metrics, thread_name):
    pipeline = _ThreadRecordingPipeline()

    common.run_and_wait(pipeline, BATCH_DIRECT, deep_metrics=deep_metrics)

    assert pipeline.thread_name == thread_name
