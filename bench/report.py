"""The benchmark record: machine description, Markdown block and plot."""

import datetime
import os
import platform
from typing import Dict, List

from bench.results import Row, markdown_table


def machine_description() -> Dict[str, str]:
    """Describe the machine and software the numbers were measured on."""
    import apache_beam
    import river
    import torch

    cpu_model = "unknown CPU"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    memory_gib = "unknown"
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory_gib = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{os.cpu_count()} cores, {cpu_model}",
        "memory": memory_gib,
        "load average at start (1, 5, 15 min)": load,
        "software": (
            f"Python {platform.python_version()}, Apache Beam {apache_beam.__version__}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} intra-op threads), river {river.__version__}"
        ),
    }


def markdown_block(command: str, machine: Dict[str, str], rows: List[Row], profiles_text: str,
                   plot_name: str) -> str:
    """Return the Markdown section that one ``python -m bench`` run appends."""
    lines = [f"## Run of {machine['date']}", "", f"Command: `{command}`", ""]
    lines += [f"- {name}: {value}" for name, value in machine.items() if name != "date"]
    lines += ["", markdown_table(rows), ""]
    if plot_name:
        lines += [f"![throughput and peak memory against stream length](img/{plot_name})", ""]
    if profiles_text:
        lines += ["<details><summary>cProfile self time</summary>", "", profiles_text, "", "</details>", ""]
    return "\n".join(lines)


def plot_scaling(rows: List[Row], path: str) -> bool:
    """Plot events/s and peak RSS against stream length from the memory rows.

    Draws one line per series: the plain loop, and ``online_train`` per
    engine, per event and in blocks. Each point is one fresh child process,
    so its events/s include start-up costs. Returns False, writing nothing,
    when no series has two sizes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    series = {}
    for row in rows:
        if row.section != "memory" or not row.events or row.peak_rss_mb is None:
            continue
        label = row.case.replace(", peak RSS", "")
        if row.engine != "-":
            label += f" ({row.engine})"
        series.setdefault(label, []).append((row.events, row.events_per_s, row.peak_rss_mb))
    if not series or max(len(points) for points in series.values()) < 2:
        return False

    figure, (rate_axis, memory_axis) = plt.subplots(1, 2, figsize=(12, 6))
    for label, points in sorted(series.items()):
        points.sort()
        sizes = [size for size, _, _ in points]
        rate_axis.plot(sizes, [rate for _, rate, _ in points], marker="o", label=label)
        memory_axis.plot(sizes, [rss for _, _, rss in points], marker="o")
    for axis in (rate_axis, memory_axis):
        axis.set_xscale("log")
        # Labels on the minor ticks overlap when a scan spans less than a decade.
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.set_xlabel("stream length (events)")
    rate_axis.set_yscale("log")
    rate_axis.set_ylabel("events/s, fresh process (log scale)")
    memory_axis.set_ylabel("peak RSS during the run (MiB)")
    memory_axis.set_ylim(bottom=0)
    figure.suptitle("online_train per event and in blocks, and the plain PyTorch loop")
    # One legend below both plots, so that it hides no point.
    figure.legend(loc="lower center", ncol=2, fontsize="small")
    figure.tight_layout(rect=(0, 0.2, 1, 1))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return True
