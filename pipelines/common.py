"""Helpers shared by the runnable pipelines."""

import logging
import sys
import threading
from typing import Callable, List, Optional

from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions, StandardOptions

from transforms.windowing import parse_duration

_LOGGER = logging.getLogger(__name__)


def serving_window_seconds(serving_window: Optional[str], windowing_config) -> float:
    """Return the serving window length: given, or the training window's size or period.

    Sliding windows serve per period, so each slide can publish a version;
    session windows serve per gap.
    """
    if serving_window:
        return parse_duration(serving_window, name="--serving_window")

    spec = windowing_config.window
    seconds = {"fixed": spec.size, "sliding": spec.period, "session": spec.gap}.get(spec.kind)
    if seconds is None:
        raise ValueError(
            f"--window={spec} has no natural serving window; pass --serving_window, "
            "for example --serving_window=5m."
        )
    return seconds


# Beam 2.77 opens a portable job's state and message streams with
# --job_server_timeout as their deadline, so with its default of 300 s any
# run on Prism or Flink longer than five minutes fails with
# DEADLINE_EXCEEDED, although the flag's help states that it does not bound the run.
LONG_JOB_SERVER_TIMEOUT_S = 365 * 24 * 3600
_PORTABLE_RUNNERS = ("prismrunner", "prism", "flinkrunner", "flink", "portablerunner", "portable")


def build_pipeline_options(pipeline_args: List[str]) -> PipelineOptions:
    """Return the PipelineOptions of ``pipeline_args``, ready for a long run.

    On Prism, Flink and the PortableRunner, a ``--job_server_timeout`` that
    the arguments do not set becomes :data:`LONG_JOB_SERVER_TIMEOUT_S`
    (one year), so that the job is not cut off after five minutes.
    """
    options = PipelineOptions(pipeline_args)
    runner = options.view_as(StandardOptions).runner
    name = runner if isinstance(runner, str) else type(runner).__name__
    explicit = any(arg.split("=", 1)[0] in ("--job_server_timeout", "--job-server-timeout") for arg in pipeline_args)
    if name and name.rsplit(".", 1)[-1].lower() in _PORTABLE_RUNNERS and not explicit:
        options.view_as(PortableOptions).job_server_timeout = LONG_JOB_SERVER_TIMEOUT_S
        _LOGGER.info("Setting --job_server_timeout=%d: Beam's default of 300 s would end runs longer than "
                     "five minutes; pass the flag to choose another limit.", LONG_JOB_SERVER_TIMEOUT_S)
    return options


# The FnApiRunner (Beam 2.77) merges each stage's metrics by wrapping the
# previous merge in a new generator after every bundle, and reads the chain
# once the pipeline ends. The trainer's stage runs one bundle per serving
# window, so a long stream nests thousands of generators: past about 990
# Python's recursion limit stops the first metrics() call, and past tens of
# thousands the 8 MiB main-thread stack overflows.
_RUN_THREAD_STACK_BYTES = 512 << 20
_RUN_RECURSION_LIMIT = 1_000_000


def runs_on_fnapi_runner(options) -> bool:
    """Return whether ``options`` pick the FnApiRunner: the DirectRunner (or no runner) in batch."""
    standard = options.view_as(StandardOptions)
    runner = standard.runner or "DirectRunner"
    name = runner if isinstance(runner, str) else type(runner).__name__
    return not standard.streaming and name.rsplit(".", 1)[-1] in ("DirectRunner", "FnApiRunner")


# A stage that runs fewer bundles than this merges its metrics within the
# default recursion limit of 1,000, with room for the caller's frames.
MAX_SHALLOW_BUNDLES = 800


def run_and_wait(pipeline, options, deep_metrics: bool = False):
    """Run ``pipeline`` until it finishes; return the result.

    With ``deep_metrics`` on the FnApiRunner, which a stage running more
    than :data:`MAX_SHALLOW_BUNDLES` bundles needs, the run happens in a
    thread with room for deep metric chains, and its exceptions are raised
    in the caller's thread. Otherwise it runs in the caller's thread, where
    profilers and debuggers see it and where Prism and the portable runners
    may install their signal handlers.
    """
    if not (deep_metrics and runs_on_fnapi_runner(options)):
        result = pipeline.run()
        result.wait_until_finish()
        return result

    outcome = {}

    def target():
        try:
            result = pipeline.run()
            result.wait_until_finish()
            # The FnApiRunner reads the metric chain on the first call and
            # keeps the merged metrics, so later calls need no deep stack.
            result.metrics()
            outcome["result"] = result
        except BaseException as error:  # Re-raised below, in the caller's thread.
            outcome["error"] = error

    previous_limit = sys.getrecursionlimit()
    previous_stack = threading.stack_size(_RUN_THREAD_STACK_BYTES)
    try:
        sys.setrecursionlimit(max(previous_limit, _RUN_RECURSION_LIMIT))
        thread = threading.Thread(target=target, name="run-pipeline", daemon=True)
        thread.start()
    finally:
        # Only this thread needs the large stack, not the runner's own threads.
        threading.stack_size(previous_stack)
    try:
        while thread.is_alive():
            # A timeout keeps the main thread responsive to Ctrl-C.
            thread.join(timeout=0.5)
    finally:
        sys.setrecursionlimit(previous_limit)

    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def describe_engine(result, options) -> str:
    """Name the engine that actually ran: DirectRunner picks one at run time."""
    module = type(result).__module__
    name = type(result).__name__
    if "fn_api_runner" in module:
        return "FnApiRunner (DirectRunner batch engine)"
    if "direct" in module:
        return "BundleBasedDirectRunner (legacy DirectRunner, streaming engine)"
    if "prism" in module:
        return "PrismRunner"
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    return f"{runner} ({name})"


def query_metrics(result) -> Optional[dict]:
    """Return the metrics of a finished pipeline as ``MetricResults.query()`` gives them, or None.

    None means that the runner does not report metrics to the driver.
    """
    try:
        return result.metrics().query()
    except (NotImplementedError, AttributeError):
        return None


def log_counters(queries) -> dict:
    """Log every user counter of finished pipelines, summed over them; return the sums by name.

    ``queries`` are :func:`query_metrics` results. Names are
    ``<namespace>.<name>``. NOTE: the legacy streaming DirectRunner in Beam
    2.77 reports only part of its counters, so totals there are low.
    """
    totals = {}
    for query in queries:
        if query is None or "counters" not in query:
            _LOGGER.info("This runner does not report metrics to the driver.")
            return {}
        for counter in query["counters"]:
            key = f"{counter.key.metric.namespace}.{counter.key.metric.name}"
            totals[key] = totals.get(key, 0) + (counter.committed if counter.committed is not None else counter.attempted)
    for key in sorted(totals):
        _LOGGER.info("Counter %s = %d", key, totals[key])
    return totals


def is_local_path(path: str) -> bool:
    return "://" not in path


def distribution_summaries(queries, names) -> dict:
    """Return ``{<name>_min, _mean, _max}`` for each named Beam distribution, over finished pipelines.

    ``queries`` are :func:`query_metrics` results, and ``names`` are
    ``<namespace>.<name>``; distributions the runners did not report are
    left out.
    """
    merged = {}
    for query in queries:
        if query is None or "distributions" not in query:
            return {}
        for distribution in query["distributions"]:
            key = f"{distribution.key.metric.namespace}.{distribution.key.metric.name}"
            data = distribution.committed or distribution.attempted
            if key not in names or data is None or not data.count:
                continue
            short = distribution.key.metric.name
            # A DistributionResult wraps the DistributionData that can combine.
            data = getattr(data, "data", data)
            seen = merged.get(short)
            merged[short] = data if seen is None else seen.combine(data)

    summaries = {}
    for short, data in merged.items():
        summaries[f"{short}_min"] = data.min
        summaries[f"{short}_mean"] = data.sum / data.count
        summaries[f"{short}_max"] = data.max
    return summaries


def run_main(run: Callable[[], object], log_format: str, apache_beam_level: int = logging.WARNING) -> None:
    """Configure logging, call ``run`` and turn a ``ValueError`` into exit status 2.

    Configuration errors raise ``ValueError`` with the bad value and the
    fix, so the command prints that line instead of a traceback.
    """
    # force: importing apache_beam has already configured the root logger.
    logging.basicConfig(level=logging.INFO, format=log_format, force=True)
    logging.getLogger("apache_beam").setLevel(apache_beam_level)
    try:
        run()
    except ValueError as error:
        _LOGGER.error("%s", error)
        sys.exit(2)
