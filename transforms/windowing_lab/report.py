"""Tables, plots and the Markdown report of a windowing lab run.

Every output is a function of the results alone, with no wall-clock times,
so the same grid, stream and seed write the same table, CSV and Parquet.
"""

import dataclasses
import logging
import math
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from matplotlib.figure import Figure

from transforms.windowing_lab.lab import LabStream, SettingResult
from transforms.windowing_lab.prequential import ScoredEvent

_LOGGER = logging.getLogger(__name__)

TABLE_FILE = "results.csv"
PARQUET_FILE = "results.parquet"
LATENCY_PLOT_FILE = "latency_vs_completeness.png"
ACCURACY_PLOT_FILE = "accuracy_over_event_time.png"
SUMMARY_PLOT_FILE = "summary.png"
REPORT_FILE = "report.md"

# Columns of the terminal table and the report, with their headers.
SUMMARY_COLUMNS = (
    ("setting", "setting"),
    ("panes_early", "early"),
    ("panes_on_time", "on_time"),
    ("panes_late", "late"),
    ("latency_p50_s", "p50_s"),
    ("latency_p95_s", "p95_s"),
    ("on_time_completeness", "complete"),
    ("late_accepted", "late_ok"),
    ("late_dropped", "dropped"),
    ("unemitted", "unemitted"),
    ("duplicates", "dupes"),
    ("accuracy", "accuracy"),
    ("stalled", "stalled"),
)

_PLOT_DPI = 90
_COLORS = (
    "tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple",
    "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def result_row(result: SettingResult) -> Dict[str, object]:
    """Flatten one setting's result into a table row; durations in seconds."""
    setting = result.setting
    measures = result.measures
    metrics = result.prequential.metrics if result.prequential else {}
    row = {
        "setting": setting.name,
        "window": setting.window,
        "trigger": setting.trigger,
        "allowed_lateness_s": setting.allowed_lateness,
        "accumulation": setting.accumulation,
        "max_out_of_orderness_s": setting.max_out_of_orderness,
        "disorder_fraction": setting.disorder_fraction,
        "max_disorder_s": setting.max_disorder,
        "late_fraction": setting.late_fraction,
        "late_delay_s": setting.late_delay,
        "records_per_watermark_update": setting.records_per_watermark_update,
    }
    row.update(dataclasses.asdict(measures))
    row.update({
        "accuracy": metrics.get("accuracy"),
        "log_loss": metrics.get("log_loss"),
        "mae": metrics.get("mae"),
        "rmse": metrics.get("rmse"),
        "trained_examples": result.prequential.trained_examples if result.prequential else None,
        "stalled": result.stalled,
    })
    return row


def results_table(results: Sequence[SettingResult]) -> pa.Table:
    """Return one row per setting, in grid order."""
    return pa.Table.from_pylist([result_row(result) for result in results])


def _format_value(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if value.is_integer() and abs(value) >= 10:
            return f"{value:.0f}"
        return f"{value:.3f}"
    return str(value)


def format_table(table: pa.Table) -> str:
    """Format the summary columns as a fixed-width text table."""
    rows = table.to_pylist()
    headers = [header for _, header in SUMMARY_COLUMNS]
    cells = [[_format_value(row.get(column)) for column, _ in SUMMARY_COLUMNS] for row in rows]
    widths = [max(len(text) for text in column) for column in zip(headers, *cells)]

    def line(values: Sequence[str]) -> str:
        first = values[0].ljust(widths[0])
        rest = [value.rjust(width) for value, width in zip(values[1:], widths[1:])]
        return "  ".join([first] + rest)

    separator = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), separator] + [line(row) for row in cells])


def markdown_table(table: pa.Table) -> str:
    """Format the summary columns as a Markdown table."""
    headers = [header for _, header in SUMMARY_COLUMNS]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|",
    ]
    for row in table.to_pylist():
        values = [_format_value(row.get(column)) for column, _ in SUMMARY_COLUMNS]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines)


def _style(position: int) -> dict:
    """Return the colour and marker of the setting at ``position`` in the grid."""
    return {
        "color": _COLORS[position % len(_COLORS)],
        "marker": _MARKERS[position % len(_MARKERS)],
    }


def _plot_latency(axes, results: Sequence[SettingResult]) -> None:
    for position, result in enumerate(results):
        measures = result.measures
        if measures.latency_p95_s is None or measures.on_time_completeness is None:
            continue
        axes.scatter(
            measures.latency_p95_s / 60, measures.on_time_completeness,
            s=45, alpha=0.8, label=result.setting.name, **_style(position))
    axes.set_xlabel("result latency p95 (minutes of processing time)")
    axes.set_ylabel("on-time completeness")
    axes.set_title("Latency vs completeness", fontsize=10)
    axes.grid(alpha=0.3)


def rolling_error(scored: Sequence[ScoredEvent]) -> tuple:
    """Return event times and the rolling mean error of the scored events.

    Events are sorted by event time and averaged over a trailing window of
    a tenth of them (at least 25), which smooths single panes without hiding
    a concept drift.
    """
    ordered = sorted(scored, key=lambda item: item.event_time)
    times = np.asarray([item.event_time for item in ordered], dtype=np.float64)
    errors = np.asarray([item.error for item in ordered], dtype=np.float64)
    width = min(len(errors), max(25, len(errors) // 10))
    sums = np.cumsum(np.concatenate([[0.0], errors]))
    means = (sums[width:] - sums[:-width]) / width
    return times[width - 1:], means


def _plot_accuracy(axes, results: Sequence[SettingResult], stream: LabStream) -> bool:
    """Plot rolling accuracy (or MAE) over event time; return False when untrained."""
    classification = stream.task == "classification"
    start = min(event.event_time for event in stream.events)
    plotted = False

    for position, result in enumerate(results):
        if not (result.prequential and result.prequential.scored):
            continue
        times, errors = rolling_error(result.prequential.scored)
        values = 1 - errors if classification else errors
        style = _style(position)
        axes.plot(
            (times - start) / 3600, values, linewidth=1, color=style["color"],
            label=result.setting.name)
        plotted = True

    if not plotted:
        return False
    axes.set_xlabel("event time (hours since the first event)")
    axes.set_ylabel("rolling prequential accuracy" if classification else "rolling MAE")
    axes.set_title("Model quality over event time", fontsize=10)
    axes.grid(alpha=0.3)
    return True


def write_plots(
        results: Sequence[SettingResult], stream: LabStream, output_dir: str) -> List[str]:
    """Write the latency, accuracy and two-panel summary PNGs; return their paths."""
    paths = []

    # Figure objects draw with the Agg canvas and leave pyplot's global
    # state alone, so no display backend is needed.
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    _plot_latency(axes, results)
    axes.legend(fontsize=7, loc="best")
    paths.append(_save(figure, output_dir, LATENCY_PLOT_FILE))

    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    if _plot_accuracy(axes, results, stream):
        axes.legend(fontsize=7, loc="best")
        paths.append(_save(figure, output_dir, ACCURACY_PLOT_FILE))

    figure = Figure(figsize=(11, 4))
    left, right = figure.subplots(1, 2)
    _plot_latency(left, results)
    left.legend(fontsize=7, loc="best")
    if not _plot_accuracy(right, results, stream):
        right.set_visible(False)
    paths.append(_save(figure, output_dir, SUMMARY_PLOT_FILE))
    return paths


def _save(figure: Figure, output_dir: str, name: str) -> str:
    path = os.path.join(output_dir, name)
    figure.tight_layout()
    figure.savefig(path, dpi=_PLOT_DPI)
    return path


def _best(rows: List[dict], column: str, lowest: bool) -> Optional[dict]:
    candidates = [row for row in rows if row.get(column) is not None]
    if not candidates:
        return None
    return (min if lowest else max)(candidates, key=lambda row: row[column])


def _highlights(rows: List[dict]) -> List[str]:
    lines = []
    fastest = _best(rows, "latency_p95_s", lowest=True)
    if fastest:
        lines.append(
            f"- Lowest p95 latency: `{fastest['setting']}`,"
            f" {fastest['latency_p95_s'] / 60:.1f} minutes.")
    complete = _best(rows, "on_time_completeness", lowest=False)
    if complete:
        lines.append(
            f"- Most complete on-time results: `{complete['setting']}`,"
            f" {complete['on_time_completeness']:.1%} of assignments.")
    duplicated = _best(rows, "duplicates", lowest=False)
    if duplicated and duplicated["duplicates"]:
        lines.append(
            f"- Most duplicates: `{duplicated['setting']}`, {duplicated['duplicates']}"
            " events counted again by a consumer that sums every pane.")
    for row in rows:
        lost = row["late_dropped"] + row["unemitted"]
        if lost:
            lines.append(
                f"- `{row['setting']}` lost {lost} of {row['assignments']} assignments"
                f" ({row['late_dropped']} dropped as late, {row['unemitted']} never emitted).")
    stalled = [row["setting"] for row in rows if row["stalled"]]
    if stalled:
        lines.append(
            "- The DirectRunner stalled at the end of "
            + ", ".join(f"`{name}`" for name in stalled)
            + ": a watermark hold was never released, see docs/windowing.md.")
    return lines


def write_report(
        table: pa.Table,
        stream: LabStream,
        seed: int,
        plot_paths: Sequence[str],
        output_dir: str) -> str:
    """Write ``report.md``; return its path."""
    rows = table.to_pylist()
    lines = [
        "# Windowing lab report",
        "",
        f"Stream: `{stream.name}`, {len(stream.events)} events"
        f" ({stream.dead_letters} invalid rows left out), one event every"
        f" {stream.spacing:g} s of event time on median. Seed {seed}.",
        "",
        "Latencies are seconds of the replay's processing-time clock, from an"
        " event's arrival to the first pane that contains it. Completeness, late"
        " and lost counts are per assignment (one event in one window).",
        "",
        markdown_table(table),
        "",
        *_highlights(rows),
        "",
    ]
    # The summary figure repeats the other two side by side, for the docs.
    for path in plot_paths:
        name = os.path.basename(path)
        if name != SUMMARY_PLOT_FILE:
            lines += [f"![{name}]({name})", ""]

    path = os.path.join(output_dir, REPORT_FILE)
    with open(path, "w", encoding="utf-8") as file:
        file.write("\n".join(lines))
    return path


def write_outputs(
        results: Sequence[SettingResult],
        stream: LabStream,
        seed: int,
        output_dir: str) -> pa.Table:
    """Write the CSV, Parquet, plots and report; return the results table."""
    os.makedirs(output_dir, exist_ok=True)
    table = results_table(results)
    pa_csv.write_csv(table, os.path.join(output_dir, TABLE_FILE))
    pq.write_table(table, os.path.join(output_dir, PARQUET_FILE))

    plot_paths = write_plots(results, stream, output_dir)
    report_path = write_report(table, stream, seed, plot_paths, output_dir)
    _LOGGER.info("Wrote the windowing lab report to %s.", report_path)
    return table
