"""Peak memory and throughput as the stream grows, one child process per run.

Each run starts a fresh interpreter (``python -m bench.memory``) so that
one size's peak cannot hide the next one's, and the parent reads the
child's peak resident set size from ``os.wait4``, the kernel's rusage of
that child alone. That peak is often set while importing torch and Beam,
so the child also resets its high-water mark (``/proc/self/clear_refs``)
once the imports are done and reports the peak of the run itself.

A :class:`MemoryScan` names the engine, the block size and the stream
lengths of one series of ``online_train`` runs. The plain PyTorch loop
runs once at every length that any scan covers.
"""

import argparse
import dataclasses
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import List, Sequence, Tuple

from bench.results import Row, mode_label

_LOGGER = logging.getLogger(__name__)

CASES = ("plain", "online_train")
# The engines whose whole pipeline runs inside the child, so that the
# child's peak RSS is the job's.
# TODO: scan Prism too. Its Go job server is a separate process, whose memory neither VmHWM nor ru_maxrss adds to the child's.
SCAN_ENGINES = ("fnapi", "streaming")


@dataclasses.dataclass(frozen=True)
class MemoryScan:
    """The stream lengths (events) at which to measure ``online_train`` on one engine and block size."""

    engine: str
    block_size: int
    sizes: Tuple[int, ...]

    def __post_init__(self):
        if self.engine not in SCAN_ENGINES:
            raise ValueError(f"Invalid memory scan engine {self.engine!r}: expected one of {', '.join(SCAN_ENGINES)}.")
        if self.block_size < 0:
            raise ValueError(f"Invalid memory scan block size {self.block_size}: expected 0 (one event per "
                             "element) or a positive number of events per element.")


def run_child(case: str, dataset: str, max_events: int, torch_threads: int,
              engine: str = "fnapi", block_size: int = 0) -> dict:
    """Run one case in a child interpreter; return its report plus ``peak_rss_mb``.

    ``engine`` and ``block_size`` (``online_train``'s ``--block_size``)
    apply to the ``online_train`` case only. ``peak_rss_mb`` is
    ``ru_maxrss`` (KiB on Linux) of the child, in MiB. The report has
    ``start_rss_mb`` (after the imports) and ``run_peak_rss_mb`` (the
    high-water mark after that, None where the kernel cannot reset it).
    """
    command = [
        sys.executable, "-m", "bench.memory", f"--case={case}", f"--dataset={dataset}",
        f"--max_events={max_events}", f"--torch_threads={torch_threads}",
        f"--engine={engine}", f"--block_size={block_size}",
    ]
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [repo_root, os.environ.get("PYTHONPATH")])))
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=env)
        output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            stderr.seek(0)
            tail = stderr.read()[-2000:].decode("utf-8", errors="replace")
            raise RuntimeError(f"bench.memory {' '.join(command[3:])} failed "
                               f"with exit code {process.returncode}: {tail}")
    report = json.loads(output.decode().strip().splitlines()[-1])
    report["peak_rss_mb"] = usage.ru_maxrss / 1024
    return report


def memory_rows(dataset: str, scans: Sequence[MemoryScan], torch_threads: int) -> List[Row]:
    """Measure the plain loop and each scan's ``online_train`` runs, shortest stream first.

    The first row is the peak after the imports alone, which every case
    pays, as the first child measured it before running anything. A child
    that fails adds a row with its error, and the scan goes on.
    """
    rows: List[Row] = []
    base_mb = None
    for size in sorted({size for scan in scans for size in scan.sizes}):
        runs = [("plain", "plain PyTorch loop", "-", 0)]
        runs += [("online_train", f"online_train, {mode_label(scan.block_size)}", scan.engine, scan.block_size)
                 for scan in scans if size in scan.sizes]
        for case, label, engine, block_size in runs:
            try:
                report = run_child(case, dataset, size, torch_threads,
                                   engine="fnapi" if engine == "-" else engine, block_size=block_size)
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
    return rows


def _memory_row(case: str, engine: str, size: int, report: dict, base_mb: float) -> Row:
    detail = f"peak RSS {report['peak_rss_mb']:.0f} MiB ({report['peak_rss_mb'] - base_mb:+.0f} over imports)"
    run_peak_mb = report["peak_rss_mb"]
    if report["run_peak_rss_mb"] is not None:
        run_peak_mb = report["run_peak_rss_mb"]
        growth = run_peak_mb - report["start_rss_mb"]
        detail += f"; run peak {run_peak_mb:.0f} MiB, {growth:+.0f} over its start"
    return Row(
        "memory", case, engine, events=size, seconds=report["seconds"],
        events_per_s=size / report["seconds"], detail=detail, peak_rss_mb=run_peak_mb,
    )


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
    args = parser.parse_args(argv)
    if args.block_size < 0:
        parser.error(f"--block_size must be 0 (per event) or more, got {args.block_size}.")
    logging.basicConfig(level=logging.WARNING)

    import torch

    torch.set_num_threads(args.torch_threads)
    from bench import throughput, workload
    from bench.engines import resolve_engines
    from pipelines import online_train

    engine = resolve_engines([args.engine])[0]
    imports_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start_rss_mb = _proc_status_mb("VmRSS")
    can_reset = _reset_peak_rss()
    started = time.perf_counter()
    if args.case == "plain":
        throughput.run_plain_loop(workload.prepare_workload(args.dataset, args.max_events))
    elif args.case == "online_train":
        # The pipeline reads the stream itself: only its flags are needed here.
        with tempfile.TemporaryDirectory() as output_dir:
            job_args = workload.job_args(args.dataset, args.max_events)
            online_train.run(throughput.online_train_argv(job_args, output_dir, engine, args.block_size))
    seconds = time.perf_counter() - started
    on_engine = args.case == "online_train"
    print(json.dumps({
        "case": args.case, "engine": args.engine if on_engine else None,
        "block_size": args.block_size if on_engine else None,
        "max_events": args.max_events, "seconds": seconds,
        "imports_peak_rss_mb": imports_rss_mb, "start_rss_mb": start_rss_mb,
        "run_peak_rss_mb": _proc_status_mb("VmHWM") if can_reset else None,
    }))


def _proc_status_mb(field: str) -> float:
    """Return a ``/proc/self/status`` memory field (reported in kB) in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field} line; the memory scan needs Linux.")


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
