"""Peak memory and throughput as the stream grows, one child process per run.

Each run starts a fresh interpreter (``python -m bench.memory``) so that
one size's peak cannot hide the next one's, and the parent reads the
child's peak resident set size from ``os.wait4``, the kernel's rusage of
that child alone. That peak is often set while importing torch and Beam,
so the child also resets its high-water mark (``/proc/self/clear_refs``)
once the imports are done and reports the peak of the run itself.
"""

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import List

from bench.results import Row

CASES = ("plain", "online_train")


def run_child(case: str, dataset: str, max_events: int, torch_threads: int) -> dict:
    """Run one case in a child interpreter; return its report plus ``peak_rss_mb``.

    ``peak_rss_mb`` is ``ru_maxrss`` (KiB on Linux) of the child, in MiB.
    The report has ``start_rss_mb`` (after the imports) and ``run_peak_rss_mb``
    (the high-water mark after that, None where the kernel cannot reset it).
    """
    command = [
        sys.executable, "-m", "bench.memory", f"--case={case}", f"--dataset={dataset}",
        f"--max_events={max_events}", f"--torch_threads={torch_threads}",
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
            raise RuntimeError(f"bench.memory --case={case} --max_events={max_events} failed "
                               f"with exit code {process.returncode}: {tail}")
    report = json.loads(output.decode().strip().splitlines()[-1])
    report["peak_rss_mb"] = usage.ru_maxrss / 1024
    return report


def memory_rows(dataset: str, sizes: List[int], torch_threads: int) -> List[Row]:
    """Measure the plain loop and ``online_train`` (FnApiRunner) per stream size.

    The first row is the peak after the imports alone, which every case
    pays, as the first child measured it before running anything.
    """
    # TODO: scan the streaming DirectRunner and Prism too; only the FnApiRunner is measured.
    rows = []
    base_mb = None
    for size in sizes:
        for case, label in (("plain", "plain PyTorch loop"), ("online_train", "online_train")):
            report = run_child(case, dataset, size, torch_threads)
            if base_mb is None:
                base_mb = report["imports_peak_rss_mb"]
                rows.append(Row("memory", "imports only (beam, torch, river)", events=0,
                                detail=f"peak RSS {base_mb:.0f} MiB"))
            engine = "fnapi" if case == "online_train" else "-"
            detail = f"peak RSS {report['peak_rss_mb']:.0f} MiB ({report['peak_rss_mb'] - base_mb:+.0f} over imports)"
            if report["run_peak_rss_mb"] is not None:
                growth = report["run_peak_rss_mb"] - report["start_rss_mb"]
                detail += f"; run peak {report['run_peak_rss_mb']:.0f} MiB, {growth:+.0f} over its start"
            rows.append(Row(
                "memory", f"{label}, peak RSS", engine, events=size, seconds=report["seconds"],
                events_per_s=size / report["seconds"], detail=detail,
            ))
    return rows


def _child_main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory",
                                     description="Run one memory benchmark case; print a JSON report.")
    parser.add_argument("--case", choices=CASES, required=True)
    parser.add_argument("--dataset", default="sea")
    parser.add_argument("--max_events", type=int, required=True)
    parser.add_argument("--torch_threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    torch.set_num_threads(args.torch_threads)
    from bench import throughput, workload
    from bench.engines import resolve_engines
    from pipelines import online_train

    imports_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start_rss_mb = _proc_status_mb("VmRSS")
    can_reset = _reset_peak_rss()
    started = time.perf_counter()
    if args.case == "plain":
        throughput.run_plain_loop(workload.prepare_workload(args.dataset, args.max_events))
    elif args.case == "online_train":
        # The pipeline reads the stream itself: only its flags are needed here.
        with tempfile.TemporaryDirectory() as output_dir:
            engine = resolve_engines(["fnapi"])[0]
            argv = workload.job_args(args.dataset, args.max_events) + [
                f"--output_dir={output_dir}", "--no_report", *engine.pipeline_args,
            ]
            online_train.run(argv)
    seconds = time.perf_counter() - started
    print(json.dumps({
        "case": args.case, "max_events": args.max_events, "seconds": seconds,
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
