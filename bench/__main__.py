"""Benchmark ``online_train`` against a plain PyTorch loop, River and stock RunInference.

    python -m bench                 # the default sizes, about 17 minutes on 2 cores
    python -m bench --quick         # tiny sizes, a smoke run
    python -m bench --engines=fnapi --max_events=50000 --block_max_events=500000

Each engine runs ``online_train`` twice: per event (``--block_size=0``)
and in block mode (``--block_size``, 256 events per Beam element by
default) on a longer stream (``--block_max_events``), so that start-up
costs do not dominate the headline ratio. The plain loop runs on every
stream length, and each row's ``vs plain loop`` compares equal lengths.

Everything except the memory scan runs in this one process, one case after
the other, so ratios between cases share the machine's load at the time.
The memory scan starts one child process per engine, block size and stream
length. Results are printed as a table and appended to
``<docs_dir>/benchmarks.md`` with a plot under ``<docs_dir>/img/``.
"""

import argparse
import dataclasses
import logging
import os
import shlex
import sys
import tempfile
import time
from typing import Callable, Dict, List, Tuple

import torch

from bench import engines as engines_lib
from bench import fit
from bench import inference
from bench import memory
from bench import profiling
from bench import report
from bench import throughput
from bench import workload as workload_lib
from bench.results import Row, markdown_table, mode_label

_LOGGER = logging.getLogger("bench")

PLOT_NAME = "benchmarks.png"
QUICK_EVENTS = 600
QUICK_MEMORY_SIZES = (600,)
DEFAULT_BLOCK_SIZE = 256
DEFAULT_MEMORY_SIZES = (10_000, 30_000, 100_000)
DEFAULT_BLOCK_MEMORY_SIZES = (10_000, 100_000, 400_000, 1_000_000)
# By default the job runs a stream longer than one segment in segments on
# the FnApiRunner. This scan runs it as one pipeline, for comparison.
DEFAULT_ONE_PIPELINE_MEMORY_SIZES = (1_000_000,)
DEFAULT_STREAMING_BLOCK_MEMORY_SIZES = (10_000, 100_000)
DEFAULT_PRISM_STREAMING_MEMORY_SIZES = (10_000, 100_000)
DEFAULT_PACED_MEMORY_SIZES = (10_000, 100_000, 1_000_000)
# Below the 1,300 to 1,400 events/s that the job reached on Prism with
# --streaming on 2 cores (bench run of 2026-12-05, 07:09 UTC), so that the
# job keeps up with its replay. A paced row flags a run that fell behind its pace.
DEFAULT_PRISM_REPLAY_RATE = 1_000.0
DEFAULT_REPLAY_MEMORY_SIZES = (10_000, 100_000, 1_000_000)
LARGE_BLOCK_MEMORY_SIZES = (10_000_000,)


def _size_list(sizes) -> str:
    return ",".join(str(size) for size in sizes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"Tiny sizes ({QUICK_EVENTS} events for every run and memory scan) "
                             "and no warm-up, for a smoke run; the numbers mean little.")
    parser.add_argument("--dataset", default="sea", help="A classification stream of online_train's --dataset.")
    parser.add_argument("--max_events", type=int, default=20_000,
                        help="Stream length (events) of the per-event throughput runs, the inference runs and the "
                             "per-event profile.")
    parser.add_argument("--streaming_max_events", type=int, default=5_000,
                        help="Stream length (events) of the per-event run on the legacy streaming DirectRunner, "
                             "which is slower.")
    parser.add_argument("--block_size", type=int, default=DEFAULT_BLOCK_SIZE,
                        help="online_train's --block_size for the block-mode rows: events per Beam element. "
                             "Every engine also runs per event (--block_size=0).")
    parser.add_argument("--block_max_events", type=int, default=200_000,
                        help="Stream length (events) of the block-mode throughput runs and profile, long enough that "
                             "start-up costs do not dominate; the plain loop runs again on as many events.")
    parser.add_argument("--streaming_block_max_events", type=int, default=50_000,
                        help="Stream length (events) of the block-mode run on the legacy streaming DirectRunner.")
    parser.add_argument("--long_window", default="fixed:1h",
                        help="A longer training window for one more block-mode run on the FnApiRunner and its own "
                             "plain loop, at --block_max_events: the job publishes, reloads and writes once per "
                             "window, so this row shows what those per-window costs take. Empty to skip.")
    parser.add_argument("--engines", default=",".join(engines_lib.ENGINE_NAMES),
                        help=f"Comma-separated engines out of {','.join(engines_lib.ENGINE_NAMES)}. The memory "
                             "scan covers fnapi, streaming and prism (in streaming mode) among them; the profile "
                             "always uses fnapi.")
    parser.add_argument("--memory_sizes", default=_size_list(DEFAULT_MEMORY_SIZES),
                        help="Comma-separated stream lengths of the per-event FnApiRunner memory scan (one child "
                             "process each; empty to skip). It stops at 10^5 because 10^6 events, one per element, "
                             "would take about 7 minutes (an estimate from 2,300 events/s at 10^5 on 2 cores).")
    parser.add_argument("--block_memory_sizes", default=_size_list(DEFAULT_BLOCK_MEMORY_SIZES),
                        help="Comma-separated stream lengths of the FnApiRunner memory scan in block mode "
                             "(empty to skip). Streams longer than the job's --segment_events run in segments.")
    parser.add_argument("--one_pipeline_memory_sizes", default=_size_list(DEFAULT_ONE_PIPELINE_MEMORY_SIZES),
                        help="Comma-separated stream lengths of the FnApiRunner memory scan in block mode with "
                             "--segment_events=0, one pipeline for the whole stream (empty to skip); 10^6 events "
                             "take about 5 minutes and 1.6 GiB more than the imports.")
    parser.add_argument("--streaming_block_memory_sizes", default=_size_list(DEFAULT_STREAMING_BLOCK_MEMORY_SIZES),
                        help="Comma-separated stream lengths of the streaming DirectRunner memory scan in block "
                             "mode (empty to skip).")
    parser.add_argument("--prism_streaming_memory_sizes", default=_size_list(DEFAULT_PRISM_STREAMING_MEMORY_SIZES),
                        help="Comma-separated stream lengths of the memory scan on Prism with --streaming, in block "
                             "mode, with the replay as fast as Prism takes it (empty to skip). 10^6 events take "
                             "about 13 minutes on 2 cores.")
    parser.add_argument("--paced_memory_sizes", default=_size_list(DEFAULT_PACED_MEMORY_SIZES),
                        help="Comma-separated stream lengths of the memory scan on Prism with --streaming, in block "
                             "mode, with the replay paced at --prism_replay_rate (empty to skip).")
    parser.add_argument("--prism_replay_rate", type=float, default=DEFAULT_PRISM_REPLAY_RATE,
                        help="Events per second of the paced Prism memory scan's replay (online_train's "
                             "--replay_rate); keep it below the job's throughput on Prism, so that Prism holds no "
                             f"growing backlog. Default {DEFAULT_PRISM_REPLAY_RATE:,.0f}, at which 10^6 events take "
                             "about 17 minutes.")
    parser.add_argument("--replay_memory_sizes", default=_size_list(DEFAULT_REPLAY_MEMORY_SIZES),
                        help="Comma-separated stream lengths of the memory scan of the job's replay alone on Prism "
                             "with --streaming, in block mode (empty to skip); 10^6 events take about 100 s.")
    parser.add_argument("--large", action="store_true",
                        help=f"Add {_size_list(LARGE_BLOCK_MEMORY_SIZES)} events to the FnApiRunner block-mode "
                             "memory scan, in segments: 68 minutes on 2 cores in one measured run, most of the "
                             "extra time spent reading the source again for each of the 50 segments.")
    parser.add_argument("--torch_threads", type=int, default=1,
                        help="torch intra-op threads for every case; 1 suits these small models on a shared CPU.")
    parser.add_argument("--docs_dir", default="docs",
                        help="Where benchmarks.md is appended to and the plot is written (img/).")
    parser.add_argument("--no_docs", action="store_true", help="Print the table only.")
    return parser


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Stream lengths (events) of one benchmark run, per engine and mode."""

    events: int
    streaming_events: int
    block_events: int
    streaming_block_events: int
    memory_scans: Tuple[memory.MemoryScan, ...]

    def events_for(self, engine: engines_lib.Engine, block_size: int) -> int:
        """Return the stream length of ``online_train`` on ``engine``, per event (0) or in blocks."""
        if engine.name == "streaming":
            return self.streaming_block_events if block_size else self.streaming_events
        return self.block_events if block_size else self.events


def _parse_sizes(flag: str, value: str) -> Tuple[int, ...]:
    try:
        sizes = tuple(int(size) for size in value.split(",") if size.strip())
    except ValueError:
        raise ValueError(f"{flag} {value!r} is not a comma-separated list of integers, "
                         f"for example {flag}=10000,100000.") from None
    for size in sizes:
        if size < 1:
            raise ValueError(f"{flag} must list positive stream lengths, got {size}. "
                             f"Leave it empty ({flag}=) to skip that scan.")
    return sizes


def _sizes(args, engine_names: List[str]) -> Sizes:
    """Check the size flags; return the stream lengths of this run."""
    if args.block_size < 1:
        raise ValueError(f"--block_size must be at least 1 event per element, got {args.block_size}. "
                         f"The per-event rows always run, so pick a block size such as "
                         f"--block_size={DEFAULT_BLOCK_SIZE}.")
    if not args.prism_replay_rate > 0 or args.prism_replay_rate == float("inf"):
        raise ValueError(f"--prism_replay_rate must be a positive, finite number of events per second, got "
                         f"{args.prism_replay_rate}. To skip the paced scan, pass --paced_memory_sizes= instead.")
    if args.quick:
        memory_sizes = block_memory_sizes = streaming_block_memory_sizes = QUICK_MEMORY_SIZES
        prism_streaming_memory_sizes = replay_memory_sizes = paced_memory_sizes = QUICK_MEMORY_SIZES
        one_pipeline_memory_sizes = QUICK_MEMORY_SIZES
        events = streaming_events = block_events = streaming_block_events = QUICK_EVENTS
    else:
        memory_sizes = _parse_sizes("--memory_sizes", args.memory_sizes)
        block_memory_sizes = _parse_sizes("--block_memory_sizes", args.block_memory_sizes)
        one_pipeline_memory_sizes = _parse_sizes("--one_pipeline_memory_sizes", args.one_pipeline_memory_sizes)
        streaming_block_memory_sizes = _parse_sizes("--streaming_block_memory_sizes",
                                                    args.streaming_block_memory_sizes)
        prism_streaming_memory_sizes = _parse_sizes("--prism_streaming_memory_sizes",
                                                    args.prism_streaming_memory_sizes)
        replay_memory_sizes = _parse_sizes("--replay_memory_sizes", args.replay_memory_sizes)
        paced_memory_sizes = _parse_sizes("--paced_memory_sizes", args.paced_memory_sizes)
        if args.large:
            block_memory_sizes += LARGE_BLOCK_MEMORY_SIZES
        events, streaming_events = args.max_events, args.streaming_max_events
        block_events, streaming_block_events = args.block_max_events, args.streaming_block_max_events
        for name, value in (("--max_events", events), ("--streaming_max_events", streaming_events),
                            ("--block_max_events", block_events),
                            ("--streaming_block_max_events", streaming_block_events)):
            if value < 100:
                raise ValueError(f"{name} must be at least 100 events to measure anything, got {value}.")

    scans = []
    if "fnapi" in engine_names:
        scans += [memory.MemoryScan("fnapi", 0, memory_sizes),
                  memory.MemoryScan("fnapi", args.block_size, block_memory_sizes),
                  memory.MemoryScan("fnapi", args.block_size, one_pipeline_memory_sizes, segment_events=0)]
    if "streaming" in engine_names:
        scans.append(memory.MemoryScan("streaming", args.block_size, streaming_block_memory_sizes))
    if "prism" in engine_names:
        scans += [memory.MemoryScan("prism_streaming", args.block_size, prism_streaming_memory_sizes),
                  memory.MemoryScan("prism_streaming", args.block_size, paced_memory_sizes,
                                    replay_rate=args.prism_replay_rate),
                  memory.MemoryScan("prism_streaming", args.block_size, replay_memory_sizes, case="replay")]
    return Sizes(events, streaming_events, block_events, streaming_block_events,
                 tuple(scan for scan in scans if scan.sizes))


def _guarded(rows: List[Row], section: str, case: str, engine: str, function: Callable) -> None:
    """Append the rows ``function()`` returns, or one row saying why it failed."""
    try:
        result = function()
    except Exception as error:  # One broken case must not lose the others' numbers.
        _LOGGER.exception("Benchmark %s/%s on %s failed.", section, case, engine)
        rows.append(Row(section, case, engine, detail=f"failed: {type(error).__name__}: {error}"[:300]))
        return
    rows.extend(result if isinstance(result, (list, tuple)) else [result])


def _warm_up(dataset: str, block_size: int) -> None:
    """Pay one-off costs (lazy imports, first optimizer step, runner start) before timing."""
    started = time.perf_counter()
    small = workload_lib.prepare_workload(dataset, 300)
    throughput.run_plain_loop(small)
    engine = engines_lib.resolve_engines(["fnapi"])[0]
    for size in (0, block_size):
        with tempfile.TemporaryDirectory() as output_dir:
            throughput.run_online_train(small, engine, output_dir, size)
    _LOGGER.info("Warm-up took %.1f s.", time.perf_counter() - started)


def run_throughput(workloads: Dict[int, workload_lib.Workload], engines, sizes: Sizes, block_size: int) -> List[Row]:
    """Plain loop and River per stream size, then online_train per engine, per event and in blocks.

    The plain loop runs on every stream length, so that each ``vs plain
    loop`` ratio compares two runs over the same events.
    """
    rows: List[Row] = []
    plain_rate = {}
    for size, workload in sorted(workloads.items()):
        end_to_end, model_only = throughput.run_plain_loop(workload)
        plain_rate[size] = end_to_end.events_per_s
        rows += [end_to_end, model_only]

    for engine in engines:
        for mode in (0, block_size):
            case = f"online_train, {mode_label(mode)}"
            if engine.unavailable:
                rows.append(Row("throughput", case, engine.name, detail=f"skipped: {engine.unavailable}"))
                continue
            workload = workloads[sizes.events_for(engine, mode)]
            with tempfile.TemporaryDirectory() as output_dir:
                _guarded(rows, "throughput", case, engine.name,
                         lambda: throughput.run_online_train(workload, engine, output_dir, mode))

    largest = workloads[max(workloads)]
    for name, factory in throughput.river_learners():
        _guarded(rows, "peers", name, "-", lambda: throughput.run_river(largest, name, factory))

    no_change = {size: throughput.no_change_accuracy(workload) for size, workload in workloads.items()}
    for row in rows:
        if row.accuracy is not None:
            row.no_change_accuracy = no_change[row.events]
        if row.events_per_s is not None and row.events in plain_rate and row.case != "plain PyTorch loop, model only":
            row.vs_plain = row.events_per_s / plain_rate[row.events]
    return rows


def run_long_window(args, sizes: Sizes, engines, short_rows: List[Row],
                    short_workload: workload_lib.Workload) -> List[Row]:
    """Run the plain loop and block-mode online_train on the FnApiRunner with ``--long_window``.

    With the same runs in the job's windows (``short_rows`` over
    ``short_workload``), the last row splits ``online_train``'s time into
    a cost per event and a cost per serving window (:mod:`bench.fit`).
    """
    fnapi = [engine for engine in engines if engine.name == "fnapi" and not engine.unavailable]
    if not args.long_window or not fnapi:
        return []

    workload = workload_lib.prepare_workload(args.dataset, sizes.block_events, window=args.long_window)
    plain, _ = throughput.run_plain_loop(workload)
    job_case = f"online_train, {mode_label(args.block_size)}"
    rows: List[Row] = []
    with tempfile.TemporaryDirectory() as output_dir:
        _guarded(rows, "throughput", job_case, "fnapi",
                 lambda: throughput.run_online_train(workload, fnapi[0], output_dir, args.block_size))

    rows.insert(0, plain)
    for row in rows:
        row.case = f"{row.case}, {args.long_window} windows"
        if row.section == "throughput" and row.events_per_s is not None:
            row.vs_plain = row.events_per_s / plain.events_per_s

    short = {(row.case, row.engine): row for row in short_rows if row.events == sizes.block_events}
    if ("plain PyTorch loop", "-") in short and (job_case, "fnapi") in short and rows[1].section == "throughput":
        floor = fit.per_event_floor_row(
            f"{job_case}, without per-window costs (fit)", short[("plain PyTorch loop", "-")],
            short[(job_case, "fnapi")], plain, rows[1], len(short_workload.windows()), len(workload.windows()))
        if floor is not None:
            rows.append(floor)
    return rows


def run_inference(workload: workload_lib.Workload, engines) -> List[Row]:
    rows: List[Row] = []
    with tempfile.TemporaryDirectory() as store_root:
        versions = inference.FixedVersions(workload, store_root)
        _guarded(rows, "inference", "plain model(x)", "-", lambda: inference.run_plain_inference(workload, versions))
        for engine in engines:
            if engine.unavailable:
                rows.append(Row("inference", "VersionedInference", engine.name,
                                detail=f"skipped: {engine.unavailable}"))
                continue
            _guarded(rows, "inference", "VersionedInference", engine.name,
                     lambda: inference.run_versioned_inference(workload, versions, engine))
            _guarded(rows, "inference", "RunInference + PytorchModelHandlerTensor", engine.name,
                     lambda: inference.run_stock_run_inference(workload, versions, engine))
    return rows


def prepare_workloads(dataset: str, engines, sizes: Sizes, block_size: int) -> Dict[int, workload_lib.Workload]:
    """Read and validate each stream length that some case needs, once.

    The profile always needs ``sizes.events`` and ``sizes.block_events``,
    because it runs on the FnApiRunner whatever ``--engines`` lists.
    """
    lengths = {sizes.events, sizes.block_events}
    for engine in engines:
        if not engine.unavailable:
            lengths |= {sizes.events_for(engine, 0), sizes.events_for(engine, block_size)}
    return {length: workload_lib.prepare_workload(dataset, length) for length in sorted(lengths)}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for name in ("apache_beam", "pipelines", "transforms", "ml"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        engine_names = [name.strip() for name in args.engines.split(",") if name.strip()]
        engines = engines_lib.resolve_engines(engine_names)
        sizes = _sizes(args, engine_names)
    except ValueError as error:
        _LOGGER.error("%s", error)
        return 2

    # When other processes share the cores, torch's default of one intra-op
    # thread per core makes every small matrix product wait for a busy core.
    # docs/benchmarks.md has the measured effect.
    torch.set_num_threads(args.torch_threads)
    machine = report.machine_description()
    for engine in engines:
        if engine.unavailable:
            print(f"Skipping {engine.name}: {engine.unavailable}.")

    if not args.quick:
        _warm_up(args.dataset, args.block_size)
    workloads = prepare_workloads(args.dataset, engines, sizes, args.block_size)

    rows = run_throughput(workloads, engines, sizes, args.block_size)
    rows += run_long_window(args, sizes, engines, rows, workloads[sizes.block_events])
    _LOGGER.info("Throughput done.")
    rows += run_inference(workloads[sizes.events], engines)
    _LOGGER.info("Inference done.")
    profiles = []

    def profile() -> List[Row]:
        profile_rows, found = profiling.profile_rows(workloads[sizes.events], workloads[sizes.block_events],
                                                     args.block_size)
        profiles.extend(found)
        return profile_rows

    _guarded(rows, "profile", "cProfile", "fnapi", profile)
    _LOGGER.info("Profile done.")
    _guarded(rows, "memory", "peak RSS", "-",
             lambda: memory.memory_rows(args.dataset, sizes.memory_scans, args.torch_threads))

    print(markdown_table(rows))
    if not args.no_docs:
        write_docs(args.docs_dir, argv, machine, rows, profiles)
    return 0


def write_docs(docs_dir: str, argv, machine, rows: List[Row], profiles) -> None:
    """Append this run to ``<docs_dir>/benchmarks.md`` and write the plot."""
    plot_path = os.path.join(docs_dir, "img", PLOT_NAME)
    plotted = report.plot_scaling(rows, plot_path)
    command = "python -m bench " + " ".join(shlex.quote(arg) for arg in (sys.argv[1:] if argv is None else argv))
    profiles_text = "\n\n".join(profiling.format_profile(profile) for profile in profiles)
    block = report.markdown_block(command.strip(), machine, rows, profiles_text, PLOT_NAME if plotted else "")
    os.makedirs(docs_dir, exist_ok=True)
    path = os.path.join(docs_dir, "benchmarks.md")
    with open(path, "a") as file:
        file.write("\n" + block)
    print(f"Appended to {path}" + (f"; plot {plot_path}" if plotted else ""))


if __name__ == "__main__":
    sys.exit(main())
