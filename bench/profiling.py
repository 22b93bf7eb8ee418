"""Profiles of ``online_train`` (per event and in blocks) and the plain loop, from cProfile.

The FnApiRunner runs the pipeline in the calling process, so one cProfile
session records the runner, the SDK harness and the user code. Self time
(``tottime``) is summed per category of the function's file, so each
second is counted once. Time in the standard library and builtins goes to
the category of the code that called them.
"""

import cProfile
import dataclasses
import os
import pstats
import tempfile
import time
from typing import Dict, List, Tuple

from bench import throughput
from bench.engines import resolve_engines
from bench.results import Row, mode_label
from bench.workload import Workload
from pipelines import online_train

CATEGORIES = (
    "Beam runner and SDK",
    "PyTorch",
    "checkpoints (safetensors, fsync)",
    "Parquet and JSON sinks (pyarrow)",
    "project code",
    "other (stdlib, protobuf, numpy, river, not under the above)",
)


def categorize(function_key: Tuple[str, int, str]) -> str:
    """Return the CATEGORIES entry for a pstats key (file, line, function name)."""
    filename, _, name = function_key
    path = filename.replace(os.sep, "/")
    if "apache_beam" in path or "apache_beam" in name or "grpc" in path:
        return CATEGORIES[0]
    if "safetensors" in path or "safetensors" in name or "fsync" in name or path.endswith("ml/store.py") \
            or path.endswith("transforms/store_io.py"):
        return CATEGORIES[2]
    if "/torch/" in path or "torch" in name:
        return CATEGORIES[1]
    if "pyarrow" in path or "pyarrow" in name or path.endswith("transforms/sinks.py"):
        return CATEGORIES[3]
    if "/site-packages/" not in path and "/lib/python" not in path and path not in ("~", ""):
        return CATEGORIES[4]
    return CATEGORIES[5]


@dataclasses.dataclass
class Profile:
    """Self time per category (seconds) and the top functions of one profiled run."""

    label: str
    events: int
    total_s: float
    by_category: Dict[str, float]
    top_functions: List[Tuple[str, float, int]]

    def per_event_us(self, category: str) -> float:
        return self.by_category.get(category, 0.0) / self.events * 1e6


def profile_call(label: str, events: int, function) -> Profile:
    """Run ``function()`` under cProfile and summarise its self time."""
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.runcall(function)
    total_s = time.perf_counter() - started

    stats = pstats.Stats(profiler)
    by_category = {category: 0.0 for category in CATEGORIES}
    shares: Dict[tuple, Dict[str, float]] = {}
    functions = []
    for key, (_, calls, self_s, _, _) in stats.stats.items():
        for category, share in _caller_shares(stats.stats, key, shares, depth=0).items():
            by_category[category] += self_s * share
        functions.append((f"{_short_path(key[0])}:{key[1]}({key[2]})", self_s, calls))
    functions.sort(key=lambda item: item[1], reverse=True)
    return Profile(label, events, total_s, by_category, functions[:15])


def _caller_shares(table: dict, key: tuple, memo: dict, depth: int) -> Dict[str, float]:
    """Split a function's self time among categories.

    A stdlib or builtin function's time goes to the categories of its
    callers, in proportion to the time spent under each caller, so that
    ``inspect`` called by Beam's type inference counts as Beam.
    """
    category = categorize(key)
    if category != CATEGORIES[-1] or depth > 20:
        return {category: 1.0}
    if key in memo:
        return memo[key]

    memo[key] = {category: 1.0}  # Breaks recursion cycles.
    callers = table[key][4]
    weights = {caller: timing[3] for caller, timing in callers.items() if caller in table}
    total = sum(weights.values())
    if total <= 0:
        return memo[key]
    shares: Dict[str, float] = {}
    for caller, weight in weights.items():
        for caller_category, share in _caller_shares(table, caller, memo, depth + 1).items():
            shares[caller_category] = shares.get(caller_category, 0.0) + share * weight / total
    memo[key] = shares
    return shares


def _short_path(filename: str) -> str:
    for marker in ("site-packages/", "/work/main/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def profile_rows(workload: Workload, block_workload: Workload, block_size: int) -> Tuple[List[Row], List[Profile]]:
    """Profile the plain loop, then ``online_train`` on the FnApiRunner per event and in blocks.

    The block-mode run gets its own (longer) stream, the one its throughput
    is measured on, so that start-up costs do not dominate its categories.
    """
    plain = profile_call("plain PyTorch loop", len(workload.events),
                         lambda: throughput.run_plain_loop(workload))
    engine = resolve_engines(["fnapi"])[0]
    pipelines = []
    for stream, size in ((workload, 0), (block_workload, block_size)):
        with tempfile.TemporaryDirectory() as output_dir:
            argv = throughput.online_train_argv(stream.job_args, output_dir, engine, size)
            label = f"online_train (fnapi, {mode_label(size)})"
            pipelines.append(profile_call(label, len(stream.events), lambda: online_train.run(argv)))

    rows = []
    for profile in (plain, *pipelines):
        shares = ", ".join(
            f"{category} {profile.per_event_us(category):.0f}"
            for category in CATEGORIES if profile.by_category[category] > 0
        )
        rows.append(Row(
            "profile", f"{profile.label}, self time per event (us)", "-" if profile is plain else "fnapi",
            events=profile.events, seconds=profile.total_s, detail=shares,
        ))
    return rows, [plain, *pipelines]


def format_profile(profile: Profile) -> str:
    """Format one profile as Markdown: category totals, then the top functions."""
    lines = [
        f"**{profile.label}**: {profile.events:,} events, {profile.total_s:.2f} s under cProfile.",
        "",
        "| category | self s | us per event |",
        "|---|---|---|",
    ]
    for category in CATEGORIES:
        seconds = profile.by_category[category]
        lines.append(f"| {category} | {seconds:.2f} | {profile.per_event_us(category):.0f} |")
    lines += ["", "| function (top self time) | self s | calls |", "|---|---|---|"]
    for name, seconds, calls in profile.top_functions:
        lines.append(f"| `{name.replace('|', '/')}` | {seconds:.3f} | {calls} |")
    return "\n".join(lines)
