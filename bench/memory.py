"""Peak memory and throughput as the stream grows, one child process per run.

Each run starts a fresh interpreter (``python -m bench.memory``) so that
one size's peak cannot hide the next one's, and the child reports its
peak resident set size from ``VmHWM`` in ``/proc/self/status``. (Its
``ru_maxrss`` would not do: Linux carries the parent's resident set size
at the fork over to the child.) That peak is often set while importing
torch and Beam, so the child also resets its high-water mark
(``/proc/self/clear_refs``) once the imports are done and reports the
peak of the run itself.

On Prism the job server is a separate Go process, which neither of those
peaks counts. For that engine the child samples the summed RSS of itself
and all its descendant processes while the job runs
(:class:`ProcessTreeSampler`). In two runs of 3·10^5 events Prism's RSS
reached 89 MiB and its live heap peaked at 25 MiB, so the child also
starts Prism with ``GODEBUG=gctrace=1`` and reads the live heap after
each garbage collection from its log (:class:`GoHeapTrace`).

Prism has no backpressure, so a replay that outruns the rest of the job
leaves its backlog in the job server, whose memory then grows with the
stream. A scan can therefore pace the replay (``replay_rate``, the job's
``--replay_rate``) below the job's throughput. The child also reports the
C heap that its own allocator has handed out (``mallinfo2``): the Python
process's RSS also counts freed memory that glibc keeps.

A :class:`MemoryScan` names the case (``online_train``, or its replay
alone), the engine, the block size, the replay's pace and the stream
lengths of one series of runs. The plain PyTorch loop
runs once at every length that any scan covers.
"""

import argparse
import ctypes
import ctypes.util
import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

from bench.engines import Engine, resolve_engines
from bench.results import Row, mode_label

_LOGGER = logging.getLogger(__name__)

CASES = ("plain", "online_train", "replay")
# The cases that run a pipeline on a scan engine. "replay" is the job's
# source alone (ReadEvents, then a count per window), which separates the
# replay's memory from the memory of the rest of the job.
PIPELINE_CASES = ("online_train", "replay")
_CASE_LABELS = {"online_train": "online_train", "replay": "replay alone"}
# "prism_streaming" is Prism with --streaming, where the replay is a
# splittable DoFn (transforms.replay.choose_replay_mode).
SCAN_ENGINES = ("fnapi", "streaming", "prism_streaming")
# The scan engines whose job runs partly outside the child (Prism's Go job
# server), so the child samples the RSS of its whole process tree.
PROCESS_TREE_ENGINES = ("prism_streaming",)
# The scan engines whose replay is the splittable DoFn, the only mode that follows --replay_rate.
PACED_ENGINES = ("prism_streaming",)
# The scan engines on which online_train can run in segments (its --segment_events).
SEGMENT_ENGINES = ("fnapi", "streaming")
SAMPLE_PERIOD_S = 0.1
# A paced run that takes longer than this factor of its pace plus these
# seconds fell behind its replay.
PACE_SLACK_FACTOR = 1.25
PACE_SLACK_S = 15.0
# Beam's PrismRunner logs the job server's output through this logger.
PRISM_LOGGER = "PrismJobServer"
# A gctrace line: "gc 7 @3.7s 0%: ..., 13->13->7 MB, 14 MB goal, ...", where
# the third size is the live heap after the collection.
_GCTRACE_LINE = re.compile(r"gc \d+ @[\d.]+s .* (\d+)->(\d+)->(\d+) MB")


@dataclasses.dataclass(frozen=True)
class MemoryScan:
    """The stream lengths (events) at which to measure a pipeline case on one engine and block size."""

    engine: str
    block_size: int
    sizes: Tuple[int, ...]
    case: str = "online_train"
    # Records per second of processing time, where 0 replays as fast as the runner takes them.
    replay_rate: float = 0.0
    # online_train's --segment_events; None keeps the job's default.
    segment_events: Optional[int] = None

    def __post_init__(self):
        if self.case not in PIPELINE_CASES:
            raise ValueError(f"Invalid memory scan case {self.case!r}: expected one of {', '.join(PIPELINE_CASES)}.")
        if self.engine not in SCAN_ENGINES:
            raise ValueError(f"Invalid memory scan engine {self.engine!r}: expected one of {', '.join(SCAN_ENGINES)}.")
        if self.block_size < 0:
            raise ValueError(f"Invalid memory scan block size {self.block_size}: expected 0 (one event per "
                             "element) or a positive number of events per element.")
        if self.replay_rate < 0:
            raise ValueError(f"Invalid memory scan replay rate {self.replay_rate}: expected records per second "
                             ">= 0, where 0 replays as fast as the runner takes the records.")
        if self.replay_rate and self.engine not in PACED_ENGINES:
            raise ValueError(f"A memory scan on {self.engine} cannot pace its replay, because only the streaming "
                             f"replay on {', '.join(PACED_ENGINES)} follows a replay rate.")
        if self.segment_events is not None and (self.engine not in SEGMENT_ENGINES or self.case != "online_train"):
            raise ValueError(f"A memory scan of {self.case} on {self.engine} cannot set segment_events: only "
                             f"online_train on {' or '.join(SEGMENT_ENGINES)} runs in segments.")


def scan_engine(name: str) -> Engine:
    """Resolve the runner configuration of the memory scan engine ``name`` (one of SCAN_ENGINES).

    ``prism_streaming`` resolves Prism, which builds it with Go when no
    binary is cached, and keeps its ``unavailable`` reason when that fails.
    """
    if name not in SCAN_ENGINES:
        raise ValueError(f"Invalid memory scan engine {name!r}: expected one of {', '.join(SCAN_ENGINES)}.")
    if name != "prism_streaming":
        return resolve_engines([name])[0]

    prism = resolve_engines(["prism"])[0]
    pipeline_args = prism.pipeline_args + ("--streaming",) if not prism.unavailable else ()
    return dataclasses.replace(prism, name=name, description=f"{prism.description}, --streaming",
                               pipeline_args=pipeline_args)


class ProcessTreeSampler:
    """Sample the summed resident set size of a process and all its descendants.

    A daemon thread reads VmRSS from ``/proc/<pid>/status`` of the root
    process and of every process below it (found from the parent ids in
    ``/proc/*/stat``) about every ``period_s`` seconds, from :meth:`start`
    to :meth:`stop`. A page shared by several processes counts once in each
    of them, and a peak shorter than the period can fall between two
    samples. When the root is this process, it also samples the C heap in
    use (:func:`malloc_in_use_mb`) where glibc reports it. Needs Linux.
    """

    def __init__(self, root_pid: Optional[int] = None, period_s: float = SAMPLE_PERIOD_S):
        if period_s <= 0:
            raise ValueError(f"Invalid period_s {period_s}: expected a positive number of seconds, such as 0.1.")
        self.root_pid = os.getpid() if root_pid is None else root_pid
        self.period_s = period_s
        self.start_mb: Optional[float] = None
        self.peak_mb = 0.0
        self.max_processes = 0
        self.samples = 0
        self.heap_start_mb: Optional[float] = None
        self.heap_peak_mb: Optional[float] = None
        self.heap_last_mb: Optional[float] = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, name="ProcessTreeSampler", daemon=True)

    def start(self) -> "ProcessTreeSampler":
        """Take the first sample, which sets ``start_mb``, then keep sampling in the background."""
        rss_mb, _ = self._sample()
        self.start_mb = rss_mb
        self.heap_start_mb = self.heap_last_mb
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the background thread, then take a last sample."""
        self._stopped.set()
        self._thread.join()
        self._sample()

    def __enter__(self) -> "ProcessTreeSampler":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _sample_until_stopped(self) -> None:
        while not self._stopped.wait(self.period_s):
            self._sample()

    def _sample(self) -> Tuple[float, int]:
        rss_mb, processes = tree_rss_mb(self.root_pid)
        self.peak_mb = max(self.peak_mb, rss_mb)
        self.max_processes = max(self.max_processes, processes)
        self.samples += 1

        heap_mb = malloc_in_use_mb() if self.root_pid == os.getpid() else None
        if heap_mb is not None:
            self.heap_last_mb = heap_mb
            self.heap_peak_mb = heap_mb if self.heap_peak_mb is None else max(self.heap_peak_mb, heap_mb)
        return rss_mb, processes


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _load_mallinfo2():
    """Return glibc's ``mallinfo2`` (glibc 2.33 and later), or None where this C library lacks it."""
    try:
        mallinfo2 = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2
    return mallinfo2


_MALLINFO2 = _load_mallinfo2()


def malloc_in_use_mb() -> Optional[float]:
    """Return the C heap that this process's allocator has handed out and not taken back, in MiB.

    That is glibc's in-use chunks of all arenas plus its mmapped chunks.
    Returns None where the C library is not glibc 2.33 or later. CPython's
    small object arenas are mapped directly and are not part of it.
    """
    if _MALLINFO2 is None:
        return None
    info = _MALLINFO2()
    return (info.uordblks + info.hblkhd) / 2**20


class GoHeapTrace(logging.Filter):
    """The live heap of a Go process after each garbage collection, from its ``GODEBUG=gctrace=1`` lines.

    Install it on the logger that receives the process's output: it takes
    the gctrace lines out of the log and lets every other line through.
    The Go runtime prints sizes in units of 2^20 bytes, whole numbers only.
    """

    def __init__(self):
        super().__init__()
        self.collections = 0
        self.peak_mb: Optional[int] = None
        self.last_mb: Optional[int] = None

    def filter(self, record: logging.LogRecord) -> bool:
        match = _GCTRACE_LINE.search(record.getMessage())
        if match is None:
            return True
        live_mb = int(match.group(3))
        self.collections += 1
        self.peak_mb = live_mb if self.peak_mb is None else max(self.peak_mb, live_mb)
        self.last_mb = live_mb
        return False

    def install(self, logger_name: str = PRISM_LOGGER) -> "GoHeapTrace":
        """Ask Go processes started from now on for a gctrace, and read it from ``logger_name``."""
        os.environ["GODEBUG"] = ",".join(filter(None, [os.environ.get("GODEBUG"), "gctrace=1"]))
        logger = logging.getLogger(logger_name)
        logger.addFilter(self)
        # The runner logs the output at INFO level.
        logger.setLevel(logging.INFO)
        return self


def tree_rss_mb(root_pid: int) -> Tuple[float, int]:
    """Return the summed VmRSS (MiB) of ``root_pid`` and its descendants, and how many processes that is.

    Processes that exit while they are read, and zombies (which have no
    VmRSS), add nothing.
    """
    root_kib = _status_kib(root_pid, "VmRSS")
    if root_kib is None:
        raise RuntimeError(f"Cannot read VmRSS from /proc/{root_pid}/status: the process has exited or this is "
                           "not Linux.")

    total_kib, processes = root_kib, 1
    for pid in descendant_pids(root_pid):
        rss_kib = _status_kib(pid, "VmRSS")
        if rss_kib is not None:
            total_kib += rss_kib
            processes += 1
    return total_kib / 1024, processes


def descendant_pids(root_pid: int) -> List[int]:
    """Return the ids of the processes below ``root_pid`` in the process tree, parents first."""
    # /proc/<pid>/task/<tid>/children would be cheaper, but kernels built
    # without CONFIG_PROC_CHILDREN lack it, so this reads every parent id.
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _parent_pid(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))

    found = []
    pending = list(children.get(root_pid, ()))
    while pending:
        pid = pending.pop(0)
        found.append(pid)
        pending += children.get(pid, ())
    return found


def _parent_pid(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:  # The process exited after os.listdir saw it.
        return None
    # The command name in brackets may contain spaces and ")", so the
    # fields after it (state, then parent id) start after the last ")".
    return int(text[text.rindex(")") + 2:].split()[1])


def run_child(case: str, dataset: str, max_events: int, torch_threads: int,
              engine: str = "fnapi", block_size: int = 0, replay_rate: float = 0.0,
              segment_events: Optional[int] = None) -> dict:
    """Run one case in a child interpreter; return its report plus ``peak_rss_mb``.

    ``engine``, ``block_size`` (``online_train``'s ``--block_size``),
    ``replay_rate`` (its ``--replay_rate``) and ``segment_events`` (its
    ``--segment_events``, None for its default) apply to the pipeline cases
    only. ``peak_rss_mb`` is the child's peak resident set size in MiB,
    imports included. The report has
    ``start_rss_mb`` (after the imports) and ``run_peak_rss_mb`` (the
    high-water mark after that, None where the kernel cannot reset it).
    On the PROCESS_TREE_ENGINES it also has the summed RSS of the child and
    its descendants at the run's start and its sampled peak
    (``tree_start_rss_mb``, ``tree_peak_rss_mb``, both MiB), the most
    processes seen at once (``tree_max_processes``), the number of samples
    (``tree_samples``) and their period (``tree_period_ms``), and the
    child's C heap in use at the start, at its peak and at the end
    (``malloc_start_mb``, ``malloc_peak_mb``, ``malloc_last_mb``). Those
    fields are None on the other engines.
    """
    command = [
        sys.executable, "-m", "bench.memory", f"--case={case}", f"--dataset={dataset}",
        f"--max_events={max_events}", f"--torch_threads={torch_threads}",
        f"--engine={engine}", f"--block_size={block_size}", f"--replay_rate={replay_rate}",
    ]
    if segment_events is not None:
        command.append(f"--segment_events={segment_events}")
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [repo_root, os.environ.get("PYTHONPATH")])))
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=env)
        output = process.stdout.read()
        if process.wait() != 0:
            stderr.seek(0)
            tail = stderr.read()[-2000:].decode("utf-8", errors="replace")
            raise RuntimeError(f"bench.memory {' '.join(command[3:])} failed "
                               f"with exit code {process.returncode}: {tail}")
    return json.loads(output.decode().strip().splitlines()[-1])


def memory_rows(dataset: str, scans: Sequence[MemoryScan], torch_threads: int) -> List[Row]:
    """Measure the plain loop and each scan's ``online_train`` runs, shortest stream first.

    The first row is the peak after the imports alone, which every case
    pays, as the first child measured it before running anything. A child
    that fails adds a row with its error, and the scan goes on. A scan whose
    engine cannot run here (``Engine.unavailable``) adds one row with the
    reason, after the measured rows.
    """
    scans, skipped = _drop_unavailable(scans)
    rows: List[Row] = []
    base_mb = None
    for size in sorted({size for scan in scans for size in scan.sizes}):
        runs = [("plain", "plain PyTorch loop", "-", 0, 0.0, None)]
        runs += [(scan.case, _scan_label(scan), scan.engine, scan.block_size, scan.replay_rate, scan.segment_events)
                 for scan in scans if size in scan.sizes]
        for case, label, engine, block_size, replay_rate, segment_events in runs:
            try:
                report = run_child(case, dataset, size, torch_threads, engine="fnapi" if engine == "-" else engine,
                                   block_size=block_size, replay_rate=replay_rate, segment_events=segment_events)
            except (RuntimeError, ValueError) as error:  # One failed run must not lose the others.
                _LOGGER.exception("Memory scan of %s on %s at %d events failed.", label, engine, size)
                rows.append(Row("memory", f"{label}, peak RSS", engine, events=size,
                                detail=f"failed: {error}"[:300]))
                continue

            if base_mb is None:
                base_mb = report["imports_peak_rss_mb"]
                rows.append(Row("memory", "imports only (beam, torch, river)", events=0,
                                detail=f"peak RSS {base_mb:.0f} MiB", peak_rss_mb=base_mb))
            rows.append(_memory_row(f"{label}, peak RSS", engine, size, report, base_mb))
    return rows + skipped


def _drop_unavailable(scans: Sequence[MemoryScan]) -> Tuple[List[MemoryScan], List[Row]]:
    """Split ``scans`` into those whose engine can run here and a skipped row for each other one."""
    unavailable = {name: scan_engine(name).unavailable for name in {scan.engine for scan in scans}}
    runnable = [scan for scan in scans if not unavailable[scan.engine]]
    skipped = [
        Row("memory", f"{_scan_label(scan)}, peak RSS", scan.engine, detail=f"skipped: {unavailable[scan.engine]}")
        for scan in scans if unavailable[scan.engine]
    ]
    return runnable, skipped


def _scan_label(scan: MemoryScan) -> str:
    label = f"{_CASE_LABELS[scan.case]}, {mode_label(scan.block_size)}"
    if scan.replay_rate:
        label += f", replay paced at {scan.replay_rate:,.0f} events/s"
    if scan.segment_events == 0:
        label += ", one pipeline"
    elif scan.segment_events is not None:
        label += f", segments of {scan.segment_events:,} events"
    return label


def _memory_row(case: str, engine: str, size: int, report: dict, base_mb: float) -> Row:
    detail = f"peak RSS {report['peak_rss_mb']:.0f} MiB ({report['peak_rss_mb'] - base_mb:+.0f} over imports)"
    run_peak_mb = report["peak_rss_mb"]
    if report["run_peak_rss_mb"] is not None:
        run_peak_mb = report["run_peak_rss_mb"]
        growth = run_peak_mb - report["start_rss_mb"]
        detail += f"; run peak {run_peak_mb:.0f} MiB, {growth:+.0f} over its start"
    if report.get("tree_peak_rss_mb") is not None:
        # The job's memory includes Prism's job server, so the plot draws the process tree's peak.
        run_peak_mb = report["tree_peak_rss_mb"]
        growth = run_peak_mb - report["tree_start_rss_mb"]
        detail += (f"; job peak {run_peak_mb:.0f} MiB, {growth:+.0f} over its start: VmRSS summed over the child "
                   f"and its descendants (up to {report['tree_max_processes']} processes, Prism's job server "
                   f"included), sampled every {report['tree_period_ms']:.0f} ms ({report['tree_samples']} "
                   "samples), so a shorter peak can be missed")
    if report.get("replay_rate"):
        detail += _pace_detail(size, report["replay_rate"], report["seconds"])
    if report.get("malloc_peak_mb") is not None:
        detail += (f"; the child's C heap in use (mallinfo2) was {report['malloc_start_mb']:.0f} MiB at the "
                   f"start, peaked at {report['malloc_peak_mb']:.0f} MiB and ended at "
                   f"{report['malloc_last_mb']:.0f} MiB")
    if report.get("go_collections"):
        detail += (f"; Prism's live Go heap after garbage collection peaked at {report['go_heap_peak_mb']} MiB "
                   f"and was {report['go_heap_last_mb']} MiB at the last of {report['go_collections']} collections")
    return Row(
        "memory", case, engine, events=size, seconds=report["seconds"],
        events_per_s=size / report["seconds"], detail=detail, peak_rss_mb=run_peak_mb,
    )


def _pace_detail(size: int, replay_rate: float, seconds: float) -> str:
    """Describe a paced run's pace, and flag a run in which the job fell behind it."""
    pace_s = size / replay_rate
    detail = f"; replay paced at {replay_rate:,.0f} events/s, which alone takes {pace_s:,.0f} s"
    # Starting the job and Prism takes some seconds more than the pace.
    if seconds > PACE_SLACK_FACTOR * pace_s + PACE_SLACK_S:
        detail += (" (the job took longer, so it fell behind its replay and Prism held a backlog: lower "
                   "--prism_replay_rate)")
    return detail


def _child_main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory",
                                     description="Run one memory benchmark case; print a JSON report.")
    parser.add_argument("--case", choices=CASES, required=True)
    parser.add_argument("--dataset", default="sea")
    parser.add_argument("--max_events", type=int, required=True)
    parser.add_argument("--torch_threads", type=int, default=1)
    parser.add_argument("--engine", choices=SCAN_ENGINES, default="fnapi",
                        help="The runner of the online_train case.")
    parser.add_argument("--block_size", type=int, default=0,
                        help="online_train's --block_size: events per Beam element, 0 for one event per element.")
    parser.add_argument("--replay_rate", type=float, default=0.0,
                        help="online_train's --replay_rate: records per second, 0 for as fast as the runner takes them.")
    parser.add_argument("--segment_events", type=int, default=None,
                        help="online_train's --segment_events; absent keeps the job's default.")
    args = parser.parse_args(argv)
    if args.block_size < 0:
        parser.error(f"--block_size must be 0 (per event) or more, got {args.block_size}.")
    logging.basicConfig(level=logging.WARNING)

    import torch

    torch.set_num_threads(args.torch_threads)
    from bench import throughput, workload
    from pipelines import online_train

    on_engine = args.case in PIPELINE_CASES
    engine = scan_engine(args.engine)
    if on_engine and engine.unavailable:
        parser.error(f"--engine={args.engine} cannot run here: {engine.unavailable}.")
    sampler = ProcessTreeSampler() if on_engine and args.engine in PROCESS_TREE_ENGINES else None
    heap_trace = GoHeapTrace().install() if sampler is not None else None
    imports_rss_mb = _proc_status_mb("VmHWM")
    start_rss_mb = _proc_status_mb("VmRSS")
    can_reset = _reset_peak_rss()
    if sampler is not None:
        sampler.start()
    started = time.perf_counter()
    if args.case == "plain":
        throughput.run_plain_loop(workload.prepare_workload(args.dataset, args.max_events))
    elif args.case == "online_train":
        # The pipeline reads the stream itself: only its flags are needed here.
        with tempfile.TemporaryDirectory() as output_dir:
            job_args = workload.job_args(args.dataset, args.max_events) + _rate_args(args.replay_rate)
            if args.segment_events is not None:
                job_args.append(f"--segment_events={args.segment_events}")
            online_train.run(throughput.online_train_argv(job_args, output_dir, engine, args.block_size))
    elif args.case == "replay":
        _run_replay(args.dataset, args.max_events, engine, args.block_size, args.replay_rate)
    seconds = time.perf_counter() - started
    if sampler is not None:
        sampler.stop()

    run_peak_rss_mb = _proc_status_mb("VmHWM") if can_reset else None
    print(json.dumps({
        "case": args.case, "engine": args.engine if on_engine else None,
        "block_size": args.block_size if on_engine else None,
        "replay_rate": args.replay_rate if on_engine else None,
        "segment_events": args.segment_events if on_engine else None,
        "max_events": args.max_events, "seconds": seconds,
        "imports_peak_rss_mb": imports_rss_mb, "start_rss_mb": start_rss_mb,
        "run_peak_rss_mb": run_peak_rss_mb,
        "peak_rss_mb": _proc_status_mb("VmHWM") if run_peak_rss_mb is None else max(imports_rss_mb, run_peak_rss_mb),
        **_tree_fields(sampler),
        **_go_heap_fields(heap_trace),
    }))


def _rate_args(replay_rate: float) -> List[str]:
    return [f"--replay_rate={replay_rate}"] if replay_rate else []


def _run_replay(dataset: str, max_events: int, engine: Engine, block_size: int, replay_rate: float = 0.0) -> None:
    """Run the job's replay of a stream alone: ReadEvents in the job's mode and blocks, then a count per window."""
    import apache_beam as beam

    from bench import workload
    from pipelines import common, online_train
    from transforms import replay, sources, windowing
    from transforms.blocks import block_config

    args, _ = online_train.build_parser().parse_known_args(
        workload.job_args(dataset, max_events) + _rate_args(replay_rate))
    source_config = sources.resolve_source_config(sources.source_config_from_args(args))
    windowing_config = windowing.WindowingConfig.from_options(
        argparse.Namespace(**{**vars(args), "window": online_train.default_window_spec(source_config)}))
    serving_window_s = common.serving_window_seconds(None, windowing_config)
    blocks = block_config(block_size, windowing_config, serving_window_s)
    options = common.build_pipeline_options(list(engine.pipeline_args))

    with beam.Pipeline(options=options) as pipeline:
        _ = (
            pipeline
            | "ReadEvents" >> replay.ReadEvents(source_config, replay.replay_config_from_args(args),
                                                replay.choose_replay_mode(options), blocks)
            | "WindowForCounting" >> beam.WindowInto(beam.window.FixedWindows(serving_window_s))
            | "CountPerWindow" >> beam.CombineGlobally(beam.combiners.CountCombineFn()).without_defaults()
        )


def _tree_fields(sampler: Optional[ProcessTreeSampler]) -> dict:
    if sampler is None:
        return dict.fromkeys(("tree_start_rss_mb", "tree_peak_rss_mb", "tree_max_processes", "tree_samples",
                              "tree_period_ms", "malloc_start_mb", "malloc_peak_mb", "malloc_last_mb"))
    return {
        "tree_start_rss_mb": sampler.start_mb, "tree_peak_rss_mb": sampler.peak_mb,
        "tree_max_processes": sampler.max_processes, "tree_samples": sampler.samples,
        "tree_period_ms": sampler.period_s * 1000, "malloc_start_mb": sampler.heap_start_mb,
        "malloc_peak_mb": sampler.heap_peak_mb, "malloc_last_mb": sampler.heap_last_mb,
    }


def _go_heap_fields(trace: Optional[GoHeapTrace]) -> dict:
    if trace is None:
        return dict.fromkeys(("go_heap_peak_mb", "go_heap_last_mb", "go_collections"))
    return {"go_heap_peak_mb": trace.peak_mb, "go_heap_last_mb": trace.last_mb, "go_collections": trace.collections}


def _proc_status_mb(field: str) -> float:
    """Return a ``/proc/self/status`` memory field (reported in kB) in MiB."""
    kib = _status_kib(os.getpid(), field)
    if kib is None:
        raise RuntimeError(f"/proc/self/status has no {field} line; the memory scan needs Linux.")
    return kib / 1024


def _status_kib(pid: int, field: str) -> Optional[int]:
    """Return a ``/proc/<pid>/status`` memory field in KiB, or None when the process has exited or lacks it."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:  # The process exited.
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS; return whether it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            # 5 resets the peak resident set size (Linux 4.0 and later).
            clear_refs.write("5")
    except OSError as error:
        logging.getLogger(__name__).warning("Cannot reset the peak RSS (%s); reporting the process peak only.", error)
        return False
    return True


if __name__ == "__main__":
    _child_main()
