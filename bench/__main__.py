"""Benchmark ``online_train`` against a plain PyTorch loop, River and stock RunInference.

    python -m bench                 # the default sizes, about ten minutes on 2 cores
    python -m bench --quick         # tiny sizes, a smoke run
    python -m bench --engines=fnapi --max_events=50000

Everything except the memory scan runs in this one process, one case after
the other, so ratios between cases share the machine's load at the time.
Results are printed as a table and appended to ``<docs_dir>/benchmarks.md``
with a plot under ``<docs_dir>/img/``.
"""

import argparse
import logging
import os
import shlex
import sys
import tempfile
import time
from typing import Callable, Dict, List

import torch

from bench import engines as engines_lib
from bench import inference
from bench import memory
from bench import profiling
from bench import report
from bench import throughput
from bench import workload as workload_lib
from bench.results import Row, markdown_table

_LOGGER = logging.getLogger("bench")

PLOT_NAME = "benchmarks.png"
QUICK_EVENTS = 600
QUICK_MEMORY_SIZES = (600,)
DEFAULT_MEMORY_SIZES = (10_000, 30_000, 100_000)
LARGE_MEMORY_SIZES = (1_000_000, 10_000_000)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"Tiny sizes ({QUICK_EVENTS} events, memory at {QUICK_MEMORY_SIZES}) and no warm-up, "
                             "for a smoke run; the numbers mean little.")
    parser.add_argument("--dataset", default="sea", help="A classification stream of online_train's --dataset.")
    parser.add_argument("--max_events", type=int, default=20_000,
                        help="Events per throughput, inference and profile run.")
    parser.add_argument("--streaming_max_events", type=int, default=5_000,
                        help="Events per run on the legacy streaming DirectRunner, which is slower.")
    parser.add_argument("--engines", default=",".join(engines_lib.ENGINE_NAMES),
                        help=f"Comma-separated engines out of {','.join(engines_lib.ENGINE_NAMES)}.")
    parser.add_argument("--memory_sizes", default=",".join(str(size) for size in DEFAULT_MEMORY_SIZES),
                        help="Comma-separated stream lengths of the memory scan (one child process each).")
    parser.add_argument("--large", action="store_true",
                        help=f"Add {LARGE_MEMORY_SIZES} events to the memory scan (hours on 2 cores).")
    parser.add_argument("--torch_threads", type=int, default=1,
                        help="torch intra-op threads for every case; 1 suits these small models on a shared CPU.")
    parser.add_argument("--docs_dir", default="docs",
                        help="Where benchmarks.md is appended to and the plot is written (img/).")
    parser.add_argument("--no_docs", action="store_true", help="Print the table only.")
    return parser


def _sizes(args) -> Dict[str, object]:
    if args.quick:
        return {"events": QUICK_EVENTS, "streaming_events": QUICK_EVENTS, "memory": list(QUICK_MEMORY_SIZES)}
    try:
        memory_sizes = [int(size) for size in args.memory_sizes.split(",") if size.strip()]
    except ValueError:
        raise ValueError(f"--memory_sizes {args.memory_sizes!r} is not a comma-separated list of "
                         "integers, for example --memory_sizes=10000,100000.") from None
    if args.large:
        memory_sizes += list(LARGE_MEMORY_SIZES)
    for name, value in (("--max_events", args.max_events), ("--streaming_max_events", args.streaming_max_events)):
        if value < 100:
            raise ValueError(f"{name} must be at least 100 events to measure anything, got {value}.")
    return {"events": args.max_events, "streaming_events": args.streaming_max_events, "memory": memory_sizes}


def _guarded(rows: List[Row], section: str, case: str, engine: str, function: Callable) -> None:
    """Append the rows ``function()`` returns, or one row saying why it failed."""
    try:
        result = function()
    except Exception as error:  # One broken case must not lose the others' numbers.
        _LOGGER.exception("Benchmark %s/%s on %s failed.", section, case, engine)
        rows.append(Row(section, case, engine, detail=f"failed: {type(error).__name__}: {error}"[:300]))
        return
    rows.extend(result if isinstance(result, (list, tuple)) else [result])


def _warm_up(dataset: str) -> None:
    """Pay one-off costs (lazy imports, first optimizer step, runner start) before timing."""
    started = time.perf_counter()
    small = workload_lib.prepare_workload(dataset, 300)
    throughput.run_plain_loop(small)
    engine = engines_lib.resolve_engines(["fnapi"])[0]
    with tempfile.TemporaryDirectory() as output_dir:
        throughput.run_online_train(small, engine, output_dir)
    _LOGGER.info("Warm-up took %.1f s.", time.perf_counter() - started)


def run_throughput(workloads: Dict[int, workload_lib.Workload], engines, events_for) -> List[Row]:
    """Plain loop and River per stream size, then online_train per engine."""
    rows: List[Row] = []
    plain_rate = {}
    for size, workload in sorted(workloads.items()):
        end_to_end, model_only = throughput.run_plain_loop(workload)
        plain_rate[size] = end_to_end.events_per_s
        rows += [end_to_end, model_only]

    for engine in engines:
        if engine.unavailable:
            rows.append(Row("throughput", "online_train", engine.name, detail=f"skipped: {engine.unavailable}"))
            continue
        workload = workloads[events_for(engine)]
        with tempfile.TemporaryDirectory() as output_dir:
            _guarded(rows, "throughput", "online_train", engine.name,
                     lambda: throughput.run_online_train(workload, engine, output_dir))

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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for name in ("apache_beam", "pipelines", "transforms", "ml"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        sizes = _sizes(args)
        engines = engines_lib.resolve_engines([name.strip() for name in args.engines.split(",") if name.strip()])
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
        _warm_up(args.dataset)
    events_for = lambda engine: sizes["streaming_events"] if engine.name == "streaming" else sizes["events"]
    workloads = {}
    for engine in engines:
        size = events_for(engine)
        if size not in workloads:
            workloads[size] = workload_lib.prepare_workload(args.dataset, size)
    if sizes["events"] not in workloads:
        workloads[sizes["events"]] = workload_lib.prepare_workload(args.dataset, sizes["events"])
    main_workload = workloads[sizes["events"]]

    rows = run_throughput(workloads, engines, events_for)
    _LOGGER.info("Throughput done.")
    rows += run_inference(main_workload, engines)
    _LOGGER.info("Inference done.")
    profiles = []

    def profile() -> List[Row]:
        profile_rows, found = profiling.profile_rows(main_workload)
        profiles.extend(found)
        return profile_rows

    _guarded(rows, "profile", "cProfile", "fnapi", profile)
    _LOGGER.info("Profile done.")
    _guarded(rows, "memory", "peak RSS", "fnapi",
             lambda: memory.memory_rows(args.dataset, sizes["memory"], args.torch_threads))

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
